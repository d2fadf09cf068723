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
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from tests.servers import lens_sql

MODULES = ["model.vision_tower.encoder.layers.*", "model.language_model.norm"]
POOLINGS = ["mean_image", "last"]
ROWS_PER_IMAGE = 3 * len(POOLINGS)  # two vision blocks and the final norm


def write_images(folder: Path, count: int, height: int = 32) -> Path:
    """`count` distinct images; another `height` gives another set (no shared image ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = (index * 37 % 256, index * 91 % 256, index * 13 % 256)
        size = (32 + index % 5, height)
        Image.new("RGB", size, colour).save(folder / f"image-{index:04d}.png")
    return folder


def model_config(
    folder: Path, tiny_dir: Path, images: Path, name: str = "tiny-llava", **overrides: object
) -> Path:
    path = folder / f"{name}.yaml"
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
                **overrides,
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


def extract_to_end(config: Path, warehouse: Path, images: Path) -> None:
    done = extract(config, warehouse, images)
    _, err = done.communicate()
    assert done.returncode == 0, err


def snapshot(warehouse: Warehouse) -> list[dict]:
    return warehouse.fetch_arrow(
        "SELECT image_id, layer, pooling, vector FROM activations ORDER BY ALL"
    ).to_pylist()


def duplicates(warehouse: Warehouse) -> int:
    return (
        warehouse.fetch_arrow(
            "SELECT count(*) FROM (SELECT model, image_id, layer, pooling, count(*) AS n "
            "FROM activations GROUP BY ALL HAVING n > 1)"
        )
        .column(0)[0]
        .as_py()
    )


def has_stage(root: Path, writer: subprocess.Popen[str]) -> bool:
    return any((root / "staging").glob(f"run-{writer.pid}-*/activations.parquet"))


def wait_for_stage(root: Path, writer: subprocess.Popen[str]) -> None:
    """Until the run has opened its stage (inference under way, the commit not yet done):
    waits for that event or the process's end, however slow the machine."""
    while not has_stage(root, writer):
        if writer.poll() is not None:
            pytest.fail(f"extraction ended before it staged rows: {writer.stderr.read()}")
        time.sleep(0.01)


def wait_for_staging(root: Path, writer: subprocess.Popen[str]) -> None:
    """Until the run has opened its stage and run a few batches."""
    wait_for_stage(root, writer)
    time.sleep(0.3)
    if writer.poll() is not None:
        pytest.fail("extraction finished before it could be killed: add images")


@pytest.mark.slow
def test_sigkill_mid_extraction_keeps_the_previous_partition_and_a_rerun_completes_it(
    tmp_path: Path, tiny_dir: Path
) -> None:
    first = write_images(tmp_path / "first", 4)
    many = write_images(tmp_path / "many", 200)
    config = model_config(tmp_path, tiny_dir, first)
    root = tmp_path / "warehouse"
    extract_to_end(config, root, first)
    warehouse = Warehouse.at(root)
    before = snapshot(warehouse)
    assert len(before) == 4 * ROWS_PER_IMAGE

    killed = extract(config, root, many)
    wait_for_staging(root, killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert snapshot(warehouse) == before  # the earlier partition, whole and unchanged
    runs = warehouse.fetch_arrow("SELECT count(*) FROM runs").column(0)[0].as_py()
    assert runs == 1  # the killed run logged nothing

    assert len(list((root / "staging").glob("run-*"))) == 1  # the killed run's spool
    extract_to_end(config, root, many)
    assert list((root / "staging").glob("run-*")) == []  # swept by the next run
    rows = warehouse.fetch_arrow("SELECT count(*) FROM activations").column(0)[0].as_py()
    assert rows == 200 * ROWS_PER_IMAGE
    assert duplicates(warehouse) == 0


def lens_sql_counts(root: Path) -> tuple[int, int]:
    """Rows and distinct images, through a real `lens sql` process."""
    (counts,) = lens_sql(
        {**os.environ, "LENS_WAREHOUSE": str(root)},
        "SELECT count(*) AS n, count(DISTINCT image_id) AS images FROM activations",
    )
    return counts["n"], counts["images"]


@pytest.mark.slow
def test_readers_see_the_old_partition_or_the_new_one_never_a_mix(
    tmp_path: Path, tiny_dir: Path
) -> None:
    """`lens sql` processes in a loop, and a denser in-process reader beside them. Both read
    once while the writer is paused with its stage open (so each sees the run under way
    whatever the machine's speed), then in loops until its commit has ended."""
    import threading

    few = write_images(tmp_path / "few", 6)
    more = write_images(tmp_path / "more", 40)
    config = model_config(tmp_path, tiny_dir, few)
    root = tmp_path / "warehouse"
    extract_to_end(config, root, few)
    warehouse = Warehouse.at(root)
    whole = {6 * ROWS_PER_IMAGE, 40 * ROWS_PER_IMAGE}

    def read_in_process() -> tuple[int, int]:
        counts = warehouse.fetch_arrow(
            "SELECT count(*), count(DISTINCT image_id) FROM activations"
        ).to_pylist()[0]
        return tuple(counts.values())

    writer = extract(config, root, more)
    wait_for_stage(root, writer)
    writer.send_signal(signal.SIGSTOP)
    by_cli, seen = [lens_sql_counts(root)], [read_in_process()]
    writer.send_signal(signal.SIGCONT)

    def query_while_writing() -> None:
        while writer.poll() is None:
            by_cli.append(lens_sql_counts(root))

    cli_loop = threading.Thread(target=query_while_writing)
    cli_loop.start()
    while writer.poll() is None:
        seen.append(read_in_process())
    cli_loop.join()
    assert writer.returncode == 0, writer.stderr.read()
    by_cli.append(lens_sql_counts(root))
    for rows, images in seen + by_cli:
        assert rows in whole and rows == images * ROWS_PER_IMAGE, (seen, by_cli)
    assert seen[0][0] == by_cli[0][0] == 6 * ROWS_PER_IMAGE
    assert by_cli[-1][0] == 40 * ROWS_PER_IMAGE


def run_overlapping(root: Path, runs: list[tuple[Path, Path]]) -> None:
    """Start `lens extract` for each (config, images), one after another: each run is paused
    (SIGSTOP) once it has opened its stage, until the last has opened its own; then all go on
    together to their ends. So the runs hold open stages at the same moment and their commits
    race, on a machine however fast or slow (an event, not a timing)."""
    writers: list[subprocess.Popen[str]] = []
    try:
        for config, images in runs:
            writers.append(writer := extract(config, root, images))
            wait_for_stage(root, writer)
            writer.send_signal(signal.SIGSTOP)
        assert all(has_stage(root, writer) for writer in writers)  # all staging at once
    except BaseException:
        for writer in writers:
            writer.kill()
        raise
    for writer in writers:
        writer.send_signal(signal.SIGCONT)
    for writer in writers:
        _, err = writer.communicate()
        assert writer.returncode == 0, err


def image_ids(warehouse: Warehouse, model: str) -> set[str]:
    return set(
        warehouse.fetch_arrow(
            f"SELECT DISTINCT image_id FROM activations WHERE model = '{model}'"
        ).column(0).to_pylist()
    )  # fmt: skip


def folder_ids(folder: Path) -> set[str]:
    from lens_assets.data.images import content_id

    return {content_id(path.read_bytes()) for path in folder.glob("*.png")}


@pytest.mark.slow
def test_two_lens_extract_processes_on_different_models_both_land(
    tmp_path: Path, tiny_dir: Path
) -> None:
    images = write_images(tmp_path / "images", 150)
    llava = model_config(tmp_path, tiny_dir, images)
    qwen = model_config(
        tmp_path, tiny_dir, images, name="tiny-qwen2-vl", architecture="qwen2-vl",
        model_path=str(tiny_dir / "qwen2-vl"),
        modules=["model.visual.blocks.*", "model.language_model.norm"],
    )  # fmt: skip
    root = tmp_path / "warehouse"
    write_images(tmp_path / "seed", 1)  # the warehouse exists before the race starts
    extract_to_end(llava, root, tmp_path / "seed")

    run_overlapping(root, [(llava, images), (qwen, images)])

    warehouse = Warehouse.at(root)
    counts = warehouse.fetch_arrow("SELECT model, count(*) FROM activations GROUP BY ALL")
    counts = dict(zip(*(column.to_pylist() for column in counts.columns), strict=True))
    assert counts == {"tiny-llava": 150 * ROWS_PER_IMAGE, "tiny-qwen2-vl": 150 * ROWS_PER_IMAGE}
    assert duplicates(warehouse) == 0
    runs = warehouse.fetch_arrow("SELECT model, n_images FROM runs ORDER BY ALL").to_pylist()
    assert [tuple(r.values()) for r in runs] == [
        ("tiny-llava", 1), ("tiny-llava", 150), ("tiny-qwen2-vl", 150),
    ]  # fmt: skip


@pytest.mark.slow
def test_two_lens_extract_processes_on_the_same_model_leave_one_whole_result(
    tmp_path: Path, tiny_dir: Path
) -> None:
    first = write_images(tmp_path / "first", 120, height=32)
    second = write_images(tmp_path / "second", 180, height=40)
    config = model_config(tmp_path, tiny_dir, first)
    root = tmp_path / "warehouse"
    write_images(tmp_path / "seed", 1, height=24)
    extract_to_end(config, root, tmp_path / "seed")

    run_overlapping(root, [(config, first), (config, second)])

    warehouse = Warehouse.at(root)
    stored = image_ids(warehouse, "tiny-llava")
    assert stored in (folder_ids(first), folder_ids(second))  # one writer's images: no mix
    rows = warehouse.fetch_arrow("SELECT count(*) FROM activations").column(0)[0].as_py()
    assert rows == len(stored) * ROWS_PER_IMAGE and duplicates(warehouse) == 0


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
    from lens_assets.resources.runtime import PickleWeightsError

    from lens_assets.capture.loading import load_model
    from lens_assets.config import parse_model_config

    folder = pickle_only_checkpoint(tiny_dir, tmp_path / "pickled")
    base = {"architecture": "llava", "model_path": str(folder), "modules": MODULES}
    with pytest.raises(PickleWeightsError, match=r"use_safetensors: false"):
        load_model(parse_model_config(base), "pickled", tmp_path, "cpu")
    opted_in = parse_model_config({**base, "model": [{"use_safetensors": False}]})
    loaded = load_model(opted_in, "pickled", tmp_path, "cpu")
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"


def test_a_python_tag_in_any_config_is_an_error_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML's `!!python/object/apply` would call os.system under an unsafe loader."""
    from lens_assets.catalog import model_configs
    from lens_assets.config import ConfigError, load_model_config
    from lens_assets.data.datasets import load_dataset_config
    from lens_assets.orchestration.probes import probing_config

    marker = tmp_path / "ran"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    (tmp_path / "models").mkdir()
    (tmp_path / "datasets").mkdir()
    model = tmp_path / "models" / "hostile.yaml"
    model.write_text(f"architecture: llava\nmodel_path: x\nmodules: [a]\nprompt: {payload}\n")
    dataset = tmp_path / "datasets" / "hostile.yaml"
    dataset.write_text(f"kind: folder\npath: {payload}\n")
    (tmp_path / "probing.yaml").write_text(f"folds: {payload}\n")
    monkeypatch.setenv("LENS_CONFIGS", str(tmp_path))

    with pytest.raises(ConfigError, match=r"model config .*hostile.yaml is not valid YAML"):
        load_model_config(model)
    with pytest.raises(ConfigError, match=r"dataset config .*hostile.yaml is not valid YAML"):
        load_dataset_config(dataset)
    with pytest.raises(ConfigError, match=r"probing config .*probing.yaml is not valid YAML"):
        probing_config()
    assert "hostile" in model_configs()  # listed, so its error shows in the UI; not run
    assert not marker.exists()


def test_a_dataset_loading_script_is_refused_not_run(tmp_path: Path) -> None:
    """A Hugging Face dataset folder that ships a loading script: `datasets` will not run it,
    and the refusal is a config error naming the dataset."""
    from lens_assets.config import ConfigError
    from lens_assets.data.datasets import collect_images, parse_dataset_config

    folder = tmp_path / "scripted"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "scripted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = parse_dataset_config({"kind": "hf_hub", "path": str(folder)}, "t")
    with pytest.raises(ConfigError, match=r"hf_hub dataset .*scripted.*scripts"):
        collect_images("scripted", config, tmp_path / "rendered")
    assert not marker.exists()
