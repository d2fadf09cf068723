"""Attention maps from the answer position, on real tiny LLaVA and Qwen2-VL checkpoints.

The planted truth: a pre-hook adds a large bias to the eager attention mask at (answer
position, one image token), so that layer's answer row must peak on that token's patch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from lens_assets.analyses.attention import (
    ATTENTION_MAP_ROWS,
    AttentionCaptureError,
    answer_attention,
    attention_maps,
    attention_summary,
    head_mean_map,
    render_attention_overlay,
)
from lens_assets.capture.loading import LoadedModel

LAYERS = "model.language_model.layers.*"
LAYER_0 = "model.language_model.layers.0"
LAYER_1 = "model.language_model.layers.1"
# Two prompts of different lengths: right padding puts the short one's answer mid-sequence.
PROMPTS = ["Colour?", "Which colour is the largest shape in this picture, and where is it?"]
# Per architecture, the (row, col) cell planted in each sample. Qwen2-VL's grids are 3x4 and
# 2x6 (images 64x48 and 96x40); (2, 1) read transposed would be another valid cell.
PLANTED = {"llava": [(1, 2), (3, 0)], "qwen2-vl": [(2, 1), (1, 4)]}
BIAS = 50.0  # added to a pre-softmax score: that key takes all but e^-40 of the row


def pair(images: list[Image.Image]) -> list[Image.Image]:
    return [images[1], images[3]]  # 64x48 and 96x40


def model_inputs(loaded: LoadedModel, images: list[Image.Image]) -> Any:
    adapter = loaded.architecture.adapter
    return adapter.prepare_on(loaded.processor, images, PROMPTS, loaded.device, loaded.dtype)


def planted_position(loaded: LoadedModel, inputs: Any, sample: int, cell: tuple[int, int]) -> int:
    """The sequence position of the image token showing `cell`: LLaVA's tokens are the CLIP
    patches in raster order; Qwen2-VL's are 2x2-merged blocks in raster order."""
    ids = inputs["input_ids"][sample]
    positions = (ids == loaded.layout.image_token_id).nonzero().squeeze(1).tolist()
    if "image_grid_thw" in inputs:  # Qwen2-VL: patches per side, merged 2x2
        cols = int(inputs["image_grid_thw"][sample][2]) // 2
    else:
        cols = int(np.sqrt(len(positions)))
    return positions[cell[0] * cols + cell[1]]


@contextmanager
def planted_attention(
    loaded: LoadedModel, layer: str, targets: dict[int, tuple[int, int]]
) -> Iterator[None]:
    """Bias the eager mask of `layer` at (sample, answer query, key) for each planted target."""
    attention = dict(loaded.model.named_modules())[f"{layer}.self_attn"]

    def pre_hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = kwargs["attention_mask"]
        assert mask is not None and mask.is_floating_point(), "eager attention takes a float mask"
        mask = mask.clone()
        for sample, (query, key) in targets.items():
            mask[sample, :, query, key] += BIAS
        return args, {**kwargs, "attention_mask": mask}

    handle = attention.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_map_peaks_on_the_patch_the_answer_position_is_forced_to_attend(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny(architecture)
    inputs = model_inputs(loaded, pair(images))
    answers = (inputs["attention_mask"].sum(dim=1) - 1).tolist()  # right padding
    assert answers[0] != answers[1]
    targets = {
        sample: (answers[sample], planted_position(loaded, inputs, sample, cell))
        for sample, cell in enumerate(PLANTED[architecture])
    }
    with planted_attention(loaded, LAYER_1, targets):
        table = attention_maps(loaded, pair(images), PROMPTS, [LAYERS], image_ids=["a", "b"])
    for image_id, cell in zip(["a", "b"], PLANTED[architecture], strict=True):
        rows = table.filter(pc.equal(table["image_id"], image_id)).to_pylist()
        assert {row["layer"] for row in rows} == {LAYER_0, LAYER_1}  # both layers, every head
        for row in rows:
            grid = np.asarray(row["weights"]).reshape(row["grid_rows"], row["grid_cols"])
            peak = np.unravel_index(grid.argmax(), grid.shape)
            if row["layer"] == LAYER_1:
                assert peak == cell, (image_id, row["head"], peak)
                assert grid[cell] > 0.99
            else:  # the unplanted layer is spread out: the peak is the plant, not an artefact
                assert grid.max() < 0.5


def test_qwen2_vl_maps_take_each_images_own_grid_shape(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("qwen2-vl")
    table = attention_maps(loaded, pair(images), PROMPTS, [LAYER_0], image_ids=["a", "b"])
    shapes = {(r["image_id"], r["grid_rows"], r["grid_cols"]) for r in table.to_pylist()}
    assert shapes == {("a", 3, 4), ("b", 2, 6)}
    assert all(len(r["weights"]) == r["grid_rows"] * r["grid_cols"] for r in table.to_pylist())


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_answer_row_sums_to_one_per_head_and_image_share_is_its_image_part(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny(architecture)
    capture = answer_attention(loaded, pair(images), PROMPTS, [LAYERS])
    image = capture.inputs["input_ids"].cpu() == loaded.layout.image_token_id
    table = attention_maps(loaded, pair(images), PROMPTS, [LAYERS], image_ids=["a", "b"])
    assert list(capture.weights) == [LAYER_0, LAYER_1]
    for layer, weights in capture.weights.items():
        assert weights.shape[1] > 0  # heads
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:2]))
        expected = (weights * image.unsqueeze(1)).sum(dim=-1)  # (batch, heads)
        for sample, image_id in enumerate(["a", "b"]):
            rows = [
                r for r in table.to_pylist() if r["layer"] == layer and r["image_id"] == image_id
            ]
            assert [r["head"] for r in rows] == list(range(weights.shape[1]))
            for row in rows:
                assert 0.0 <= row["image_share"] <= 1.0
                assert row["image_share"] == pytest.approx(float(expected[sample, row["head"]]))
                assert sum(row["weights"]) == pytest.approx(row["image_share"], abs=1e-5)


def test_captured_rows_equal_the_models_own_eager_attentions(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    capture = answer_attention(loaded, pair(images), PROMPTS, [LAYERS])
    inputs = model_inputs(loaded, pair(images))
    text_config = loaded.model.config.text_config
    before = text_config._attn_implementation
    text_config._attn_implementation = "eager"  # the only kernel that returns its weights
    try:
        with torch.inference_mode():
            reference = loaded.model(**inputs, output_attentions=True).attentions
    finally:
        text_config._attn_implementation = before
    assert len(capture.answer) == 2 and list(capture.weights) == [LAYER_0, LAYER_1]
    for index, layer in enumerate([LAYER_0, LAYER_1]):
        for sample, answer in enumerate(capture.answer.tolist()):
            torch.testing.assert_close(
                capture.weights[layer][sample], reference[index][sample, :, answer].float()
            )


def test_only_the_selected_layers_are_hooked_and_kept(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    modules = dict(loaded.model.named_modules())
    hooks_seen: dict[str, int] = {}

    def probe(name: str) -> Any:
        def pre_hook(module: Any, _args: Any) -> None:
            hooks_seen[name] = len(module._forward_hooks)

        return pre_hook

    probes = [
        modules[f"{layer}.self_attn"].register_forward_pre_hook(probe(layer))
        for layer in (LAYER_0, LAYER_1)
    ]
    try:
        with torch.inference_mode():  # transformers' own output capture hooks, for reference
            loaded.model(**model_inputs(loaded, pair(images)))
        baseline = dict(hooks_seen)
        capture = answer_attention(loaded, pair(images), PROMPTS, [LAYER_1])
    finally:
        for handle in probes:
            handle.remove()
    assert hooks_seen == {LAYER_0: baseline[LAYER_0], LAYER_1: baseline[LAYER_1] + 1}
    assert capture.layers == [LAYER_1]
    assert list(capture.weights) == [LAYER_1]
    table = attention_maps(loaded, pair(images), PROMPTS, [LAYER_1])
    assert set(table["layer"].to_pylist()) == {LAYER_1}


def test_pass_stops_after_the_deepest_selected_layer(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    calls: list[str] = []
    later = dict(loaded.model.named_modules())[LAYER_1]

    def pre_hook(*_: Any) -> None:
        calls.append(LAYER_1)

    handle = later.register_forward_pre_hook(pre_hook)
    try:
        capture = answer_attention(loaded, pair(images), PROMPTS, [LAYER_0])
    finally:
        handle.remove()
    assert calls == []
    assert list(capture.weights) == [LAYER_0]


def test_eager_attention_is_scoped_to_the_text_model_and_restored(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    config = loaded.model.config
    before = (config.text_config._attn_implementation, config.vision_config._attn_implementation)
    assert before == ("sdpa", "sdpa")
    seen: dict[str, str] = {}
    modules = dict(loaded.model.named_modules())

    def record(name: str, module_config: Any) -> Any:
        def pre_hook(*_: Any) -> None:
            seen.setdefault(name, module_config._attn_implementation)

        return pre_hook

    handles = [
        modules[f"{LAYER_0}.self_attn"].register_forward_pre_hook(
            record("text", config.text_config)
        ),
        modules["model.vision_tower.encoder.layers.0"].register_forward_pre_hook(
            record("vision", config.vision_config)
        ),
    ]
    try:
        answer_attention(loaded, pair(images), PROMPTS, [LAYERS])
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"text": "eager", "vision": "sdpa"}
    after = (config.text_config._attn_implementation, config.vision_config._attn_implementation)
    assert after == before


def test_vision_tower_layers_are_refused(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    with pytest.raises(AttentionCaptureError, match="vision tower"):
        answer_attention(
            load_tiny("llava"), pair(images), PROMPTS, ["model.vision_tower.encoder.layers.0"]
        )


def test_summary_is_the_mean_image_share_per_layer_in_depth_order() -> None:
    table = pa.Table.from_pylist(
        [
            {"model": "m", "layer": f"layers.{layer}", "head": head, "image_share": share}
            for layer, shares in ((10, [0.2, 0.4]), (2, [0.9, 0.5, 0.1]))
            for head, share in enumerate(shares)
        ]
    )
    summary = attention_summary(table).to_pylist()
    assert [(r["layer"], r["layer_order"], r["maps"]) for r in summary] == [
        ("layers.2", 0, 3),
        ("layers.10", 1, 2),
    ]
    assert [r["mean_image_share"] for r in summary] == pytest.approx([0.5, 0.3])


def test_overlay_renders_the_head_mean_map_over_the_image(tmp_path: Path) -> None:
    rows = [
        {"model": "m", "image_id": "a", "prompt": "p", "layer": "l", "head": head,
         "grid_rows": 2, "grid_cols": 3, "weights": weights, "image_share": sum(weights)}
        for head, weights in enumerate([[0, 0, 0.6, 0, 0, 0], [0, 0, 0.2, 0, 0.2, 0]])
    ]  # fmt: skip
    grid = head_mean_map(pa.Table.from_pylist(rows, schema=ATTENTION_MAP_ROWS), "l", "a")
    np.testing.assert_allclose(grid, [[0, 0, 0.4], [0, 0.1, 0]])
    out = render_attention_overlay(
        Image.new("RGB", (60, 40), "white"), grid, tmp_path / "map.png", title="l"
    )
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > 100


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_a_two_image_row_gets_one_map_per_image_and_their_shares_add_up(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    """Attention to each image's tokens: a row of two images gives each its own map (on its
    own grid where the family lays one out), and their shares are the attention on the row's
    image tokens."""
    loaded = load_tiny(architecture)
    row = [[images[1], images[3]]]
    capture = answer_attention(loaded, row, PROMPTS[:1], [LAYER_1])
    image = capture.inputs["input_ids"][0].cpu() == loaded.layout.image_token_id
    total = (capture.weights[LAYER_1][0] * image).sum(dim=-1)  # (heads,)
    table = attention_maps(
        loaded, row, PROMPTS[:1], [LAYER_1], image_ids=[["a", "b"]], row_keys=["r"]
    ).to_pylist()
    assert {(r["image_id"], r["image_index"]) for r in table} == {("a", 0), ("b", 1)}
    assert {r["row_key"] for r in table} == {"r"}
    for head in range(len(total)):
        shares = [r["image_share"] for r in table if r["head"] == head]
        assert sum(shares) == pytest.approx(float(total[head]), abs=1e-5)
        assert all(share > 0 for share in shares)
    first, second = (next(r for r in table if r["image_index"] == k) for k in (0, 1))
    assert len(first["weights"]) == int((capture.image_index[0] == 0).sum())
    assert len(second["weights"]) == int((capture.image_index[0] == 1).sum())
