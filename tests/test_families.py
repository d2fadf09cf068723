"""Every family with a tiny checkpoint: extraction through a vision-tower block, the projector
and an LLM layer is batch-independent, and `image` roles sit on the family's image tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from lens_assets.capture.coverage import coverage_markdown
from lens_assets.capture.extraction import capture_batch, to_device
from lens_assets.capture.families import BY_NAME, get_family
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny, tiny_architectures
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import ALL_POOLINGS, tiny_config

FAMILIES = tiny_architectures()
SIZES = [(64, 48), (40, 72), (96, 96)]
PROMPTS = ["What is it?", "Describe the colours and shapes you can see in this picture.", "Hm?"]
Key = tuple[int, str, str, int, int]


@pytest.fixture(scope="session")
def family_images() -> list[Image.Image]:
    images = []
    for index, (width, height) in enumerate(SIZES):
        image = Image.new("RGB", (width, height), (50 * index, 200 - 60 * index, 120))
        for x in range(0, width, 6):
            for y in range(0, height, 4):
                image.putpixel((x, y), ((x * 17) % 256, (y * 31) % 256, (x * y) % 256))
        images.append(image)
    return images


@pytest.fixture(scope="session")
def load_family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LoadedModel]:
    root = tmp_path_factory.mktemp("family-models")
    cache: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in cache:
            family = BY_NAME[name]
            build_tiny(name, root / name)
            config = tiny_config(name, root, modules=list(family.hook_points), pooling=ALL_POOLINGS)
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return load


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
            sample, index, _, tile = pooled.positions().tolist()
            for row in range(len(sample)):
                key = (start + sample[row], layer, pooled.pooling, index[row], tile[row])
                assert key not in vectors, f"duplicate vector for {key}"
                vectors[key] = pooled.vectors[row].float().clone()
    return vectors


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_of_three_equals_batch_of_one(
    name: str, load_family: Callable[[str], LoadedModel], family_images: list[Image.Image]
) -> None:
    loaded = load_family(name)
    modules = BY_NAME[name].hook_points
    batched = collect(loaded, modules, family_images, PROMPTS, batch_size=3)
    single = collect(loaded, modules, family_images, PROMPTS, batch_size=1)
    assert batched.keys() == single.keys()
    worst = max(
        float((batched[k] - single[k]).abs().max() / single[k].abs().max().clamp_min(1.0))
        for k in single
    )
    assert worst <= 1e-4, f"largest error {worst:.2e}"
    for layer in modules:  # every hook point gave vectors for every image
        assert {k[0] for k in single if k[1] == layer} == set(range(len(family_images)))


@pytest.mark.parametrize("name", [n for n in FAMILIES if not BY_NAME[n].encoder])
def test_image_roles_are_the_positions_of_the_image_token(
    name: str, load_family: Callable[[str], LoadedModel], family_images: list[Image.Image]
) -> None:
    loaded = load_family(name)
    language_layer = BY_NAME[name].hook_points[-1]
    ((_, tokens),) = capture_batch(loaded, family_images, PROMPTS, [language_layer], ["tokens"])
    adapter = loaded.architecture.adapter
    inputs = to_device(
        adapter.prepare(loaded.processor, family_images, PROMPTS), loaded.device, loaded.dtype
    )
    image_token_id = loaded.layout.image_token_id
    assert image_token_id == _config_image_token(loaded.model.config)
    for sample in range(len(family_images)):
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


def test_every_tiny_family_has_a_tiny_config_and_a_disabled_real_model_config() -> None:
    import yaml

    configs = Path(__file__).resolve().parent.parent / "configs" / "models"
    for name in FAMILIES:
        files = {p.name: yaml.safe_load(p.read_text()) for p in (configs / name).glob("*.yaml")}
        tiny = [d for d in files.values() if str(d["model_path"]).startswith("tiny:")]
        real = [d for d in files.values() if not str(d["model_path"]).startswith("tiny:")]
        assert tiny, f"configs/models/{name}/ has no tiny config"
        assert [d["model_path"] for d in real] == [BY_NAME[name].hub_example], name
        assert all(d.get("enabled") is False for d in real), name


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
