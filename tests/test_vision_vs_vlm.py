"""Vision against VLM: visual tasks solved from each image's patch features, per layer, beside
the VLM asked the row's own question with all the row's images in one prompt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.analyses.patches import PatchGrid, patch_grids, stack_layers
from lens_assets.analyses.vision_vs_vlm import (
    VLM_LAYER,
    VLM_STAGE,
    TaskRow,
    solve_dataset,
    task_rows,
    unaskable,
    vlm_choice,
)
from lens_assets.analyses.visual_tasks import (
    ArtStyleItem,
    CorrespondenceItem,
    OddOneOutItem,
    TaskLabelError,
    solve,
    solve_art_style,
    solve_correspondence,
    solve_odd_one_out,
    task_item,
    task_of,
)
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.datasets import collect_all, parse_dataset_config
from lens_assets.data.generators import art_style, correspondence, generate, odd_one_out
from lens_assets.orchestration.assets import DATASET_TABLES

SIZE = 128
CELL = 2  # pixels per patch of the synthetic grids
Loader = Callable[[str], LoadedModel]


def store(warehouse: Warehouse, rendered: Path, **configs: dict[str, Any]) -> None:
    """Generated datasets collected and written as the `images` asset writes them."""
    parsed = {name: parse_dataset_config(config, name) for name, config in configs.items()}
    collected = collect_all(parsed, rendered)
    tables = {
        table: pa.Table.from_pylist([r for c in collected for r in getattr(c, part)], schema)
        for table, (part, schema) in DATASET_TABLES.items()
    }
    warehouse.replace_dataset_rows([c.name for c in collected], tables)


def parsed(labels: dict[str, str], images: int) -> Any:
    item = task_item(labels, images, "?")
    assert item is not None
    return item


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


def scene_grids(item: correspondence.Item) -> list[PatchGrid]:
    """One grid per image of the row (reference, target), each on its own image's pixels,
    whose features are an exact function of the scene point each patch shows."""
    centres = grid_centres()
    matrix, offset = np.array(item.matrix), np.array(item.offset)
    scene_of_target = (centres - offset) @ np.linalg.inv(matrix).T  # target -> reference pixels
    return [PatchGrid(fourier(centres), centres), PatchGrid(fourier(scene_of_target), centres)]


# -- items from rows ---------------------------------------------------------------------------


def test_the_stored_rows_are_the_items_with_their_images_in_order(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    store(
        warehouse, tmp_path / "rendered",
        pairs={"kind": "correspondence", "size": 3},
        odd={"kind": "odd_one_out", "size": 2, "panel_size": 48},
        art={"kind": "art_style", "size": 3},
        shapes={"kind": "shapes", "size": 2},
    )  # fmt: skip
    pairs = task_rows(warehouse, "pairs")
    plans = correspondence.plan(correspondence.Params(), size=3, seed=0)
    assert [(r.task, len(r.image_ids), r.prompt, r.choices) for r in pairs] == [
        ("correspondence", 2, correspondence.QUESTION, ("A", "B", "C", "D"))
    ] * 3
    for row, plan in zip(pairs, plans, strict=True):
        assert isinstance(row.item, CorrespondenceItem)
        assert (row.item.item, row.item.answer) == (str(plan.index), plan.answer)
        assert (row.item.ref_image, row.item.candidates_image) == (0, 1)
        assert row.item.ref == plan.ref and row.item.candidates == plan.candidates
        assert [Path(p).name for p in row.paths] == [f"{plan.index:05d}-{i}.png" for i in (0, 1)]
    (odd, _) = task_rows(warehouse, "odd")
    assert isinstance(odd.item, OddOneOutItem) and len(odd.image_ids) == 4
    assert [p.image for p in odd.item.panels] == [0, 1, 2, 3]
    assert all(p.box == (0, 0, 48, 48) for p in odd.item.panels)
    art = task_rows(warehouse, "art")
    assert all(isinstance(r.item, ArtStyleItem) and r.item.letters == ("A", "B", "C") for r in art)
    assert [r.item.candidates for r in art] == [(1, 2, 3)] * 3  # type: ignore[union-attr]
    assert task_rows(warehouse, "shapes") == []


def test_labels_that_do_not_make_an_item_are_refused() -> None:
    labels = correspondence.labels(correspondence.plan(correspondence.Params(), 1, 0)[0])
    assert task_of(labels) == "correspondence"
    with pytest.raises(TaskLabelError, match=r"names image 1 .* has 1 image"):
        task_item(labels, 1, "0")
    with pytest.raises(TaskLabelError, match="answer 'E' is not one of"):
        task_item({**labels, "answer": "E"}, 2, "0")
    with pytest.raises(TaskLabelError, match="'ref_x' is 'left'"):
        task_item({**labels, "ref_x": "left"}, 2, "0")
    with pytest.raises(TaskLabelError, match="old layout"):
        task_item({**labels, "role": "target"}, 1, "0")
    assert task_of({"answer": "A", "colour": "red"}) is None


# -- the readouts ------------------------------------------------------------------------------


def test_correspondence_solver_is_perfect_on_features_that_are_a_function_of_position() -> None:
    """REF in image 0's pixels, the candidates in image 1's, as the generator labels them."""
    samples = list(generate("correspondence", correspondence.Params(), 24, 3))
    plans = correspondence.plan(correspondence.Params(), size=24, seed=3)
    choices = []
    for sample, plan in zip(samples, plans, strict=True):
        assert len(sample.images) == 2
        item = parsed(sample.labels, len(sample.images))
        choices.append(solve_correspondence(scene_grids(plan), item))
    assert choices == [plan.answer for plan in plans]
    assert {plan.transform for plan in plans} == set(correspondence.TRANSFORMS)


def test_correspondence_solver_is_near_chance_on_features_that_ignore_position() -> None:
    plans = correspondence.plan(correspondence.Params(), size=24, seed=3)
    rng = np.random.default_rng(0)
    centres = grid_centres()
    correct = 0
    for plan in plans:
        item = parsed(correspondence.labels(plan), 2)
        noise = [PatchGrid(rng.normal(size=(len(centres), 64)), centres) for _ in range(2)]
        correct += solve_correspondence(noise, item) == plan.answer
    assert correct / len(plans) < 0.6


def test_correspondence_solver_reads_ref_in_the_first_image_not_the_second() -> None:
    """The same features with the images swapped: the solver must look for REF in image 0."""
    plans = correspondence.plan(correspondence.Params(transforms=["shift"]), size=12, seed=5)
    swapped = [
        solve_correspondence(scene_grids(plan)[::-1], parsed(correspondence.labels(plan), 2))
        for plan in plans
    ]
    assert sum(c == p.answer for c, p in zip(swapped, plans, strict=True)) < len(plans)


def test_odd_one_out_solver_picks_the_panel_whose_object_differs() -> None:
    """Four separate images, each with its own patch grid: a view's patches show its object
    (plus noise), so the odd image is the one farthest from the other three."""
    params = odd_one_out.Params(panel_size=48)
    samples = list(generate("odd_one_out", params, 8, 2))
    plans = odd_one_out.plan(params, size=8, seed=2)
    rng = np.random.default_rng(1)
    objects = {name: rng.normal(size=32) for name in odd_one_out.SHAPES}
    centres = grid_centres(params.panel_size, 4)
    for sample, plan in zip(samples, plans, strict=True):
        item = parsed(sample.labels, len(sample.images))
        assert len(sample.images) == 4 and task_of(sample.labels) == "odd_one_out"
        grids = [
            PatchGrid(
                objects[odd_one_out.panel_object(plan, letter)]
                + rng.normal(scale=0.5, size=(len(centres), 32)),
                centres,
            )
            for letter in odd_one_out.LETTERS
        ]
        assert solve_odd_one_out(grids, item) == plan.answer


def patch_pixels(image: Image.Image, cell: int = 8) -> PatchGrid:
    """A pixel readout: each patch's RGB pixels, flattened, centred on its cell."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    rows, cols = pixels.shape[0] // cell, pixels.shape[1] // cell
    patches = pixels[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell, 3)
    features = patches.transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    return PatchGrid(features, grid_centres(cols * cell, cell)[: rows * cols])


def test_odd_one_out_solver_finds_the_odd_colour_from_the_rendered_images() -> None:
    """The generator's own four images (the easy variant: the odd object has another colour),
    read as raw pixel patches, one grid per image."""
    params = odd_one_out.Params(panel_size=64, odd_colour=True)
    samples = list(generate("odd_one_out", params, 8, 4))
    choices = [
        solve_odd_one_out([patch_pixels(image) for image in sample.images],
                          parsed(sample.labels, 4))
        for sample in samples
    ]  # fmt: skip
    assert choices == [sample.labels["answer"] for sample in samples]


def test_art_style_solver_picks_the_candidate_nearest_the_reference() -> None:
    """Features carry the style strongly and the scene weakly: the same-style candidate wins
    over the lure, which shows the reference's own scene in another style."""
    samples = list(generate("art_style", art_style.Params(image_size=64), 8, 0))
    rng = np.random.default_rng(2)
    styles = {name: rng.normal(size=48) for name in art_style.STYLES}
    scenes: dict[str, np.ndarray] = {}
    centres = grid_centres(64, 8)

    def grid(style: str, scene: str) -> PatchGrid:
        content = scenes.setdefault(scene, rng.normal(size=48))
        noise = rng.normal(scale=0.3, size=(len(centres), 48))
        return PatchGrid(styles[style] + 0.6 * content + noise, centres)

    for sample in samples:
        labels = sample.labels
        item = parsed(labels, len(sample.images))
        assert isinstance(item, ArtStyleItem) and item.reference == 0
        grids = [grid(labels["style"], labels["scene"])]
        grids += [grid(labels[f"{k}_style"], labels[f"{k}_scene"]) for k in ("a", "b", "c")]
        assert solve_art_style(grids, item) == labels["answer"] != labels["lure"]


def test_an_item_is_not_solved_at_a_layer_where_one_of_its_images_has_no_grid() -> None:
    plan = correspondence.plan(correspondence.Params(), 1, 0)[0]
    item = parsed(correspondence.labels(plan), 2)
    reference, target = scene_grids(plan)
    assert solve(item, [reference, None]) is None
    assert solve(item, [reference, target]) == plan.answer


# -- the VLM -----------------------------------------------------------------------------------


def row_of(item: Any, choices: tuple[str, ...] | None = None) -> TaskRow:
    return TaskRow("d", "k", 0, "correspondence", item, ("i0", "i1"), ("a", "b"), "Q?", choices)


def test_the_vlm_answer_is_normalised_to_a_choice_letter() -> None:
    item = parsed(correspondence.labels(correspondence.plan(correspondence.Params(), 1, 0)[0]), 2)
    row = row_of(item)
    assert vlm_choice("B", row) == "B"
    assert vlm_choice("The answer is (c).", row) == "C"
    assert vlm_choice("A. The point A.", row) == "A"
    assert vlm_choice("B or C", row) is None
    assert vlm_choice("", row) is None
    assert vlm_choice("E", row) is None
    spelled = row_of(item, ("(A)", "(B)", "(C)", "(D)"))
    assert vlm_choice("(D)", spelled) == "D"


def record_generate(loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every `generate` call's inputs, as the model receives them."""
    calls: list[dict] = []
    original = loaded.model.generate

    def recording(**kwargs: Any) -> Any:
        calls.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
        return original(**kwargs)

    monkeypatch.setattr(loaded.model, "generate", recording)
    return calls


def test_the_vlm_is_asked_the_two_image_correspondence_question_in_one_prompt(
    load_tiny: Loader, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_tiny("llava")
    store(warehouse, tmp_path / "rendered", pairs={"kind": "correspondence", "size": 3})
    calls = record_generate(loaded, monkeypatch)
    solved = solve_dataset(loaded, warehouse, "pairs", "What colour is the shape?", 4)

    adapter, layout, tokenizer = (
        loaded.architecture.adapter, loaded.layout, loaded.processor.tokenizer,
    )  # fmt: skip
    one = adapter.prepare_on(
        loaded.processor, [Image.new("RGB", (SIZE, SIZE))], ["x"], loaded.device, loaded.dtype
    )
    per_image = int((one["input_ids"] == layout.image_token_id).sum())
    assert per_image > 0
    rows = task_rows(warehouse, "pairs")
    asked = [sample for call in calls for sample in call["input_ids"]]
    assert len(asked) == len(rows) == 3
    assert sum(len(call["pixel_values"]) for call in calls) == 2 * len(rows)  # two images each
    for ids in asked:
        assert int((ids == layout.image_token_id).sum()) == 2 * per_image
        assert correspondence.QUESTION in tokenizer.decode(ids, skip_special_tokens=True)

    answers = [r for r in solved.rows if r["stage"] == VLM_STAGE]
    assert [(r["layer"], r["item"], r["image_id"], r["answer"], r["options"]) for r in answers] == [
        (VLM_LAYER, r.item.item, r.image_ids[0], r.item.answer, 4) for r in rows
    ]
    assert all(r["choice"] in {None, "A", "B", "C", "D"} for r in answers)
    assert all(r["correct"] == (r["choice"] == r["answer"]) for r in answers)
    layers = stack_layers(loaded.model, adapter.is_vision)
    assert {r["layer_order"] for r in answers} == {len(layers)}
    readouts = [r for r in solved.rows if r["stage"] != VLM_STAGE]
    assert len(readouts) == len(layers) * len(rows) and not solved.skipped


def test_a_model_that_takes_one_image_per_prompt_is_not_asked_and_says_why(
    load_tiny: Loader, warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readouts still solve every item (each image is its own forward pass); the VLM
    question, which shows two images together, is not asked one image at a time."""
    loaded = load_tiny("llava")
    store(warehouse, tmp_path / "rendered", pairs={"kind": "correspondence", "size": 2})
    monkeypatch.setattr(loaded.architecture.adapter, "max_images", 1)
    calls = record_generate(loaded, monkeypatch)
    solved = solve_dataset(loaded, warehouse, "pairs", "What colour is the shape?", 4)
    assert not calls
    assert {r["stage"] for r in solved.rows} == {"vision", "projector", "llm"}
    (reason,) = solved.skipped
    assert "2 of 2 items not asked" in reason
    assert "takes at most 1 image(s) per prompt" in reason and "shows 2 together" in reason


def test_a_dual_encoder_is_not_asked(load_tiny: Loader) -> None:
    loaded = load_tiny("clip")
    item = parsed(correspondence.labels(correspondence.plan(correspondence.Params(), 1, 0)[0]), 2)
    reason = unaskable(loaded, row_of(item))
    assert reason is not None and "cannot be asked questions" in reason


# -- patch grids -------------------------------------------------------------------------------


def test_stack_layers_lists_vision_blocks_then_the_projector_then_llm_layers(
    load_tiny: Loader,
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
    architecture: str, corner: tuple[int, int], load_tiny: Loader
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
