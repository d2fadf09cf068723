"""Shared fixtures: tiny checkpoints of real architectures and images of mixed sizes.

Everything is built offline once per test session; tests load through the real
`from_pretrained` path, exactly as a hub model would.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lens_assets.resources.warehouse import Warehouse
from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import Sequences, to_device
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.pooling import Pooled
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
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


# -- Every family's tiny checkpoint, for tests/test_families.py and tests/test_family_*.py ------

# Three prompts of different lengths, so a batch of them is padded.
FAMILY_PROMPTS = [
    "What is it?",
    "Describe the colours and shapes you can see in this picture.",
    "Hm?",
]
# (width, height) of each family's three test images: a landscape, a portrait and a square large
# enough to be sliced, tiled or cut into sub-images, so the images differ in their vision rows.
FAMILY_SIZES = [(64, 48), (40, 72), (96, 96)]
SIZES_BY_FAMILY = {
    # Anyres: a 1x2 grid, a 1x3 grid and a square, so every image has its own tile count.
    "llava-next": [(64, 32), (96, 32), (96, 96)],
    "llava-onevision": [(64, 32), (96, 32), (96, 96)],
    # Dynamic tiles: 3 crops + thumbnail (4 tiles, a square count), 2 crops + thumbnail, 1 tile.
    "internvl": [(96, 32), (40, 72), (32, 32)],
    "aya-vision": [(96, 32), (40, 72), (32, 32)],
}


def family_image(width: int, height: int, shade: int) -> Image.Image:
    """A flat colour with a sparse grid of varied pixels: distinct content at any size."""
    image = Image.new("RGB", (width, height), (shade, 200 - shade, 90))
    for x in range(0, width, 5):
        for y in range(0, height, 3):
            image.putpixel((x, y), ((x * 19) % 256, (y * 37) % 256, (x * y) % 256))
    return image


@pytest.fixture(scope="session")
def family_images() -> Callable[[str], list[Image.Image]]:
    """A family's three test images (see `SIZES_BY_FAMILY`)."""

    def images(name: str) -> list[Image.Image]:
        sizes = SIZES_BY_FAMILY.get(name, FAMILY_SIZES)
        return [family_image(w, h, 60 * index) for index, (w, h) in enumerate(sizes)]

    return images


@pytest.fixture(scope="session")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where `load_family` builds the checkpoints (tests measure their folders' size)."""
    return tmp_path_factory.mktemp("family-models")


@pytest.fixture(scope="session")
def load_family(family_root: Path) -> Callable[[str], LoadedModel]:
    """Each family's tiny checkpoint, built and loaded once per session and hooked at its
    family's hook points (the tests restore whatever they switch, such as padding sides)."""
    cache: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, family_root / name)
            modules = list(BY_NAME[name].hook_points)
            config = tiny_config(name, family_root, modules=modules, pooling=ALL_POOLINGS)
            cache[name] = load_model(config, name, family_root, device="cpu", dtype="float32")
        return cache[name]

    return load


def family_inputs(
    loaded: LoadedModel, images: Sequence[Image.Image], prompts: Sequence[str] | None = None
) -> BatchFeature:
    """The model's inputs as extraction prepares them (one prompt per image)."""
    prompts = FAMILY_PROMPTS[: len(images)] if prompts is None else prompts
    prepared = loaded.architecture.adapter.prepare(loaded.processor, images, prompts)
    return to_device(prepared, loaded.device, loaded.dtype)


@dataclass
class Run:
    """One forward pass as extraction runs it: the inputs, each hooked module's own output and,
    when asked for, the vectors the language model received."""

    inputs: BatchFeature
    outputs: dict[str, torch.Tensor]
    llm_inputs: torch.Tensor | None = None  # (batch, positions, dim) inputs_embeds

    def image_embeddings(self, image_token_id: int, sample: int) -> torch.Tensor:
        """The LLM's input vectors at a sample's image tokens, in sequence order."""
        assert self.llm_inputs is not None
        mask = self.inputs["input_ids"][sample] == image_token_id
        return self.llm_inputs[sample][mask]


def hooked(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    modules: Sequence[str],
    prompts: Sequence[str] | None = None,
    llm_inputs: bool = False,
) -> Run:
    """Hook `modules` (and, with `llm_inputs`, `model.language_model`'s input) for one batch."""
    adapter = loaded.architecture.adapter
    inputs = family_inputs(loaded, images, prompts)
    seen: dict[str, torch.Tensor] = {}

    def keep_embeds(_module: object, _args: object, kwargs: dict[str, Any]) -> None:
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    handles = []
    if llm_inputs:
        language_model = loaded.model.model.language_model
        handles.append(language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True))
    try:
        with capture(loaded.model, modules) as store, torch.inference_mode():
            adapter.forward(loaded.model, inputs, {})
    finally:
        for handle in handles:
            handle.remove()
    return Run(inputs, dict(store.outputs), seen.get("inputs_embeds"))


def sequences(loaded: LoadedModel, run: Run, module: str) -> Sequences:
    """A hooked module's output mapped back to the run's samples, as extraction maps it."""
    batch = len(run.inputs["input_ids"])
    adapter = loaded.architecture.adapter
    return adapter.sequences(module, run.outputs[module], run.inputs, loaded.layout, batch)


def image_rows(seq: Sequences, sample: int) -> torch.Tensor:
    """A sample's vectors at its `image` positions."""
    assert seq.roles is not None
    return seq.hidden[sample][seq.roles[sample] == TokenRole.IMAGE]


def image_counts(seq: Sequences) -> list[int]:
    """How many `image` positions each sample has."""
    assert seq.roles is not None
    return (seq.roles == TokenRole.IMAGE).sum(dim=1).tolist()


def image_token_counts(loaded: LoadedModel, inputs: BatchFeature) -> list[int]:
    """How many image tokens each prompt holds."""
    return (inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1).tolist()


def forward_kwargs(loaded: LoadedModel, images: Sequence[Image.Image]) -> set[str]:
    """The keyword arguments the model's own forward receives from the adapter."""
    seen: set[str] = set()

    def record(_module: object, _args: object, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    handle = loaded.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        hooked(loaded, images, [])
    finally:
        handle.remove()
    return seen


def token_rows(
    loaded: LoadedModel,
    module: str,
    images: Sequence[Image.Image],
    prompts: Sequence[str] | None = None,
) -> Pooled:
    """Every `tokens` row extraction stores for `module` (sample, index, role, tile, vector)."""
    prompts = FAMILY_PROMPTS[: len(images)] if prompts is None else prompts
    ((_, tokens),) = capture_batch(loaded, images, prompts, [module], ["tokens"])
    return tokens


def missing_modules(*modules: str) -> Callable[..., object]:
    """A stand-in for `importlib.util.find_spec` that reports `modules` as not installed and
    asks the real one about any other name."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object) -> object:
        return None if name in modules else real(name, *args, **kwargs)

    return find_spec


def per_sample(
    tokens: Pooled, samples: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per sample: (token index, role, vector) of every `tokens` row."""
    assert tokens.token_index is not None and tokens.token_role is not None
    rows = [tokens.samples == sample for sample in range(samples)]
    return [(tokens.token_index[r], tokens.token_role[r], tokens.vectors[r]) for r in rows]


def pooled_vectors(pieces: list[tuple[str, Pooled]], module: str, pooling: str) -> torch.Tensor:
    """The vectors one pooling of one module gave, out of `capture_batch`'s pieces."""
    (pooled,) = [p for name, p in pieces if name == module and p.pooling == pooling]
    return pooled.vectors
