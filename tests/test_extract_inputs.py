"""`lens extract` on careless input: names that collide, files it cannot use, names that would
escape the warehouse. Nothing is overwritten without a word, and nothing stored is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse

from lens_assets.cli import main
from tests.test_reliability import model_config
from tests.writers import write_partitions


def lens(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_config(folder: Path, tiny_dir: Path, images: Path, name: str = "config") -> Path:
    """A VLM-Lens-style `config.yaml` in its own folder (VLM-Lens configs all share a name)."""
    folder.mkdir(parents=True)
    return model_config(
        folder, tiny_dir, images, name, modules=["model.language_model.norm"], pooling=["last"]
    )


def query(root: Path, sql: str) -> list[dict]:
    return Warehouse.at(root).fetch_arrow(sql).to_pylist()


@pytest.fixture
def two_configs(tmp_path: Path, tiny_dir: Path, image_dir: Path) -> tuple[Path, Path]:
    return (
        write_config(tmp_path / "study-a", tiny_dir, image_dir),
        write_config(tmp_path / "study-b", tiny_dir, image_dir),
    )


def test_a_second_config_with_the_same_stem_is_refused_and_changes_nothing(
    two_configs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = two_configs
    root = tmp_path / "wh"
    assert lens("extract", str(first), "--limit", "2", "--warehouse", str(root)).exit_code == 0
    before = query(root, "SELECT count(*) AS n FROM activations")
    result = lens("extract", str(second), "--warehouse", str(root))
    assert result.exit_code != 0
    assert f"model name 'config' already holds rows extracted from {first}" in result.output
    assert "--name" in result.output and "--replace" in result.output
    assert query(root, "SELECT count(*) AS n FROM activations") == before
    assert query(root, "SELECT config FROM runs") == [{"config": str(first)}]


def test_name_keeps_both_configs_rows(two_configs: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = two_configs
    root = tmp_path / "wh"
    lens("extract", str(first), "--limit", "2", "--warehouse", str(root))
    result = lens("extract", str(second), "--limit", "3", "--name", "study-b", "--warehouse",
                  str(root))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert query(root, "SELECT model, count(*) AS n FROM activations GROUP BY ALL ORDER BY 1") == [
        {"model": "config", "n": 2},
        {"model": "study-b", "n": 3},
    ]


def test_replace_takes_the_name_over(two_configs: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = two_configs
    root = tmp_path / "wh"
    lens("extract", str(first), "--limit", "2", "--warehouse", str(root))
    result = lens("extract", str(second), "--limit", "3", "--replace", "--warehouse", str(root))
    assert result.exit_code == 0, result.output
    assert query(root, "SELECT count(*) AS n FROM activations") == [{"n": 3}]
    rerun = lens("extract", str(second), "--limit", "3", "--warehouse", str(root))
    assert rerun.exit_code == 0, rerun.output  # the name is now the second config's


def test_extract_records_the_files_it_could_not_use_in_image_errors(
    tmp_path: Path, tiny_dir: Path, image_dir: Path
) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    good = sorted(image_dir.glob("*.png"))
    shutil.copy(good[0], images / "a.png")
    shutil.copy(good[0], images / "z-copy.png")
    (images / "broken.png").write_bytes(b"not a picture")
    (images / "outside.png").symlink_to(good[1])
    config = write_config(tmp_path / "cfg", tiny_dir, images, name="tiny-llava")
    root = tmp_path / "wh"
    result = lens("extract", str(config), "--warehouse", str(root))
    assert result.exit_code == 0, result.output
    errors = query(root, "SELECT dataset, path, error FROM image_errors ORDER BY path")
    assert [(e["dataset"], Path(e["path"]).name) for e in errors] == [
        ("photos", "broken.png"),
        ("photos", "outside.png"),
        ("photos", "z-copy.png"),
    ]
    assert "refused" in errors[1]["error"] and "duplicate of" in errors[2]["error"]
    (images / "broken.png").unlink()  # fixed: the next run's errors replace the old ones
    lens("extract", str(config), "--warehouse", str(root))
    assert len(query(root, "SELECT * FROM image_errors")) == 2


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", ".hidden"])
def test_a_dataset_name_that_would_leave_the_warehouse_is_refused(
    tmp_path: Path, tiny_dir: Path, image_dir: Path, name: str
) -> None:
    config = write_config(tmp_path / "cfg", tiny_dir, image_dir)
    root = tmp_path / "deep" / "wh"
    result = lens("extract", str(config), "--dataset", name, "--warehouse", str(root))
    assert result.exit_code != 0
    assert "is not a plain name" in result.output
    assert not root.exists() and not (tmp_path / "escaped").exists()


def test_a_warehouse_of_the_previous_schema_opens_and_is_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 015 adds `runs.config`; a warehouse written before it keeps its rows."""
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    (old_sql / "015_runs_config.sql").unlink()
    root = tmp_path / "wh"
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with Warehouse.at(root).connect() as con:  # the schema of migrations 001-014
            con.execute("INSERT INTO runs (model, dataset, n_images) VALUES ('m', 'd', 1)")
        columns = [r["column_name"] for r in query(root, "DESCRIBE runs")]
        assert "config" not in columns
    write_partitions(str(root), "m2", 1)  # today's code: migrates, then writes
    rows = query(root, "SELECT model, config FROM runs ORDER BY model")
    assert rows == [{"model": "m", "config": None}, {"model": "m2", "config": None}]
    applied = query(root, "SELECT name FROM lens_migrations WHERE name LIKE '015%'")
    assert applied == [{"name": "015_runs_config.sql"}]
