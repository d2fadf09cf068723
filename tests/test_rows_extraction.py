"""Rows, not images: a row's images (none, one or several) and its own prompt reach the model
through its family's chat template and processor, every image position says which of the row's
images it shows, and batching rows of different shapes stays exact."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import ImageCountError, per_sample
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import FAMILIES
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import PER_IMAGE, TokenRole
from tests.conftest import ALL_POOLINGS, family_image

# Every family tested offline; each either takes several images per prompt (its adapter's
# `max_images` is not 1) and is held to multi-image exactness, or says so when given more.
FAMILIES_OFFLINE = tuple(f.name for f in FAMILIES if f.tested_offline and not f.remote_code)
# Families with a language model run a row without an image (text only).
LANGUAGE_FAMILIES = tuple(
    f.name for f in FAMILIES if f.tested_offline and not f.remote_code and not f.encoder
)
POOLINGS = [*ALL_POOLINGS, PER_IMAGE]
Key = tuple[int, str, str, int, int]


def hook_points(loaded: LoadedModel) -> list[str]:
    family = loaded.architecture.family
    assert family is not None
    return list(family.hook_points)


def row_images(count: int, seed: int) -> list[Image.Image]:
    """`count` pictures of different sizes and shades, so images are told apart."""
    sizes = [(64, 48), (40, 72), (96, 96), (56, 56)]
    return [family_image(*sizes[(seed + k) % 4], 40 * (seed + k) % 255) for k in range(count)]


ROWS: list[tuple[list[Image.Image], str]] = [
    (row_images(2, 0), "Which image shows the brighter square?"),
    (row_images(1, 1), "Colour?"),
    (row_images(4, 2), "Which of the four images differs from the others? Answer A, B, C or D."),
    (row_images(0, 0), "Name a colour that is often used for stop signs."),
    (row_images(2, 3), "Are these the same?"),
    (row_images(1, 2), "Describe the picture in a few words please."),
]


def collect(
    loaded: LoadedModel,
    rows: Sequence[tuple[list[Image.Image], str]],
    batch_size: int,
) -> dict[Key, torch.Tensor]:
    """Every pooled vector, keyed by (row, layer, pooling, token index, image index)."""
    found: dict[Key, torch.Tensor] = {}
    modules = hook_points(loaded)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        pieces = capture_batch(
            loaded, [images for images, _ in batch], [p for _, p in batch], modules, POOLINGS
        )
        for layer, pooled in pieces:
            for at, sample in enumerate(pooled.samples.tolist()):
                token = -1 if pooled.token_index is None else int(pooled.token_index[at])
                image = -1 if pooled.image_index is None else int(pooled.image_index[at])
                key = (start + sample, layer, pooled.pooling, token, image)
                assert key not in found, f"duplicate vector for {key}"
                found[key] = pooled.vectors[at].float().clone()
    return found


# OneVision gives each image of a multi-image row one untiled tile (its processor and model do),
# so an image's share of such a row is what it gets beside another image, not alone.
UNTILED_IN_ROWS = {"llava-onevision"}


def multi_image(loaded: LoadedModel) -> bool:
    return loaded.architecture.adapter.max_images != 1


def rows_for(loaded: LoadedModel) -> list[tuple[list[Image.Image], str]]:
    adapter = loaded.architecture.adapter
    kept = [r for r in ROWS if adapter.text_only or r[0]]
    return [r for r in kept if multi_image(loaded) or len(r[0]) <= 1]


@pytest.mark.parametrize("family", FAMILIES_OFFLINE)
def test_rows_of_zero_one_two_and_four_images_batch_exactly(
    family: str, load_family: Callable[[str], LoadedModel]
) -> None:
    loaded = load_family(family)
    rows = rows_for(loaded)
    single, batched = collect(loaded, rows, 1), collect(loaded, rows, 3)
    assert batched.keys() == single.keys()
    shown = {key[4] for key in single if key[2] == PER_IMAGE}
    assert shown == ({0, 1, 2, 3} if multi_image(loaded) else {0})
    worst = max(
        float((batched[k] - single[k]).norm() / single[k].norm().clamp_min(1e-12)) for k in single
    )
    assert worst <= 1e-4, f"largest relative error {worst:.2e}"


@pytest.mark.parametrize("family", LANGUAGE_FAMILIES)
def test_each_image_position_names_the_image_it_shows(
    family: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """Against the processor: the positions holding the image token are the image positions,
    in order, each image's share being what the processor gives that image alone."""
    loaded = load_family(family)
    if not multi_image(loaded):
        pytest.skip(f"{family} takes one image per prompt (see the single-image test)")
    adapter, layout = loaded.architecture.adapter, loaded.layout
    rows = [r for r in rows_for(loaded) if len(r[0]) >= 2]
    inputs = adapter.prepare_on(
        loaded.processor, [i for i, _ in rows], [p for _, p in rows], loaded.device, loaded.dtype
    )
    roles = adapter.text_roles(inputs, layout)
    index = adapter.text_image_index(inputs, roles)
    for sample, (images, _) in enumerate(rows):
        expected_positions = (inputs["input_ids"][sample] == layout.image_token_id).nonzero()
        assert torch.equal((index[sample] >= 0).nonzero(), expected_positions)
        copies = 2 if family in UNTILED_IN_ROWS else 1
        alone = [
            adapter.prepare_on(
                loaded.processor, [[image] * copies], ["x"], loaded.device, loaded.dtype
            )
            for image in images
        ]
        sizes = [int((a["input_ids"] == layout.image_token_id).sum()) // copies for a in alone]
        labelled = index[sample][index[sample] >= 0].tolist()
        assert labelled == [k for k, size in enumerate(sizes) for _ in range(size)]


@pytest.mark.parametrize("family", FAMILIES_OFFLINE)
def test_vision_positions_name_their_image_and_per_image_means_are_each_images_own(
    family: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """The vision tower sees each image of a row on its own: a row's per-image mean of image
    k equals that image's mean when it is run as a one-image row."""
    loaded = load_family(family)
    if not multi_image(loaded):
        pytest.skip(f"{family} takes one image per prompt (see the single-image test)")
    tower = next(m for m in hook_points(loaded) if loaded.architecture.adapter.is_vision(m))
    images = row_images(2, 0)
    pair = capture_batch(loaded, [images], ["Same?"], [tower], [PER_IMAGE])
    for k, image in enumerate(images):
        if family in UNTILED_IN_ROWS:
            twice = capture_batch(loaded, [[image, image]], ["Same?"], [tower], [PER_IMAGE])
            (own,) = [p for _, p in twice if int(p.image_index[0]) == 0]
        else:
            ((_, own),) = capture_batch(loaded, [[image]], ["Same?"], [tower], ["mean_image"])
        (pooled,) = [p for _, p in pair if p.image_index is not None and int(p.image_index[0]) == k]
        torch.testing.assert_close(pooled.vectors[0], own.vectors[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", LANGUAGE_FAMILIES)
def test_a_row_without_images_is_text_only(
    family: str, load_family: Callable[[str], LoadedModel]
) -> None:
    loaded = load_family(family)
    if not loaded.architecture.adapter.text_only:
        pytest.xfail(f"{family}: text-only rows not supported by its adapter yet")
    pieces = capture_batch(loaded, [[]], ["Name a colour."], hook_points(loaded), POOLINGS)
    assert pieces, "a text-only row stores its language-model vectors"
    poolings = {p.pooling for _, p in pieces}
    assert "last" in poolings and "mean_text" in poolings
    assert "mean_image" not in poolings and PER_IMAGE not in poolings
    tokens = [p for _, p in pieces if p.pooling == "tokens"]
    assert all(int(r) != TokenRole.IMAGE for p in tokens for r in p.token_role.tolist())


def test_a_rows_own_prompt_reaches_the_model(load_family: Callable[[str], LoadedModel]) -> None:
    loaded = load_family("llava")
    question = "Is the left square brighter than the right one?"
    inputs = loaded.architecture.adapter.prepare_on(
        loaded.processor, [row_images(2, 0)], [question], loaded.device, loaded.dtype
    )
    seen = loaded.processor.tokenizer.decode(inputs["input_ids"][0])
    assert question in seen


def test_the_same_image_under_two_questions_gives_two_last_vectors(
    load_family: Callable[[str], LoadedModel],
) -> None:
    loaded = load_family("llava")
    image = row_images(1, 0)
    layer = "model.language_model.layers.1"
    pieces = capture_batch(
        loaded, [image, image], ["Is it red?", "How many squares?"], [layer], ["last"]
    )
    ((_, last),) = pieces
    assert not torch.allclose(last.vectors[0], last.vectors[1], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES_OFFLINE)
def test_a_single_image_family_says_so_when_given_more(
    family: str, load_family: Callable[[str], LoadedModel]
) -> None:
    loaded = load_family(family)
    if multi_image(loaded):
        pytest.skip(f"{family} takes several images per prompt")
    with pytest.raises(ImageCountError, match="at most 1 image"):
        capture_batch(loaded, [row_images(2, 0)], ["a photo"], hook_points(loaded), ["last"])


def test_a_bare_image_is_a_row_of_one() -> None:
    image = row_images(1, 0)[0]
    assert per_sample([image, [image, image], [], None]) == [[image], [image, image], [], []]
