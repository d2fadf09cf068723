"""Qwen2-VL and its successors (the packed adapter, shared by Qwen2.5-VL and Qwen3-VL) with rows
of several images: the vision tower packs every image of the batch into one sequence, and the
adapter hands each sample its own images' rows, in order, each marked with its image.

What every family does is in tests/test_families.py; rows of 0..n images in
tests/test_rows_extraction.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import family_image

QWEN_FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


def rows_of_images() -> list[list[Image.Image]]:
    """Two images of different sizes, none, one and three: a mixed batch."""
    sizes = [(64, 48), (40, 72), (96, 96), (56, 32), (32, 64), (48, 48)]
    images = [family_image(w, h, 40 * k) for k, (w, h) in enumerate(sizes)]
    return [images[0:2], [], images[2:3], images[3:6]]


def run_rows(
    loaded: LoadedModel, rows: Sequence[Sequence[Image.Image]], modules: Sequence[str]
) -> tuple[BatchFeature, dict[str, torch.Tensor], torch.Tensor]:
    """One forward pass of `rows` as extraction prepares them: the inputs, each hooked
    module's output and the vectors the language model received."""
    adapter = loaded.architecture.adapter
    prompts = [f"Look at {len(r)} pictures." for r in rows]
    inputs = adapter.prepare_on(
        loaded.processor, [list(r) for r in rows], prompts, loaded.device, loaded.dtype
    )
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: object, _args: object, kwargs: dict[str, Any]) -> None:
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    handle = loaded.model.model.language_model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with capture(loaded.model, modules) as store, torch.inference_mode():
            adapter.forward(loaded.model, inputs, {})
    finally:
        handle.remove()
    return inputs, dict(store.outputs), seen["inputs_embeds"]


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_qwen_merger_rows_of_a_multi_image_row_are_its_llm_image_embeddings_in_order(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """Each sample's merger rows are the LLM's image embeddings of that sample, in sequence
    order, and both name the same image at every position (a text-only sample has none)."""
    loaded = load_family(name)
    adapter, layout = loaded.architecture.adapter, loaded.layout
    rows = rows_of_images()
    inputs, outputs, embeds = run_rows(loaded, rows, ["model.visual.merger"])
    seq = adapter.sequences("model.visual.merger", outputs["model.visual.merger"], inputs,
                            layout, len(rows))  # fmt: skip
    assert seq.roles is not None and seq.image_index is not None
    text_index = adapter.text_image_index(inputs, adapter.text_roles(inputs, layout))
    for sample, images in enumerate(rows):
        is_image = inputs["input_ids"][sample] == layout.image_token_id
        mine = seq.roles[sample] == TokenRole.IMAGE
        torch.testing.assert_close(seq.hidden[sample][mine], embeds[sample][is_image])
        assert seq.image_index[sample][mine].tolist() == text_index[sample][is_image].tolist()
        assert set(seq.image_index[sample][mine].tolist()) == set(range(len(images)))


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_qwen_block_rows_of_each_image_fold_into_its_llm_image_tokens(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """The last block's rows of image k of a row, put through the merger, give image k's LLM
    image embeddings: each image's patches come back whole and in the merger's order (for
    Qwen2.5-VL: out of window order, which is per image)."""
    loaded = load_family(name)
    adapter, layout = loaded.architecture.adapter, loaded.layout
    last = f"model.visual.blocks.{loaded.model.config.vision_config.depth - 1}"
    rows = rows_of_images()
    inputs, outputs, embeds = run_rows(loaded, rows, [last])
    seq = adapter.sequences(last, outputs[last], inputs, layout, len(rows))
    text_index = adapter.text_image_index(inputs, adapter.text_roles(inputs, layout))
    assert seq.image_index is not None
    merger = loaded.model.model.visual.merger
    for sample, images in enumerate(rows):
        for k in range(len(images)):
            with torch.inference_mode():
                merged = merger(seq.hidden[sample][seq.image_index[sample] == k])
            torch.testing.assert_close(merged, embeds[sample][text_index[sample] == k])


@pytest.mark.parametrize("name", QWEN_FAMILIES)
def test_qwen_patch_cells_follow_a_samples_own_image_and_refuse_several(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """Patch grids are per image: a one-image sample after a two-image one gets its own
    image's grid (the batch's third, not its second), and a sample of several images is
    refused."""
    loaded = load_family(name)
    adapter, layout = loaded.architecture.adapter, loaded.layout
    two, _, one, _ = rows_of_images()
    inputs, _, _ = run_rows(loaded, [two, one, []], [])
    alone, _, _ = run_rows(loaded, [one], [])
    tokens = int((alone["input_ids"] == layout.image_token_id).sum())
    for count in (tokens, tokens * 4):  # merged tokens, and patches before the merger
        ours = adapter.patch_cells("model.visual.merger", count, inputs, layout, 1)
        theirs = adapter.patch_cells("model.visual.merger", count, alone, layout, 0)
        assert (ours.rows, ours.cols) == (theirs.rows, theirs.cols)
        assert ours.cells.tolist() == theirs.cells.tolist()
    with pytest.raises(PatchGridError, match="2 images"):
        adapter.patch_cells("model.visual.merger", 8, inputs, layout, 0)
