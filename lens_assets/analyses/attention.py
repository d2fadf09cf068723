"""Attention maps: where the answer position looks in the image, per LLM layer and head.

The answer position is the last prompt token (the last non-pad position): its output predicts
the answer's first token, so its attention row says which image tokens the answer draws on.
Only the selected layers' self-attention modules are hooked, and each hook keeps that one row
(heads x keys) per sample, never the whole (queries x keys) matrix. SDPA and flash kernels
return no weights, so the selected layers' configs run eager attention for the pass and get
their own implementation back afterwards.

Each row is laid out on the image's patch grid with the adapter's `patch_cells` (LLaVA's
raster order, Qwen2-VL's merged-block order), and the share of the row's mass on image tokens
says how much the answer reads the image rather than the text.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import Adapter, PatchGridError, image_counts, per_sample
from lens_assets.capture.hooks import StopForward, watch_outputs
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import natural_key, select_modules
from lens_assets.capture.token_roles import TokenRole
from lens_assets.resources import schemas

log = logging.getLogger(__name__)

# Names a decoder layer gives its self-attention module across families.
ATTENTION_CHILDREN = ("self_attn", "self_attention", "attn", "attention")
EAGER = "eager"

# The table's columns but `dataset`, which the asset adds.
ATTENTION_MAP_ROWS = schemas.without(schemas.ATTENTION_MAPS, "dataset")
ATTENTION_SUMMARY_ROWS = pa.schema(
    [
        ("model", pa.string()),
        ("layer", pa.string()),
        ("layer_order", pa.int32()),
        ("maps", pa.int32()),  # (image, prompt, head) rows averaged
        ("mean_image_share", pa.float64()),
    ]
)


class AttentionCaptureError(ValueError):
    """A selected layer whose attention weights cannot be read; the message names the fix."""


@dataclass
class AnswerAttention:
    """One batch's attention rows from each sample's answer position, per selected layer."""

    layers: list[str]
    weights: dict[str, torch.Tensor]  # layer -> (batch, heads, keys) float32 on the CPU
    roles: torch.Tensor  # (batch, keys) TokenRole values
    answer: torch.Tensor  # (batch,) the answer position of each sample
    inputs: BatchFeature
    image_index: torch.Tensor | None = None  # (batch, keys): which of the row's images, or -1


def answer_positions(inputs: BatchFeature) -> torch.Tensor:
    """The last non-pad position of each sample (either padding side)."""
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return torch.where(mask.bool(), positions, -1).amax(dim=1)


def attention_modules(loaded: LoadedModel, layers: Sequence[str]) -> dict[str, str]:
    """Selected LLM layer -> the name of its self-attention module, in model order.

    `layers` are globs over module names; a pattern may name decoder layers (their
    self-attention child is hooked) or the attention modules themselves.
    """
    adapter = loaded.architecture.adapter
    modules = dict(loaded.model.named_modules())
    chosen = select_modules(loaded.module_names, layers, loaded.model)
    found: dict[str, str] = {}
    for name in chosen:
        if adapter.is_vision(name):
            raise AttentionCaptureError(
                f"module {name!r} is in the vision tower, which has no answer position; "
                "select LLM decoder layers (e.g. model.language_model.layers.*)"
            )
        if any(name.startswith(layer + ".") for layer in found):
            continue  # a glob matching a layer and its attention: the layer already has it
        if name.rsplit(".", 1)[-1] in ATTENTION_CHILDREN:
            found[name] = name
            continue
        children = [c for c in ATTENTION_CHILDREN if f"{name}.{c}" in modules]
        if not children:
            raise AttentionCaptureError(
                f"module {name!r} has no self-attention child ({', '.join(ATTENTION_CHILDREN)}); "
                "select decoder layers or their attention modules"
            )
        found[name] = f"{name}.{children[0]}"
    return found


def _config_tree(config: Any) -> Iterator[Any]:
    """A config and its sub-configs, parents first."""
    yield config
    for key in getattr(config, "sub_configs", {}) or {}:
        sub = getattr(config, key, None)
        if sub is not None:
            yield from _config_tree(sub)


@contextmanager
def eager_attention(model: nn.Module, attention_names: Sequence[str]) -> Iterator[None]:
    """Run the named attention modules' configs with eager attention (the only kernel that
    returns its weights) for the block, and restore each config's own choice afterwards.

    Only those configs change: a vision tower with a config of its own keeps SDPA. The
    switch works for models that look the kernel up per call (transformers 5's
    AttentionInterface); a model that fixed it at load returns no weights, which the capture
    reports.
    """
    modules = dict(model.named_modules())
    configs: dict[int, Any] = {}
    for name in attention_names:
        config = getattr(modules[name], "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs.setdefault(id(config), config)
    saved = [
        (config, config._attn_implementation)
        for top in configs.values()
        for config in _config_tree(top)
    ]
    try:
        for config in configs.values():
            if config._attn_implementation != EAGER:
                config._attn_implementation = EAGER
        yield
    finally:
        for config, implementation in saved:  # parents first: a parent's setter recurses
            config._attn_implementation = implementation


def _weights_of(output: Any) -> torch.Tensor | None:
    """The attention probabilities an attention module returned: (batch, heads, q, k)."""
    if isinstance(output, tuple | list):
        for value in output[1:]:
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                return value
    return None


def answer_attention(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    layers: Sequence[str],
    forward_kwargs: dict[str, Any] | None = None,
) -> AnswerAttention:
    """One forward pass: each selected layer's attention row from the answer position.

    The pass stops once every selected layer has run, so layers after the deepest selected
    one cost nothing.
    """
    adapter, model = loaded.architecture.adapter, loaded.model
    selected = attention_modules(loaded, layers)
    inputs = adapter.prepare_on(loaded.processor, images, prompts, loaded.device, loaded.dtype)
    answer = answer_positions(inputs)
    samples = torch.arange(len(answer), device=answer.device)
    rows: dict[str, torch.Tensor] = {}

    def reader(layer: str) -> Callable[[Any], None]:
        def read(output: Any) -> None:
            weights = _weights_of(output)
            if weights is None:
                raise AttentionCaptureError(
                    f"the attention of layer {layer!r} returned no weights even with eager "
                    "attention; load the model with `attn_implementation: eager` in its "
                    "config's model kwargs"
                )
            rows[layer] = weights[samples, :, answer.to(weights.device)].float()

        return read

    kwargs = {"use_cache": False, **(forward_kwargs or {})}
    readers = {attention: reader(layer) for layer, attention in selected.items()}
    with (
        watch_outputs(model, readers, stop_when_all_ran=True) as watch,
        eager_attention(model, list(readers)),
        torch.inference_mode(),
        suppress(StopForward),  # the pass ended after the deepest selected layer
    ):
        adapter.forward(model, inputs, kwargs)
    watch.require("select decoder layers the image and prompt pass through")
    roles = adapter.text_roles(inputs, loaded.layout)
    index = adapter.text_image_index(inputs, roles)
    return AnswerAttention(
        list(selected), {layer: rows[layer].cpu() for layer in selected}, roles.cpu(),
        answer.cpu(), inputs, index.cpu(),
    )  # fmt: skip


def image_grid(
    loaded: LoadedModel,
    capture: AnswerAttention,
    layer: str,
    sample: int,
    image_index: int | None = None,
) -> tuple[np.ndarray, int | None, int | None, np.ndarray]:
    """A sample's answer-position attention at `layer` on its image's patch grid; with
    `image_index`, on that one of the row's images (its share is the attention on its tokens).

    Returns (maps, rows, cols, image_share): maps is (heads, rows, cols), or (heads, image
    tokens) in sequence order with rows and cols None where the adapter cannot place the
    image tokens on a grid (tiles, separator tokens); image_share is (heads,).
    """
    weights = capture.weights[layer][sample].numpy()  # (heads, keys)
    image = (capture.roles[sample] == TokenRole.IMAGE).numpy()
    if image_index is not None and capture.image_index is not None:
        image &= (capture.image_index[sample] == image_index).numpy()
    on_image = weights[:, image]
    share = on_image.sum(axis=1, dtype=np.float64)
    if not image.any():
        return on_image, None, None, share
    adapter = loaded.architecture.adapter
    try:
        several = image_counts(capture.inputs, len(capture.answer))[sample] > 1
        if several and not _grid_per_image(adapter):
            raise PatchGridError("a row of several images: kept in token order per image")
        cells = adapter.patch_cells(layer, int(image.sum()), capture.inputs, loaded.layout, sample)
    except PatchGridError as reason:
        log.info("%s: attention of sample %d kept in token order: %s", layer, sample, reason)
        return on_image, None, None, share
    maps = np.zeros((weights.shape[0], cells.rows, cells.cols), dtype=np.float32)
    for position, (row, col) in enumerate(cells.cells):
        maps[:, row, col] += on_image[:, position]
    return maps, cells.rows, cells.cols, share


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, max(batch_size, 1)):
        yield slice(start, min(start + batch_size, count))


def _grid_per_image(adapter: Any) -> bool:
    """Whether the adapter lays one image of a several-image row on its grid from its token
    count alone (the generic square grid); others keep such rows in token order."""
    return type(adapter).patch_cells is Adapter.patch_cells


def attention_maps(
    loaded: LoadedModel,
    images: Sequence[Any],
    prompts: Sequence[str],
    layers: Sequence[str],
    image_ids: Sequence[Any] | None = None,
    batch_size: int = 8,
    forward_kwargs: dict[str, Any] | None = None,
    row_keys: Sequence[str | None] | None = None,
) -> pa.Table:
    """Rows of `attention_maps`: one per (row, image of the row, selected layer, head). A row
    is an image and its prompt, or its list of images (`image_ids` then holds each row's list
    of ids): each image of the row gets its own map and its own share of the attention."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pair them one to one")
    pictures = per_sample(images)
    ids = [
        list(i) if isinstance(i, list | tuple) else [i]
        for i in (image_ids if image_ids is not None else [None] * len(images))
    ]
    keys = list(row_keys) if row_keys is not None else [None] * len(images)
    records: list[dict[str, Any]] = []
    for part in _batches(len(images), batch_size):
        capture = answer_attention(loaded, pictures[part], prompts[part], layers, forward_kwargs)
        for offset, prompt in enumerate(prompts[part]):
            row = part.start + offset
            shown = range(len(pictures[row])) if len(pictures[row]) > 1 else [None]
            for layer in capture.layers:
                for k in shown:
                    maps, rows, cols, share = image_grid(loaded, capture, layer, offset, k)
                    image_id = ids[row][k or 0] if ids[row] else None
                    for head in range(maps.shape[0]):
                        records.append(
                            {
                                "model": loaded.name,
                                "image_id": image_id,
                                "prompt": prompt,
                                "layer": layer,
                                "head": head,
                                "grid_rows": rows,
                                "grid_cols": cols,
                                "weights": maps[head].reshape(-1),
                                "image_share": float(share[head]),
                                "row_key": keys[row],
                                "image_index": 0 if k is None else k,
                            }
                        )
    return pa.Table.from_pylist(records, schema=ATTENTION_MAP_ROWS)


def attention_summary(table: pa.Table) -> pa.Table:
    """Mean image share by layer (over images, prompts and heads), in depth order: how much
    the answer position reads the image at each layer."""
    shares: dict[tuple[str, str], list[float]] = defaultdict(list)
    for model, layer, share in zip(
        table["model"].to_pylist(), table["layer"].to_pylist(), table["image_share"].to_pylist(),
        strict=True,
    ):  # fmt: skip
        shares[(model, layer)].append(share)
    records = []
    for model in sorted({model for model, _ in shares}):
        layers = sorted((layer for m, layer in shares if m == model), key=natural_key)
        for order, layer in enumerate(layers):
            values = shares[(model, layer)]
            records.append(
                {
                    "model": model,
                    "layer": layer,
                    "layer_order": order,
                    "maps": len(values),
                    "mean_image_share": float(np.mean(values)),
                }
            )
    return pa.Table.from_pylist(records, schema=ATTENTION_SUMMARY_ROWS)


def head_mean_map(
    table: pa.Table, layer: str, image_id: str | None = None, prompt: str | None = None
) -> np.ndarray:
    """The (rows, cols) map of one image and prompt at `layer`, averaged over heads."""
    rows = [
        row
        for row in table.to_pylist()
        if row["layer"] == layer
        and (image_id is None or row["image_id"] == image_id)
        and (prompt is None or row["prompt"] == prompt)
    ]
    if not rows:
        raise KeyError(f"no attention map for layer {layer!r}, image {image_id!r}")
    shapes = {(row["image_id"], row["prompt"], row["grid_rows"], row["grid_cols"]) for row in rows}
    if len(shapes) != 1 or rows[0]["grid_rows"] is None:
        raise ValueError(
            f"layer {layer!r} has {len(shapes)} images or prompts (or no patch grid); name "
            "one image_id and prompt"
        )
    grid = np.mean([np.asarray(row["weights"], np.float32) for row in rows], axis=0)
    return grid.reshape(rows[0]["grid_rows"], rows[0]["grid_cols"])


def render_attention_overlay(
    image: Image.Image,
    grid: np.ndarray,
    out: Path,
    box: tuple[float, float, float, float] | None = None,
    title: str | None = None,
) -> Path:
    """The map over the image as a translucent heat map, one patch per cell, in the pictures'
    conventions (`figures`).

    `box` (x0, y0, x1, y1 pixels) is the part of the image the model saw
    (`patches.frame_box`: the centre after a crop); the whole image by default.
    """
    from lens_assets.analyses.figures import plt, save, styled

    x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, *map(float, image.size))
    aspect = image.height / max(image.width, 1)
    with styled():
        figure, axis = plt.subplots(figsize=(5.0, 4.2 * aspect + 0.8), layout="constrained")
        axis.imshow(image, extent=(0, image.width, image.height, 0))
        shown = axis.imshow(
            grid, extent=(x0, x1, y1, y0), cmap="inferno", alpha=0.55, interpolation="nearest"
        )
        axis.set_xlim(0, image.width)
        axis.set_ylim(image.height, 0)
        axis.axis("off")
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.04, label="attention")
        if title:
            axis.set_title(title, wrap=True)
        return save(figure, out)


__all__ = [
    "ATTENTION_MAP_ROWS",
    "ATTENTION_SUMMARY_ROWS",
    "AnswerAttention",
    "AttentionCaptureError",
    "answer_attention",
    "answer_positions",
    "attention_maps",
    "attention_modules",
    "attention_summary",
    "eager_attention",
    "head_mean_map",
    "image_grid",
    "render_attention_overlay",
]
