"""Gradient attribution against planted truths: hooks make the answer depend on one known patch
or pixel region, and the heatmaps must find it there and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch import nn

from lens_assets.analyses.attribution import (
    ATTRIBUTION_ROWS,
    GRADCAM,
    INPUT_X_GRADIENT,
    PIXELS,
    AttributionError,
    attribute,
    attribution_table,
    gradcam,
    gradcam_layer,
    input_x_gradient,
    render_attributions,
)
from lens_assets.capture.loading import LoadedModel

Loader = Callable[[str], LoadedModel]
PROMPT = "What colour is the shape?"
SIDE = 32  # both tiny models see a 32x32 image unchanged: 4x4 patches of 8 pixels
PATCH = 8


@dataclass(frozen=True)
class Tower:
    """Where to plant a one-patch dependency in an architecture's vision tower."""

    layer: str  # the layer Grad-CAM reads
    consumer: str  # the module that reads the layer's output on the way to the answer
    has_cls: bool  # the layer's sequence starts with a class token the consumer never sees
    pixels_in: str  # the module that takes pixel_values first


TOWERS = {
    "llava": Tower(
        "model.vision_tower.encoder.layers.0",  # LLaVA reads the penultimate block (of 2)
        "model.multi_modal_projector",
        True,
        "model.vision_tower.embeddings.patch_embedding",
    ),
    "qwen2-vl": Tower(
        "model.visual.blocks.0", "model.visual.blocks.1", False, "model.visual.patch_embed"
    ),
}


def noise_image(seed: int = 0, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def packed_row_of(loaded: LoadedModel, row: int, col: int) -> int:
    """The packed pixel_values row of patch (row, col), found from the processor alone: the one
    row that changes when only that patch of a black image is white."""
    picture = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    picture[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH] = 255
    inputs = loaded.architecture.adapter.prepare(
        loaded.processor, [Image.fromarray(picture)], [PROMPT]
    )
    packed = inputs["pixel_values"]
    assert packed.shape[0] == (SIDE // PATCH) ** 2
    distance = (packed - packed.median(dim=0).values).abs().sum(dim=1)
    assert int((distance > 0).sum()) == 1
    return int(distance.argmax())


def tower_position(loaded: LoadedModel, architecture: str, row: int, col: int) -> int:
    """The index of patch (row, col) among the layer's image positions (class token excluded):
    ViT raster order for LLaVA's CLIP tower, the packed row for Qwen2-VL."""
    if architecture == "llava":
        return row * (SIDE // PATCH) + col
    return packed_row_of(loaded, row, col)


def keep_rows(tensor: torch.Tensor, index: int) -> torch.Tensor:
    """`tensor` with every position (axis -2) but `index` zeroed; no gradient reaches them."""
    mask = torch.zeros(tensor.shape[-2], 1, dtype=tensor.dtype, device=tensor.device)
    mask[index] = 1
    return tensor * mask


@contextmanager
def one_patch_model(
    model: nn.Module, tower: Tower, position: int, scale: list[float]
) -> Iterator[None]:
    """A model whose answer depends on one image position of `tower.layer`: the layer's output
    is zero elsewhere (prepended, so the tower's own hidden-state recorders see it too), and the
    consumer passes on that position only, so zero positions get no gradient either. The kept
    position is multiplied by `scale[0]`."""
    modules = dict(model.named_modules())
    at_layer = position + int(tower.has_cls)

    def plant(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = keep_rows(hidden, at_layer) * scale[0]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def consume(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (keep_rows(args[0], position), *args[1:])

    handles = [
        modules[tower.layer].register_forward_hook(plant, prepend=True),
        modules[tower.consumer].register_forward_pre_hook(consume),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def pixels_only(
    model: nn.Module, name: str, keep: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """The tower's first module sees `keep(pixel_values)`: what `keep` zeroes cannot matter."""
    handle = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda _module, args: (keep(args[0]), *args[1:])
    )
    try:
        yield
    finally:
        handle.remove()


def answer_logits(loaded: LoadedModel, image: Image.Image) -> torch.Tensor:
    """The logits at the last prompt position, from a plain no-grad forward pass."""
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare(loaded.processor, [image], [PROMPT])
    with torch.no_grad():
        return adapter.forward(loaded.model, inputs, {}).logits[0, -1].float()


def hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_gradcam_lights_up_only_the_patch_the_answer_depends_on(
    load_tiny: Loader, architecture: str
) -> None:
    loaded = load_tiny(architecture)
    tower = TOWERS[architecture]
    row, col = 1, 0  # off the diagonal, and not where raster order would put Qwen's packed row
    position = tower_position(loaded, architecture, row, col)
    image, scale = noise_image(1), [1.0]
    with one_patch_model(loaded.model, tower, position, scale):
        # The planted truth's sign, by finite differences without autograd: the token whose
        # logit grows most when the one live patch grows, so its Grad-CAM there must be > 0.
        base = answer_logits(loaded, image)
        scale[0] = 1.01
        growth = answer_logits(loaded, image) - base
        scale[0] = 1.0
        target = int(growth.argmax())
        assert growth[target] > 0
        found = gradcam(loaded, image, PROMPT, tower.layer, target_token=target)
    assert found.heatmap.shape == (SIDE // PATCH, SIDE // PATCH)
    assert np.unravel_index(found.heatmap.argmax(), found.heatmap.shape) == (row, col)
    assert found.heatmap[row, col] == 1.0
    others = np.delete(found.heatmap.ravel(), row * (SIDE // PATCH) + col)
    assert np.all(others == 0.0)


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_input_x_gradient_is_zero_on_pixels_the_answer_cannot_see(
    load_tiny: Loader, architecture: str
) -> None:
    loaded = load_tiny(architecture)
    region = np.zeros((SIDE, SIDE), dtype=bool)
    if architecture == "llava":
        region[8:16, 16:32] = True  # a wide strip: a transposed map would put it elsewhere
        mask = torch.as_tensor(region, dtype=torch.float32)

        def keep(pixel_values: torch.Tensor) -> torch.Tensor:
            return pixel_values * mask

    else:
        region[8:16, 0:8] = True  # patch (1, 0), packed row 2 of Qwen's merge blocks
        index = packed_row_of(loaded, 1, 0)

        def keep(pixel_values: torch.Tensor) -> torch.Tensor:
            return keep_rows(pixel_values, index)

    with pixels_only(loaded.model, TOWERS[architecture].pixels_in, keep):
        found = input_x_gradient(loaded, noise_image(2), PROMPT)
    assert found.layer == PIXELS and found.heatmap.shape == (SIDE, SIDE)
    assert np.all(found.heatmap[~region] == 0.0)
    assert (found.heatmap[region] > 0).mean() > 0.95
    assert found.heatmap.max() == 1.0


@pytest.mark.parametrize(
    ("architecture", "layers", "shapes"),
    [
        # LLaVA's CLIP processor centre-crops every image to 32x32: 4x4 patches.
        ("llava", ["model.vision_tower.encoder.layers.0"], [(4, 4), (32, 32)]),
        # Qwen2-VL keeps the aspect: 64x48 pixels, 6x8 patches, 3x4 merged tokens.
        (
            "qwen2-vl",
            ["model.visual.blocks.0", "model.visual.merger", "model.language_model.layers.0"],
            [(6, 8), (3, 4), (3, 4), (48, 64)],
        ),
    ],
)
def test_heatmaps_lie_in_the_unit_interval_on_their_grids(
    load_tiny: Loader, architecture: str, layers: list[str], shapes: list[tuple[int, int]]
) -> None:
    loaded = load_tiny(architecture)
    found = attribute(loaded, noise_image(3, size=(64, 48)), PROMPT, layers)
    assert [a.method for a in found] == [GRADCAM] * len(layers) + [INPUT_X_GRADIENT]
    assert [a.heatmap.shape for a in found] == shapes
    for attribution in found:
        assert attribution.heatmap.dtype == np.float32
        assert attribution.heatmap.min() >= 0.0
        assert attribution.heatmap.max() in (0.0, 1.0)
    assert found[-1].heatmap.max() == 1.0  # pixels always carry some gradient


def test_attribution_leaves_no_gradients_hooks_or_training_mode(load_tiny: Loader) -> None:
    loaded = load_tiny("llava")
    model = loaded.model
    frozen = next(model.parameters())
    frozen.requires_grad_(False)  # a caller's own choice, which must survive the call
    flags = [p.requires_grad for p in model.parameters()]
    hooks = hook_counts(model)
    try:
        attribute(loaded, noise_image(4), PROMPT, [TOWERS["llava"].layer])
        assert all(p.grad is None for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()] == flags
        assert not any(m.training for m in model.modules())
        assert hook_counts(model) == hooks
    finally:
        frozen.requires_grad_(True)


def test_attribution_runs_in_eval_mode_and_gives_a_training_model_back(load_tiny: Loader) -> None:
    loaded = load_tiny("llava")
    model, layer = loaded.model, TOWERS["llava"].layer
    seen: list[bool] = []
    handle = dict(model.named_modules())[layer].register_forward_pre_hook(
        lambda module, _args: seen.append(module.training)
    )
    model.train()
    try:
        gradcam(loaded, noise_image(12), PROMPT, layer)
        assert seen == [False]  # dropout off while the gradients are taken
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
        handle.remove()


def test_attribution_computes_gradients_inside_no_grad_and_inference_mode(
    load_tiny: Loader,
) -> None:
    loaded = load_tiny("llava")
    image, layers = noise_image(5), [TOWERS["llava"].layer]
    free = attribute(loaded, image, PROMPT, layers)
    with torch.no_grad():
        quiet = attribute(loaded, image, PROMPT, layers)
    with torch.inference_mode():
        inferred = attribute(loaded, image, PROMPT, layers)
    assert free[-1].heatmap.max() == 1.0
    for other in (quiet, inferred):
        for a, b in zip(free, other, strict=True):
            np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)


def test_target_token_defaults_to_the_models_own_answer(load_tiny: Loader) -> None:
    loaded = load_tiny("qwen2-vl")
    image = noise_image(6)
    logits = answer_logits(loaded, image)
    found = input_x_gradient(loaded, image, PROMPT)
    assert found.target_token == int(logits.argmax())
    assert found.logit == pytest.approx(float(logits.max()), abs=1e-4)
    chosen = input_x_gradient(loaded, image, PROMPT, target_token=7)
    assert chosen.target_token == 7
    assert chosen.logit == pytest.approx(float(logits[7]), abs=1e-4)


def test_a_layer_that_never_reaches_the_answer_is_refused(load_tiny: Loader) -> None:
    # LLaVA reads vision_feature_layer=-2: the tiny tower's last block feeds nothing.
    with pytest.raises(AttributionError, match="vision_feature_layer=-2"):
        gradcam(load_tiny("llava"), noise_image(7), PROMPT, "model.vision_tower.encoder.layers.1")


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [("llava", "model.vision_tower.encoder.layers.0"), ("qwen2-vl", "model.visual.blocks.1")],
)
def test_the_default_gradcam_layer_is_the_block_the_llm_reads(
    load_tiny: Loader, architecture: str, expected: str
) -> None:
    loaded = load_tiny(architecture)
    assert gradcam_layer(loaded) == expected
    assert gradcam(loaded, noise_image(13), PROMPT, expected).layer == expected


def test_a_model_without_token_logits_is_refused(load_tiny: Loader) -> None:
    with pytest.raises(AttributionError, match="no token logits"):
        input_x_gradient(load_tiny("clip"), noise_image(8), PROMPT)


def test_rows_hold_one_flat_heatmap_per_method_and_layer(load_tiny: Loader) -> None:
    loaded = load_tiny("llava")
    layer = TOWERS["llava"].layer
    table = attribution_table(loaded, [("img-a", noise_image(9)), (None, noise_image(10))],
                              PROMPT, [layer])  # fmt: skip
    assert isinstance(table, pa.Table) and table.schema == ATTRIBUTION_ROWS
    rows = table.to_pylist()
    assert [(r["image_id"], r["method"], r["layer"]) for r in rows] == [
        ("img-a", GRADCAM, layer),
        ("img-a", INPUT_X_GRADIENT, PIXELS),
        (None, GRADCAM, layer),
        (None, INPUT_X_GRADIENT, PIXELS),
    ]
    for row in rows:
        assert row["model"] == "llava" and row["prompt"] == PROMPT
        assert len(row["heatmap"]) == row["grid_rows"] * row["grid_cols"]
    assert (rows[1]["grid_rows"], rows[1]["grid_cols"]) == (SIDE, SIDE)


def test_render_writes_an_overlay_png(load_tiny: Loader, tmp_path: Path) -> None:
    loaded = load_tiny("llava")
    image = noise_image(11, size=(48, 32))
    found = attribute(loaded, image, PROMPT, [TOWERS["llava"].layer])
    out = render_attributions(image, found, tmp_path / "reports" / "attribution.png")
    assert out is not None and out.is_file()
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > png.height
    assert render_attributions(image, [], tmp_path / "none.png") is None
