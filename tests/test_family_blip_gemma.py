"""BLIP-2, InstructBLIP, PaliGemma and Gemma3: what their adapters do beyond the generic path,
checked on real tiny checkpoints loaded through `from_pretrained`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from lens_assets.analyses.behaviour import padding_side
from lens_assets.analyses.patches import patch_grids
from lens_assets.capture.adapters.base import Adapter
from lens_assets.capture.adapters.blip2 import QueryAdapter
from lens_assets.capture.adapters.gemma3 import Gemma3Adapter
from lens_assets.capture.adapters.paligemma import PaliGemmaAdapter
from lens_assets.capture.extraction import capture_batch, to_device
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import tiny_config

FAMILIES = ["blip-2", "instructblip", "paligemma", "gemma3"]
SIZES = [(48, 32), (32, 64), (80, 80)]
PROMPTS = ["What is it?", "Describe the colours and shapes you can see in this picture.", "Hm?"]
MAX_CHECKPOINT_BYTES = 1_500_000


def _image(width: int, height: int, shade: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (shade, 180 - shade, 70))
    for x in range(0, width, 5):
        for y in range(0, height, 3):
            image.putpixel((x, y), ((x * 23) % 256, (y * 41) % 256, (x * y) % 256))
    return image


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [_image(w, h, 50 * i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blip-gemma-models")


@pytest.fixture(scope="module")
def load(root: Path) -> Callable[[str], LoadedModel]:
    cache: dict[str, LoadedModel] = {}

    def loader(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, root / name)
            config = tiny_config(name, root, modules=list(BY_NAME[name].hook_points))
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return loader


def _inputs(loaded: LoadedModel, images: Sequence[Image.Image]) -> BatchFeature:
    adapter = loaded.architecture.adapter
    prompts = PROMPTS[: len(images)]
    return to_device(
        adapter.prepare(loaded.processor, images, prompts), loaded.device, loaded.dtype
    )


def _forward_kwargs(loaded: LoadedModel, images: Sequence[Image.Image]) -> set[str]:
    """The keyword arguments the model's own forward receives from the adapter."""
    seen: set[str] = set()

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    handle = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            loaded.architecture.adapter.forward(loaded.model, _inputs(loaded, images), {})
    finally:
        handle.remove()
    return seen


def _token_rows(
    loaded: LoadedModel,
    module: str,
    images: Sequence[Image.Image],
    prompts: Sequence[str] = PROMPTS,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sample: (token index, role, vector) of every stored `tokens` row at `module`."""
    prompts = prompts[: len(images)]
    ((_, tokens),) = capture_batch(loaded, images, prompts, [module], ["tokens"])
    assert tokens.token_index is not None and tokens.token_role is not None
    return [
        (
            tokens.token_index[tokens.samples == s],
            tokens.token_role[tokens.samples == s],
            tokens.vectors[tokens.samples == s],
        )
        for s in range(len(images))
    ]


@pytest.mark.parametrize(
    ("name", "adapter_class"),
    [
        ("blip-2", QueryAdapter),
        ("instructblip", QueryAdapter),
        ("paligemma", PaliGemmaAdapter),
        ("gemma3", Gemma3Adapter),
    ],
)
def test_the_checkpoint_selects_its_family_adapter(
    name: str, adapter_class: type[Adapter], load: Callable[[str], LoadedModel]
) -> None:
    assert isinstance(load(name).architecture.adapter, adapter_class)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_tiny_checkpoint_stays_small(
    name: str, load: Callable[[str], LoadedModel], root: Path
) -> None:
    load(name)
    size = sum(p.stat().st_size for p in (root / name).rglob("*") if p.is_file())
    assert size < MAX_CHECKPOINT_BYTES, f"{name}: {size} bytes"


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_blip_prompts_carry_exactly_the_query_tokens_before_the_text(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    queries = loaded.model.config.num_query_tokens
    ids = _inputs(loaded, images)["input_ids"]
    image_token = loaded.layout.image_token_id
    assert image_token == loaded.model.config.image_token_id
    for row in ids:
        assert (row == image_token).sum() == queries  # no extra <image> from the prompt
        assert (row[:queries] == image_token).all()


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_projection_outputs_are_per_image_query_tokens(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    queries = loaded.model.config.num_query_tokens
    for sample in _token_rows(loaded, "language_projection", images):
        _, roles, _ = sample
        assert roles.tolist() == [TokenRole.IMAGE] * queries  # no class token, no text


def test_blip2_q_former_layers_hold_only_the_queries(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("blip-2")
    queries = loaded.model.config.num_query_tokens
    for _, roles, _ in _token_rows(loaded, "qformer.encoder.layer.1", images):
        assert roles.tolist() == [TokenRole.IMAGE] * queries


def test_instructblip_q_former_reads_the_instruction(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("instructblip")
    assert {"qformer_input_ids", "qformer_attention_mask"} <= _forward_kwargs(loaded, images)
    queries = loaded.model.config.num_query_tokens
    lengths = _inputs(loaded, images)["qformer_attention_mask"].sum(dim=1).tolist()
    rows = _token_rows(loaded, "qformer.encoder.layer.1", images)
    for (_, roles, _), length in zip(rows, lengths, strict=True):
        assert roles.tolist() == [TokenRole.IMAGE] * queries + [TokenRole.TEXT] * length


def test_instructblip_q_former_tokens_do_not_depend_on_the_batch(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("instructblip")
    batched = _token_rows(loaded, "qformer.encoder.layer.1", images)
    for index, image in enumerate(images):
        ((_, roles, single),) = _token_rows(
            loaded, "qformer.encoder.layer.1", [image], [PROMPTS[index]]
        )
        assert torch.equal(roles, batched[index][1])
        torch.testing.assert_close(single, batched[index][2], atol=1e-4, rtol=1e-4)


def test_instructblip_instruction_is_right_padded_while_the_prompt_is_left_padded(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("instructblip")
    with padding_side(loaded.processor, "left"):  # as generation pads
        inputs = _inputs(loaded, images)
    queries = loaded.model.config.num_query_tokens
    assert not inputs["attention_mask"][:, queries].all()  # the LLM's text: pads first
    for mask in inputs["qformer_attention_mask"]:
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()


def test_blip_query_tokens_are_not_placed_on_patches(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("blip-2")
    vision, q_former, language = (
        "vision_model.encoder.layers.1",
        "qformer.encoder.layer.1",
        "language_model.model.decoder.layers.1",
    )
    grids = patch_grids(
        loaded, images, PROMPTS[0], [vision, q_former, "language_projection", language]
    )
    side = (
        loaded.model.config.vision_config.image_size // loaded.model.config.vision_config.patch_size
    )
    for grid in grids:
        assert set(grid) == {vision}  # the class token is not a patch either
        assert len(grid[vision].features) == side * side


def test_paligemma_labels_never_reach_forward(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("paligemma")
    assert "labels" in loaded.processor(images=images[:1], text=["<image>Hm?"], return_tensors="pt")
    seen = _forward_kwargs(loaded, images)
    assert "labels" not in seen
    assert "token_type_ids" in seen


def test_paligemma_prompt_is_image_tokens_bos_prompt_newline(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("paligemma")
    tokenizer = loaded.processor.tokenizer
    inputs = _inputs(loaded, images)
    tokens = loaded.model.config.text_config.num_image_tokens
    for row, mask, prompt in zip(
        inputs["input_ids"], inputs["attention_mask"], PROMPTS, strict=True
    ):
        real = row[mask.bool()]
        assert (real[:tokens] == loaded.layout.image_token_id).all()
        assert int(real[tokens]) == tokenizer.bos_token_id
        assert tokenizer.decode(real[tokens + 1 :]) == f"{prompt}\n"


def test_gemma3_image_roles_sit_on_soft_tokens_not_on_the_begin_of_image_token(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("gemma3")
    config = loaded.model.config
    assert loaded.layout.image_token_id == config.image_token_id
    assert loaded.processor.image_token_id == config.boi_token_id != config.image_token_id
    inputs = _inputs(loaded, images)
    rows = _token_rows(loaded, BY_NAME["gemma3"].hook_points[-1], images)
    for sample, (index, roles, _) in enumerate(rows):
        ids = inputs["input_ids"][sample][inputs["attention_mask"][sample].bool()]
        role_of = dict(zip(index.tolist(), roles.tolist(), strict=True))
        for marker in (config.boi_token_id, config.eoi_token_id):
            (position,) = (ids == marker).nonzero().flatten().tolist()
            assert role_of[position] == TokenRole.TEXT
        soft = (ids == config.image_token_id).nonzero().flatten().tolist()
        assert len(soft) == config.mm_tokens_per_image
        assert all(role_of[p] == TokenRole.IMAGE for p in soft)


def test_gemma3_gets_one_image_per_prompt(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("gemma3")
    with pytest.raises(ValueError, match="number of"):  # a flat list is one prompt's images
        Adapter().prepare(loaded.processor, images, PROMPTS)
    inputs = _inputs(loaded, images)
    assert inputs["pixel_values"].shape[0] == len(images)
    assert "token_type_ids" in _forward_kwargs(loaded, images)
