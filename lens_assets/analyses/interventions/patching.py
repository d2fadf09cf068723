"""Activation patching: how much of a clean run's behaviour one module's output carries.

A clean run and a corrupted run differ only in the image (the same Stroop word on another
background, say). The clean run's output at one hook point replaces the corrupted run's, at
every position or only at image-token positions, and the answer logit shows how much of the
clean behaviour that one module carries: recovery = (patched - corrupted) / (clean - corrupted).
The hooks come from `capture.hooks` and are removed when each run ends, whatever happens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.analyses.interventions.runs import (
    InterventionError,
    answer_logit,
    forward_logits,
    pick_answer_token,
    prepare_input,
    recovery,
    run_logits,
)
from lens_assets.capture.hooks import capture, output_tensor, replace_outputs
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import select_modules
from lens_assets.capture.token_roles import TokenRole
from lens_assets.resources import schemas

Positions = Literal["all", "image"]
POSITIONS: tuple[str, ...] = ("all", "image")

PATCHING_EFFECTS = schemas.PATCHING_EFFECTS

PATCHING_ROWS = PATCHING_EFFECTS  # the name the orchestration layer imports


@dataclass(frozen=True)
class PatchPair:
    """A clean and a corrupted input under the same prompt, e.g. one Stroop word on two
    backgrounds: one image each, or a row's images each (as many on both sides). `answer`
    None means the clean run's own top token."""

    pair_id: str
    clean: Image.Image | Sequence[Image.Image]
    corrupted: Image.Image | Sequence[Image.Image]
    prompt: str
    answer: str | int | None = None


def prepare_pair(
    loaded: LoadedModel,
    clean: Image.Image | Sequence[Image.Image],
    corrupted: Image.Image | Sequence[Image.Image],
    prompt: str,
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


def cache_outputs(
    loaded: LoadedModel, inputs: BatchFeature, hook_points: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, hook point -> output) of one run: the clean run's cache for patching.

    Outputs are cloned, so a later in-place op in the model cannot change the cache."""
    with capture(loaded.model, hook_points) as store, torch.inference_mode():
        logits = forward_logits(loaded, inputs)
        store.require(hook_points, "patch a module on the model's image-and-prompt path")
        cache = {name: store.outputs[name].clone() for name in hook_points}
    return logits, cache


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


def _patcher(name: str, patch: _Patch) -> Callable[[Any], Any]:
    """The output with the patch in place, same structure; refused where the shapes differ."""

    def replace(output: Any) -> Any:
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

    return replace


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
    masks = masks or {}
    patchers = {
        name: _patcher(name, _Patch(value, masks.get(name))) for name, value in patches.items()
    }
    with replace_outputs(model, patchers):
        yield


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
        token = pick_answer_token(loaded, pair.prompt, pair.answer, clean_logits)
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
