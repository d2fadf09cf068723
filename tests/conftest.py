"""Shared fixtures: tiny checkpoints of real architectures and images of mixed sizes.

Everything is built offline once per test session; tests load through the real
`from_pretrained` path, exactly as a hub model would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.config import ModelConfig, parse_model_config

ARCHITECTURES = ("llava", "qwen2-vl", "clip")

# Hook points per architecture: a vision-tower block, the projector (or the pooled image
# embedding for CLIP) and a language-model (or text-tower) layer.
HOOK_POINTS = {
    "llava": [
        "model.vision_tower.encoder.layers.1",
        "model.multi_modal_projector",
        "model.language_model.layers.1",
    ],
    "qwen2-vl": ["model.visual.blocks.1", "model.visual.merger", "model.language_model.layers.1"],
    "clip": ["vision_model.encoder.layers.1", "visual_projection", "text_model.encoder.layers.1"],
}
ALL_POOLINGS = ["mean_image", "mean_text", "last", "cls", "mean", "tokens"]
IMAGE_SIZES = [(40, 32), (64, 48), (32, 32), (96, 40), (48, 80)]
PROMPTS = [
    "What colour is it?",
    "Describe the main object in this picture in a few words please.",
    "Shape?",
    "Is there a cube in the image, and what is its colour?",
    "Count the objects.",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-models")
    for architecture in ARCHITECTURES:
        build_tiny(architecture, root / architecture)
    return root


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images of different sizes and aspect ratios, distinct content."""
    folder = tmp_path_factory.mktemp("images")
    for index, size in enumerate(IMAGE_SIZES):
        image = Image.new("RGB", size, (40 * index, 255 - 40 * index, 90))
        for x in range(0, size[0], 7):
            for y in range(0, size[1], 5):
                image.putpixel((x, y), ((x * 13) % 256, (y * 29) % 256, (x * y) % 256))
        image.save(folder / f"image-{index}.png")
    return folder


@pytest.fixture(scope="session")
def images(image_dir: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted(image_dir.glob("*.png"))]


def tiny_config(architecture: str, tiny_dir: Path, **overrides: object) -> ModelConfig:
    data: dict[str, object] = {
        "architecture": architecture,
        "model_path": str(tiny_dir / architecture),
        "modules": HOOK_POINTS.get(architecture) or list(BY_NAME[architecture].hook_points),
        "prompt": "What colour is the shape?",
        "pooling": ALL_POOLINGS,
    }
    data.update(overrides)
    return parse_model_config(data)


@pytest.fixture(scope="session")
def load_tiny(tiny_dir: Path) -> Callable[[str], LoadedModel]:
    cache: dict[str, LoadedModel] = {}

    def load(architecture: str) -> LoadedModel:
        if architecture not in cache:
            config = tiny_config(architecture, tiny_dir)
            cache[architecture] = load_model(config, architecture, tiny_dir, device="cpu")
        return cache[architecture]

    return load


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse.at(tmp_path / "warehouse")
