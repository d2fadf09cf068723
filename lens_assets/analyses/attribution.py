"""Gradient attribution: which patches and pixels the model's answer depends on.

The answer is the logit of one token (the model's own argmax unless a target is given) at the
last prompt position, i.e. the first token the model would generate. Two methods explain it:

- Grad-CAM on a layer that holds image positions (a vision-tower block, the projector, the
  LLM's image tokens): each channel is weighted by its gradient averaged over the image
  positions, the weighted activations are summed per position and only the positive part kept,
  then placed on the layer's patch grid with the adapter's `patch_cells`, so the order is right
  for every family (class tokens dropped, Qwen2-VL's merge blocks put back on the grid).
- Input x gradient on the pixels: |x * dlogit/dx| summed over channels, on the processed frame
  (x is the pixel as the model sees it, after the processor's normalisation, so a pixel at the
  channel mean gets no attribution whatever its gradient).

Every method shares one forward and one backward pass per image. The pass runs with gradients
on even inside a caller's `no_grad` or `inference_mode`, in eval mode, with the parameters
frozen for its duration (no weight gradient is computed or kept) and the hooks removed after.
Heatmaps are normalised to [0, 1] by their maximum; an all-zero map stays zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.analyses.attention import answer_positions
from lens_assets.analyses.patches import frame_box, stack_layers
from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.hooks import hook_modules, keep_outputs
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import short_layer
from lens_assets.capture.token_roles import TokenRole
from lens_assets.resources import schemas

GRADCAM = "gradcam"
INPUT_X_GRADIENT = "input_x_gradient"
PIXELS = "pixels"  # the `layer` of a pixel attribution

# The table's columns but `dataset`, which the asset adds.
ATTRIBUTION_ROWS = schemas.without(schemas.ATTRIBUTIONS, "dataset")


class AttributionError(ValueError):
    """A model, layer or input that gradient attribution cannot explain; the message says why."""


@dataclass
class Attribution:
    """One heatmap of one image: what `method` at `layer` credits for the target logit."""

    method: str
    layer: str
    target_token: int
    target_text: str
    logit: float
    heatmap: np.ndarray  # (grid_rows, grid_cols) float32 in [0, 1]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1: the part of the image it covers

    @property
    def grid_rows(self) -> int:
        return int(self.heatmap.shape[0])

    @property
    def grid_cols(self) -> int:
        return int(self.heatmap.shape[1])


def attribute(
    loaded: LoadedModel,
    image: Image.Image,
    prompt: str,
    layers: Sequence[str] = (),
    pixels: bool = True,
    target_token: int | None = None,
) -> list[Attribution]:
    """Grad-CAM for each of `layers`, then input x gradient if `pixels`, from one forward and
    one backward pass; in that order."""
    if not layers and not pixels:
        return []
    adapter, model = loaded.architecture.adapter, loaded.model
    image_processor = getattr(loaded.processor, "image_processor", loaded.processor)
    box = frame_box(image_processor, *image.size)
    hook_modules(model, layers)  # a missing layer fails before any work
    with _gradients_on(model), keep_outputs(model, layers) as kept:
        inputs = adapter.prepare_on(
            loaded.processor, [image], [prompt], loaded.device, loaded.dtype
        )
        if "pixel_values" not in inputs:
            raise AttributionError(
                f"{loaded.name}: the processor gave no pixel_values, so there is nothing to "
                "attribute the answer to"
            )
        pixel_values = inputs["pixel_values"].detach().clone().requires_grad_(True)
        inputs["pixel_values"] = pixel_values
        to_pixels = _pixel_map(loaded, inputs) if pixels else None
        output = adapter.forward(model, inputs, {})
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
            raise AttributionError(
                f"{loaded.name} ({type(model).__name__}) returns no token logits; attribution "
                "explains a generative model's answer token"
            )
        row = logits[0, int(answer_positions(inputs)[0])]  # the one sample's last real token
        target = int(row.argmax()) if target_token is None else int(target_token)
        if not 0 <= target < row.shape[0]:
            raise AttributionError(f"target token {target} is outside the vocabulary")
        logit = row[target]
        kept.require(layers, "choose a layer the image and prompt pass through")
        captured = kept.outputs
        wanted = [captured[name] for name in layers] + ([pixel_values] if pixels else [])
        gradients = torch.autograd.grad(logit, wanted, allow_unused=True)
        logit_value = float(logit.detach())
    del output, logits, row, logit
    text = _token_text(loaded.processor, target)
    found = []
    for name, gradient in zip(layers, gradients[: len(layers)], strict=True):
        if gradient is None:
            raise AttributionError(_unreached(name, loaded))
        heatmap = _gradcam_grid(loaded, name, captured[name].detach(), gradient, inputs)
        found.append(Attribution(GRADCAM, name, target, text, logit_value, heatmap, box))
    if to_pixels is not None:
        if gradients[-1] is None:
            raise AttributionError(f"{loaded.name}'s answer logit does not depend on its pixels")
        saliency = (pixel_values.detach().float() * gradients[-1].float()).abs()
        heatmap = _normalised(to_pixels(saliency))
        found.append(Attribution(INPUT_X_GRADIENT, PIXELS, target, text, logit_value, heatmap, box))
    return found


def gradcam(
    loaded: LoadedModel,
    image: Image.Image,
    prompt: str,
    layer: str,
    target_token: int | None = None,
) -> Attribution:
    """Grad-CAM of one layer's image positions for the answer logit."""
    return attribute(loaded, image, prompt, [layer], pixels=False, target_token=target_token)[0]


def input_x_gradient(
    loaded: LoadedModel, image: Image.Image, prompt: str, target_token: int | None = None
) -> Attribution:
    """|pixel x gradient| of the answer logit, summed over channels, on the processed frame."""
    return attribute(loaded, image, prompt, [], pixels=True, target_token=target_token)[0]


def gradcam_layer(loaded: LoadedModel) -> str:
    """The vision-tower block Grad-CAM reads by default: the one the LLM is fed from. LLaVA-style
    configs name it (`vision_feature_layer`; LLaVA-1.5's -2 is the penultimate block, the last
    one never reaches the answer); otherwise the tower's last block."""
    found = [
        layer.name
        for layer in stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
        if layer.stage == "vision"
    ]
    stacks: dict[str, list[str]] = {}
    for name in found:
        stacks.setdefault(name.rsplit(".", 1)[0], []).append(name)
    if not stacks:
        raise AttributionError(f"{loaded.name} has no vision-tower blocks to read Grad-CAM from")
    blocks = max(stacks.values(), key=len)
    chosen = getattr(getattr(loaded.model, "config", None), "vision_feature_layer", None)
    if isinstance(chosen, list | tuple) and chosen:
        chosen = max(int(index) % (len(blocks) + 1) for index in chosen)
    if not isinstance(chosen, int):
        return blocks[-1]
    state = chosen % (len(blocks) + 1)  # hidden state 0 is the embeddings, k is block k - 1
    if state == 0:
        raise AttributionError(f"{loaded.name} feeds the LLM its patch embeddings, not a block")
    return blocks[state - 1]


def attribution_rows(
    model: str, attributions: Sequence[Attribution], prompt: str, image_id: str | None = None
) -> list[dict[str, Any]]:
    """Rows of the `attributions` table (ATTRIBUTION_ROWS), one per heatmap."""
    return [
        {
            "model": model,
            "image_id": image_id,
            "prompt": prompt,
            "method": found.method,
            "layer": found.layer,
            "target_token": found.target_token,
            "grid_rows": found.grid_rows,
            "grid_cols": found.grid_cols,
            "heatmap": found.heatmap.astype(np.float32).ravel().tolist(),
        }
        for found in attributions
    ]


def attribution_table(
    loaded: LoadedModel,
    images: Sequence[tuple[str | None, Image.Image]],
    prompt: str,
    layers: Sequence[str] = (),
    pixels: bool = True,
    target_token: int | None = None,
) -> pa.Table:
    """The `attributions` table of (image_id, image) pairs: one pass per image."""
    rows: list[dict[str, Any]] = []
    for image_id, image in images:
        found = attribute(loaded, image, prompt, layers, pixels, target_token)
        rows.extend(attribution_rows(loaded.name, found, prompt, image_id))
    return pa.Table.from_pylist(rows, schema=ATTRIBUTION_ROWS)


def render_attributions(
    image: Image.Image,
    attributions: Sequence[Attribution],
    out: Path,
    title: str | None = None,
) -> Path | None:
    """A PNG with one panel per heatmap, laid over the part of the image it covers (the
    processor's centre crop for CLIP-style towers), cells drawn as they are."""
    if not attributions:
        return None
    from lens_assets.analyses.figures import styled  # matplotlib only when drawing

    with styled():
        return _draw_attributions(image, attributions, out, title)


def _draw_attributions(
    image: Image.Image, attributions: Sequence[Attribution], out: Path, title: str | None
) -> Path:
    from lens_assets.analyses.figures import panel_grid, save

    width, height = image.size
    figure, axes = panel_grid(len(attributions), columns=4, height=2.4)
    shown = None
    for axis, found in zip(axes, attributions, strict=True):
        axis.imshow(image.convert("RGB"), extent=(0, width, height, 0))
        x0, y0, x1, y1 = found.box
        shown = axis.imshow(
            found.heatmap,
            extent=(x0, x1, y1, y0),
            cmap="inferno",
            vmin=0.0,
            vmax=1.0,
            alpha=0.55,
            interpolation="nearest",
        )
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        where = found.layer if found.layer == PIXELS else short_layer(found.layer)
        axis.set_title(f"{found.method}\n{where}")
        axis.set_xticks([])
        axis.set_yticks([])
    if shown is not None:
        figure.colorbar(shown, ax=axes, fraction=0.03, pad=0.02)
    first = attributions[0]
    figure.suptitle(
        title or f"attribution of token {first.target_text!r} (id {first.target_token})"
    )
    return save(figure, out)


# -- the pass ----------------------------------------------------------------------------------
@contextmanager
def _gradients_on(model: nn.Module) -> Iterator[None]:
    """Autograd on (whatever the caller's grad mode), eval mode, parameters frozen: the graph
    reaches only the pixels and the hooked outputs, and no parameter ever gets a .grad. Modes
    and flags are put back as they were."""
    training = {module: module.training for module in model.modules()}
    frozen = {parameter: parameter.requires_grad for parameter in model.parameters()}
    try:
        model.eval()
        for parameter in frozen:
            parameter.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for parameter, flag in frozen.items():
            parameter.requires_grad_(flag)
        for module, mode in training.items():
            module.training = mode


def _token_text(processor: Any, token: int) -> str:
    tokenizer = getattr(processor, "tokenizer", processor)
    try:
        return str(tokenizer.decode([token]))
    except (AttributeError, TypeError, ValueError):
        return str(token)


def _unreached(name: str, loaded: LoadedModel) -> str:
    config = getattr(loaded.model, "config", None)
    feature_layer = getattr(config, "vision_feature_layer", None)
    hint = (
        f" (this model reads vision_feature_layer={feature_layer} of its tower, so later blocks "
        "never reach the LLM)"
        if feature_layer is not None
        else ""
    )
    return (
        f"module {name!r} does not reach the answer logit of {loaded.name}{hint}; choose a layer "
        "the answer depends on"
    )


def _normalised(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    return values / peak if peak > 0 else np.zeros_like(values)


# -- Grad-CAM ----------------------------------------------------------------------------------
def _gradcam_grid(
    loaded: LoadedModel,
    name: str,
    activation: torch.Tensor,
    gradient: torch.Tensor,
    inputs: BatchFeature,
) -> np.ndarray:
    """ReLU(sum over channels of mean-gradient x activation) per image position, on the grid.

    Activation and gradient go through the adapter's own split (packed towers, class tokens,
    window order), so both read in the order `patch_cells` describes."""
    adapter, layout = loaded.architecture.adapter, loaded.layout
    acts = adapter.sequences(name, activation, inputs, layout, 1)
    grads = adapter.sequences(name, gradient, inputs, layout, 1)
    if acts.roles is None:
        raise AttributionError(
            f"module {name!r} outputs one vector per image, with no positions to map; Grad-CAM "
            "needs a layer with image positions"
        )
    positions = (acts.roles[0] == TokenRole.IMAGE).nonzero().squeeze(1)
    if len(positions) == 0:
        raise AttributionError(f"module {name!r} holds no image positions for this input")
    try:
        cells = adapter.patch_cells(name, len(positions), inputs, layout, 0)
    except PatchGridError as reason:
        raise AttributionError(f"Grad-CAM cannot place {name!r} on a grid: {reason}") from None
    values = acts.hidden[0, positions].float()
    weights = grads.hidden[0, positions].float().mean(dim=0)
    cam = torch.relu(values @ weights).cpu().numpy()
    grid = np.zeros((cells.rows, cells.cols), dtype=np.float32)
    grid[cells.cells[:, 0], cells.cells[:, 1]] = cam
    return _normalised(grid)


# -- pixels ------------------------------------------------------------------------------------
PixelMap = Callable[[torch.Tensor], np.ndarray]


def _pixel_map(loaded: LoadedModel, inputs: BatchFeature) -> PixelMap:
    """How |x * grad| (shaped like pixel_values) becomes a map of the processed frame, per
    layout of pixel_values; decided before the pass so an unsupported family fails first."""
    pixel_values = inputs["pixel_values"]
    family = loaded.architecture.name
    if pixel_values.dim() == 4 and pixel_values.shape[0] == 1:
        # One frame (1, channels, height, width): LLaVA and every single-frame tower.
        return lambda saliency: saliency[0].sum(dim=0).cpu().numpy()
    grid_thw = inputs.get("image_grid_thw")
    if pixel_values.dim() == 2 and grid_thw is not None:
        return _packed_pixel_map(loaded, inputs, grid_thw)
    raise NotImplementedError(
        f"input x gradient does not yet map {family}'s pixel_values "
        f"{tuple(pixel_values.shape)} (tiles or crops) back onto the image; use Grad-CAM on a "
        "vision layer instead"
    )


def _packed_pixel_map(
    loaded: LoadedModel, inputs: BatchFeature, grid_thw: torch.Tensor
) -> PixelMap:
    """Qwen2-VL's packed patches: one row per patch, flattened as (channels, temporal frames,
    patch, patch), rows in the tower's order, which the adapter's `patch_cells` places."""
    adapter, layout = loaded.architecture.adapter, loaded.layout
    image_processor = getattr(loaded.processor, "image_processor", loaded.processor)
    patch = getattr(image_processor, "patch_size", None)
    temporal = getattr(image_processor, "temporal_patch_size", None) or 1
    frames, rows, cols = (int(v) for v in grid_thw[0])
    width = int(inputs["pixel_values"].shape[1])
    if not patch or frames != 1 or width % (temporal * patch * patch):
        raise NotImplementedError(
            f"input x gradient does not map {loaded.architecture.name}'s packed pixel_values "
            f"(rows of {width}, patch {patch}, {frames} frames) back onto the image"
        )
    try:
        cells = adapter.patch_cells("pixel_values", rows * cols, inputs, layout, 0)
    except PatchGridError as reason:
        raise NotImplementedError(
            f"input x gradient cannot place {loaded.architecture.name}'s patches: {reason}"
        ) from None
    channels = width // (temporal * patch * patch)

    def to_frame(saliency: torch.Tensor) -> np.ndarray:
        per_patch = saliency.reshape(rows * cols, channels * temporal, patch, patch).sum(dim=1)
        frame = np.zeros((rows * patch, cols * patch), dtype=np.float32)
        for (row, col), values in zip(cells.cells, per_patch.cpu().numpy(), strict=True):
            frame[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = values
        return frame

    return to_frame


__all__ = [
    "ATTRIBUTION_ROWS",
    "GRADCAM",
    "INPUT_X_GRADIENT",
    "PIXELS",
    "Attribution",
    "AttributionError",
    "attribute",
    "attribution_rows",
    "attribution_table",
    "gradcam",
    "gradcam_layer",
    "input_x_gradient",
    "render_attributions",
]
