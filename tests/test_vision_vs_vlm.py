"""Vision against VLM: visual tasks solved from patch features, per layer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from lens_assets.analyses.patches import PatchGrid, patch_grids, stack_layers
from lens_assets.analyses.visual_tasks import (
    correspondence_items,
    odd_one_out_items,
    solve_correspondence,
    solve_odd_one_out,
    task_of,
)
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.generators import correspondence, odd_one_out

SIZE = 128
CELL = 2  # pixels per patch of the synthetic grids


def correspondence_labels(items: list[correspondence.Item]) -> dict[str, dict[str, str]]:
    """Per image, the labels the generator stores (image ids as the warehouse would key them)."""
    labels = {}
    for item in items:
        shared = correspondence.labels(item)
        labels[f"{item.index}-ref"] = {**shared, "role": "reference"}
        labels[f"{item.index}-target"] = {**shared, "role": "target"}
    return labels


def grid_centres(size: int = SIZE, cell: int = CELL) -> np.ndarray:
    """Patch centres of a raster grid, in pixel indices."""
    ys, xs = np.mgrid[0:size:cell, 0:size:cell]
    return np.stack([xs.ravel(), ys.ravel()], axis=1) + (cell - 1) / 2


def fourier(points: np.ndarray, seed: int = 0, scale: float = 6.0) -> np.ndarray:
    """Random Fourier features: cosine similarity falls smoothly with distance (about `scale`
    pixels), so the nearest feature is the nearest point."""
    rng = np.random.default_rng(seed)
    frequencies = rng.normal(0.0, 1.0 / scale, size=(2, 512))
    phases = rng.uniform(0, 2 * np.pi, size=512)
    return np.cos(points @ frequencies + phases).astype(np.float32)


def scene_grids(item: correspondence.Item) -> tuple[PatchGrid, PatchGrid]:
    """Grids whose features are an exact function of the scene point each patch shows."""
    centres = grid_centres()
    matrix, offset = np.array(item.matrix), np.array(item.offset)
    scene_of_target = (centres - offset) @ np.linalg.inv(matrix).T  # target -> reference pixels
    return PatchGrid(fourier(centres), centres), PatchGrid(fourier(scene_of_target), centres)


def test_correspondence_solver_is_perfect_on_features_that_are_a_function_of_position() -> None:
    items = correspondence.plan(correspondence.Params(), size=24, seed=3)
    labels = correspondence_labels(items)
    assert task_of(labels) == "correspondence"
    parsed = correspondence_items(labels)
    assert [p.item for p in parsed] == [str(i.index) for i in items]
    choices = []
    for item, task in zip(items, parsed, strict=True):
        reference, target = scene_grids(item)
        choices.append(solve_correspondence(reference, target, task))
    assert choices == [item.answer for item in items]
    assert {item.transform for item in items} == set(correspondence.TRANSFORMS)


def test_correspondence_solver_is_near_chance_on_features_that_ignore_position() -> None:
    items = correspondence.plan(correspondence.Params(), size=24, seed=3)
    rng = np.random.default_rng(0)
    centres = grid_centres()
    correct = 0
    for item, task in zip(items, correspondence_items(correspondence_labels(items)), strict=True):
        noise = [PatchGrid(rng.normal(size=(len(centres), 64)), centres) for _ in range(2)]
        correct += solve_correspondence(*noise, task) == item.answer
    assert correct / len(items) < 0.6


def test_odd_one_out_solver_picks_the_panel_whose_object_differs() -> None:
    params = odd_one_out.Params(panel_size=48)
    plans = odd_one_out.plan(params, size=8, seed=2)
    labels = {str(p.index): odd_one_out.labels(p, params) for p in plans}
    assert task_of(labels) == "odd_one_out"
    rng = np.random.default_rng(1)
    objects = {name: rng.normal(size=32) for name in odd_one_out.SHAPES}
    side = 2 * params.panel_size + 3 * params.gap
    centres = grid_centres(side, 4)
    boxes = odd_one_out.panel_boxes(params)
    for plan, item in zip(plans, odd_one_out_items(labels), strict=True):
        features = rng.normal(scale=0.1, size=(len(centres), 32))
        for letter, (x0, y0, x1, y1) in zip(odd_one_out.LETTERS, boxes, strict=True):
            inside = (centres[:, 0] >= x0) & (centres[:, 0] < x1)
            inside &= (centres[:, 1] >= y0) & (centres[:, 1] < y1)
            features[inside] += objects[odd_one_out.panel_object(plan, letter)]
        assert solve_odd_one_out(PatchGrid(features, centres), item) == plan.answer


def test_stack_layers_lists_vision_blocks_then_the_projector_then_llm_layers(
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    loaded = load_tiny("llava")
    layers = stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    assert [(layer.stage, layer.name) for layer in layers] == [
        ("vision", "model.vision_tower.encoder.layers.0"),
        ("vision", "model.vision_tower.encoder.layers.1"),
        ("projector", "model.multi_modal_projector"),
        ("llm", "model.language_model.layers.0"),
        ("llm", "model.language_model.layers.1"),
    ]


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl", "clip"])
@pytest.mark.parametrize("corner", [(96, 32), (0, 64), (32, 96)])
def test_patch_centres_put_a_drawn_square_where_it_was_drawn(
    architecture: str, corner: tuple[int, int], load_tiny: Callable[[str], LoadedModel]
) -> None:
    """The patch that stands out at every layer (vision, projector, LLM image tokens) is centred
    inside the square: patch order and pixel mapping are right for each architecture."""
    loaded = load_tiny(architecture)
    pixels = np.full((SIZE, SIZE, 3), 128, np.uint8)
    x, y = corner
    pixels[y : y + 32, x : x + 32] = (255, 0, 0)
    layers = stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    names = [layer.name for layer in layers]
    (grids,) = patch_grids(loaded, [Image.fromarray(pixels)], "What is red?", names)
    stages = {layer.stage for layer in layers if layer.name in grids}
    assert stages == ({"vision"} if architecture == "clip" else {"vision", "projector", "llm"})
    for name, grid in grids.items():
        outlier = np.linalg.norm(grid.features - np.median(grid.features, axis=0), axis=1)
        cx, cy = grid.centres[int(np.argmax(outlier))]
        assert x <= cx < x + 32 and y <= cy < y + 32, (name, (cx, cy))
