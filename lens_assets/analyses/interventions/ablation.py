"""Head ablation: what chosen attention heads contribute to the answer.

The heads' outputs are zeroed, or set to their mean over a reference batch, right before the
attention's output projection (where the heads are still side by side), and the change in the
answer logit and the output distribution is recorded. The pre-hooks come from
`capture.hooks` and are removed when each run ends, whatever happens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lens_assets.analyses.interventions.runs import (
    InterventionError,
    Sample,
    answer_logit,
    final_kl,
    pick_answer_token,
    prepare_input,
    run_logits,
)
from lens_assets.capture.hooks import InputHook, hook_modules, input_hooks, require_ran
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import select_modules
from lens_assets.resources import schemas

AblationMode = Literal["zero", "mean"]
ABLATION_MODES: tuple[str, ...] = ("zero", "mean")
MEAN_FIX = "mean-ablate heads of a layer the image and prompt pass through"

# Where the heads are still side by side: the attention's output projection, whose input is
# the heads' outputs concatenated (Llama/Qwen2 `o_proj`, CLIP/SigLIP `out_proj`, Qwen-VL
# vision `attn.proj`).
ATTENTION_OUTPUTS: tuple[str, ...] = (
    "self_attn.o_proj",
    "self_attn.out_proj",
    "attn.proj",
    "attn.o_proj",
    "attention.o_proj",
)

ABLATION_EFFECTS = schemas.ABLATION_EFFECTS

ABLATION_ROWS = ABLATION_EFFECTS  # the name the orchestration layer imports


@dataclass(frozen=True)
class AttentionHeads:
    """Where one attention block's heads can be ablated: its output projection's input."""

    layer: str  # the name the caller gave (a decoder layer, an attention block, the projection)
    projection: str  # the output projection's module name
    n_heads: int
    head_dim: int


def attention_heads(model: nn.Module, layer: str) -> AttentionHeads:
    """The output projection of the attention in `layer` and its head layout.

    `layer` is a decoder or vision block (`model.language_model.layers.0`), its attention
    block, or the projection itself. head_dim is the attention block's own `head_dim` (else
    hidden / num_heads from its config); the head count is the projection's input width over
    head_dim, which counts query heads also under grouped-query attention.
    """
    hook_modules(model, [layer])  # a HookPointError for a name the model lacks
    modules = dict(model.named_modules())
    candidates = [layer] if isinstance(modules[layer], nn.Linear) else []
    candidates += [f"{layer}.{suffix}" for suffix in ATTENTION_OUTPUTS]
    candidates += [f"{layer}.{suffix.rsplit('.', 1)[-1]}" for suffix in ATTENTION_OUTPUTS]
    projection = next(
        (name for name in candidates if isinstance(modules.get(name), nn.Linear)), None
    )
    if projection is None:
        raise InterventionError(
            f"found no attention output projection in {layer!r} (looked for "
            f"{', '.join(ATTENTION_OUTPUTS)}); name the projection module itself"
        )
    attention = modules[projection.rsplit(".", 1)[0]]
    head_dim = getattr(attention, "head_dim", None)
    if not isinstance(head_dim, int):
        config = getattr(attention, "config", None)
        heads = getattr(config, "num_attention_heads", None) or getattr(config, "num_heads", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "embed_dim", None)
        if not heads or not hidden:
            raise InterventionError(
                f"cannot tell the head size of {projection!r}'s attention block; it has no "
                "head_dim and no config with hidden_size and num_attention_heads"
            )
        head_dim = hidden // heads
    width = modules[projection].in_features
    if width % head_dim:
        raise InterventionError(
            f"{projection!r} takes {width} features, not a whole number of {head_dim}-wide heads"
        )
    return AttentionHeads(layer, projection, width // head_dim, head_dim)


def _check_heads(site: AttentionHeads, heads: Sequence[int]) -> list[int]:
    bad = [h for h in heads if not 0 <= int(h) < site.n_heads]
    if bad:
        raise InterventionError(
            f"{site.layer!r} has heads 0..{site.n_heads - 1}; head {bad[0]} does not exist"
        )
    return sorted({int(h) for h in heads})


def _ablation_hook(site: AttentionHeads, heads: list[int], mean: torch.Tensor | None) -> InputHook:
    """The projection's input with the listed heads' slices zeroed or set to their means."""
    index = torch.tensor(heads, dtype=torch.long)

    def hook(args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        split = x.reshape(*x.shape[:-1], site.n_heads, site.head_dim).clone()
        where = index.to(x.device)
        if mean is None:
            split[..., where, :] = 0
        else:
            split[..., where, :] = mean.to(device=x.device, dtype=x.dtype)[where]
        return (split.reshape(x.shape), *args[1:])

    return hook


@contextmanager
def ablate_heads(
    model: nn.Module,
    ablations: Mapping[str, Sequence[int]],
    mode: AblationMode = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Zero or mean-ablate the listed heads of each layer for the duration of the block.

    A forward pre-hook on the attention's output projection rewrites the listed heads' slices
    of its input (heads side by side, head_dim each); `means[layer]` is (n_heads, head_dim),
    from `head_means`. An empty head list installs the hook and changes nothing. Hooks are
    always removed.
    """
    if mode not in ABLATION_MODES:
        raise InterventionError(f"unknown mode {mode!r}; use one of {', '.join(ABLATION_MODES)}")
    hooks: list[tuple[str, InputHook]] = []
    for layer, heads in ablations.items():  # every layer is checked before any hook goes on
        site = attention_heads(model, layer)
        chosen = _check_heads(site, heads)
        mean = None
        if mode == "mean":
            if means is None or layer not in means:
                raise InterventionError(
                    f"mean ablation of {layer!r} needs its head means; compute them with "
                    "head_means(loaded, reference, layers)"
                )
            mean = means[layer]
        hooks.append((site.projection, _ablation_hook(site, chosen, mean)))
    with input_hooks(model, hooks, first=True):
        yield


def head_means(
    loaded: LoadedModel, reference: Sequence[Sample], layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Per layer, (n_heads, head_dim): each head's output averaged over every position of
    every reference sample, the value a mean ablation puts in its place."""
    sites = {layer: attention_heads(loaded.model, layer) for layer in layers}
    if not reference:
        raise InterventionError("mean ablation needs at least one reference sample")
    sums = {
        layer: torch.zeros(site.n_heads, site.head_dim, dtype=torch.float64)
        for layer, site in sites.items()
    }
    counts = dict.fromkeys(sites, 0)

    def recorder(layer: str) -> InputHook:
        site = sites[layer]

        def hook(args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, site.n_heads, site.head_dim)
            sums[layer] += x.double().sum(dim=0).cpu()
            counts[layer] += x.shape[0]

        return hook

    recorders = [(site.projection, recorder(layer)) for layer, site in sites.items()]
    with input_hooks(loaded.model, recorders):
        for sample in reference:
            run_logits(loaded, prepare_input(loaded, sample.image, sample.prompt))
    # A projection the pass never reached would give means of nothing (zeros), not a mean.
    ran = [site.projection for layer, site in sites.items() if counts[layer]]
    require_ran([site.projection for site in sites.values()], ran, MEAN_FIX)
    return {layer: (sums[layer] / max(counts[layer], 1)).to(loaded.dtype) for layer in sites}


def expand_layers(
    loaded: LoadedModel, ablations: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Layer globs resolved to module names, in model order; a layer matched by several keys
    gets the union of their heads."""
    heads: dict[str, set[int]] = {}
    for pattern, chosen in ablations.items():
        for name in select_modules(loaded.module_names, [pattern], loaded.model):
            heads.setdefault(name, set()).update(int(h) for h in chosen)
    order = {name: index for index, name in enumerate(loaded.module_names)}
    return {name: sorted(heads[name]) for name in sorted(heads, key=order.__getitem__)}


def head_ablation(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    ablations: Mapping[str, Sequence[int]],
    modes: Sequence[AblationMode] = ("zero",),
    reference: Sequence[Sample] | None = None,
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """One `ablation_effects` row per (sample, layer, mode).

    `ablations` is data, layer -> heads (`{"model.language_model.layers.0": [0, 1]}`; a key
    may be a `modules.select_modules` glob, giving those heads to every layer it matches). A
    layer's listed heads are ablated together, each layer on its own (not with the other
    layers'). Mean ablation averages over `reference` (default: the samples themselves). The
    answer token is the sample's `answer`, else the base run's top token.
    """
    unknown = [m for m in modes if m not in ABLATION_MODES]
    if unknown:
        raise InterventionError(
            f"unknown mode {unknown[0]!r}; use one of {', '.join(ABLATION_MODES)}"
        )
    ablations = expand_layers(loaded, ablations)
    means = None
    if "mean" in modes and ablations:
        means = head_means(loaded, reference or samples, list(ablations))
    rows: list[dict[str, Any]] = []
    for sample in samples:
        rows += ablate_sample(loaded, sample, ablations, modes, means, dataset)
    return rows


def ablate_sample(
    loaded: LoadedModel,
    sample: Sample,
    ablations: Mapping[str, Sequence[int]],
    modes: Sequence[AblationMode],
    means: Mapping[str, torch.Tensor] | None,
    dataset: str | None,
) -> list[dict[str, Any]]:
    """One base run, then one ablated run per (layer, mode): their `ablation_effects` rows."""
    inputs = prepare_input(loaded, sample.image, sample.prompt)
    base_logits = run_logits(loaded, inputs)
    token = pick_answer_token(loaded, sample.prompt, sample.answer, base_logits)
    base = answer_logit(base_logits, token)
    rows: list[dict[str, Any]] = []
    for layer, heads in ablations.items():
        for mode in modes:
            with ablate_heads(loaded.model, {layer: heads}, mode, means):
                ablated_logits = run_logits(loaded, inputs)
            ablated = answer_logit(ablated_logits, token)
            rows.append(
                {
                    "model": loaded.name,
                    "dataset": dataset,
                    "sample_id": sample.sample_id,
                    "layer": layer,
                    "heads": sorted({int(h) for h in heads}),
                    "mode": mode,
                    "answer_token": token,
                    "base_logit": base,
                    "ablated_logit": ablated,
                    "logit_change": ablated - base,
                    "kl": final_kl(base_logits, ablated_logits),
                    "max_abs_diff": float(
                        (ablated_logits.float() - base_logits.float()).abs().max()
                    ),
                }
            )
    return rows
