"""Pay only for what is asked: early stop after the deepest hooked module, a memory budget
on what the hooks hold, and out-of-memory retries at half the batch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.capture.extraction import capture_batch, extract_loaded
from lens_assets.capture.loading import LoadedModel
from tests.conftest import PROMPTS, tiny_config

VISION_ONLY = ["model.vision_tower.encoder.layers.0", "model.vision_tower.encoder.layers.1"]


def llm_calls(loaded: LoadedModel, run: Callable[[], Any]) -> int:
    """How many times the first LLM layer ran during `run`."""
    calls = 0

    def count(*_: object) -> None:
        nonlocal calls
        calls += 1

    layer = dict(loaded.model.named_modules())["model.language_model.layers.0"]
    handle = layer.register_forward_hook(count)
    try:
        run()
    finally:
        handle.remove()
    return calls


def test_a_pass_that_hooks_only_the_vision_tower_stops_before_the_llm(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    batch = (images[:2], PROMPTS[:2], VISION_ONLY, ["mean_image", "tokens"])
    loaded.stop_points.pop((tuple(VISION_ONLY), 2), None)
    full = llm_calls(loaded, lambda: capture_batch(loaded, *batch))  # learns where to stop
    stopped: list[Any] = []
    assert llm_calls(loaded, lambda: stopped.extend(capture_batch(loaded, *batch))) == 0
    assert full == 1
    reference = capture_batch(loaded, *batch, stop_early=False)
    for (name, early), (same, whole) in zip(stopped, reference, strict=True):
        assert name == same and early.pooling == whole.pooling
        assert torch.equal(early.vectors, whole.vectors)


def test_a_pass_that_hooks_an_llm_layer_runs_it(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    modules = [*VISION_ONLY, "model.language_model.layers.1"]
    for _ in range(2):
        assert llm_calls(loaded, lambda: capture_batch(loaded, images[:2], PROMPTS[:2], modules,
                                                      ["last"])) == 1  # fmt: skip


def runs(warehouse: Warehouse) -> list[dict[str, Any]]:
    return warehouse.fetch_arrow(
        "SELECT batch_size, requested_batch_size, oom_retries, n_images FROM runs"
    ).to_pylist()


def test_a_memory_budget_lowers_the_batch_size_from_a_one_image_estimate(
    load_tiny: Callable[[str], LoadedModel],
    tiny_dir: Path,
    image_dir: Path,
    warehouse: Warehouse,
) -> None:
    loaded = load_tiny("llava")
    config = tiny_config("llava", tiny_dir, batch_size=8)
    paths = sorted(image_dir.glob("*.png"))
    extract_loaded(loaded, config, warehouse, {"d": paths}, progress=False)
    per_image = loaded.capture_bytes[tuple(config.modules)]
    budget = int(per_image * 2.5)  # room for two images' activations, not three
    extract_loaded(loaded, config, warehouse, {"d": paths}, progress=False, memory_budget=budget)
    assert runs(warehouse)[-1] == {
        "batch_size": 2, "requested_batch_size": 8, "oom_retries": 0, "n_images": len(paths),
    }  # fmt: skip


def test_out_of_memory_halves_the_batch_and_loses_no_image(
    load_tiny: Callable[[str], LoadedModel],
    tiny_dir: Path,
    image_dir: Path,
    warehouse: Warehouse,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = load_tiny("llava")
    config = tiny_config("llava", tiny_dir, batch_size=8)
    paths = sorted(image_dir.glob("*.png"))
    expected = extract_loaded(loaded, config, warehouse, {"d": paths}, progress=False).rows
    adapter = loaded.architecture.adapter
    real_forward = adapter.forward

    def forward_that_fits_two(model: Any, inputs: Any, extra: dict[str, Any]) -> Any:
        if inputs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(model, inputs, extra)

    monkeypatch.setattr(adapter, "forward", forward_that_fits_two)
    result = extract_loaded(loaded, config, warehouse, {"d": paths}, progress=False)
    assert result.rows == expected
    assert runs(warehouse)[-1] == {
        "batch_size": 2, "requested_batch_size": 8, "oom_retries": 2, "n_images": len(paths),
    }  # fmt: skip
    efficiency = warehouse.fetch_arrow("SELECT * FROM efficiency").to_pylist()
    assert [(r["model"], r["oom_retries"], r["images"]) for r in efficiency] == [
        ("llava", 2, 2 * len(paths))
    ]


def test_cpu_peak_memory_is_the_runs_own_not_the_process_lifetime() -> None:
    import numpy as np
    from lens_assets.resources.runtime import PeakMemory, _status_kib

    earlier = np.ones(400_000_000 // 8)  # an earlier, larger run of the same process
    del earlier
    resident = (_status_kib("VmRSS") or 0) * 1024
    with PeakMemory(torch.device("cpu")) as peak:
        current = np.ones(100_000_000 // 8)
        del current
    if not peak.scoped:
        pytest.skip("this kernel offers no resettable peak (/proc/self/clear_refs)")
    assert resident + 90_000_000 <= peak.bytes <= resident + 160_000_000
