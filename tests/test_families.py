"""Every family with a tiny checkpoint against one contract: its own adapter, a small checkpoint,
extraction through a vision-tower block, the projector and an LLM layer that does not depend on
the batch, `image` roles on exactly the family's image tokens, prompts padded on the right, and
configs for the tiny and the real model; and the tile column a tiled family fills reaches the
warehouse.

`CASES` holds what differs per family; what only one family does is tested in its own
`tests/test_family_<family>.py`. The models and images come from conftest's `load_family` and
`family_images`, built once per session for this module and the family modules alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from lens_assets.analyses.behaviour import generate_token_ids
from lens_assets.capture.adapters.base import Adapter
from lens_assets.capture.adapters.blip2 import QueryAdapter
from lens_assets.capture.adapters.dual_encoder import DualEncoderAdapter
from lens_assets.capture.adapters.gemma3 import Gemma3Adapter
from lens_assets.capture.adapters.idefics3 import SubImageAdapter
from lens_assets.capture.adapters.internvl_aya import DynamicTileAdapter
from lens_assets.capture.adapters.llava_next import AnyresTileAdapter
from lens_assets.capture.adapters.minicpm_v import PackedViewsAdapter
from lens_assets.capture.adapters.molmo2 import CropsAndPooledTokensAdapter
from lens_assets.capture.adapters.paligemma import PaliGemmaAdapter
from lens_assets.capture.adapters.perception_lm import PackedTilesAdapter
from lens_assets.capture.adapters.pixtral import PixtralAdapter
from lens_assets.capture.adapters.qwen2_5_vl import WindowedVisionAdapter
from lens_assets.capture.adapters.qwen_vl import PackedVisionAdapter
from lens_assets.capture.adapters.siglip import SiglipAdapter
from lens_assets.capture.adapters.vision_encoder import VisionEncoderAdapter
from lens_assets.capture.coverage import coverage_markdown
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME, MissingExtraError, get_family, require_packages
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.tiny import tiny_architectures
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import (
    ALL_POOLINGS,
    FAMILY_PROMPTS,
    FAMILY_SIZES,
    family_image,
    family_inputs,
    missing_modules,
    tiny_config,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "models"
Key = tuple[int, str, str, int, int]


@dataclass(frozen=True)
class Case:
    """What one family's tiny checkpoint is expected to do on its three test images."""

    adapter: type[Adapter]  # the exact class `adapter_for` picks from the checkpoint
    image_tokens: tuple[int, ...] = ()  # `config.image_token_id` per prompt (none: an encoder)
    max_bytes: int = 1_500_000  # the checkpoint folder stays this small
    processor_pads_left: bool = False  # the processor alone pads on the left
    greedy: bool = False  # generation is checked too, batched against one at a time
    # configs/models/<family>/ holds exactly a disabled tiny config on the family's hook points
    # and a disabled config for the real model (others keep a tiny config enabled for the demo)
    config_pair: bool = True
    extras: tuple[str, ...] = ()  # packages its extra installs


CASES: dict[str, Case] = {
    "aya-vision": Case(DynamicTileAdapter, (16, 12, 4), processor_pads_left=True),
    "blip-2": Case(QueryAdapter, (4, 4, 4), config_pair=False),
    "clip": Case(DualEncoderAdapter, config_pair=False),
    "dinov2": Case(VisionEncoderAdapter),
    "gemma3": Case(Gemma3Adapter, (4, 4, 4)),
    "idefics3": Case(SubImageAdapter, (40, 28, 40), greedy=True),
    "instructblip": Case(QueryAdapter, (4, 4, 4), config_pair=False),
    "internvl": Case(DynamicTileAdapter, (16, 12, 4), processor_pads_left=True),
    # Janus carries its VQ-VAE (GroupNorm(32) keeps its channels at 32 or more).
    "janus": Case(
        Adapter,
        (16, 16, 16),
        max_bytes=int(2.5 * 2**20),
        processor_pads_left=True,
        greedy=True,
    ),
    "llava": Case(Adapter, (16, 16, 16), config_pair=False),
    "llava-next": Case(AnyresTileAdapter, (52, 68, 88)),
    "llava-onevision": Case(AnyresTileAdapter, (52, 68, 172)),
    "minicpm-v": Case(PackedViewsAdapter, (4, 3, 20), processor_pads_left=True),
    "mistral3": Case(PixtralAdapter, (12, 12, 16)),
    "molmo2": Case(CropsAndPooledTokensAdapter, (10, 10, 8)),
    "paligemma": Case(PaliGemmaAdapter, (16, 16, 16)),
    "perception-lm": Case(PackedTilesAdapter, (28, 28, 20), greedy=True, extras=("timm",)),
    "pixtral": Case(PixtralAdapter, (12, 12, 16)),
    "qwen2-vl": Case(PackedVisionAdapter, (12, 8, 36), config_pair=False),
    "qwen2.5-vl": Case(WindowedVisionAdapter, (12, 8, 36)),
    "qwen3-vl": Case(PackedVisionAdapter, (12, 8, 36)),
    "siglip": Case(SiglipAdapter),
    "smolvlm": Case(SubImageAdapter, (40, 28, 40), greedy=True, extras=("num2words",)),
}
FAMILIES = sorted(CASES)
VLMS = [name for name in FAMILIES if not BY_NAME[name].encoder]


def test_the_table_holds_every_tiny_family() -> None:
    assert tiny_architectures() == FAMILIES
    assert all(bool(CASES[name].image_tokens) != BY_NAME[name].encoder for name in FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_checkpoint_selects_its_family_adapter(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    assert type(load_family(name).architecture.adapter) is CASES[name].adapter


@pytest.mark.parametrize("name", FAMILIES)
def test_the_tiny_checkpoint_stays_small(
    name: str, load_family: Callable[[str], LoadedModel], family_root: Path
) -> None:
    load_family(name)
    size = sum(f.stat().st_size for f in (family_root / name).rglob("*") if f.is_file())
    assert size < CASES[name].max_bytes, f"{name} tiny checkpoint is {size} bytes"


def collect(
    loaded: LoadedModel,
    modules: Sequence[str],
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    batch_size: int,
) -> dict[Key, torch.Tensor]:
    """Every stored vector, keyed by (sample, layer, pooling, token index, tile)."""
    vectors: dict[Key, torch.Tensor] = {}
    for start in range(0, len(images), batch_size):
        pieces = capture_batch(
            loaded,
            images[start : start + batch_size],
            prompts[start : start + batch_size],
            modules,
            ALL_POOLINGS,
        )
        for layer, pooled in pieces:
            sample, index, _, tile, _ = pooled.positions().tolist()
            for row in range(len(sample)):
                key = (start + sample[row], layer, pooled.pooling, index[row], tile[row])
                assert key not in vectors, f"duplicate vector for {key}"
                vectors[key] = pooled.vectors[row].float().clone()
    return vectors


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_of_three_equals_batch_of_one(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    # The same three images for every family. (InternVL's and Aya's own test images put a
    # one-tile image beside tiled ones, whose rows then carry tile 0 batched but no tile alone:
    # see tests/test_family_internvl_aya.py.)
    loaded = load_family(name)
    images = [family_image(w, h, 60 * index) for index, (w, h) in enumerate(FAMILY_SIZES)]
    modules = BY_NAME[name].hook_points
    batched = collect(loaded, modules, images, FAMILY_PROMPTS, batch_size=3)
    single = collect(loaded, modules, images, FAMILY_PROMPTS, batch_size=1)
    assert batched.keys() == single.keys()
    worst = max(
        float((batched[k] - single[k]).abs().max() / single[k].abs().max().clamp_min(1.0))
        for k in single
    )
    assert worst <= 1e-4, f"largest error {worst:.2e}"
    for layer in modules:  # every hook point gave vectors for every image
        assert {k[0] for k in single if k[1] == layer} == set(range(len(images)))


@pytest.mark.parametrize("name", VLMS)
def test_image_roles_are_the_positions_of_the_image_token(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    language_layer = BY_NAME[name].hook_points[-1]
    ((_, tokens),) = capture_batch(loaded, images, FAMILY_PROMPTS, [language_layer], ["tokens"])
    inputs = family_inputs(loaded, images)
    image_token_id = loaded.layout.image_token_id
    assert image_token_id == _config_image_token(loaded.model.config)
    for sample in range(len(images)):
        mask = inputs["attention_mask"][sample].bool()
        ids = inputs["input_ids"][sample][mask]
        expected = (ids == image_token_id).nonzero().flatten().tolist()
        rows = tokens.samples == sample
        positions = tokens.token_index[rows][tokens.token_role[rows] == TokenRole.IMAGE]
        assert positions.tolist() == expected
        assert len(expected) > 0
        assert int(rows.sum()) == len(ids)  # one row per real token, pads dropped


def _config_image_token(config: object) -> int:
    """The model config's own image-token id (never the processor's: Gemma3's processor
    `image_token_id` is its begin-of-image token)."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise AssertionError("the model config names no image token")


@pytest.mark.parametrize("name", VLMS)
def test_each_prompt_holds_its_images_tokens(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The image-token count per prompt: fixed (queries, pooled or resized images) or the
    image's own tiles, crops, sub-images or patch grid."""
    loaded = load_family(name)
    inputs = family_inputs(loaded, family_images(name))
    counts = (inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1).tolist()
    assert tuple(counts) == CASES[name].image_tokens


@pytest.mark.parametrize("name", VLMS)
def test_prompts_are_padded_on_the_right(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Extraction pads on the right, so a real token keeps its batch-size-1 position, even
    where the processor's own default is left padding."""
    loaded, images = load_family(name), family_images(name)
    adapter = loaded.architecture.adapter
    mask = adapter.prepare(loaded.processor, images, FAMILY_PROMPTS)["attention_mask"]
    assert bool(mask[:, 0].all()) and not bool(mask.all())  # real tokens first; pads exist
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)  # no token after a pad
    if CASES[name].processor_pads_left:
        texts = [adapter.prompt_text(loaded.processor, p) for p in FAMILY_PROMPTS]
        own = loaded.processor(images=images, text=texts, padding=True, return_tensors="pt")
        assert not bool(own["attention_mask"][:, 0].all())  # the processor's default: left


@pytest.mark.parametrize("name", [name for name in FAMILIES if CASES[name].greedy])
def test_greedy_answers_do_not_depend_on_the_batch(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Generation pads on the left (a scoped switch the adapters' prepare follows); PerceptionLM
    generates from its packed tiles too."""
    loaded, images = load_family(name), family_images(name)
    batched = generate_token_ids(loaded, images, FAMILY_PROMPTS, max_new_tokens=3, batch_size=3)
    single = generate_token_ids(loaded, images, FAMILY_PROMPTS, max_new_tokens=3, batch_size=1)
    assert batched == single
    assert loaded.processor.tokenizer.padding_side == "right"  # restored for extraction


@pytest.mark.parametrize("name", FAMILIES)
def test_the_family_has_a_tiny_config_and_a_disabled_real_model_config(name: str) -> None:
    family = BY_NAME[name]
    files = [yaml.safe_load(p.read_text()) for p in sorted((CONFIGS / name).glob("*.yaml"))]
    tiny = [d for d in files if str(d["model_path"]).startswith("tiny:")]
    real = [d for d in files if not str(d["model_path"]).startswith("tiny:")]
    assert tiny, f"configs/models/{name}/ has no tiny config"
    assert [d["model_path"] for d in real] == [family.hub_example], name
    assert all(d.get("enabled") is False for d in real), name
    if CASES[name].config_pair:
        ((tiny_file,), (real_file,)) = (tiny, real)
        assert tiny_file["model_path"] == f"tiny:{name}"
        assert tiny_file["modules"] == list(family.hook_points)
        assert tiny_file["enabled"] is False and real_file["enabled"] is False
        assert tiny_file["architecture"] == real_file["architecture"] == name


@pytest.mark.parametrize(
    ("name", "module"), [(name, m) for name in FAMILIES for m in CASES[name].extras]
)
def test_a_missing_extra_names_its_install_line(
    name: str, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", missing_modules(module))
    family = BY_NAME[name]
    with pytest.raises(MissingExtraError, match=module) as raised:
        require_packages(family)
    assert f'pip install -e ".[{family.extra}]"' in str(raised.value)


VLM_LENS_ARCHITECTURES = (
    "llava", "llavanext", "qwen", "blip2", "clip", "paligemma", "internvl", "janus",
    "aya-vision", "pixtral", "plm", "minicpm", "molmo", "cogvlm", "glamm", "internlm-xcomposer",
)  # fmt: skip


@pytest.mark.parametrize("name", VLM_LENS_ARCHITECTURES)
def test_every_vlm_lens_architecture_name_is_accepted(name: str) -> None:
    family = get_family(name)
    assert family.remote_code == (name in {"minicpm", "molmo", "cogvlm", "glamm",
                                           "internlm-xcomposer"})  # fmt: skip


def test_the_readme_shows_the_coverage_table_lens_models_prints() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- models:start -->\n")[1].split("<!-- models:end -->")[0]
    assert block == coverage_markdown()


def test_tiles_land_in_the_warehouse_tile_column(
    load_family: Callable[[str], LoadedModel], tmp_path: Path
) -> None:
    """InternVL cuts a wide image into crops plus a thumbnail: its vision `tokens` rows carry
    their tile, pooled rows carry none, and `mean_image` is one row per image over all tiles."""
    from lens_assets.resources.warehouse import Warehouse

    from lens_assets.capture.extraction import extract_loaded

    loaded = load_family("internvl")
    vision = BY_NAME["internvl"].hook_points[0]
    paths = []
    for index, size in enumerate([(96, 32), (32, 32)]):  # 3 crops + thumbnail; one tile
        paths.append(tmp_path / f"image-{index}.png")
        Image.new("RGB", size, (40 * index, 120, 200)).save(paths[-1])
    config = tiny_config("internvl", tmp_path, modules=[vision], pooling=["tokens", "mean_image"])
    warehouse = Warehouse.at(tmp_path / "warehouse")
    extract_loaded(loaded, config, warehouse, {"tiles": paths}, progress=False)
    rows = warehouse.fetch_arrow(
        "SELECT i.path, a.pooling, count(*) AS n, count(DISTINCT a.tile) AS tiles, "
        "count(a.tile) AS with_tile FROM activations a JOIN images i USING (image_id, dataset) "
        "GROUP BY ALL ORDER BY ALL"
    ).to_pylist()
    assert [(Path(r["path"]).name, r["pooling"], r["tiles"]) for r in rows] == [
        ("image-0.png", "mean_image", 0), ("image-0.png", "tokens", 4),
        ("image-1.png", "mean_image", 0), ("image-1.png", "tokens", 1),
    ]  # fmt: skip
    assert all(r["with_tile"] == (r["n"] if r["pooling"] == "tokens" else 0) for r in rows)
    assert [r["n"] for r in rows if r["pooling"] == "mean_image"] == [1, 1]
