"""Janus: every patch becomes one `<image_placeholder>` token, framed by begin- and end-of-image
tokens; only the placeholders carry image roles. The generic adapter serves it: a row's images
are framed apart, and a row without one runs text only.

What every family does (right padding included, which Janus's own processor does not default
to) is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import family_inputs, token_rows


def test_janus_image_role_is_the_placeholder_not_its_frame(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, image = load_family("janus"), family_images("janus")[:1]
    tokenizer = loaded.processor.tokenizer
    assert loaded.model.config.image_token_id == tokenizer.convert_tokens_to_ids(
        "<image_placeholder>"
    )
    frame = set(tokenizer.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>"]))
    inputs = family_inputs(loaded, image)
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    tokens = token_rows(loaded, BY_NAME["janus"].hook_points[-1], image)
    roles = dict(zip(tokens.token_index.tolist(), tokens.token_role.tolist(), strict=True))
    assert [roles[i] for i, t in enumerate(ids) if t in frame] == [TokenRole.TEXT] * 2
    assert sum(role == TokenRole.IMAGE for role in roles.values()) == 16  # one per patch


def test_janus_a_rows_images_are_framed_apart_and_a_row_without_one_has_no_frame(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The generic path serves Janus's rows: each image of a row expands to its own framed run
    of placeholders (the frames are text and keep the runs apart), the tower sees each image on
    its own, and a text-only row carries no image tokens or frames at all."""
    loaded, images = load_family("janus"), family_images("janus")
    adapter = loaded.architecture.adapter
    tokenizer = loaded.processor.tokenizer
    frame = tokenizer.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>"])
    rows, prompts = [images[:2], [], images[2:]], ["Same?", "Hi", "What?"]
    inputs = adapter.prepare_on(loaded.processor, rows, prompts, "cpu", torch.float32)
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    assert index[0][index[0] >= 0].tolist() == [0] * 16 + [1] * 16
    assert not (index[1] >= 0).any()
    frames = [int(torch.isin(ids, torch.tensor(frame)).sum()) for ids in inputs["input_ids"]]
    assert frames == [4, 0, 2]
    block = BY_NAME["janus"].hook_points[0]
    pieces = capture_batch(loaded, rows, prompts, [block], ["mean_per_image"])
    found = {
        (int(s), int(i)) for _, p in pieces for s, i in zip(p.samples, p.image_index, strict=True)
    }
    assert found == {(0, 0), (0, 1), (2, 0)}
