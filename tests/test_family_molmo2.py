"""Molmo2 (the crops-and-pooled-tokens adapter): each image's crops sit on the vision batch
axis, and the adapter's pooled tokens are the low- and high-resolution grids, one per
`<im_patch>` token; a row of several images keeps each image's crops, grids and tokens apart.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from lens_assets.capture.extraction import capture_batch
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


def test_molmo2_a_rows_images_get_their_own_crops_and_grids(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """A row of two images beside a text-only row: each image's `<im_patch>` tokens (broken
    into runs by `<im_col>`) are its two grids, its tower rows its crops, and its adapter
    tokens its low-res then high-res grid."""
    loaded, images = load_family("molmo2"), family_images("molmo2")
    adapter = loaded.architecture.adapter
    rows = [images[:2], []]
    inputs = adapter.prepare_on(loaded.processor, rows, ["Same?", "Hi"], "cpu", torch.float32)
    grids = [a * b + c * d for a, b, c, d in inputs["image_grids"].tolist()]
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    labels = index[0][index[0] >= 0].tolist()
    assert [labels.count(k) for k in range(2)] == grids
    assert not (index[1] >= 0).any()
    block = BY_NAME["molmo2"].hook_points[0]
    pieces = dict(capture_batch(loaded, rows, ["Same?", "Hi"], [block, PROJECTOR], ["tokens"]))
    crops = inputs["image_num_crops"].tolist()
    tower, pooled = pieces[block], pieces[PROJECTOR]
    assert tower.image_index is not None and tower.tile is not None
    assert [len(set(tower.tile[tower.image_index == k].tolist())) for k in range(2)] == crops
    assert pooled.image_index is not None and pooled.tile is not None
    assert [int((pooled.image_index == k).sum()) for k in range(2)] == grids
    assert set(pooled.samples.tolist()) == set(tower.samples.tolist()) == {0}
