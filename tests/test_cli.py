"""The `lens` command line, end to end on tiny checkpoints and a real warehouse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from lens_assets.cli import main

REPO = Path(__file__).resolve().parent.parent


def lens(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def llava_config(tmp_path: Path, tiny_dir: Path, image_dir: Path) -> Path:
    path = tmp_path / "tiny-llava.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "architecture": "llava",
                "model_path": str(tiny_dir / "llava"),
                "input_dir": str(image_dir),
                "prompt": "What colour is the shape?",
                "modules": ["model.vision_tower.encoder.layers.*", "model.language_model.norm"],
                "pooling": ["mean_image", "last"],
            }
        )
    )
    return path


def test_modules_lists_every_module_and_marks_the_match(llava_config: Path) -> None:
    result = lens("modules", str(llava_config), "--match", "model.language_model.layers.*")
    assert result.exit_code == 0
    marked = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("*")]
    assert marked == ["model.language_model.layers.0", "model.language_model.layers.1"]
    assert "LlamaDecoderLayer" in result.stdout
    assert "model.vision_tower.encoder.layers.0" in result.stdout


def test_modules_with_a_glob_matching_nothing_names_the_closest(llava_config: Path) -> None:
    result = lens("modules", str(llava_config), "--match", "model.language_model.layer.*")
    assert result.exit_code != 0
    assert "matches no module" in result.output
    assert "model.language_model.layers" in result.output


def test_extract_writes_rows_and_a_run(llava_config: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    result = lens(
        "extract", str(llava_config), "--limit", "3", "--batch-size", "2", "--device", "cpu",
        "--warehouse", str(warehouse),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 rows x 3 modules" in result.stdout
    counts = lens(
        "sql", "SELECT layer, pooling, count(*) AS n FROM activations GROUP BY ALL ORDER BY ALL",
        "--format", "json", "--warehouse", str(warehouse),
    )  # fmt: skip
    rows = json.loads(counts.stdout)
    assert {(r["layer"], r["pooling"]) for r in rows} == {
        ("model.vision_tower.encoder.layers.0", "mean_image"),
        ("model.vision_tower.encoder.layers.0", "last"),
        ("model.vision_tower.encoder.layers.1", "mean_image"),
        ("model.vision_tower.encoder.layers.1", "last"),
        ("model.language_model.norm", "mean_image"),
        ("model.language_model.norm", "last"),
    }
    assert {r["n"] for r in rows} == {3}
    runs = lens("sql", "SELECT model, n_images, batch_size FROM runs", "--format", "csv",
                "--warehouse", str(warehouse))  # fmt: skip
    assert runs.stdout.splitlines() == ["model,n_images,batch_size", "tiny-llava,3,2"]
    assert not (warehouse / "dagster").exists()  # no Dagster instance made where there was none


def test_extract_reports_what_this_run_wrote_and_what_the_model_holds(
    llava_config: Path, tmp_path: Path
) -> None:
    warehouse = tmp_path / "wh"
    first = lens("extract", str(llava_config), "--limit", "3", "--dataset", "first",
                 "--warehouse", str(warehouse))  # fmt: skip
    assert first.exit_code == 0, first.output
    assert "-> 18 rows written to first; the model now holds 18 rows" in first.stdout
    second = lens("extract", str(llava_config), "--limit", "2", "--dataset", "second",
                  "--warehouse", str(warehouse))  # fmt: skip
    assert second.exit_code == 0, second.output
    # 2 images x 3 modules x 2 poolings; the first dataset's 18 rows stay.
    assert "2 rows x 3 modules -> 12 rows written to second; the model now holds 30 rows" in (
        second.stdout
    )


def test_extract_is_recorded_in_the_warehouses_dagster_instance(
    llava_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from lens_assets.orchestration.materialize import open_instance
    from lens_assets.orchestration.partitions import MODELS

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    root = tmp_path / "wh"
    instance = open_instance(root)
    instance.add_dynamic_partitions(MODELS.name, ["tiny-llava"])
    result = lens("extract", str(llava_config), "--limit", "2", "--warehouse", str(root))
    assert result.exit_code == 0, result.output
    assert "recorded in the Dagster instance" in result.stdout
    event = instance.get_latest_materialization_event(dg.AssetKey("activations"))
    assert event is not None
    materialization = event.asset_materialization
    assert materialization.partition == "tiny-llava"
    assert materialization.metadata["source"].value == "lens extract"
    assert materialization.metadata["rows written"].value == 12


def test_version_names_the_installed_package() -> None:
    from importlib.metadata import version

    result = lens("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"lens, version {version('lensflow')}"


def test_sql_csv_ends_lines_with_lf_not_crlf(llava_config: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    lens("extract", str(llava_config), "--limit", "1", "--warehouse", str(warehouse))
    out = lens("sql", "SELECT model, n_images FROM runs", "--format", "csv",
               "--warehouse", str(warehouse))  # fmt: skip
    assert out.exit_code == 0, out.output
    assert out.stdout == "model,n_images\ntiny-llava,1\n"


def test_extract_refuses_an_input_dir_link_pointing_outside(
    llava_config: Path, tmp_path: Path, image_dir: Path
) -> None:
    folder = tmp_path / "linked"
    folder.mkdir()
    first = sorted(image_dir.glob("*.png"))[0]
    (folder / "a.png").symlink_to(first)  # points outside `linked`: refused
    (folder / "b.png").write_bytes(first.read_bytes())
    warehouse = tmp_path / "wh"
    result = lens("extract", str(llava_config), "--input-dir", str(folder),
                  "--warehouse", str(warehouse))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 rows x 3 modules" in result.stdout
    assert f"skipped: refused: {folder / 'a.png'} resolves to {first.resolve()}" in result.stderr


def test_sql_does_not_import_torch(llava_config: Path, tmp_path: Path) -> None:
    """A query answers in a fraction of a second: the CLI loads no model code for it."""
    import subprocess
    import sys

    warehouse = tmp_path / "wh"
    lens("extract", str(llava_config), "--limit", "1", "--warehouse", str(warehouse))
    script = (
        "import sys; from lens_assets.cli import main\n"
        "try: main(['sql', 'SELECT count(*) AS n FROM activations', '--format', 'csv',\n"
        "           '--warehouse', sys.argv[1]])\n"
        "except SystemExit: pass\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(warehouse)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert done.stdout.splitlines() == ["n", "6", "False"]  # 1 image x 3 modules x 2 poolings


def test_sql_refuses_to_write(llava_config: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    lens("extract", str(llava_config), "--limit", "1", "--warehouse", str(warehouse))
    result = lens("sql", "DROP TABLE activations", "--warehouse", str(warehouse))
    assert result.exit_code != 0
    assert "read-only" in result.output
    still = lens("sql", "SELECT count(*) AS n FROM activations", "--format", "csv",
                 "--warehouse", str(warehouse))  # fmt: skip
    assert still.stdout.splitlines()[1] != "0"


def test_sql_on_a_missing_warehouse_says_how_to_make_one(tmp_path: Path) -> None:
    result = lens("sql", "SELECT 1", "--warehouse", str(tmp_path / "nowhere"))
    assert result.exit_code != 0
    assert "lens demo" in result.output


def test_bad_config_fails_with_the_field_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("architecture: llava\nmodel_path: x\nmodules: [a]\nbatch_sise: 4\n")
    result = lens("extract", str(path))
    assert result.exit_code != 0
    assert "batch_sise: unknown key (did you mean 'batch_size'?)" in result.output
    assert "Traceback" not in result.output


def test_unknown_architecture_lists_the_known_ones(tmp_path: Path, image_dir: Path) -> None:
    path = tmp_path / "odd.yaml"
    path.write_text(f"architecture: lava\nmodel_path: x\nmodules: [a]\ninput_dir: {image_dir}\n")
    result = lens("extract", str(path), "--warehouse", str(tmp_path / "wh"))
    assert result.exit_code != 0
    assert "unknown architecture 'lava'" in result.output
    assert "llava, llava-next, llava-onevision" in result.output
    assert "did you mean 'llava'?" in result.output


def test_tiny_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    result = lens("tiny", "clip", str(tmp_path / "clip"))
    assert result.exit_code == 0
    assert (tmp_path / "clip" / "config.json").is_file()


def test_maintain_reports_what_it_removed(llava_config: Path, tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    for _ in range(2):
        lens("extract", str(llava_config), "--limit", "2", "--warehouse", str(warehouse))
    result = lens("maintain", "--warehouse", str(warehouse))
    assert result.exit_code == 0
    removed = int(result.stdout.split("removed ")[1].split()[0])
    assert removed >= 1


@pytest.mark.slow
def test_demo_runs_end_to_end_from_a_fresh_warehouse(tmp_path: Path) -> None:
    """The README's quick start: the installed `lens` entry point, in a fresh process."""
    env = {**os.environ, "LENS_WAREHOUSE": str(tmp_path / "demo-wh")}
    lens_bin = Path(sys.executable).parent / "lens"
    command = [str(lens_bin)] if lens_bin.exists() else [sys.executable, "-m", "lens_assets.cli"]
    done = subprocess.run([*command, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for step in ("images", "tiny-llava", "tiny-qwen2-vl", "tiny-clip", "tutor"):
        assert f"  {step}: materialized" in done.stdout
        # Progress as it goes: each partition when it starts, and what it materialized.
        assert f"... {step}: materializing " in done.stdout
        assert f"... {step}: done in " in done.stdout
    # the tutor's study variants are partitions `lens materialize` makes, not the demo
    assert "left out of the demo (`demo: false`; `lens materialize` makes them): " in done.stdout
    assert "tutor-lora-llm" in done.stdout and "tutor-lora-llm: materializing" not in done.stdout
    (llava,) = [line for line in done.stdout.splitlines() if "tiny-llava: materializing" in line]
    named = set(llava.split(": materializing ")[1].split(", "))
    assert {"activations", "answers", "probe_results", "vision_vs_vlm", "logit_lens"} <= named
    started = done.stdout.index("... tiny-clip: materializing")
    assert started < done.stdout.index("... tiny-clip: done in") < done.stdout.index("  images:")
    # ... and each asset step live, as it starts and when it ends, inside its partition.
    opened = done.stdout.index("... tiny-llava: materializing")
    closed = done.stdout.index("... tiny-llava: done in")
    for asset in ("activations", "probe_results", "interpretability"):
        begun = done.stdout.index(f"    tiny-llava: {asset} ...")
        assert opened < begun < done.stdout.index(f"    tiny-llava: {asset} done in ") < closed
    assert done.stdout.count('lens sql "') == 6
    # The UI command it prints is the README's, with the port named.
    assert f"LENS_WAREHOUSE={tmp_path / 'demo-wh'} dagster dev -p 3000" in done.stdout
    assert "dagster dev -p 3000" in (REPO / "README.md").read_text()
    assert (tmp_path / "demo-wh" / "catalog.sqlite").is_file()
    datasets = lens("sql", "SELECT DISTINCT dataset FROM activations ORDER BY 1", "--format",
                    "csv", "--warehouse", str(tmp_path / "demo-wh"))  # fmt: skip
    assert datasets.stdout.splitlines()[1:] == [
        "blank-clevr", "blank-clevr-single", "clevr-lite", "clevr-single", "colours",
        "correspondence", "odd-one-out", "stroop",
    ]  # fmt: skip
    # rows, not images: the odd one out is one row of four images, asked in one prompt
    widest = lens("sql", "SELECT max(len(image_ids)) AS n FROM activations "
                  "WHERE model = 'tiny-llava' AND dataset = 'odd-one-out'", "--format", "csv",
                  "--warehouse", str(tmp_path / "demo-wh"))  # fmt: skip
    assert widest.stdout.splitlines()[1] == "4"
    solved = lens("sql", "SELECT DISTINCT model FROM vision_vs_vlm ORDER BY 1", "--format", "csv",
                  "--warehouse", str(tmp_path / "demo-wh"))  # fmt: skip
    # the three tiny models and the tutor, trained from tiny-llava by the demo itself
    assert solved.stdout.splitlines()[1:] == ["tiny-clip", "tiny-llava", "tiny-qwen2-vl", "tutor"]
    # The tutor has learnt colour (chance 1/8) on scenes it never saw; its random twin has not.
    colour = lens("sql", "SELECT model, accuracy FROM answer_accuracy WHERE dataset = "
                  "'clevr-single' AND concept = 'colour' ORDER BY model", "--format", "csv",
                  "--warehouse", str(tmp_path / "demo-wh"))  # fmt: skip
    accuracy = dict(line.split(",") for line in colour.stdout.splitlines()[1:])
    assert float(accuracy["tutor"]) >= 0.4 > 0.2 >= float(accuracy["tiny-llava"])
    assert (tmp_path / "demo-wh" / "models" / "tiny-qwen2-vl" / "model.safetensors").is_file()


def test_extract_reads_a_vlm_lens_dataset_block(
    tmp_path: Path, tiny_dir: Path, image_dir: Path
) -> None:
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in image_dir.glob("*.png"))[:3]
    data = datasets.Dataset.from_dict({"image": files, "label": ["a", "b", "c"]})
    datasets.DatasetDict({"color": data.cast_column("image", datasets.Image())}).save_to_disk(
        str(tmp_path / "clevr-local")
    )
    config = tmp_path / "clip-clevr.yaml"
    config.write_text(
        f"architecture: clip\nmodel_path: {tiny_dir / 'clip'}\nmodel:\n  - torch_dtype: auto\n"
        f"dataset:\n  - local_dataset_path: {tmp_path / 'clevr-local'}\n"
        "  - dataset_split: color\noutput_db: output/clip-clevr.db\npooled_output: True\n"
        "modules:\n  - vision_model.encoder.layers.1\n"
    )
    warehouse = tmp_path / "wh"
    result = lens("extract", str(config), "--warehouse", str(warehouse))
    assert result.exit_code == 0, result.output
    rows = lens("sql", "SELECT dataset, count(DISTINCT image_id) AS n FROM activations GROUP BY 1",
                "--format", "csv", "--warehouse", str(warehouse))  # fmt: skip
    assert rows.stdout.splitlines()[1] == "clip-clevr-dataset,3"


def embedded_warehouse(root: Path, llava_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rendered images (`lens materialize --select images`) and one model's rows."""
    configs = root.parent / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "models").mkdir()
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 6\n")
    monkeypatch.setenv("LENS_CONFIGS", str(configs))
    monkeypatch.setenv("DAGSTER_HOME", str(root.parent / "dagster"))
    assert lens("materialize", "--select", "images", "--warehouse", str(root)).exit_code == 0
    done = lens("extract", str(llava_config), "--limit", "3", "--warehouse", str(root))
    assert done.exit_code == 0, done.output
    return root


@pytest.mark.slow
def test_copy_warehouse_moves_tables_and_images_and_keeps_the_source(
    llava_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = embedded_warehouse(tmp_path / "old", llava_config, monkeypatch)
    new = tmp_path / "new"
    result = lens(
        "copy-warehouse", "--to-catalog", f"sqlite:{new / 'catalog.sqlite'}",
        "--to-data-path", f"{new / 'data'}/", "--warehouse", str(source),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "activations: 18 rows" in result.stdout  # 3 images x 3 modules x 2 poolings

    def rows(root: Path, query: str) -> list[dict]:
        out = lens("sql", query, "--format", "json", "--warehouse", str(root))
        return json.loads(out.stdout)

    every_table = "SELECT (SELECT count(*) FROM activations) a, (SELECT count(*) FROM images) i"
    assert rows(new, every_table) == rows(source, every_table)
    paths = [r["path"] for r in rows(new, "SELECT path FROM images WHERE dataset = 'shapes'")]
    assert paths and all(p.startswith(f"{new}/datasets/shapes/") for p in paths)
    assert all(Path(p).read_bytes() == Path(p.replace(str(new), str(source))).read_bytes()
               for p in paths)  # fmt: skip
    assert list((new / "data" / "main" / "activations").glob("model=tiny-llava/*.parquet"))
    migrations = rows(new, "SELECT count(*) AS n FROM lens_migrations")[0]["n"]
    sql = Path(__file__).resolve().parent.parent / "sql"
    assert migrations == len(list(sql.glob("[0-9]*.sql")))  # its own, not the source's rows


def dagster_asset_keys() -> set[str]:
    from lens_assets import defs

    return {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}


def one_dataset_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Configs with one two-image dataset and no model, a Dagster home of their own; returns
    the (not yet made) warehouse root: `lens materialize` can only run `images` here."""
    configs = tmp_path / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "models").mkdir()
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 2\n")
    monkeypatch.setenv("LENS_CONFIGS", str(configs))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    return tmp_path / "wh"


def test_materialize_select_accepts_every_asset_of_the_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lens_assets.orchestration.materialize import selection

    keys = dagster_asset_keys()
    assert {"vision_vs_vlm", "attention_maps", "ablation_effects", "model_config"} <= keys
    for key in keys:  # one asset alone brings the others its step writes
        assert key in selection({key})
    assert selection({"logit_lens"}) >= {"attention_maps", "attributions", "patching_effects"}
    assert selection({"prompts"}) >= {"images", "image_labels", "image_errors"}
    warehouse = one_dataset_no_model(tmp_path, monkeypatch)
    result = lens("materialize", "--select", ",".join(sorted(keys)), "--warehouse", str(warehouse))
    assert result.exit_code == 0, result.output
    assert "images: materialized" in result.output


def test_materialize_refuses_an_unknown_asset_naming_every_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = one_dataset_no_model(tmp_path, monkeypatch)
    result = lens("materialize", "--select", "images,nope", "--warehouse", str(warehouse))
    assert result.exit_code != 0
    assert "unknown assets ['nope']" in result.output
    assert all(key in result.output for key in dagster_asset_keys())
    assert not warehouse.exists()  # refused before anything ran


def test_materialize_by_default_brings_every_asset_of_the_definitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the code says: the default set is every asset of the Definitions, none left out."""
    from lens_assets.orchestration import materialize as module

    keys = dagster_asset_keys()
    assert module.DEFAULT_SELECTION == module.SELECTABLE == keys
    assert module.selection() == keys
    assert set(module.PER_MODEL) <= module.selection()
    passed: list[set[str] | None] = []

    def record(
        root: object, assets: set[str] | None, *rest: object, **options: object
    ) -> tuple[object, list]:
        passed.append(assets)
        return module.Plan(images=False), []

    monkeypatch.setattr(module, "materialize_missing", record)
    result = lens("materialize")
    assert result.exit_code == 0, result.output
    assert "everything is up to date" in result.output
    assert passed == [None]  # no --select: the default set above


def test_the_instance_lensflow_creates_has_no_telemetry_and_no_first_launch_modal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    from lens_assets.orchestration.materialize import dagster_home

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = dagster_home(tmp_path / "wh")
    assert home == (tmp_path / "wh" / "dagster").resolve()
    instance = dg.DagsterInstance.from_config(str(home))
    assert not instance.telemetry_enabled
    assert not instance.nux_enabled


def test_a_dagster_home_of_the_users_own_is_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lens_assets.orchestration.materialize import dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "mine"))
    assert dagster_home(tmp_path / "wh") == (tmp_path / "mine").resolve()
    assert not (tmp_path / "mine" / "dagster.yaml").exists()


def test_extract_runs_each_dataset_row_with_its_own_question_and_label(
    tmp_path: Path, tiny_dir: Path, image_dir: Path
) -> None:
    """A VLM-Lens dataset asking one image a "yes" and a "no" question is two rows: each
    prompt reaches the model, and the `tensors` view gives each its own prompt and label."""
    datasets = pytest.importorskip("datasets")
    image = sorted(str(p) for p in image_dir.glob("*.png"))[0]
    data = datasets.Dataset.from_dict(
        {"image": [image, image], "prompt": ["Is it red?", "Is it a cube?"],
         "label": ["yes", "no"]}
    )  # fmt: skip
    data.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "local"))
    config = tmp_path / "llava-questions.yaml"
    config.write_text(
        f"architecture: llava\nmodel_path: {tiny_dir / 'llava'}\n"
        f"dataset:\n  - local_dataset_path: {tmp_path / 'local'}\n"
        "modules:\n  - model.language_model.layers.1\npooling_method: last\n"
    )
    warehouse = tmp_path / "wh"
    assert lens("extract", str(config), "--warehouse", str(warehouse)).exit_code == 0
    rows = lens("sql", "SELECT prompt, label FROM tensors ORDER BY prompt", "--format", "csv",
                "--warehouse", str(warehouse))  # fmt: skip
    assert rows.stdout.splitlines()[1:] == ["Is it a cube?,no", "Is it red?,yes"]
    vectors = lens("sql", "SELECT count(DISTINCT tensor) AS n, count(DISTINCT image_path) AS m "
                   "FROM tensors", "--format", "csv", "--warehouse", str(warehouse))  # fmt: skip
    assert vectors.stdout.splitlines()[1] == "2,1"


@pytest.mark.parametrize(
    ("command", "runner"),
    [("materialize", "lens_assets.orchestration.materialize.materialize_missing"),
     ("demo", "lens_assets.demo.run_demo"),
     ("extract", "lens_assets.capture.extraction.extract_to_warehouse")],
)  # fmt: skip
def test_model_runs_leave_what_existed_before_out_of_later_garbage_collections(
    command: str,
    runner: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    llava_config: Path,
) -> None:
    """Each model a run releases costs a full collection; it must not walk the imports."""
    import gc

    existing = ["made before the command"]
    tracked_at_start: list[bool] = []

    def run(*_: object, **__: object) -> object:
        tracked_at_start.append(any(thing is existing for thing in gc.get_objects()))
        raise ValueError("stop here")

    assert any(thing is existing for thing in gc.get_objects())  # the collector's, until...
    monkeypatch.setattr(runner, run)
    config = [str(llava_config)] if command == "extract" else []
    result = lens(command, *config, "--warehouse", str(tmp_path / "warehouse"))
    assert "stop here" in result.output
    assert tracked_at_start == [False]  # ...frozen before the run began
