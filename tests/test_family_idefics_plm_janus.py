"""Idefics3, SmolVLM, PerceptionLM and Janus: sub-images and tiles on the vision batch axis map
back to their images, marker tokens stay text, and a missing extra names its install line."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lens_assets.analyses.behaviour import generate_token_ids
from lens_assets.analyses.patches import patch_grids
from lens_assets.capture.adapters.base import Adapter, PatchGridError
from lens_assets.capture.adapters.idefics3 import SubImageAdapter
from lens_assets.capture.adapters.perception_lm import PackedTilesAdapter
from lens_assets.capture.extraction import capture_batch, to_device
from lens_assets.capture.families import BY_NAME, MissingExtraError, require_packages
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import tiny_config

FAMILIES = ["idefics3", "smolvlm", "perception-lm", "janus"]
SUB_IMAGE_FAMILIES = ["idefics3", "smolvlm"]
# (width, height): a landscape, a portrait and a square image, so images are cut into different
# numbers of sub-images (Idefics3/SmolVLM: 3x3, 3x2 and 3x3 plus a global image) and tiles
# (PerceptionLM: 3x2, 2x3 and 2x2 plus a thumbnail).
SIZES = [(64, 48), (40, 72), (96, 96)]
SUB_IMAGES = [10, 7, 10]
PLM_TILES = [7, 7, 5]
PROMPTS = ["What is it?", "Describe the shapes you can see.", "Hm?"]
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"


def _image(width: int, height: int, shade: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (shade, 200 - shade, 90))
    for x in range(0, width, 5):
        for y in range(0, height, 3):
            image.putpixel((x, y), ((x * 19) % 256, (y * 37) % 256, (x * y) % 256))
    return image


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [_image(w, h, 60 * i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("idefics-plm-janus")


@pytest.fixture(scope="module")
def load(roots: Path) -> Callable[[str], LoadedModel]:
    cache: dict[str, LoadedModel] = {}

    def loader(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, roots / name)
            config = tiny_config(name, roots, modules=list(BY_NAME[name].hook_points))
            cache[name] = load_model(config, name, roots, device="cpu", dtype="float32")
        return cache[name]

    return loader


def _inputs(loaded: LoadedModel, images: Sequence[Image.Image]):
    adapter = loaded.architecture.adapter
    prepared = adapter.prepare(loaded.processor, images, PROMPTS[: len(images)])
    return to_device(prepared, loaded.device, loaded.dtype)


def _raw(loaded: LoadedModel, module: str, images: Sequence[Image.Image]) -> torch.Tensor:
    """The module's own output for these images (one row per sub-image or tile)."""
    inputs = _inputs(loaded, images)
    with capture(loaded.model, [module]) as store, torch.inference_mode():
        loaded.architecture.adapter.forward(loaded.model, inputs, {})
    return store.outputs[module]


def _tokens(loaded: LoadedModel, module: str, images: Sequence[Image.Image]):
    ((_, pooled),) = capture_batch(loaded, images, PROMPTS[: len(images)], [module], ["tokens"])
    return pooled


def _missing(*modules: str) -> Callable[[str], object]:
    """A find_spec that reports `modules` as not installed and asks the real one otherwise."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name in modules else real(name, *args, **kwargs)

    return find_spec


@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("idefics3", SubImageAdapter),
        ("smolvlm", SubImageAdapter),
        ("perception-lm", PackedTilesAdapter),
        ("janus", Adapter),
    ],
)
def test_the_checkpoint_selects_its_family_adapter(
    name: str, adapter: type, load: Callable[[str], LoadedModel]
) -> None:
    assert type(load(name).architecture.adapter) is adapter


@pytest.mark.parametrize("name", SUB_IMAGE_FAMILIES)
def test_padding_sub_images_never_reach_the_vision_tower(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    inputs = _inputs(loaded, images)
    assert inputs["pixel_values"].shape[1] == max(SUB_IMAGES)  # padded to the largest sample
    assert "pixel_attention_mask" in inputs
    assert _raw(loaded, BY_NAME[name].hook_points[0], images).shape[0] == sum(SUB_IMAGES)


@pytest.mark.parametrize("name", SUB_IMAGE_FAMILIES)
def test_each_image_gets_exactly_its_own_sub_images(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    for module in BY_NAME[name].hook_points[:2]:  # the tower block and the connector
        tokens = _tokens(loaded, module, images)
        for sample, expected in enumerate(SUB_IMAGES):
            tiles = tokens.tile[tokens.samples == sample]
            assert sorted(set(tiles.tolist())) == list(range(expected)), module


@pytest.mark.parametrize("name", SUB_IMAGE_FAMILIES)
def test_sub_image_markers_are_text_at_the_llm_layer(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    tokenizer = loaded.processor.tokenizer
    markers = {"<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_3_col_3>"}
    marker_ids = set(tokenizer.convert_tokens_to_ids(sorted(markers)))
    inputs = _inputs(loaded, images[:1])
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    tokens = _tokens(loaded, BY_NAME[name].hook_points[-1], images[:1])
    for position, role in zip(tokens.token_index.tolist(), tokens.token_role.tolist(), strict=True):
        if int(ids[position]) in marker_ids:
            assert role == TokenRole.TEXT
    assert marker_ids <= set(ids.tolist())  # the markers are there, one token each


@pytest.mark.parametrize("name", SUB_IMAGE_FAMILIES)
def test_image_tokens_are_sub_images_times_the_image_sequence_length(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    inputs = _inputs(loaded, images)
    per_sample = (inputs["input_ids"] == loaded.model.config.image_token_id).sum(dim=1)
    expected = [count * loaded.processor.image_seq_len for count in SUB_IMAGES]
    assert per_sample.tolist() == expected


@pytest.mark.parametrize("name", SUB_IMAGE_FAMILIES)
def test_only_an_unsplit_image_lies_on_one_patch_grid(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    split = load(name)
    layers = list(BY_NAME[name].hook_points)
    assert all(grid == {} for grid in patch_grids(split, images[:1], "Hm?", layers))
    processor = copy.deepcopy(split.processor)
    processor.image_processor.do_image_splitting = False  # one square sub-image per image
    whole = replace(split, processor=processor)
    (grid,) = patch_grids(whole, images[:1], "Hm?", layers)
    assert set(grid) == set(layers)
    assert len(grid[layers[0]].features) == 16  # the tower's 4x4 patches
    assert len(grid[layers[-1]].features) == 4  # 2x2 tokens after the pixel shuffle


def test_perception_lm_batches_images_with_different_tile_counts(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("perception-lm")
    inputs = _inputs(loaded, images)
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, sum(PLM_TILES))  # packed tiles
    assert loaded.architecture.adapter.sample_tiles(inputs, loaded.layout) == PLM_TILES
    with pytest.raises(ValueError, match="stack"):  # what the processor alone does
        loaded.processor(
            images=images, text=[f"{loaded.processor.image_token}{p}" for p in PROMPTS],
            padding=True, return_tensors="pt",
        )  # fmt: skip


def test_perception_lm_tiles_start_with_a_class_token(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("perception-lm")
    block = BY_NAME["perception-lm"].hook_points[0]
    assert loaded.layout.cls_towers == ("model.vision_tower",)
    tokens = _tokens(loaded, block, images)
    per_tile = _raw(loaded, block, images[:1]).shape[1]  # 1 + patches
    for sample, expected in enumerate(PLM_TILES):
        rows = tokens.samples == sample
        cls = tokens.token_index[rows][tokens.token_role[rows] == TokenRole.CLS]
        assert cls.tolist() == [tile * per_tile for tile in range(expected)]


def test_perception_lm_projector_has_no_class_token(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("perception-lm")
    tokens = _tokens(loaded, BY_NAME["perception-lm"].hook_points[1], images)
    assert not (tokens.token_role == TokenRole.CLS).any()
    assert [int((tokens.samples == s).sum()) for s in range(3)] == [t * 4 for t in PLM_TILES]


def test_perception_lm_tiles_do_not_lie_on_one_patch_grid(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("perception-lm")
    inputs = _inputs(loaded, images)
    with pytest.raises(PatchGridError, match="thumbnail"):
        loaded.architecture.adapter.patch_cells(
            BY_NAME["perception-lm"].hook_points[1], 28, inputs, loaded.layout, 0
        )


def test_janus_image_role_is_the_placeholder_not_its_frame(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("janus")
    tokenizer = loaded.processor.tokenizer
    assert loaded.model.config.image_token_id == tokenizer.convert_tokens_to_ids(
        "<image_placeholder>"
    )
    frame = set(tokenizer.convert_tokens_to_ids(["<begin_of_image>", "<end_of_image>"]))
    inputs = _inputs(loaded, images[:1])
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    tokens = _tokens(loaded, BY_NAME["janus"].hook_points[-1], images[:1])
    roles = dict(zip(tokens.token_index.tolist(), tokens.token_role.tolist(), strict=True))
    assert [roles[i] for i, t in enumerate(ids) if t in frame] == [TokenRole.TEXT] * 2
    assert sum(role == TokenRole.IMAGE for role in roles.values()) == 16  # one per patch


def test_janus_pads_on_the_right(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    """The Janus processor's own default is left padding; extraction pads on the right so a
    real token keeps its batch-size-1 position."""
    inputs = _inputs(load("janus"), images)
    mask = inputs["attention_mask"]
    assert bool((mask[:, 0] == 1).all()) and not bool(mask.all())


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_answers_do_not_depend_on_the_batch(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    """Generation pads on the left (a scoped switch the adapters' prepare follows); PerceptionLM
    generates from its packed tiles too."""
    loaded = load(name)
    batched = generate_token_ids(loaded, images, PROMPTS, max_new_tokens=3, batch_size=3)
    single = generate_token_ids(loaded, images, PROMPTS, max_new_tokens=3, batch_size=1)
    assert batched == single
    assert loaded.processor.tokenizer.padding_side == "right"  # restored for extraction


@pytest.mark.parametrize(("name", "module"), [("perception-lm", "timm"), ("smolvlm", "num2words")])
def test_a_missing_extra_names_its_install_line(
    name: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _missing(module))
    family = BY_NAME[name]
    with pytest.raises(MissingExtraError, match=module) as raised:
        require_packages(family)
    assert f'pip install -e ".[{family.extra}]"' in str(raised.value)


def test_building_perception_lm_without_timm_fails_with_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", _missing("timm"))
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[perception-lm\]"'):
        build_tiny("perception-lm", tmp_path / "plm")
    assert not (tmp_path / "plm").exists()


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_checkpoints_stay_small(name: str, load: Callable[[str], LoadedModel], roots: Path):
    load(name)
    size = sum(f.stat().st_size for f in (roots / name).rglob("*") if f.is_file())
    limit = 2.5 if name == "janus" else 1.5  # Janus carries its VQ-VAE
    assert size < limit * 2**20, f"{name} tiny checkpoint is {size} bytes"


@pytest.mark.parametrize("name", FAMILIES)
def test_configs_hook_the_family_points_and_the_real_model_is_disabled(name: str) -> None:
    family = BY_NAME[name]
    files = [yaml.safe_load(p.read_text()) for p in sorted((CONFIGS / name).glob("*.yaml"))]
    (tiny,) = [d for d in files if d["model_path"] == f"tiny:{name}"]
    (real,) = [d for d in files if d["model_path"] != f"tiny:{name}"]
    assert tiny["modules"] == list(family.hook_points)
    assert tiny["enabled"] is False and real["enabled"] is False
    assert real["model_path"] == family.hub_example
    assert tiny["architecture"] == real["architecture"] == name
