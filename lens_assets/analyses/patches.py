"""Patch features: every image position of a layer, placed on the pixels of the image.

"Hidden in plain sight" reads visual tasks off the features themselves: the vision tower's
patches, and the LLM's image tokens, each at a known place in the image. This module finds a
model's layer stacks, runs images through them with hooks, and returns per image and layer the
features of its image positions with their centres in the image's own pixel coordinates, so
points and boxes labelled on the image can be matched to patches for any architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from lens_assets.capture.adapters.base import PatchCells, PatchGridError
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import natural_key
from lens_assets.capture.token_roles import TokenRole

log = logging.getLogger(__name__)

# Modules that hand the vision tower's features to the LLM, kept as a layer of their own.
PROJECTORS = frozenset({"multi_modal_projector", "merger", "connector", "aligner"})


@dataclass(frozen=True)
class StackLayer:
    """One block of a layer stack, or a projector; `stage` says which part of the model."""

    stage: str  # vision, projector or llm
    name: str


@dataclass
class PatchGrid:
    """One image at one layer: a feature per image position and where its patch is centred."""

    features: np.ndarray  # (positions, dim) float32
    centres: np.ndarray  # (positions, 2) x, y in pixel indices of the original image

    def nearest(self, point: Sequence[float]) -> int:
        """The position whose patch centre is closest to `point` (x, y pixel indices)."""
        return int(np.argmin(((self.centres - np.asarray(point, float)) ** 2).sum(axis=1)))

    def inside(self, box: Sequence[float]) -> np.ndarray:
        """Positions whose patch centre lies in `box` (x0, y0, x1, y1; end-exclusive)."""
        x, y = self.centres[:, 0], self.centres[:, 1]
        x0, y0, x1, y1 = box
        return np.flatnonzero((x >= x0) & (x < x1) & (y >= y0) & (y < y1))


def stack_layers(model: nn.Module, is_vision: Any) -> list[StackLayer]:
    """Every block of the model's outermost layer stacks (a `ModuleList` not inside another
    stack's block) and its projectors, vision before LLM, in depth order."""
    found: list[StackLayer] = []
    blocks: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(block + ".") for block in blocks):
            continue
        if isinstance(module, nn.ModuleList):
            for index in range(len(module)):
                blocks.append(f"{name}.{index}")
                stage = "vision" if is_vision(name) else "llm"
                found.append(StackLayer(stage, f"{name}.{index}"))
        elif name.rsplit(".", 1)[-1] in PROJECTORS:
            blocks.append(name)
            found.append(StackLayer("projector", name))
    order = {"vision": 0, "projector": 1, "llm": 2}
    return sorted(found, key=lambda layer: (order[layer.stage], natural_key(layer.name)))


def frame_box(image_processor: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of the original image (x0, y0, x1, y1, continuous pixel coordinates) that the
    processed frame shows: all of it after a plain resize, the middle after a centre crop."""
    crop = getattr(image_processor, "crop_size", None)
    if not getattr(image_processor, "do_center_crop", False) or crop is None:
        return 0.0, 0.0, float(width), float(height)
    size = getattr(image_processor, "size", None)
    shortest = _get(size, "shortest_edge")
    if shortest:
        scale_x = scale_y = shortest / min(width, height)
    else:
        scale_x, scale_y = _get(size, "width") / width, _get(size, "height") / height
    crop_w, crop_h = _get(crop, "width"), _get(crop, "height")
    x0 = (width * scale_x - crop_w) / 2 / scale_x
    y0 = (height * scale_y - crop_h) / 2 / scale_y
    return x0, y0, x0 + crop_w / scale_x, y0 + crop_h / scale_y


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)


def patch_grids(
    loaded: LoadedModel, images: Sequence[Image.Image], prompt: str, layers: Sequence[str]
) -> list[dict[str, PatchGrid]]:
    """Per image, the patch grid of each layer that holds image positions (one forward pass).

    Layers without image positions for an image (a text tower, a layer after the image tokens
    were dropped), or whose positions the adapter cannot place on a patch grid (tiles, separator
    tokens), are left out of that image's dict.
    """
    adapter, layout = loaded.architecture.adapter, loaded.layout
    inputs = adapter.prepare_on(
        loaded.processor, images, [prompt] * len(images), loaded.device, loaded.dtype
    )
    # An image-only encoder's processor (DINOv2) is its image processor.
    image_processor = getattr(loaded.processor, "image_processor", loaded.processor)
    boxes = [frame_box(image_processor, *image.size) for image in images]
    grids: list[dict[str, PatchGrid]] = [{} for _ in images]
    with capture(loaded.model, layers) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
        for name in layers:
            output = store.outputs.get(name)
            if output is None:
                continue
            seq = adapter.sequences(name, output, inputs, layout, len(images))
            if seq.roles is None:
                continue
            image_positions = seq.roles == TokenRole.IMAGE
            for sample, box in enumerate(boxes):
                positions = image_positions[sample].nonzero().squeeze(1)
                if len(positions) == 0:
                    continue
                try:
                    cells = adapter.patch_cells(name, len(positions), inputs, layout, sample)
                except PatchGridError as reason:
                    log.info("%s left out of patch features: %s", name, reason)
                    continue
                features = seq.hidden[sample, positions].float().cpu().numpy()
                grids[sample][name] = PatchGrid(features, _centres(cells, box))
    return grids


def _centres(cells: PatchCells, box: tuple[float, float, float, float]) -> np.ndarray:
    """Patch centres in pixel indices: a cell's centre in the frame, mapped onto the image
    region the frame shows (pixel index i covers [i, i + 1), so its centre is i + 0.5)."""
    x0, y0, x1, y1 = box
    fraction_x = (cells.cells[:, 1] + 0.5) / cells.cols
    fraction_y = (cells.cells[:, 0] + 0.5) / cells.rows
    return np.stack([x0 + fraction_x * (x1 - x0) - 0.5, y0 + fraction_y * (y1 - y0) - 0.5], 1)


__all__ = ["PROJECTORS", "PatchGrid", "PatchGridError", "StackLayer", "frame_box", "patch_grids",
           "stack_layers"]  # fmt: skip
