"""Qwen3-VL: forward needs `mm_token_type_ids` (the adapter passes them), and each DeepStack
merger folds patches like the main merger, one row per image token, split per image of a row
(the packed tests shared with Qwen2-VL are in tests/test_family_qwen2_vl.py).

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import family_image, hooked, image_rows, sequences

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


def test_qwen3_vl_deepstack_merger_rows_of_a_multi_image_row_split_per_image(
    load_family: Callable[[str], LoadedModel],
) -> None:
    """With rows of two images, none and one, each image's DeepStack rows are the tower's own
    features for that image (the batch's images in order, a text-only row holding none)."""
    loaded = load_family(NAME)
    adapter = loaded.architecture.adapter
    module = "model.visual.deepstack_merger_list.0"
    images = [family_image(w, h, 50 * k) for k, (w, h) in enumerate([(64, 48), (40, 72), (96, 96)])]
    rows = [images[:2], [], images[2:]]
    inputs = adapter.prepare_on(
        loaded.processor, rows, ["Two?", "None.", "One?"], loaded.device, loaded.dtype
    )
    with capture(loaded.model, [module]) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
        features = loaded.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_grid_thw"]
        )
    seq = adapter.sequences(module, store.outputs[module], inputs, loaded.layout, len(rows))
    assert seq.image_index is not None and seq.roles is not None
    assert not (seq.roles[1] == TokenRole.IMAGE).any()
    per_image = iter(features.deepstack_features[0])
    for sample, row in enumerate(rows):
        for k in range(len(row)):
            mine = seq.hidden[sample][seq.image_index[sample] == k]
            torch.testing.assert_close(mine, next(per_image))
