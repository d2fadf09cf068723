"""Janus: every patch becomes one `<image_placeholder>` token, framed by begin- and end-of-image
tokens; only the placeholders carry image roles.

What every family does (right padding included, which Janus's own processor does not default
to) is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

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
