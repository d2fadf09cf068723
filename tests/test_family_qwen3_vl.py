"""Qwen3-VL: forward needs `mm_token_type_ids` (the adapter passes them), and each DeepStack
merger folds patches like the main merger, one row per image token.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from lens_assets.capture.loading import LoadedModel
from tests.conftest import hooked, image_rows, sequences

NAME = "qwen3-vl"


def test_qwen3_vl_forward_receives_the_mm_token_type_ids(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(NAME)
    seen: dict[str, Any] = {}

    def keep(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    handle = loaded.model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        run = hooked(loaded, family_images(NAME), [])
    finally:
        handle.remove()
    is_image = run.inputs["input_ids"] == loaded.layout.image_token_id
    assert torch.equal(seen["mm_token_type_ids"].bool(), is_image)


def test_qwen3_vl_deepstack_merger_rows_split_per_image(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """A DeepStack merger folds patches like the main merger: one row per image token."""
    loaded, images = load_family(NAME), family_images(NAME)
    module = "model.visual.deepstack_merger_list.0"
    run = hooked(loaded, images, [module])
    seq = sequences(loaded, run, module)
    with torch.inference_mode():
        features = loaded.model.model.get_image_features(
            run.inputs["pixel_values"], run.inputs["image_grid_thw"]
        )
    tokens = (run.inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1)
    for sample in range(len(images)):
        rows = image_rows(seq, sample)
        assert len(rows) == int(tokens[sample])
        torch.testing.assert_close(rows, features.deepstack_features[0][sample])
