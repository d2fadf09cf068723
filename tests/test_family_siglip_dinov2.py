"""SigLIP and DINOv2 specifics the family harness does not reach: SigLIP's pooled vectors (no
class token; the text tower pools its last position), DINOv2's class token at position 0, its
ignored prompts, and its patches placed on the centre crop its image processor takes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from lens_assets.analyses.patches import patch_grids, stack_layers
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import ALL_POOLINGS, tiny_config

PROMPTS = ["a cat", "Describe the colours and shapes you can see in this picture."]


@pytest.fixture(scope="module")
def load_encoder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LoadedModel]:
    root = tmp_path_factory.mktemp("encoders")
    cache: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, root / name)
            modules = list(BY_NAME[name].hook_points)
            config = tiny_config(name, root, modules=modules, pooling=ALL_POOLINGS)
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return load


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 48), (40, 72)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def vectors(pieces: list, module: str, pooling: str) -> torch.Tensor:
    (pooled,) = [p for name, p in pieces if name == module and p.pooling == pooling]
    return pooled.vectors


def test_siglip_pooled_vectors_do_not_depend_on_the_batch(
    load_encoder: Callable[[str], LoadedModel],
) -> None:
    """The text head reads the last position, so texts are padded to SigLIP's fixed length;
    padding to the longest prompt would put a pad there for the shorter one."""
    loaded = load_encoder("siglip")
    modules = ["text_model.head", "vision_model.head", "vision_model.encoder.layers.1"]
    both = capture_batch(loaded, images(), PROMPTS, modules, ["tokens", "cls"])
    alone = capture_batch(loaded, images()[:1], PROMPTS[:1], modules, ["tokens", "cls"])
    for module in ("text_model.head", "vision_model.head"):
        torch.testing.assert_close(
            vectors(both, module, "none")[:1], vectors(alone, module, "none")
        )
    # No class token: `cls` yields nothing, every vision position is a patch.
    assert not [p for _, p in both if p.pooling == "cls"]
    tokens = next(p for name, p in both if name == modules[2] and p.pooling == "tokens")
    assert set(tokens.token_role.tolist()) == {TokenRole.IMAGE}


def test_dinov2_class_token_is_position_0_and_prompts_are_ignored(
    load_encoder: Callable[[str], LoadedModel],
) -> None:
    loaded = load_encoder("dinov2")
    assert loaded.architecture.adapter.is_vision("encoder.layer.1")
    pieces = capture_batch(loaded, images(), PROMPTS, ["layernorm"], ["cls", "tokens"])
    silent = capture_batch(loaded, images(), ["", ""], ["layernorm"], ["cls"])
    tokens = vectors(pieces, "layernorm", "tokens")
    (pooled,) = [p for _, p in pieces if p.pooling == "tokens"]
    side = 32 // 8  # the tiny crop over the patch size
    for sample in range(2):
        rows = pooled.samples == sample
        roles = pooled.token_role[rows].tolist()
        assert roles == [TokenRole.CLS] + [TokenRole.IMAGE] * side * side
        torch.testing.assert_close(
            tokens[rows][0], vectors(pieces, "layernorm", "cls")[sample], rtol=0, atol=0
        )
    processed = loaded.processor(images=images(), return_tensors="pt")
    with torch.inference_mode():
        expected = loaded.model(**processed).pooler_output
    torch.testing.assert_close(vectors(pieces, "layernorm", "cls"), expected)
    torch.testing.assert_close(vectors(silent, "layernorm", "cls"), expected)


def test_dinov2_patches_sit_on_the_centre_crop_of_a_wide_image(
    load_encoder: Callable[[str], LoadedModel],
) -> None:
    """The processor keeps the middle square of a 256x128 image; patch centres must span that
    square only, and the patch that stands out must be where the square was drawn."""
    loaded = load_encoder("dinov2")
    pixels = np.full((128, 256, 3), 128, np.uint8)
    x, y = 120, 40
    pixels[y : y + 24, x : x + 24] = (255, 0, 0)
    layers = [
        layer.name for layer in stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    ]
    assert layers == ["encoder.layer.0", "encoder.layer.1"]
    (grids,) = patch_grids(loaded, [Image.fromarray(pixels)], "", layers)
    assert set(grids) == set(layers)
    crop = 128 * 32 / 37  # shortest edge 128 -> 37 px, then a 32 px crop
    for name, grid in grids.items():
        assert len(grid.centres) == 16
        assert (
            grid.centres[:, 0].min() > 128 - crop / 2 and grid.centres[:, 0].max() < 128 + crop / 2
        )
        outlier = np.linalg.norm(grid.features - np.median(grid.features, axis=0), axis=1)
        cx, cy = grid.centres[int(np.argmax(outlier))]
        assert x <= cx < x + 24 and y <= cy < y + 24, (name, (cx, cy))
