"""DINOv2: its class token is position 0, prompts are ignored, and its patches are placed on the
centre crop its image processor takes.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from lens_assets.analyses.patches import patch_grids, stack_layers
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import pooled_vectors as vectors

PROMPTS = ["a cat", "Describe the colours and shapes you can see in this picture."]


def test_dinov2_class_token_is_position_0_and_prompts_are_ignored(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("dinov2"), family_images("dinov2")[:2]
    assert loaded.architecture.adapter.is_vision("encoder.layer.1")
    pieces = capture_batch(loaded, images, PROMPTS, ["layernorm"], ["cls", "tokens"])
    silent = capture_batch(loaded, images, ["", ""], ["layernorm"], ["cls"])
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
    processed = loaded.processor(images=images, return_tensors="pt")
    with torch.inference_mode():
        expected = loaded.model(**processed).pooler_output
    torch.testing.assert_close(vectors(pieces, "layernorm", "cls"), expected)
    torch.testing.assert_close(vectors(silent, "layernorm", "cls"), expected)


def test_dinov2_patches_sit_on_the_centre_crop_of_a_wide_image(
    load_family: Callable[[str], LoadedModel],
) -> None:
    """The processor keeps the middle square of a 256x128 image; patch centres must span that
    square only, and the patch that stands out must be where the square was drawn."""
    loaded = load_family("dinov2")
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
