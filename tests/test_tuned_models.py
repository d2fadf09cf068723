"""Tuned models as assets (issue 20, point 2): a tuning config is a model partition whose
`tuned_model` step trains it before anything loads it, on a real Dagster instance and a real
warehouse, with the `tiny` LLaVA trained for a few steps on CPU.

What is checked is what the graph does (which steps run, what is stale, what the tables say),
never how fast anything ran."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster._core.definitions.data_version import StaleStatus
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse

from lens_assets.catalog import model_configs
from lens_assets.config import ConfigError
from lens_assets.orchestration.materialize import EVERY_ASSET, plan, stale_resolver
from lens_assets.orchestration.partitions import model_config_of
from lens_assets.orchestration.sensors import sync_configs
from lens_assets.orchestration.tuning import TUNED_MODEL
from tests.test_dagster import Project, new_project

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ACTIVATIONS = dg.AssetKey("activations")
BASE, TUNED = "tiny-llava", "tuned-llava"
MIGRATIONS = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
MODELS_MIGRATION = next(i for i, m in enumerate(MIGRATIONS) if m.name.startswith("022_"))


def tuning_config(**overrides: object) -> dict[str, Any]:
    """Full training of the project's tiny LLaVA on shapes' colour questions: three steps."""
    return {
        "base": BASE,
        "method": "full",
        "train": {"dataset": {"kind": "shapes", "size": 6, "seed": 3}},
        "held_out": {"dataset": {"kind": "shapes", "size": 4, "seed": 11}},
        "steps": 3,
        "learning_rate": 0.01,
        "batch_size": 2,
        "schedule": "constant",
        "seed": 0,
        **overrides,
    }


def add_tuning(project: Project, name: str = TUNED, **overrides: object) -> Path:
    path = project.configs / "tuning" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tuning_config(**overrides)))
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    """The tiny LLaVA as a plain model and a tuning config trained from it."""
    project = new_project(tmp_path, monkeypatch, tiny_dir)
    project.add_model(BASE, "llava")
    add_tuning(project)
    return project


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def vectors(warehouse: Warehouse, model: str) -> dict[tuple[str, str, str], np.ndarray]:
    table = warehouse.fetch_arrow(
        "SELECT layer, pooling, row_key, vector FROM activations WHERE model = ?", [model]
    ).to_pylist()
    return {(r["layer"], r["pooling"], r["row_key"]): np.array(r["vector"]) for r in table}


@pytest.mark.slow
def test_a_tuned_model_trains_first_then_runs_like_any_model(project: Project) -> None:
    sync_configs(project.instance)
    assert sorted(project.instance.get_dynamic_partitions("models")) == [BASE, TUNED]
    # activations alone brings tuned_model along: it trains (or records) before extraction
    todo = plan(project.instance, {"images", "activations"})
    assert todo.per_model == {BASE: ["tuned_model", "activations"],
                              TUNED: ["tuned_model", "activations"]}  # fmt: skip
    project.materialize(assets={"images", "activations"})

    checkpoint = project.warehouse.root / "models" / "tuned" / TUNED
    assert (checkpoint / "model.safetensors").is_file()
    trained = latest_metadata(project.instance, TUNED_MODEL, TUNED)
    assert trained["method"] == "full" and trained["base"] == BASE and trained["steps"] == 3
    assert len(trained["losses"]) == 3 and trained["final_loss"] == trained["losses"][-1]
    assert set(trained["held_out_accuracy"]) == {"attribute"}
    assert 0.0 <= trained["held_out_accuracy"]["attribute"] <= 1.0
    assert Path(trained["loss_curve_path"]).is_file()
    plain = latest_metadata(project.instance, TUNED_MODEL, BASE)
    assert plain["method"] == "none" and plain["trained"].startswith("nothing")
    assert not (project.warehouse.root / "models" / "tuned" / BASE).exists()

    # the tuned model's activations: the same rows and layers as its base's, other values
    base, tuned = vectors(project.warehouse, BASE), vectors(project.warehouse, TUNED)
    assert base.keys() == tuned.keys() and base
    assert any(not np.allclose(base[key], tuned[key]) for key in base)
    # the runs table names the tuning config as the tuned model's source
    (config,) = (
        project.warehouse.fetch_arrow("SELECT DISTINCT config FROM runs WHERE model = ?", [TUNED])
        .column(0)
        .to_pylist()
    )
    assert config.endswith(f"tuning/{TUNED}.yaml")

    # the models table: each model, its base and method
    models = project.warehouse.fetch_arrow(
        "SELECT model, kind, base, method, config_hash, steps, checkpoint FROM models ORDER BY 1"
    ).to_pylist()
    assert [(m["model"], m["kind"], m["base"], m["method"], m["steps"]) for m in models] == [
        (BASE, "model", None, "none", None),
        (TUNED, "tuning", BASE, "full", 3),
    ]
    assert models[1]["checkpoint"] == str(checkpoint.resolve())
    assert models[1]["config_hash"] and models[0]["config_hash"]

    # a second run finds nothing to do
    sync_configs(project.instance)
    assert plan(project.instance, {"images", "activations"}).empty

    # editing the tuning config makes only its model stale: retrained, then re-extracted
    add_tuning(project, steps=4)
    sync_configs(project.instance)
    resolver = stale_resolver(project.instance)
    assert resolver.get_status(TUNED_MODEL, TUNED) == StaleStatus.STALE
    assert resolver.get_status(ACTIVATIONS, TUNED) == StaleStatus.STALE
    assert resolver.get_status(TUNED_MODEL, BASE) == StaleStatus.FRESH
    assert resolver.get_status(ACTIVATIONS, BASE) == StaleStatus.FRESH
    assert plan(project.instance, {"images", "activations"}).per_model == {
        TUNED: ["tuned_model", "activations"]
    }

    # editing the base's model config restales the base and the model tuned from it
    project.add_model(BASE, "llava", batch_size=3)
    sync_configs(project.instance)
    assert plan(project.instance, {"images", "activations"}).models == [BASE, TUNED]


def test_a_missing_checkpoint_says_to_materialize_tuned_model_first(project: Project) -> None:
    sync_configs(project.instance)
    project.materialize(assets={"images"})
    models_dir = project.warehouse.root / "models"
    with pytest.raises(ConfigError, match="materialize `tuned_model` for partition 'tuned-llava'"):
        model_config_of(TUNED, models_dir)
    # and so does the step that needs it, run alone through Dagster
    result = dg.materialize(
        EVERY_ASSET, selection=[ACTIVATIONS], partition_key=TUNED, instance=project.instance,
        resources=_resources(project), raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "materialize `tuned_model` for partition 'tuned-llava' first" in str(
        failure.step_failure_data.error
    )


def _resources(project: Project) -> dict[str, object]:
    from lens_assets.orchestration.materialize import resources_for

    return resources_for(project.warehouse.root)


def test_automation_trains_a_new_tuning_config_in_the_same_tick_as_its_readers(
    project: Project,
) -> None:
    from lens_assets import defs

    (project.configs / "tuning" / f"{TUNED}.yaml").unlink()
    sync_configs(project.instance)
    project.materialize(assets={"images"})
    first = dg.evaluate_automation_conditions(defs=defs, instance=project.instance)
    add_tuning(project, "later")
    sync_configs(project.instance)
    second = dg.evaluate_automation_conditions(
        defs=defs, instance=project.instance, cursor=first.cursor
    )
    assert second.get_requested_partitions(TUNED_MODEL) == {"later"}
    assert second.get_requested_partitions(ACTIVATIONS) == {"later"}


def test_a_name_both_a_model_and_a_tuning_config_is_refused(project: Project) -> None:
    add_tuning(project, BASE)
    with pytest.raises(ConfigError) as refused:
        model_configs()
    message = str(refused.value)
    assert "'tiny-llava' named both a model config and a tuning config" in message
    assert str(project.configs / "tuning" / "tiny-llava.yaml") in message
    assert "rename" in message
    with pytest.raises(ConfigError, match="named both"):
        sync_configs(project.instance)


def test_a_tuned_models_version_covers_its_base_and_named_datasets(project: Project) -> None:
    files = model_configs()
    assert files[TUNED].kind == "tuning" and files[BASE].kind == "model"
    before = {name: file.version for name, file in files.items()}
    project.add_model("other", "clip")  # an unrelated model changes no one's version
    assert {n: f.version for n, f in model_configs().items() if n != "other"} == before
    project.add_model(BASE, "llava", batch_size=3)
    after = {name: file.version for name, file in model_configs().items()}
    assert after[BASE] != before[BASE] and after[TUNED] != before[TUNED]
    add_tuning(project, train={"dataset": "shapes"})  # a dataset config by name
    named = model_configs()[TUNED].version
    (project.configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 5\n")
    assert model_configs()[TUNED].version != named


def test_a_warehouse_from_before_the_models_table_opens_and_gains_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in MIGRATIONS[MODELS_MIGRATION:]:
        (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute("INSERT INTO runs (model, dataset) VALUES ('m', 'shapes')")
            listed = con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            assert "models" not in {row[0] for row in listed}
    with warehouse.connect() as con:  # today's code opens it: 022 is applied
        names = {r[0] for r in con.execute("SELECT name FROM lens_migrations").fetchall()}
        assert MIGRATIONS[MODELS_MIGRATION].name in names
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
