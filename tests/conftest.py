"""Shared fixtures: tiny checkpoints of real architectures and images of mixed sizes.

Every checkpoint is built offline once per test run, also when pytest-xdist runs the suite in
several workers (they share one folder, a file lock decides who builds); tests load through the
real `from_pretrained` path, exactly as a hub model would.

Scheduling (pyproject's addopts run `-n auto --dist loadgroup`): tests marked `slow` start
first, so the workers end together; the tests of a module that builds a fixture once for the
module run on one worker, so it is built once; each worker runs torch on its share of the CPUs.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
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


# More workers than this gain nothing here and cost ~1.5 GB of memory each.
MAX_AUTO_WORKERS = 8


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown where xdist is not installed
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per CPU this process may use (logical CPUs: a 2-vCPU machine
    reports one physical core), at most MAX_AUTO_WORKERS; PYTEST_XDIST_AUTO_NUM_WORKERS wins."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return max(1, min(len(os.sched_getaffinity(0)), MAX_AUTO_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, torch (and the processes a test starts) use this worker's share of
    the CPUs: two workers each running two threads on two cores only contend."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def module_fixture_group(item: pytest.Item) -> str | None:
    """The item's module, when the item uses a fixture defined in that module and built once
    for several tests (scope module or wider); otherwise None."""
    module = item.nodeid.split("::")[0]
    info = getattr(item, "_fixtureinfo", None)  # pytest keeps no public map of used fixtures
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        fixture = definitions[-1]
        if fixture.scope != "function" and fixture.baseid == module:
            return module
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items if config.pluginmanager.hasplugin("xdist") else []:
        group = module_fixture_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # Slow tests first: the workers take tests from one queue in this order, so the long ones
    # overlap each other and the short ones fill in at the end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Move everything imported so far (torch, transformers, Dagster, the test modules: ~650k
    objects) out of the garbage collector's reach: each `gc.collect()` (extraction calls one
    per model it releases) then scans only what tests made, ~0 s instead of ~0.5 s."""
    if importlib.util.find_spec("hypothesis") is not None:
        # Importing it runs its plugins, which check their objects' referrers: before the
        # freeze, which hides frozen referrers from `gc.get_referrers`.
        import hypothesis  # noqa: F401
    gc.collect()
    gc.freeze()


def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's temporary root, which every xdist worker's own basetemp is inside."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(folder: Path, architecture: str) -> Path:
    """`folder/architecture`, the tiny checkpoint built by whichever worker asks first (the
    others wait on the lock, then load the finished folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / architecture
    with FileLock(folder / f"{architecture}.lock"):
        if not (target / "config.json").is_file():
            partial = folder / f"{architecture}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            build_tiny(architecture, partial)
            partial.rename(target)
    return target


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = run_root(tmp_path_factory) / "tiny-models"
    for architecture in ARCHITECTURES:
        built_once(root, architecture)
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
    return run_root(tmp_path_factory) / "family-models"


@pytest.fixture(scope="session")
def load_family(family_root: Path) -> Callable[[str], LoadedModel]:
    """Each family's tiny checkpoint, built and loaded once per session and hooked at its
    family's hook points (the tests restore whatever they switch, such as padding sides)."""
    cache: dict[str, LoadedModel] = {}

    def load(name: str) -> LoadedModel:
        if name not in cache:
            built_once(family_root, name)
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
