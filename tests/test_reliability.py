"""Crashes and concurrent readers: a killed extraction loses nothing, readers see whole
snapshots. Real subprocesses, real SIGKILL, a real DuckLake warehouse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from resources.warehouse import Warehouse

MODULES = ["model.vision_tower.encoder.layers.*", "model.language_model.norm"]
POOLINGS = ["mean_image", "last"]
ROWS_PER_IMAGE = 3 * len(POOLINGS)  # two vision blocks and the final norm


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (index * 37 % 256, index * 91 % 256, index * 13 % 256)
        Image.new("RGB", (32 + index % 5, 32), colour).save(folder / f"image-{index:04d}.png")
    return folder


def model_config(folder: Path, tiny_dir: Path, images: Path) -> Path:
    path = folder / "tiny-llava.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": "llava",
                "model_path": str(tiny_dir / "llava"),
                "input_dir": str(images),
                "prompt": "What colour is the shape?",
                "modules": MODULES,
                "pooling": POOLINGS,
                "batch_size": 1,
            }
        )
    )
    return path


def extract(config: Path, warehouse: Path, images: Path) -> subprocess.Popen[str]:
    """`lens extract` in its own process (the installed entry point's module)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lens_assets.cli", "extract", str(config), "--input-dir",
         str(images), "--dataset", "shapes", "--warehouse", str(warehouse)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )  # fmt: skip


def snapshot(warehouse: Warehouse) -> list[dict]:
    return warehouse.fetch_arrow(
        "SELECT image_id, layer, pooling, vector FROM activations ORDER BY ALL"
    ).to_pylist()


def duplicates(warehouse: Warehouse) -> int:
    return (
        warehouse.fetch_arrow(
            "SELECT count(*) FROM (SELECT image_id, layer, pooling, count(*) AS n FROM activations "
            "GROUP BY ALL HAVING n > 1)"
        )
        .column(0)[0]
        .as_py()
    )


def wait_for_staging(warehouse: Path, process: subprocess.Popen[str], timeout: float) -> None:
    """Until the run has opened its stage and run a few batches: inference under way, the
    commit not yet done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any((warehouse / "staging").glob("run-*/activations.parquet")):
            time.sleep(0.3)
            if process.poll() is not None:
                pytest.fail("extraction finished before it could be killed: add images")
            return
        if process.poll() is not None:
            pytest.fail(f"extraction ended before it could be killed: {process.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("the extraction never started staging rows")


def test_sigkill_mid_extraction_keeps_the_previous_partition_and_a_rerun_completes_it(
    tmp_path: Path, tiny_dir: Path
) -> None:
    first = write_images(tmp_path / "first", 4)
    many = write_images(tmp_path / "many", 200)
    config = model_config(tmp_path, tiny_dir, first)
    root = tmp_path / "warehouse"
    done = extract(config, root, first)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    warehouse = Warehouse.at(root)
    before = snapshot(warehouse)
    assert len(before) == 4 * ROWS_PER_IMAGE

    killed = extract(config, root, many)
    wait_for_staging(root, killed, timeout=120)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert snapshot(warehouse) == before  # the earlier partition, whole and unchanged
    runs = warehouse.fetch_arrow("SELECT count(*) FROM runs").column(0)[0].as_py()
    assert runs == 1  # the killed run logged nothing

    assert len(list((root / "staging").glob("run-*"))) == 1  # the killed run's spool
    again = extract(config, root, many)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert list((root / "staging").glob("run-*")) == []  # swept by the next run
    rows = warehouse.fetch_arrow("SELECT count(*) FROM activations").column(0)[0].as_py()
    assert rows == 200 * ROWS_PER_IMAGE
    assert duplicates(warehouse) == 0


def test_readers_see_the_old_partition_or_the_new_one_never_a_mix(
    tmp_path: Path, tiny_dir: Path
) -> None:
    few = write_images(tmp_path / "few", 6)
    more = write_images(tmp_path / "more", 40)
    config = model_config(tmp_path, tiny_dir, few)
    root = tmp_path / "warehouse"
    done = extract(config, root, few)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    warehouse = Warehouse.at(root)
    whole = {6 * ROWS_PER_IMAGE, 40 * ROWS_PER_IMAGE}

    writer = extract(config, root, more)
    seen: list[tuple[int, int]] = []
    while writer.poll() is None:
        rows, images = (
            warehouse.fetch_arrow("SELECT count(*), count(DISTINCT image_id) FROM activations")
            .to_pylist()[0]
            .values()
        )
        seen.append((rows, images))
    assert writer.returncode == 0, writer.stderr.read()
    seen.append(tuple(warehouse.fetch_arrow(
        "SELECT count(*), count(DISTINCT image_id) FROM activations"
    ).to_pylist()[0].values()))  # fmt: skip
    assert len(seen) >= 5
    assert all(rows in whole and rows == images * ROWS_PER_IMAGE for rows, images in seen), seen
    assert seen[0][0] == 6 * ROWS_PER_IMAGE and seen[-1][0] == 40 * ROWS_PER_IMAGE


def pickle_only_checkpoint(tiny_dir: Path, folder: Path) -> Path:
    """The tiny LLaVA with its weights as a pickle (`pytorch_model.bin`) and no safetensors."""
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_dir / "llava", folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    return folder


def test_pickle_only_weights_are_refused_without_an_opt_in(tmp_path: Path, tiny_dir: Path) -> None:
    from lens_assets.config import parse_model_config
    from resources.runtime import PickleWeightsError, load_model

    folder = pickle_only_checkpoint(tiny_dir, tmp_path / "pickled")
    base = {"architecture": "llava", "model_path": str(folder), "modules": MODULES}
    with pytest.raises(PickleWeightsError, match=r"use_safetensors: false"):
        load_model(parse_model_config(base), "pickled", tmp_path, "cpu")
    opted_in = parse_model_config({**base, "model": [{"use_safetensors": False}]})
    loaded = load_model(opted_in, "pickled", tmp_path, "cpu")
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
