"""SigLIP: no class token (`cls` yields nothing, every vision position is a patch), and the text
head pools the last position, so texts are padded to SigLIP's fixed length.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import pooled_vectors as vectors

PROMPTS = ["a cat", "Describe the colours and shapes you can see in this picture."]


def test_siglip_pooled_vectors_do_not_depend_on_the_batch(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The text head reads the last position, so texts are padded to SigLIP's fixed length;
    padding to the longest prompt would put a pad there for the shorter one."""
    loaded, images = load_family("siglip"), family_images("siglip")[:2]
    modules = ["text_model.head", "vision_model.head", "vision_model.encoder.layers.1"]
    both = capture_batch(loaded, images, PROMPTS, modules, ["tokens", "cls"])
    alone = capture_batch(loaded, images[:1], PROMPTS[:1], modules, ["tokens", "cls"])
    for module in ("text_model.head", "vision_model.head"):
        torch.testing.assert_close(
            vectors(both, module, "none")[:1], vectors(alone, module, "none")
        )
    # No class token: `cls` yields nothing, every vision position is a patch.
    assert not [p for _, p in both if p.pooling == "cls"]
    tokens = next(p for name, p in both if name == modules[2] and p.pooling == "tokens")
    assert set(tokens.token_role.tolist()) == {TokenRole.IMAGE}
