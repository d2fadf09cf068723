"""MiniCPM-V 4.6 (the packed-views adapter): an image's source view and slices are packed into
one patch sequence, folded 2x2 inside the tower and 2x2 again by the merger, and come back one
sequence per image with a tile per view; a row of several images gets each image's views back.

What every family does (right padding included) is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import output_tensor
from lens_assets.capture.loading import LoadedModel
from tests.conftest import hooked, image_counts, image_token_counts, sequences

MERGER = "model.merger"


def test_hooks_pack_a_list_of_per_view_tensors_and_keep_a_tuples_first() -> None:
    views = [torch.ones(4, 8), torch.zeros(3, 8)]
    assert output_tensor(views).shape == (7, 8)
    assert output_tensor((views[0], torch.ones(2, 2))) is views[0]


def test_minicpm_merger_gives_every_sample_its_prompts_image_tokens(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("minicpm-v")
    run = hooked(loaded, family_images("minicpm-v"), [MERGER])
    assert image_counts(sequences(loaded, run, MERGER)) == image_token_counts(loaded, run.inputs)


def test_minicpm_sliced_image_has_one_tile_per_view(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("minicpm-v"), family_images("minicpm-v")
    block = BY_NAME["minicpm-v"].hook_points[0]
    run = hooked(loaded, images, [block])
    views = len(run.inputs["target_sizes"])
    assert views > len(images)  # the large square image was sliced
    tiles = sequences(loaded, run, block).tiles
    assert tiles is not None
    per_sample = [len(set(t[t >= 0].tolist())) for t in tiles]
    assert per_sample[:2] == [1, 1] and per_sample[2] == views - 2


def test_minicpm_window_merger_folds_the_encoder_positions_by_four(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("minicpm-v")
    before, after = "model.vision_tower.encoder.layers.0", "model.vision_tower.encoder.layers.1"
    run = hooked(loaded, family_images("minicpm-v")[:2], [before, after])  # one view each
    patches = [int(h) * int(w) for h, w in run.inputs["target_sizes"]]
    assert image_counts(sequences(loaded, run, before)) == patches
    assert image_counts(sequences(loaded, run, after)) == [n // 4 for n in patches]


def test_minicpm_single_view_image_lies_on_its_folded_grid_and_a_sliced_one_does_not(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("minicpm-v")
    adapter = loaded.architecture.adapter
    run = hooked(loaded, family_images("minicpm-v"), [MERGER])
    counts = image_counts(sequences(loaded, run, MERGER))
    rows, cols = (int(v) for v in run.inputs["target_sizes"][1])
    cells = adapter.patch_cells(MERGER, counts[1], run.inputs, loaded.layout, 1)
    assert (cells.rows, cells.cols) == (rows // 4, cols // 4)
    with pytest.raises(PatchGridError):
        adapter.patch_cells(MERGER, counts[2], run.inputs, loaded.layout, 2)


def test_minicpm_a_rows_views_are_assigned_to_its_images(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """A row of a one-view image and a sliced one, beside a text-only row: every view lands on
    its own image as a tile, and each image's image tokens (a run per view) are its own."""
    loaded, images = load_family("minicpm-v"), family_images("minicpm-v")
    adapter = loaded.architecture.adapter
    rows = [[], [images[0], images[2]]]
    inputs = adapter.prepare_on(loaded.processor, rows, ["Hi", "Same?"], "cpu", torch.float32)
    alone = [
        image_token_counts(
            loaded, adapter.prepare_on(loaded.processor, [[i]], ["x"], "cpu", torch.float32)
        )[0]
        for i in (images[0], images[2])
    ]
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    labels = index[1][index[1] >= 0].tolist()
    assert [labels.count(k) for k in range(2)] == alone
    assert not (index[0] >= 0).any()
    views = len(inputs["target_sizes"])
    ((_, merged),) = capture_batch(loaded, rows, ["Hi", "Same?"], [MERGER], ["tokens"])
    assert merged.image_index is not None and merged.tile is not None
    assert set(merged.samples.tolist()) == {1}
    assert [int((merged.image_index == k).sum()) for k in range(2)] == alone
    tiles = [len(set(merged.tile[merged.image_index == k].tolist())) for k in range(2)]
    assert tiles == [1, views - 1]
