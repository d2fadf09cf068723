"""Extraction against the physical limit, the model's own forward pass, measured side by side.

Everything in one run, on one checkpoint, with the same images and batch size; model load
excluded from every timing:
- bare forward (no hooks) against full extraction (hooks on 3 and on 30 modules, pooling,
  staging and the commit to the warehouse), per preset;
- throughput by batch size (1, 4, 8, 16), bare and extracted;
- pay only for what is asked: hooking vision-tower blocks only, the pass that stops after the
  deepest one against the full pass;
- peak memory with 100 against 1,000 images (each in a fresh process, peak RSS);
- bytes on disk per stored float against the raw float32 size: pooled rows of 32 to 4,096
  dimensions with the real row keys (row_key, image_ids, prompt), a real pooled extraction at
  32 dimensions, and `tokens` rows;
- fixed costs: process start-up plus warehouse attach for `lens extract`, the imports it
  needs, and a fresh warehouse's create and migrate;
- the commit's memory: peak RSS of the extraction loop alone against the loop plus its commit
  (fresh processes, `tokens` rows);
- the `efficiency` view (per model, device, dtype) after the runs above.
(Reading back lives in benchmarks/readback.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from benchmarks.probes import _load_average, _machine
from lens_assets.analyses.patches import stack_layers
from lens_assets.capture.adapters.base import to_device
from lens_assets.capture.extraction import (
    capture_batch,
    extract_loaded,
    pieces_to_table,
    pooler,
)
from lens_assets.capture.loading import LoadedModel, load_model, release
from lens_assets.capture.modules import select_modules
from lens_assets.capture.tiny import build_tiny
from lens_assets.config import ModelConfig
from lens_assets.data.images import load_image
from lens_assets.data.rows import RowInput, row_key

ARCHITECTURE = "llava"
POOLINGS = ["mean_image", "mean_text", "last", "cls"]
PROMPT = "What colour is the shape in this image?"
# CPU float32 by default; on a GPU machine: LENS_DEVICE=cuda LENS_DTYPE=bfloat16.
DEVICE = os.environ.get("LENS_DEVICE", "cpu")
DTYPE = os.environ.get("LENS_DTYPE", "float32")


def write_images(folder: Path, count: int, size: int = 224, seed: int = 0) -> list[Path]:
    """Synthetic photos-to-be: smooth colour fields with noise, PNG, all the same size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    ys, xs = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        base = rng.uniform(0, 255, size=3)
        field = base + 60 * np.sin(6 * xs[..., None] * rng.uniform(0.5, 2, 3) + ys[..., None])
        pixels = np.clip(field + rng.normal(0, 12, size=(size, size, 3)), 0, 255)
        path = folder / f"image-{index:05d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def _stack(loaded: LoadedModel) -> list[Any]:
    return stack_layers(loaded.model, loaded.architecture.adapter.is_vision)


def three_modules(loaded: LoadedModel) -> list[str]:
    """A vision-tower block, the projector and the last LLM layer."""
    layers = _stack(loaded)
    vision = [layer.name for layer in layers if layer.stage == "vision"]
    projector = [layer.name for layer in layers if layer.stage == "projector"]
    llm = [layer.name for layer in layers if layer.stage == "llm"]
    return [vision[len(vision) // 2], *projector[:1], llm[-1]]


def thirty_modules(loaded: LoadedModel) -> list[str]:
    """Every block of both stacks, then their MLPs, then attention, until 30."""
    layers = [
        layer.name for layer in stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    ]
    names = set(loaded.module_names)
    chosen = list(layers)
    for suffix in ("mlp", "self_attn", "layer_norm1", "input_layernorm"):
        chosen += [f"{layer}.{suffix}" for layer in layers if f"{layer}.{suffix}" in names]
    return chosen[:30]


def config_for(path: Path, modules: Sequence[str], batch_size: int) -> ModelConfig:
    return ModelConfig(
        architecture=ARCHITECTURE, model_path=str(path), prompt=PROMPT, modules=list(modules),
        pooling=POOLINGS, batch_size=batch_size,
    )  # fmt: skip


def bare_forward(loaded: LoadedModel, paths: Sequence[Path], batch_size: int) -> float:
    """Seconds for decode + preprocess + forward of every image, nothing hooked or kept."""
    adapter = loaded.architecture.adapter
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        images = [load_image(p).image for p in paths[start : start + batch_size]]
        inputs = to_device(
            adapter.prepare(loaded.processor, images, [PROMPT] * len(images)),
            loaded.device,
            loaded.dtype,
        )
        with torch.inference_mode():
            adapter.forward(loaded.model, inputs, {})
    return time.perf_counter() - started


def full_extraction(
    loaded: LoadedModel, config: ModelConfig, paths: Sequence[Path], warehouse: Warehouse
) -> float:
    """Seconds for hooked extraction into the warehouse, the final commit included."""
    return timed_extraction(loaded, config, paths, warehouse)[0]


def timed_extraction(
    loaded: LoadedModel, config: ModelConfig, paths: Sequence[Path], warehouse: Warehouse
) -> tuple[float, float]:
    """(end to end, staged): the second leaves out the run's fixed costs, the warehouse
    attach and the lake commit (what `runs.seconds` records)."""
    started = time.perf_counter()
    result = extract_loaded(
        loaded, config, warehouse, {"bench": paths}, whole_model=True, progress=False
    )
    return time.perf_counter() - started, result.seconds


def best_of(repeats: int, measure: Callable[[], float]) -> float:
    return min(measure() for _ in range(repeats))


def forward_vs_extraction(
    preset: str, images: int, batch_size: int, root: Path, repeats: int
) -> dict[str, Any]:
    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-{preset}", preset=preset)
    paths = write_images(root / f"images-{images}", images)
    probe = config_for(folder, ["**"], batch_size)
    loaded = load_model(probe, f"{ARCHITECTURE}-{preset}", root, device=DEVICE, dtype=DTYPE)
    parameters = sum(p.numel() for p in loaded.model.parameters())
    warehouse = Warehouse.at(root / f"warehouse-{preset}")
    configs = {
        "3": config_for(folder, three_modules(loaded), batch_size),
        "30": config_for(folder, thirty_modules(loaded), batch_size),
    }
    bare_forward(loaded, paths[:batch_size], batch_size)  # warm-up
    for config in configs.values():
        full_extraction(loaded, config, paths[:batch_size], warehouse)
    result: dict[str, Any] = {"preset": preset, "parameters": parameters, "images": images,
                              "batch_size": batch_size}  # fmt: skip
    bare: list[float] = []
    timed: dict[str, list[tuple[float, float]]] = {hooked: [] for hooked in configs}
    for _ in range(repeats):  # interleaved rounds: a load change hits every variant alike
        bare.append(bare_forward(loaded, paths, batch_size))
        for hooked, config in configs.items():
            timed[hooked].append(timed_extraction(loaded, config, paths, warehouse))
    result["bare_images_per_s"] = images / min(bare)
    for hooked, runs in timed.items():
        seconds, staged = min(runs)
        result[f"extract_{hooked}_images_per_s"] = images / seconds
        result[f"extract_{hooked}_vs_bare"] = min(bare) / seconds
        result[f"extract_{hooked}_staged_vs_bare"] = min(bare) / staged
    result["efficiency"] = warehouse.fetch_arrow("SELECT * FROM efficiency").to_pylist()
    release(loaded)
    return result


def by_batch_size(
    preset: str, images: int, root: Path, sizes: Sequence[int] = (1, 4, 8, 16)
) -> list[dict[str, Any]]:
    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-{preset}", preset=preset)
    paths = write_images(root / f"images-{images}", images)
    loaded = load_model(config_for(folder, ["**"], 1), "batching", root, DEVICE, DTYPE)
    warehouse = Warehouse.at(root / "warehouse-batching")
    rows = []
    for size in sizes:
        config = config_for(folder, three_modules(loaded), size)
        full_extraction(loaded, config, paths[:size], warehouse)  # warm-up
        bare = bare_forward(loaded, paths, size)
        extracted = full_extraction(loaded, config, paths, warehouse)
        rows.append({"batch_size": size, "bare_images_per_s": images / bare,
                     "extract_images_per_s": images / extracted})  # fmt: skip
    release(loaded)
    return rows


def early_stop(preset: str, images: int, batch_size: int, root: Path) -> dict[str, Any]:
    """Vision-tower blocks only: the pass that stops after the deepest one against the whole."""
    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-{preset}", preset=preset)
    pictures = [load_image(p).image for p in write_images(root / f"images-{images}", images)]
    loaded = load_model(config_for(folder, ["**"], 1), "stop", root, DEVICE, DTYPE)
    vision = [layer.name for layer in _stack(loaded) if layer.stage == "vision"]
    modules = select_modules(loaded.module_names, vision)

    def run(stop: bool) -> float:
        started = time.perf_counter()
        for start in range(0, images, batch_size):
            part = pictures[start : start + batch_size]
            capture_batch(loaded, part, [PROMPT] * len(part), modules, ["mean_image"],
                          stop_early=stop)  # fmt: skip
        return time.perf_counter() - started

    run(True)  # learns where the pass may stop
    whole, stopped = best_of(2, lambda: run(False)), best_of(2, lambda: run(True))
    release(loaded)
    return {"preset": preset, "modules": len(modules), "whole_pass_s": whole,
            "stopped_pass_s": stopped, "saving": 1 - stopped / whole}  # fmt: skip


def peak_memory(images: int, root: Path) -> dict[str, Any]:
    """Peak RSS of a fresh process extracting `images` images (tiny preset, batch 8). VmHWM,
    not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's
    peak."""
    code = (
        "import sys; from pathlib import Path; "
        "from benchmarks.extraction import memory_child; "
        "from lens_assets.resources.runtime import _status_kib; "
        "memory_child(Path(sys.argv[1]), int(sys.argv[2])); "
        "print(_status_kib('VmHWM') * 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(images)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    return {"images": images, "peak_rss_bytes": int(done.stdout.strip().splitlines()[-1])}


def memory_child(root: Path, images: int) -> None:
    folder = build_tiny(ARCHITECTURE, root / "memory-model", preset="tiny")
    paths = write_images(root / f"memory-images-{images}", images, size=96)
    config = config_for(folder, ["**.layers.*"], 8)
    loaded = load_model(config, "memory", root, DEVICE, DTYPE)
    warehouse = Warehouse.at(root / f"memory-warehouse-{images}")
    extract_loaded(loaded, config, warehouse, {"bench": paths}, whole_model=True, progress=False)


def storage(root: Path, rows: int = 1_000) -> list[dict[str, Any]]:
    """Parquet bytes per stored float against 4 bytes raw, random normal vectors (which do not
    compress: a floor) and real `tokens` rows of a small model's vision block."""
    warehouse = Warehouse.at(root / "warehouse-storage")
    rng = np.random.default_rng(0)
    results = []
    for dim in (32, 256, 1024, 4096):
        vectors = rng.normal(size=(rows, dim)).astype(np.float32)
        stored = _store(warehouse, f"dim-{dim}", vectors, "mean_image")
        results.append({"rows": f"pooled, {dim} dims", "floats": vectors.size,
                        "bytes_per_float": stored / vectors.size})  # fmt: skip
    tiny = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-tiny", preset="tiny")
    config = config_for(tiny, ["model.vision_tower.**.layers.*", "model.multi_modal_projector"], 8)
    config.pooling = ["mean_image", "last", "cls", "mean"]
    loaded = load_model(config, "pooled-32", root, DEVICE, DTYPE)
    paths = write_images(root / f"storage-images-{rows}", rows, size=32)
    extract_loaded(loaded, config, warehouse, {"bench": paths}, whole_model=True, progress=False)
    release(loaded)
    results.append(_stored_floats(warehouse, "pooled-32", "real pooled rows, tiny preset "
                                  "(32 and 64 dims, 4 poolings)"))  # fmt: skip
    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-small", preset="small")
    config = config_for(folder, ["model.vision_tower.encoder.layers.3"], 8)
    config.pooling = ["tokens"]
    loaded = load_model(config, "tokens", root, DEVICE, DTYPE)
    paths = write_images(root / "images-32", 32)
    extract_loaded(loaded, config, warehouse, {"bench": paths}, whole_model=True, progress=False)
    release(loaded)
    results.append(_stored_floats(warehouse, "tokens", "tokens (small preset, vision block)"))
    return results


def _stored_floats(warehouse: Warehouse, model: str, label: str) -> dict[str, Any]:
    floats = (
        warehouse.fetch_arrow("SELECT sum(dim)::BIGINT FROM activations WHERE model = ?", [model])
        .column(0)[0]
        .as_py()
    )
    return {"rows": label, "floats": floats,
            "bytes_per_float": _model_bytes(warehouse, model) / floats}  # fmt: skip


def _store(warehouse: Warehouse, model: str, vectors: np.ndarray, pooling: str) -> int:
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(len(vectors))]
    table = pa.table(
        {
            "image_id": ids,
            "image_ids": [[i] for i in ids],
            "row_key": [row_key([i], None) for i in ids],
            "prompt": [PROMPT] * len(vectors),
            "layer": ["layer"] * len(vectors),
            "pooling": [pooling] * len(vectors),
            "token_index": pa.nulls(len(vectors), pa.int32()),
            "token_role": pa.nulls(len(vectors), pa.string()),
            "tile": pa.nulls(len(vectors), pa.int32()),
            "dim": pa.array([vectors.shape[1]] * len(vectors), pa.int32()),
            "vector": pa.ListArray.from_arrays(
                pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32)),
                pa.array(vectors.reshape(-1)),
            ),
            "dataset": ["bench"] * len(vectors),
        }
    )
    with ActivationStage(warehouse.location.staging_dir, model, "synthetic") as stage:
        stage.add_activations(table)
        stage.close()
        warehouse.replace_partition(stage.path, model, "synthetic", None, [])
    return _model_bytes(warehouse, model)


def _model_bytes(warehouse: Warehouse, model: str) -> int:
    return int(
        warehouse.fetch_arrow(
            "SELECT coalesce(sum(data_file_size_bytes), 0) FROM ducklake_list_files('lake', "
            "'activations') WHERE data_file LIKE ?",
            [f"%model={model}/%"],
        )
        .column(0)[0]
        .as_py()
    )


def _wall(code: str, *args: str) -> float:
    """Seconds a fresh `python -c code` process takes, start to exit."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True,
                   cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    return time.perf_counter() - started


def fixed_costs(root: Path, repeats: int = 3) -> dict[str, Any]:
    """What a `lens extract` process pays before and besides its model: start-up (the CLI's
    imports), the warehouse attach, the imports extraction itself needs (torch,
    transformers), and a fresh warehouse's create and migrate. Each the best of `repeats`
    fresh processes, interleaved."""
    warehouse = Warehouse.at(root / "warehouse-fixed")
    with warehouse.connect():
        pass  # made and migrated once: the attach below is an existing warehouse's
    attach = (
        "import sys; import lens_assets.cli; "
        "from lens_assets.resources.warehouse import Warehouse; "
        "c = Warehouse.at(sys.argv[1]).connect(); c.__enter__(); c.__exit__(None, None, None)"
    )
    fresh = (
        "import sys, time; from lens_assets.resources.warehouse import Warehouse; "
        "w = Warehouse.at(sys.argv[1] + '/warm'); c = w.connect(); c.__enter__(); "
        "c.__exit__(None, None, None); t = time.perf_counter(); "
        "c = Warehouse.at(sys.argv[1] + '/fresh').connect(); c.__enter__(); "
        "c.__exit__(None, None, None); print(time.perf_counter() - t)"
    )
    rounds: dict[str, list[float]] = {"python": [], "cli": [], "cli_attach": [],
                                      "extraction_imports": [], "fresh": []}  # fmt: skip
    for index in range(repeats):
        rounds["python"].append(_wall("pass"))
        rounds["cli"].append(_wall("import lens_assets.cli"))
        rounds["cli_attach"].append(_wall(attach, str(warehouse.root)))
        rounds["extraction_imports"].append(_wall("import lens_assets.capture.extraction"))
        done = subprocess.run(
            [sys.executable, "-c", fresh, str(root / f"fresh-{index}")], check=True,
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        rounds["fresh"].append(float(done.stdout.strip().splitlines()[-1]))
    return {
        "python_s": min(rounds["python"]),
        "cli_import_s": min(rounds["cli"]),
        "startup_plus_attach_s": min(rounds["cli_attach"]),
        "extraction_imports_s": min(rounds["extraction_imports"]),
        "fresh_warehouse_s": min(rounds["fresh"]),
    }


def commit_memory(root: Path, images: int) -> dict[str, Any]:
    """Peak RSS of a fresh process running the extraction loop (small preset, `tokens` rows of
    two blocks, batch 8) without its commit, against one that also commits: what the commit
    adds to the loop's own peak."""
    code = (
        "import sys; from pathlib import Path; "
        "from benchmarks.extraction import commit_child; "
        "from lens_assets.resources.runtime import _status_kib; "
        "print(commit_child(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == 'commit')); "
        "print(_status_kib('VmHWM') * 1024)"
    )
    found: dict[str, Any] = {"images": images}
    for mode in ("loop", "commit"):
        done = subprocess.run(
            [sys.executable, "-c", code, str(root), str(images), mode],
            capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        staged, peak = done.stdout.strip().splitlines()[-2:]
        found[f"{mode}_peak_rss_bytes"] = int(peak)
        found["staged_bytes"] = int(staged)
    found["commit_adds"] = found["commit_peak_rss_bytes"] / found["loop_peak_rss_bytes"] - 1
    return found


def commit_child(root: Path, images: int, commit: bool) -> int:
    """One extraction (see commit_memory); without `commit`, the stage is dropped instead of
    committed. Returns the bytes staged."""
    from lens_assets.resources import writes

    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-small", preset="small")
    paths = write_images(root / f"images-{images}", images)
    layers = ["model.vision_tower.encoder.layers.2", "model.vision_tower.encoder.layers.5"]
    config = config_for(folder, layers, 8)
    config.pooling = ["tokens"]
    loaded = load_model(config, "memory", root, DEVICE, DTYPE)
    warehouse = Warehouse.at(root / f"warehouse-commit-{commit}")
    with warehouse.connect():
        pass
    staged: list[int] = []
    replace = writes.WarehouseWrites.replace_partition

    def measured(self: Any, stage: Path, *args: Any, **kwargs: Any) -> int:
        staged.append((stage / "activations.parquet").stat().st_size)
        return replace(self, stage, *args, **kwargs) if commit else 0

    writes.WarehouseWrites.replace_partition = measured  # type: ignore[method-assign]
    extract_loaded(loaded, config, warehouse, {"bench": paths}, whole_model=True, progress=False)
    return staged[0]


def where_time_goes(root: Path, images: int, rounds: int) -> dict[str, Any]:
    """The 30-module extraction on `small` taken apart, each piece timed on its own in the
    same process, median of interleaved rounds: decoding, the processor, the bare forward,
    the hooks' own dispatch (hooks that keep nothing), hooks plus pooling (`capture_batch`),
    the move off the device into Arrow, the stage and writer thread, and the run's fixed
    costs (attach and commit). Each is the step from the one before it."""
    from lens_assets.capture.hooks import watch_outputs

    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-small", preset="small")
    paths = write_images(root / f"images-{images}", images)
    loaded = load_model(config_for(folder, ["**"], 8), "profile", root, DEVICE, DTYPE)
    modules = thirty_modules(loaded)
    config = config_for(folder, modules, 8)
    adapter = loaded.architecture.adapter
    warehouse = Warehouse.at(root / "warehouse-profile")
    starts = range(0, images, 8)
    pictures = [load_image(p).image for p in paths]
    prompts = [PROMPT] * 8
    inputs = [adapter.prepare_on(loaded.processor, pictures[i : i + 8], prompts,
                                 loaded.device, loaded.dtype) for i in starts]  # fmt: skip
    rows = [RowInput(row_key([p.stem], PROMPT), (p.stem,), (str(p),), PROMPT) for p in paths]

    def decode() -> None:
        for path in paths:
            load_image(path)

    def prepare() -> None:
        for i in starts:
            adapter.prepare_on(loaded.processor, pictures[i : i + 8], prompts, loaded.device,
                               loaded.dtype)  # fmt: skip

    def forward(hooked: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for batch in inputs:
                    if hooked:
                        with watch_outputs(loaded.model, {m: _keep_nothing for m in modules}):
                            adapter.forward(loaded.model, batch, {})
                    else:
                        adapter.forward(loaded.model, batch, {})

        return run

    def pooled(to_arrow: bool) -> Callable[[], None]:
        def run() -> None:
            for i in starts:
                pieces = capture_batch(loaded, pictures[i : i + 8], prompts, modules, POOLINGS)
                if to_arrow:
                    pieces_to_table(pieces, rows[i : i + 8], prompts)

        return run

    steps: dict[str, Callable[[], Any]] = {
        "decode": decode,
        "prepare": prepare,
        "forward": forward(False),
        "hooks": forward(True),
        "pooling": pooled(False),
        "to_arrow": pooled(True),
        "extraction": lambda: timed_extraction(loaded, config, paths, warehouse),
    }
    for step in steps.values():  # warm-up: learns the stop point and the calls per pass
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            result = step()
            if name == "extraction":
                times.setdefault("staged", []).append(result[1])
            times[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in times.items()}
    release(loaded)
    bare = median["decode"] + median["prepare"] + median["forward"]
    pieces = {
        "decode": median["decode"],
        "processor": median["prepare"],
        "bare forward": median["forward"],
        "hook dispatch (30 hooks keeping nothing)": median["hooks"] - median["forward"],
        "pooling in the hooks": median["pooling"] - median["prepare"] - median["hooks"],
        "off the device into Arrow rows": median["to_arrow"] - median["pooling"],
        "stage and writer thread": median["staged"] - median["decode"] - median["to_arrow"],
        "attach and commit (per run)": median["extraction"] - median["staged"],
    }
    return {"preset": "small", "modules": len(modules), "images": images, "rounds": rounds,
            "bare_s": bare, "end_to_end_s": median["extraction"], "pieces_s": pieces,
            "medians_s": median}  # fmt: skip


def _keep_nothing(_output: Any) -> None:
    return None


def capture_memory(root: Path, images: int) -> dict[str, Any]:
    """What the hooks hold when a 30-module pass on the `base` preset returns: every full
    output, where they pool after the pass (a pass whose calls per module are not learnt yet,
    as every pass was before pooling moved into the hooks), against the pooled vectors only,
    where each module is pooled in its hook at its last call. Counted from the tensors, not
    from RSS, which the allocator's reuse makes unreadable within one process."""
    from lens_assets.capture.hooks import capture

    folder = build_tiny(ARCHITECTURE, root / f"{ARCHITECTURE}-base", preset="base")
    loaded = load_model(config_for(folder, ["**"], images), "memory", root, DEVICE, DTYPE)
    pictures = [load_image(p).image for p in write_images(root / "images-256", 256)[:images]]
    modules = thirty_modules(loaded)
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare_on(loaded.processor, pictures, [PROMPT] * images, loaded.device,
                                loaded.dtype)  # fmt: skip

    reduce = pooler(loaded, inputs, POOLINGS, images)  # what capture_batch's hooks run

    def held(last_calls: dict[str, int] | None) -> tuple[int, dict[str, int]]:
        with capture(loaded.model, modules, reduce=reduce, last_calls=last_calls) as store:
            with torch.inference_mode():
                adapter.forward(loaded.model, inputs, {})
            outputs = sum(t.numel() * t.element_size() for t in store.outputs.values())
            pooled = sum(p.vectors.numel() * p.vectors.element_size()
                         for pieces in store.reduced.values() for p in pieces)  # fmt: skip
            return outputs + pooled, dict(store.calls)

    after_pass, calls = held(None)
    in_hooks, _ = held(calls)
    release(loaded)
    return {"preset": "base", "modules": len(modules), "images": images,
            "held_pooling_after_pass_bytes": after_pass,
            "held_pooling_in_hooks_bytes": in_hooks}  # fmt: skip


def run(quick: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="lens-bench-extraction-") as folder:
        root = Path(folder)
        presets = [("small", 32, 2)] if quick else [("small", 256, 2), ("base", 16, 1)]
        report: dict[str, Any] = {
            "benchmark": "extraction",
            "quick": quick,
            "machine": {**_machine(), "load_average_before": load_before},
            "forward_vs_extraction": [
                forward_vs_extraction(preset, images, 8, root, repeats)
                for preset, images, repeats in presets
            ],
            "tiny_efficiency": forward_vs_extraction("tiny", 64, 8, root, 1)["efficiency"],
            "batch_sizes": by_batch_size("small", 32 if quick else 128, root),
            "early_stop": early_stop("small", 16 if quick else 32, 8, root),
            "peak_memory": [peak_memory(n, root) for n in ((50, 200) if quick else (100, 1000))],
            "storage": storage(root, 200 if quick else 1_000),
            "fixed_costs": fixed_costs(root, 1 if quick else 3),
            "commit_memory": commit_memory(root, 32 if quick else 256),
            "where_time_goes": where_time_goes(root, 32 if quick else 128, 3 if quick else 5),
            "capture_memory": capture_memory(root, 2 if quick else 4),
        }
    memory = report["peak_memory"]
    report["peak_memory_growth"] = memory[1]["peak_rss_bytes"] / memory[0]["peak_rss_bytes"] - 1
    if out_dir is not None:
        stem = "extraction-quick" if quick else "extraction"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / f"{stem}.md").write_text(markdown(report))
    return {key: report[key] for key in ("forward_vs_extraction", "early_stop",
                                         "peak_memory_growth", "fixed_costs",
                                         "commit_memory", "storage", "where_time_goes",
                                         "capture_memory")}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Extraction benchmark{' (quick)' if report['quick'] else ''}", "",
             f"Machine: {report['machine']}", "",
             f"## Bare forward against full extraction (batch 8, {DEVICE}, {DTYPE})", "",
             "Ratio: extraction throughput over bare throughput, end to end (the warehouse "
             "attach and the lake commit included) and, in brackets, without those fixed "
             "per-run costs. Targets, end to end: 0.95x with 3 modules, 0.9x with 30.", "",
             "| preset | parameters | images | bare img/s | 3 modules img/s | ratio | "
             "30 modules img/s | ratio |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["forward_vs_extraction"]:
        lines.append(
            f"| {r['preset']} | {r['parameters'] / 1e6:.1f} M | {r['images']} | "
            f"{r['bare_images_per_s']:.2f} | {r['extract_3_images_per_s']:.2f} | "
            f"{r['extract_3_vs_bare']:.2f}x ({r['extract_3_staged_vs_bare']:.2f}x) | "
            f"{r['extract_30_images_per_s']:.2f} | {r['extract_30_vs_bare']:.2f}x "
            f"({r['extract_30_staged_vs_bare']:.2f}x) |"
        )
    lines += ["", "## Throughput by batch size (small preset, 3 modules)", "",
              "| batch | bare img/s | extraction img/s |", "|---|---|---|"]  # fmt: skip
    for r in report["batch_sizes"]:
        lines.append(f"| {r['batch_size']} | {r['bare_images_per_s']:.2f} | "
                     f"{r['extract_images_per_s']:.2f} |")  # fmt: skip
    stop = report["early_stop"]
    lines += ["", "## Pay only for what is asked (vision-tower blocks only, small preset)", "",
              f"{stop['modules']} modules: whole pass {stop['whole_pass_s']:.2f} s, stopped "
              f"after the deepest hooked block {stop['stopped_pass_s']:.2f} s "
              f"({stop['saving']:.0%} saved).", "",
              "## Peak memory (fresh process, tiny preset, every layer hooked)", "",
              "| images | peak RSS MiB |", "|---|---|"]  # fmt: skip
    for r in report["peak_memory"]:
        lines.append(f"| {r['images']} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    lines += [f"\nGrowth: {report['peak_memory_growth']:.1%}", "",
              "## Bytes on disk per stored float (raw float32: 4)", "",
              "| rows | floats | bytes/float |", "|---|---|---|"]  # fmt: skip
    for r in report["storage"]:
        lines.append(f"| {r['rows']} | {r['floats']} | {r['bytes_per_float']:.2f} |")
    fixed, memory = report["fixed_costs"], report["commit_memory"]
    lines += ["", "## Fixed costs (fresh processes, best of interleaved rounds)", "",
              "| what | seconds |", "|---|---|",
              f"| python alone | {fixed['python_s']:.2f} |",
              f"| `lens` CLI imports | {fixed['cli_import_s']:.2f} |",
              f"| start-up plus warehouse attach (target < 2 s) | "
              f"{fixed['startup_plus_attach_s']:.2f} |",
              f"| extraction's imports (torch, transformers) | "
              f"{fixed['extraction_imports_s']:.2f} |",
              f"| a fresh warehouse: create and migrate | {fixed['fresh_warehouse_s']:.2f} |",
              "", "## The commit's memory (fresh processes, small preset, `tokens` rows)", "",
              f"{memory['images']} images, {memory['staged_bytes'] / 2**20:.0f} MiB staged: "
              f"peak RSS {memory['loop_peak_rss_bytes'] / 2**20:.0f} MiB for the loop alone, "
              f"{memory['commit_peak_rss_bytes'] / 2**20:.0f} MiB with its commit "
              f"({memory['commit_adds']:+.1%}; target within 10%).", "",
              *_profile_lines(report), "",
              "## The efficiency view (tiny and base presets, CPU)", "",
              "| model | device | dtype | images | img/s | ms/image | peak MiB |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = list(report["tiny_efficiency"])
    rows += [e for r in report["forward_vs_extraction"] for e in r["efficiency"]
             if r["preset"] == "base"]  # fmt: skip
    for e in rows:
        lines.append(f"| {e['model']} | {e['device']} | {e['dtype']} | {e['images']} | "
                     f"{e['images_per_second']:.2f} | {e['ms_per_image']:.1f} | "
                     f"{e['peak_memory_bytes'] / 2**20:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _profile_lines(report: dict[str, Any]) -> list[str]:
    profile, memory = report["where_time_goes"], report["capture_memory"]
    gap = profile["end_to_end_s"] - profile["bare_s"]
    lines = [f"## Where the time goes ({profile['preset']} preset, {profile['modules']} modules, "
             f"{profile['images']} images, batch 8, median of {profile['rounds']} interleaved "
             "rounds)", "",
             f"Bare pass {profile['bare_s']:.2f} s, extraction end to end "
             f"{profile['end_to_end_s']:.2f} s ({profile['bare_s'] / profile['end_to_end_s']:.2f}x"
             f"); each piece is timed on its own, so the pieces need not sum exactly.", "",
             "| piece | seconds | share of the extra time |", "|---|---|---|"]  # fmt: skip
    for name, seconds in profile["pieces_s"].items():
        extra = name not in ("decode", "processor", "bare forward")
        share = f"{seconds / gap:.0%}" if extra and gap > 0 else ""
        lines.append(f"| {name} | {seconds:.3f} | {share} |")
    lines += ["", "## What the hooks hold when a pass returns (base preset, 30 modules)", "",
              f"{memory['images']} images: pooled after the pass (every full output kept "
              f"until then) {memory['held_pooling_after_pass_bytes'] / 2**20:.1f} MiB; pooled "
              f"in each module's hook {memory['held_pooling_in_hooks_bytes'] / 2**20:.2f} MiB "
              "(the pooled vectors)."]  # fmt: skip
    return lines
