"""Interventions: causal tests of what a VLM's modules do, not only what they represent.

Two analyses over a `LoadedModel`, each a forward pass with hooks that change a module's
output and then are removed (context managers, so an error never leaves a model hooked):

- **Activation patching**: a clean run and a corrupted run differ only in the image (the same
  Stroop word on another background, say). The clean run's output at one hook point replaces
  the corrupted run's, at every position or only at image-token positions, and the answer
  logit shows how much of the clean behaviour that one module carries:
  recovery = (patched - corrupted) / (clean - corrupted).
- **Head ablation**: chosen attention heads' outputs are zeroed, or set to their mean over a
  reference batch, right before the attention's output projection (where the heads are still
  side by side), and the change in the answer logit and the output distribution is recorded.

Every run is one sample at batch size 1: no padding, so the last position is the last prompt
token and patched logits compare exactly with unpatched ones.

Plain Python (no Dagster) so notebooks, the CLI and the orchestration layer share it. The rows
returned fit the warehouse tables `patching_effects` and `ablation_effects`
(`PATCHING_EFFECTS`, `ABLATION_EFFECTS`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.analyses.answer_tokens import answer_token_id
from lens_assets.analyses.answers import questions_with_answers
from lens_assets.analyses.interpretability import (
    AblationSettings,
    PatchingSettings,
    clean_corrupted_pairs,
)
from lens_assets.analyses.reading import labels_by_image
from lens_assets.capture.extraction import to_device
from lens_assets.capture.hooks import capture, output_tensor
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import select_modules
from lens_assets.capture.token_roles import TokenRole
from lens_assets.data.images import load_image
from lens_assets.resources.warehouse import Warehouse

log = logging.getLogger(__name__)

__all__ = [
    "ABLATION_EFFECTS",
    "ABLATION_ROWS",
    "PATCHING_EFFECTS",
    "PATCHING_ROWS",
    "AblationMode",
    "AttentionHeads",
    "InterventionError",
    "PatchPair",
    "Positions",
    "Sample",
    "ablate_heads",
    "ablation_effects",
    "activation_patching",
    "answer_logit",
    "answer_token_id",  # re-exported from answer_tokens
    "attention_heads",
    "cache_outputs",
    "expand_layers",
    "final_kl",
    "head_ablation",
    "head_means",
    "image_position_mask",
    "patch_outputs",
    "patch_pairs",
    "patching_effects",
    "prepare_input",
    "prepare_pair",
    "recovery",
    "rows_table",
    "run_logits",
]

Positions = Literal["all", "image"]
AblationMode = Literal["zero", "mean"]
POSITIONS: tuple[str, ...] = ("all", "image")
ABLATION_MODES: tuple[str, ...] = ("zero", "mean")

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

PATCHING_EFFECTS = pa.schema(
    [
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("pair_id", pa.string()),
        ("layer", pa.string()),
        ("positions", pa.string()),  # 'all' | 'image'
        ("patched_positions", pa.int32()),  # positions whose output was replaced
        ("answer_token", pa.int64()),
        ("clean_logit", pa.float64()),
        ("corrupted_logit", pa.float64()),
        ("patched_logit", pa.float64()),
        ("recovery", pa.float64()),  # NaN where clean == corrupted
    ]
)

ABLATION_EFFECTS = pa.schema(
    [
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("sample_id", pa.string()),
        ("layer", pa.string()),
        ("heads", pa.list_(pa.int32())),
        ("mode", pa.string()),  # 'zero' | 'mean'
        ("answer_token", pa.int64()),
        ("base_logit", pa.float64()),
        ("ablated_logit", pa.float64()),
        ("logit_change", pa.float64()),  # ablated - base
        ("kl", pa.float64()),  # KL(base || ablated) of the final position's distribution
        ("max_abs_diff", pa.float64()),  # largest logit change at any position
    ]
)

# The names the orchestration layer imports.
PATCHING_ROWS = PATCHING_EFFECTS
ABLATION_ROWS = ABLATION_EFFECTS


class InterventionError(ValueError):
    """An intervention that cannot be run as asked; the message names the cause and the fix."""


@dataclass(frozen=True)
class Sample:
    """One (image, prompt) input; `answer` picks the answer token (see `answer_token_id`)."""

    sample_id: str
    image: Image.Image
    prompt: str
    answer: str | int | None = None


@dataclass(frozen=True)
class PatchPair:
    """A clean and a corrupted image under the same prompt, e.g. one Stroop word on two
    backgrounds. `answer` None means the clean run's own top token."""

    pair_id: str
    clean: Image.Image
    corrupted: Image.Image
    prompt: str
    answer: str | int | None = None


# -- inputs and plain runs -------------------------------------------------------------------


def prepare_input(loaded: LoadedModel, image: Image.Image, prompt: str) -> BatchFeature:
    """One sample's processor inputs on the model's device, as extraction builds them."""
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare(loaded.processor, [image], [prompt])
    return to_device(inputs, loaded.device, loaded.dtype)


def prepare_pair(
    loaded: LoadedModel, clean: Image.Image, corrupted: Image.Image, prompt: str
) -> tuple[BatchFeature, BatchFeature]:
    """The clean and corrupted inputs, checked to line up position by position.

    Position-wise patching needs both runs to have the same sequence, image tokens at the same
    places: the same prompt, and images that give the same number of image tokens (any size
    for LLaVA-1.5; same-size images for dynamic-resolution models such as Qwen2-VL).
    """
    clean_inputs = prepare_input(loaded, clean, prompt)
    corrupted_inputs = prepare_input(loaded, corrupted, prompt)
    clean_ids, corrupted_ids = clean_inputs["input_ids"], corrupted_inputs["input_ids"]
    if clean_ids.shape != corrupted_ids.shape:
        raise InterventionError(
            f"the clean input has {clean_ids.shape[-1]} tokens and the corrupted one "
            f"{corrupted_ids.shape[-1]}, so their positions do not line up for patching; use "
            "the same prompt and images that give as many image tokens (for dynamic-resolution "
            "models such as Qwen2-VL, images of the same size)"
        )
    token = loaded.layout.image_token_id
    if token is not None and not torch.equal(clean_ids == token, corrupted_ids == token):
        raise InterventionError(
            "the clean and corrupted inputs have their image tokens at different positions; "
            "use the same prompt for both runs of a pair"
        )
    for key, value in clean_inputs.items():
        other = corrupted_inputs.get(key)
        tensors = isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)
        if tensors and value.shape != other.shape:
            raise InterventionError(
                f"the clean and corrupted inputs differ in the shape of {key!r} "
                f"({tuple(value.shape)} vs {tuple(other.shape)}); vision-tower outputs "
                "cannot be patched across them. Use images of the same size"
            )
    return clean_inputs, corrupted_inputs


def _forward(loaded: LoadedModel, inputs: BatchFeature) -> torch.Tensor:
    output = loaded.architecture.adapter.forward(loaded.model, inputs, {})
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise InterventionError(
            f"model {loaded.name!r} ({type(loaded.model).__name__}) gives no next-token logits "
            "(a dual encoder scores image-text pairs); interventions need an image-text-to-text "
            "model"
        )
    return logits


def run_logits(loaded: LoadedModel, inputs: BatchFeature) -> torch.Tensor:
    """(1, positions, vocab) logits of one run, with whatever hooks are in place."""
    with torch.inference_mode():
        return _forward(loaded, inputs)


def cache_outputs(
    loaded: LoadedModel, inputs: BatchFeature, hook_points: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, hook point -> output) of one run: the clean run's cache for patching.

    Outputs are cloned, so a later in-place op in the model cannot change the cache."""
    with capture(loaded.model, hook_points) as store, torch.inference_mode():
        logits = _forward(loaded, inputs)
        missing = [name for name in hook_points if name not in store.outputs]
        if missing:
            raise InterventionError(
                f"hook point {missing[0]!r} did not run in the forward pass, so it has no "
                "output to patch; choose a module of the model's image-and-prompt path"
            )
        cache = {name: store.outputs[name].clone() for name in hook_points}
    return logits, cache


# -- answer token and effect sizes -----------------------------------------------------------


def _answer_token(
    loaded: LoadedModel, prompt: str, answer: str | int | None, reference: torch.Tensor
) -> int:
    """The given answer's first token, else the reference run's own top token at the last
    position: the token whose logit every intervention row reads."""
    if answer is None:
        return int(reference[0, -1].argmax())
    return answer_token_id(loaded, prompt, answer)


def answer_logit(logits: torch.Tensor, token: int) -> float:
    """The answer token's logit at the last position (the last prompt token at batch size 1)."""
    return float(logits[0, -1, token].float())


def final_kl(base: torch.Tensor, changed: torch.Tensor) -> float:
    """KL(base || changed) of the next-token distributions at the last position, in nats."""
    log_p = torch.log_softmax(base[0, -1].double(), dim=-1)
    log_q = torch.log_softmax(changed[0, -1].double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def recovery(clean: float, corrupted: float, patched: float) -> float:
    """(patched - corrupted) / (clean - corrupted): 0 is the corrupted run, 1 the clean one.

    NaN where the two runs give the same logit (nothing to recover), never a division error."""
    gap = clean - corrupted
    if gap == 0 or not math.isfinite(gap):
        return math.nan
    return (patched - corrupted) / gap + 0.0  # + 0.0: no -0.0 in the tables


# -- activation patching ---------------------------------------------------------------------


def _in_tower(hook_point: str, towers: Sequence[str]) -> bool:
    return any(hook_point == tower or hook_point.startswith(tower + ".") for tower in towers)


def image_position_mask(
    loaded: LoadedModel, hook_point: str, output: torch.Tensor, inputs: BatchFeature
) -> torch.Tensor | None:
    """Which positions of `hook_point`'s output are image positions (True), or None for all.

    In the language model: the positions whose token is an image token (the adapter's token
    roles). In the vision tower every position is an image patch except a class token;
    packed or convolutional vision outputs have none, so all of them count.
    """
    adapter = loaded.architecture.adapter
    if adapter.is_vision(hook_point):
        if output.dim() == 3 and _in_tower(hook_point, loaded.layout.cls_towers):
            mask = torch.ones(output.shape[:2], dtype=torch.bool, device=output.device)
            mask[:, 0] = False
            return mask
        return None
    roles = adapter.text_roles(inputs, loaded.layout).to(output.device)
    if output.dim() != 3 or tuple(output.shape[:2]) != tuple(roles.shape):
        raise InterventionError(
            f"hook point {hook_point!r} outputs shape {tuple(output.shape)}, which does not line "
            f"up with the token sequence {tuple(roles.shape)}; patch image positions only at a "
            "module that outputs (batch, tokens, dim)"
        )
    return roles == TokenRole.IMAGE


def _swap(output: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    """`output` with the tensor `old` (found by identity) replaced by `new`, same structure."""
    if output is old:
        return new
    if isinstance(output, Mapping):  # a ModelOutput: set in place, keeps its class
        for key, value in output.items():
            swapped = _swap(value, old, new)
            if swapped is not value:
                output[key] = swapped  # type: ignore[index]
                return output
        return output
    if isinstance(output, tuple | list):
        for index, value in enumerate(output):
            swapped = _swap(value, old, new)
            if swapped is not value:
                items = list(output)
                items[index] = swapped
                return type(output)(items) if type(output) in (tuple, list) else output
        return output
    return output


@dataclass(frozen=True)
class _Patch:
    value: torch.Tensor
    mask: torch.Tensor | None  # over the output's leading axes; None: every position


def _patch_hook(name: str, patch: _Patch):
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        current = output_tensor(output)
        if current is None:
            raise InterventionError(f"hook point {name!r} returned no tensor to patch")
        if current.shape != patch.value.shape:
            raise InterventionError(
                f"hook point {name!r} outputs shape {tuple(current.shape)} in this run but "
                f"{tuple(patch.value.shape)} in the run patched from; patch between inputs "
                "whose sequences line up (same prompt, as many image tokens)"
            )
        value = patch.value.to(device=current.device, dtype=current.dtype)
        if patch.mask is not None:
            mask = patch.mask.to(current.device).reshape(*patch.mask.shape, 1)
            value = torch.where(mask, value, current)
        swapped = _swap(output, current, value)
        if output_tensor(swapped) is not value:
            raise InterventionError(
                f"hook point {name!r} returns {type(output).__name__}, whose tensor cannot be "
                "replaced in place; patch a module that returns a tensor or a tuple"
            )
        return swapped

    return hook


@contextmanager
def patch_outputs(
    model: nn.Module,
    patches: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor | None] | None = None,
) -> Iterator[None]:
    """Replace each hook point's output by `patches[name]` for the duration of the block.

    With `masks[name]` (boolean, over the output's leading axes) only the True positions are
    replaced; the rest keep this run's own values. The hooks go first among the module's
    forward hooks, so observers such as `hooks.capture` see the patched output; they are
    always removed.
    """
    modules = dict(model.named_modules())
    missing = [name for name in patches if name not in modules]
    if missing:
        raise InterventionError(f"no module named {missing[0]!r} in {type(model).__name__}")
    masks = masks or {}
    handles = []
    try:
        for name, value in patches.items():
            hook = _patch_hook(name, _Patch(value, masks.get(name)))
            handles.append(modules[name].register_forward_hook(hook, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def activation_patching(
    loaded: LoadedModel,
    pairs: Sequence[PatchPair],
    hook_points: Sequence[str],
    positions: Sequence[Positions] = POSITIONS,  # type: ignore[assignment]
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """One `patching_effects` row per (pair, hook point, positions).

    Per pair: a clean run caching every hook point's output, a corrupted run, then one
    corrupted run per (hook point, positions) with that one output patched from the clean run.
    `hook_points` may use `modules.select_modules` globs (`model.language_model.layers.*`).
    """
    unknown = [p for p in positions if p not in POSITIONS]
    if unknown:
        raise InterventionError(
            f"unknown positions {unknown[0]!r}; use one of {', '.join(POSITIONS)}"
        )
    names = select_modules(loaded.module_names, hook_points, loaded.model) if hook_points else []
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        clean_inputs, corrupted_inputs = prepare_pair(
            loaded, pair.clean, pair.corrupted, pair.prompt
        )
        clean_logits, cache = cache_outputs(loaded, clean_inputs, names)
        corrupted_logits = run_logits(loaded, corrupted_inputs)
        token = _answer_token(loaded, pair.prompt, pair.answer, clean_logits)
        clean = answer_logit(clean_logits, token)
        corrupted = answer_logit(corrupted_logits, token)
        for name in names:
            for where in positions:
                mask = None
                if where == "image":
                    mask = image_position_mask(loaded, name, cache[name], corrupted_inputs)
                with patch_outputs(loaded.model, {name: cache[name]}, {name: mask}):
                    patched = answer_logit(run_logits(loaded, corrupted_inputs), token)
                leading = math.prod(cache[name].shape[:-1])
                rows.append(
                    {
                        "model": loaded.name,
                        "dataset": dataset,
                        "pair_id": pair.pair_id,
                        "layer": name,
                        "positions": where,
                        "patched_positions": leading if mask is None else int(mask.sum()),
                        "answer_token": token,
                        "clean_logit": clean,
                        "corrupted_logit": corrupted,
                        "patched_logit": patched,
                        "recovery": recovery(clean, corrupted, patched),
                    }
                )
    return rows


# -- head ablation ---------------------------------------------------------------------------


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
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InterventionError(f"no module named {layer!r} in {type(model).__name__}")
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


def _ablation_hook(site: AttentionHeads, heads: list[int], mean: torch.Tensor | None):
    index = torch.tensor(heads, dtype=torch.long)

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
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
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for layer, heads in ablations.items():
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
            hook = _ablation_hook(site, chosen, mean)
            handle = modules[site.projection].register_forward_pre_hook(hook, prepend=True)
            stack.callback(handle.remove)
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
    modules = dict(loaded.model.named_modules())

    def recorder(layer: str):
        site = sites[layer]

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, site.n_heads, site.head_dim)
            sums[layer] += x.double().sum(dim=0).cpu()
            counts[layer] += x.shape[0]

        return hook

    with ExitStack() as stack:
        for layer, site in sites.items():
            handle = modules[site.projection].register_forward_pre_hook(recorder(layer))
            stack.callback(handle.remove)
        for sample in reference:
            run_logits(loaded, prepare_input(loaded, sample.image, sample.prompt))
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
        rows += _ablate_sample(loaded, sample, ablations, modes, means, dataset)
    return rows


def _ablate_sample(
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
    token = _answer_token(loaded, sample.prompt, sample.answer, base_logits)
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


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as Arrow with the table's schema, ready for `Warehouse.replace_model_rows`."""
    return pa.Table.from_pylist(list(rows), schema=schema)


# -- the configured studies (configs/interpretability.yaml) ----------------------------------


def patch_pairs(
    labels: Mapping[str, Mapping[str, str]],
    questions: Sequence[Mapping[str, Any]],
    settings: PatchingSettings,
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(clean image id, corrupted image id, the clean image's question) per pair.

    `labels` is image id -> concept -> value; `questions` are `answers.questions_with_answers`
    rows. Pairs agree on `settings.same` and differ on `settings.differ`; the question is the
    one about `settings.concept` (first by prompt id), asked of both images, and its expected
    answer for the clean image is the answer token read. Pairs whose clean image has no such
    question are left out.
    """
    asked: dict[str, Mapping[str, Any]] = {}
    for question in questions:
        if question.get("concept") == settings.concept:
            asked.setdefault(question["image_id"], question)
    candidates = {image: values for image, values in labels.items() if image in asked}
    chosen = clean_corrupted_pairs(candidates, settings.same, settings.differ, settings.max_pairs)
    return [(clean, corrupted, asked[clean]) for clean, corrupted in chosen]


def patching_effects(
    loaded: LoadedModel, warehouse: Warehouse, settings: PatchingSettings
) -> pa.Table:
    """The configured patching study as `patching_effects` rows (pair_id 'clean>corrupted').

    Images, labels and questions come from the warehouse's `settings.dataset`. A pair whose
    images do not line up position by position (different image-token counts) is skipped
    with a warning, so one odd image does not cost the whole study.
    """
    dataset = settings.dataset
    labels = labels_by_image(warehouse, dataset)
    questions = questions_with_answers(warehouse, [dataset])
    paths = {q["image_id"]: q["path"] for q in questions}
    rows: list[dict[str, Any]] = []
    for clean, corrupted, question in patch_pairs(labels, questions, settings):
        corrupted_path = paths.get(corrupted) or _stored_path(warehouse, dataset, corrupted)
        pair = PatchPair(
            f"{clean}>{corrupted}",
            load_image(question["path"]).image,
            load_image(corrupted_path).image,
            question["prompt"],
            question["expected"],
        )
        try:
            rows += activation_patching(
                loaded, [pair], settings.layers, settings.positions, dataset=dataset
            )
        except InterventionError as error:
            log.warning("pair %s skipped: %s", pair.pair_id, error)
    return rows_table(rows, PATCHING_EFFECTS)


def _stored_path(warehouse: Warehouse, dataset: str, image_id: str) -> str:
    """An image's stored path (for a corrupted image that has no question of its own)."""
    rows = warehouse.fetch_arrow(
        "SELECT any_value(path) FROM images WHERE dataset = ? AND image_id = ?",
        [dataset, image_id],
    )
    path = rows.column(0)[0].as_py() if rows.num_rows else None
    if path is None:
        raise InterventionError(f"image {image_id!r} of dataset {dataset!r} is not stored")
    return str(path)


def ablation_effects(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    image_ids: Sequence[str],
    settings: AblationSettings,
    datasets: Sequence[str | None] | None = None,
    answers: Sequence[str | int | None] | None = None,
) -> pa.Table:
    """The configured head ablations on these (image, prompt) items as `ablation_effects` rows
    (sample_id = image id). Mean ablation averages over the same items; `answers` (default:
    each base run's top token) pick the answer token, `datasets` fill the dataset column."""
    answers = answers or [None] * len(images)
    datasets = datasets or [None] * len(images)
    rows: list[dict[str, Any]] = []
    samples = [
        Sample(image_id, image, prompt, answer)
        for image_id, image, prompt, answer in zip(image_ids, images, prompts, answers, strict=True)
    ]
    means = None
    heads = expand_layers(loaded, settings.heads)
    if settings.mode == "mean" and heads:
        means = head_means(loaded, samples, list(heads))
    for sample, dataset in zip(samples, datasets, strict=True):
        rows += _ablate_sample(loaded, sample, heads, (settings.mode,), means, dataset)
    return rows_table(rows, ABLATION_EFFECTS)
