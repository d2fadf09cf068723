"""Molmo2 (the crops-and-pooled-tokens adapter): each image's crops sit on the vision batch
axis, and the adapter's pooled tokens are the low- and high-resolution grids, one per
`<im_patch>` token.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from tests.conftest import hooked, image_counts, image_token_counts, sequences

PROJECTOR = "model.multi_modal_projector"


def test_molmo2_tower_rows_are_each_images_crops(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("molmo2")
    block = BY_NAME["molmo2"].hook_points[0]
    run = hooked(loaded, family_images("molmo2"), [block])
    crops = run.inputs["image_num_crops"].tolist()
    per_crop = run.inputs["pixel_values"].shape[1]
    assert len(set(crops)) > 1
    seq = sequences(loaded, run, block)
    assert image_counts(seq) == [n * per_crop for n in crops]
    assert seq.tiles is not None
    assert [int(t.max()) + 1 for t in seq.tiles] == crops


def test_molmo2_adapter_tokens_are_the_low_and_high_res_grids_and_the_im_patch_tokens(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("molmo2")
    run = hooked(loaded, family_images("molmo2"), [PROJECTOR])
    grids = [a * b + c * d for a, b, c, d in run.inputs["image_grids"].tolist()]
    counts = image_counts(sequences(loaded, run, PROJECTOR))
    assert counts == grids == image_token_counts(loaded, run.inputs)
