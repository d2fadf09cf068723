"""The Dagster asset graph: partitions per model config, incremental runs, staleness,
automation, checks and metadata, all on real materializations into a real warehouse."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.data_version import StaleStatus
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.config import ConfigError
from lens_assets.orchestration.assets import IMAGES
from lens_assets.orchestration.materialize import (
    materialize_missing,
    plan,
    stale_resolver,
)
from lens_assets.orchestration.sensors import model_configs_sensor, sync_configs
from tests.conftest import HOOK_POINTS

warnings.filterwarnings("ignore", category=dg.BetaWarning)
ACTIVATIONS = dg.AssetKey("activations")
INTERPRETABILITY_TABLES = (
    "attention_maps", "logit_lens", "attributions", "patching_effects", "ablation_effects",
)  # fmt: skip
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Project:
    """A configs folder, a warehouse and a Dagster instance of their own."""

    configs: Path
    warehouse: Warehouse
    instance: dg.DagsterInstance
    tiny_dir: Path

    def add_model(self, name: str, architecture: str, **overrides: object) -> Path:
        data = {
            "architecture": architecture,
            "model_path": str(self.tiny_dir / architecture),
            "prompt": "What colour is the shape?",
            "modules": HOOK_POINTS[architecture],
            "pooling": ["mean_image", "last"],
            "batch_size": 2,
            **overrides,
        }
        path = self.configs / "models" / architecture / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path

    def materialize(self, **kwargs: object):
        todo, results = materialize_missing(self.warehouse.root, instance=self.instance, **kwargs)
        assert all(r.success for _, r in results), [n for n, r in results if not r.success]
        return todo, results

    def images_of(self, dataset: str) -> list[str]:
        """The file names of a dataset's rows in `images`."""
        return sorted(Path(path).name for path in self.warehouse.image_paths(dataset))

    def runs(self) -> int:
        return self.warehouse.fetch_arrow("SELECT count(*) FROM runs").column(0)[0].as_py()

    def partition_files(self, model: str) -> dict[str, tuple[str, int]]:
        folder = self.warehouse.root / "data" / "main" / "activations" / f"model={model}"
        return {
            p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in folder.glob("*.parquet")
        }


def new_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_dir: Path | None = None
) -> Project:
    """One dataset (`shapes`, four images) and no model: enough for the `images` asset."""
    configs = tmp_path / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 4\nseed: 1\n")
    return project_at(
        tmp_path, monkeypatch, tiny_dir or tmp_path / "no-models", dg.DagsterInstance.ephemeral()
    )


def project_at(
    root: Path, monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, instance: dg.DagsterInstance
) -> Project:
    """The project whose configs and warehouse are in `root`."""
    monkeypatch.setenv("LENS_CONFIGS", str(root / "configs"))
    monkeypatch.setenv("LENS_WAREHOUSE", str(root / "warehouse"))
    return Project(root / "configs", Warehouse.at(root / "warehouse"), instance, tiny_dir)


@pytest.fixture
def project(tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    project = new_project(tmp_path, monkeypatch, tiny_dir)
    project.add_model("tiny-llava", "llava")
    project.add_model("tiny-clip", "clip")
    return project


@pytest.fixture(scope="module")
def materialized_once(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """`project` with every asset materialized, built once for the module with its Dagster
    instance in its folder (`dagster/`): the tests that start from there copy it."""
    root = tmp_path_factory.mktemp("materialized")
    (root / "dagster").mkdir()
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as monkeypatch:
        project = new_project(root, monkeypatch, tiny_dir)
        project.instance = dg.DagsterInstance.from_config(str(root / "dagster"))
        project.add_model("tiny-llava", "llava")
        project.add_model("tiny-clip", "clip")
        sync_configs(project.instance)
        project.materialize()
        project.instance.dispose()
    return root


@pytest.fixture
def materialized(
    materialized_once: Path, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Project]:
    """`project`, materialized: a copy of `materialized_once` of its own (configs, warehouse
    and Dagster instance; a copied warehouse follows its folder)."""
    root = shutil.copytree(materialized_once, tmp_path / "project")
    instance = dg.DagsterInstance.from_config(str(root / "dagster"))
    yield project_at(root, monkeypatch, tiny_dir, instance)
    instance.dispose()


@pytest.fixture
def datasets_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return new_project(tmp_path, monkeypatch)


def tick_sensor(instance: dg.DagsterInstance) -> dg.SensorResult:
    """One sensor tick, with its requests applied as the daemon would apply them."""
    result = model_configs_sensor(dg.build_sensor_context(instance=instance))
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)
    return result


def test_definitions_load_as_one_code_location() -> None:
    from lens_assets import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {"images", "image_labels", "activations", "model_config", "dataset_configs"} <= keys
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {
        "every_dataset_collected", "row_count", "finite_values", "one_dim_per_layer",
    }  # fmt: skip
    assert defs.resolve_sensor_def("model_configs_sensor") is not None


@pytest.mark.slow
def test_adding_a_model_config_adds_one_partition_and_runs_only_that_model(
    project: Project,
) -> None:
    tick_sensor(project.instance)
    project.materialize()
    before = {m: project.partition_files(m) for m in ("tiny-llava", "tiny-clip")}
    assert all(before.values()) and project.runs() == 2

    project.add_model("tiny-qwen2-vl", "qwen2-vl")
    result = tick_sensor(project.instance)
    (request,) = result.dynamic_partitions_requests
    assert isinstance(request, dg.AddDynamicPartitionsRequest)
    assert list(request.partition_keys) == ["tiny-qwen2-vl"]

    todo, _ = project.materialize()
    assert todo.models == ["tiny-qwen2-vl"] and not todo.images
    after = {m: project.partition_files(m) for m in ("tiny-llava", "tiny-clip")}
    assert after == before  # same files, same bytes, same mtimes
    assert project.runs() == 3
    assert project.partition_files("tiny-qwen2-vl")


@pytest.mark.slow
def test_editing_a_config_makes_only_its_partition_stale(materialized: Project) -> None:
    project = materialized
    resolver = stale_resolver(project.instance)
    assert resolver.get_status(ACTIVATIONS, "tiny-clip") == StaleStatus.FRESH

    project.add_model("tiny-clip", "clip", modules=["vision_model.encoder.layers.0"])
    sync_configs(project.instance)
    resolver = stale_resolver(project.instance)
    assert resolver.get_status(ACTIVATIONS, "tiny-clip") == StaleStatus.STALE
    assert resolver.get_status(ACTIVATIONS, "tiny-llava") == StaleStatus.FRESH
    assert plan(project.instance).models == ["tiny-clip"]


def test_a_new_model_config_is_requested_by_automation_without_a_click(
    materialized: Project,
) -> None:
    from lens_assets import defs

    project = materialized
    first = dg.evaluate_automation_conditions(defs=defs, instance=project.instance)
    assert not first.get_requested_partitions(ACTIVATIONS)

    project.add_model("tiny-qwen2-vl", "qwen2-vl")
    tick_sensor(project.instance)
    second = dg.evaluate_automation_conditions(
        defs=defs, instance=project.instance, cursor=first.cursor
    )
    assert second.get_requested_partitions(ACTIVATIONS) == {"tiny-qwen2-vl"}


@pytest.mark.slow
def test_checks_pass_on_a_sound_partition_and_fail_on_a_corrupted_one(
    project: Project,
) -> None:
    sync_configs(project.instance)
    _, results = project.materialize()
    evaluations = dict(results)["tiny-llava"].get_asset_check_evaluations()
    assert {e.check_name: e.passed for e in evaluations} == {
        "row_count": True, "finite_values": True, "one_dim_per_layer": True,
    }  # fmt: skip

    layer = "model.language_model.layers.1"
    with project.warehouse.connect() as con:
        con.execute(
            "UPDATE activations SET vector = list_transform(vector, x -> 'nan'::FLOAT) "
            "WHERE model = 'tiny-llava' AND layer = ? AND pooling = 'last' AND image_id = "
            "(SELECT min(image_id) FROM activations WHERE model = 'tiny-llava')",
            [layer],
        )
        con.execute(
            "DELETE FROM activations WHERE model = 'tiny-llava' AND pooling = 'mean_image' "
            "AND image_id = (SELECT max(image_id) FROM activations WHERE model = 'tiny-llava')"
        )
    from lens_assets import defs

    checks = defs.resolve_job_def("check_activations").execute_in_process(
        instance=project.instance, raise_on_error=False, tags={"dagster/partition": "tiny-llava"}
    )
    found = {e.check_name: e for e in checks.get_asset_check_evaluations()}
    assert not found["finite_values"].passed
    assert f"layer {layer} (last)" in found["finite_values"].description
    assert not found["row_count"].passed
    assert "mean_image" in found["row_count"].description
    assert "3 rows for 3 distinct of 4 dataset rows run" in found["row_count"].description
    assert found["one_dim_per_layer"].passed


def test_materializations_report_what_the_ui_shows(materialized: Project) -> None:
    project = materialized
    event = project.instance.get_latest_materialization_event(ACTIVATIONS)
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert {"rows", "bytes", "seconds", "peak_memory_bytes", "layers", "preview"} <= set(metadata)
    assert metadata["rows"].value > 0 and metadata["bytes"].value > 0
    assert metadata["seconds"].value > 0 and metadata["peak_memory_bytes"].value > 0
    assert set(metadata["layers"].value) <= {
        *HOOK_POINTS["llava"], *HOOK_POINTS["clip"]
    }  # fmt: skip
    assert metadata["preview"].value.startswith("| dataset | layer | pooling |")


def _dagster(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.Popen(
        [str(dagster), *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_headless_cli_materializes_two_partitions_at_once(project: Project, tmp_path: Path) -> None:
    """Two `dagster asset materialize` runs (multiprocess executor) write the same warehouse
    at the same time: both land whole, no lock error reaches the user."""
    home = tmp_path / "dagster-home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    instance = dg.DagsterInstance.from_config(str(home))
    sync_configs(instance)
    materialize_missing(project.warehouse.root, {"images"}, instance=instance)

    command = ["asset", "materialize", "-m", "lens_assets", "--select", "activations"]
    runs = [
        _dagster([*command, "--partition", model], env) for model in ("tiny-llava", "tiny-clip")
    ]
    outputs = [run.communicate()[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
        assert "database is locked" not in output
        assert "multiprocess" in output.lower()
    rows = project.warehouse.fetch_arrow(
        "SELECT model, count(*) AS n FROM activations GROUP BY model ORDER BY model"
    ).to_pylist()
    assert [r["model"] for r in rows] == ["tiny-clip", "tiny-llava"]
    assert project.runs() == 2
    assert plan(instance, {"activations"}).models == []


@pytest.mark.slow
def test_answers_probes_and_behaviour_against_competence_land(project: Project) -> None:
    (project.configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 12\nseed: 1\n")
    (project.configs / "probing.yaml").write_text("kinds: [linear]\nfolds: 3\npermutations: 20\n")
    sync_configs(project.instance)
    _, results = project.materialize()
    assert [name for name, _ in results] == ["images", "tiny-clip", "tiny-llava"]

    def rows(sql: str) -> list[dict]:
        return project.warehouse.fetch_arrow(sql).to_pylist()

    answered = rows("SELECT model, count(*) AS n FROM answers GROUP BY 1 ORDER BY 1")
    assert answered == [{"model": "tiny-llava", "n": 12}]  # CLIP cannot answer: skipped
    probes = rows(
        "SELECT model, count(*) AS n, min(n) AS images FROM probe_results GROUP BY 1 ORDER BY 1"
    )
    assert [p["model"] for p in probes] == ["tiny-clip", "tiny-llava"]
    assert all(p["n"] > 0 and p["images"] == 12 for p in probes)
    (row,) = rows(
        "SELECT * FROM behaviour_vs_competence WHERE model = 'tiny-llava' AND concept = 'colour'"
    )
    assert row["questions"] == 12 and 0 <= row["answer_accuracy"] <= 1
    assert row["peak_layer"] in HOOK_POINTS["llava"]
    picture = project.warehouse.root / "reports" / "tiny-llava" / "probe_curves.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    event = project.instance.get_latest_materialization_event(dg.AssetKey("probe_results"))
    assert {"probe_curves", "selectivity"} <= set(event.asset_materialization.metadata)
    # The gap between what the model says and what its layers encode, as a table and a picture.
    event = project.instance.get_latest_materialization_event(
        dg.AssetKey("behaviour_vs_competence")
    )
    gap = event.asset_materialization.metadata
    assert gap["concepts"].value >= 1 and "| colour |" in gap["largest_gaps"].value
    assert (project.warehouse.root / "reports" / "tiny-llava" / "behaviour_gap.png").is_file()


def test_a_new_model_adds_only_the_layer_pairs_that_involve_it(project: Project) -> None:
    sync_configs(project.instance)
    project.materialize(assets={"images", "activations", "layer_similarity"})

    def pairs() -> list[dict]:
        return project.warehouse.fetch_arrow(
            "SELECT * FROM layer_similarity ORDER BY ALL"
        ).to_pylist()

    before = pairs()
    assert {(r["model_a"], r["model_b"]) for r in before} == {
        ("tiny-clip", "tiny-clip"), ("tiny-llava", "tiny-llava"), ("tiny-llava", "tiny-clip"),
    }  # fmt: skip
    project.add_model("tiny-qwen2-vl", "qwen2-vl")
    sync_configs(project.instance)
    todo, _ = project.materialize(assets={"images", "activations", "layer_similarity"})
    # the new model's own steps only: tuned_model (a plain model: it records what the model is)
    # first, as every asset that loads the model reads it
    assert todo.per_model == {"tiny-qwen2-vl": ["tuned_model", "activations", "layer_similarity"]}
    after = pairs()
    new = [r for r in after if "tiny-qwen2-vl" in (r["model_a"], r["model_b"])]
    assert [r for r in after if r not in new] == before  # untouched, same values
    assert {r["model_a"] for r in new} == {"tiny-qwen2-vl"}
    assert {r["model_b"] for r in new} == {"tiny-qwen2-vl", "tiny-llava", "tiny-clip"}
    assert all(-1e-9 <= r["cka"] <= 1 + 1e-9 for r in after)
    # One CKA heat map per model pair, the new model's own layers first.
    event = project.instance.get_latest_materialization_event(dg.AssetKey("layer_similarity"))
    metadata = event.asset_materialization.metadata
    assert {"cka_layers", "cka_tiny-llava", "cka_tiny-clip"} <= set(metadata)
    reports = project.warehouse.root / "reports" / "tiny-qwen2-vl"
    assert sorted(p.name for p in reports.glob("cka-*.png")) == [
        "cka-tiny-clip.png", "cka-tiny-llava.png", "cka-tiny-qwen2-vl.png",
    ]  # fmt: skip


def test_blind_test_sets_blank_answers_beside_real_ones(project: Project) -> None:
    (project.configs / "datasets" / "blank.yaml").write_text(
        "kind: blank\nof: shapes\ncolours: [white]\nimage_size: 32\n"
    )
    sync_configs(project.instance)
    project.materialize(assets={"images", "answers", "blind_test"}, models={"tiny-llava"})
    (row,) = project.warehouse.fetch_arrow("SELECT * FROM blind_test").to_pylist()
    assert (row["model"], row["dataset"], row["blank_dataset"]) == ("tiny-llava", "shapes", "blank")
    assert row["concept"] == "colour" and row["n_real"] == row["n_blank"] == 4
    for key in ("tv_real_labels", "tv_blank_labels", "tv_real_blank"):
        assert 0 <= row[key] <= 1


@pytest.mark.slow
def test_concept_similarity_measures_the_stroop_cues_per_layer(project: Project) -> None:
    (project.configs / "datasets" / "stroop.yaml").write_text("kind: stroop\nsize: 24\n")
    sync_configs(project.instance)
    project.materialize(assets={"images", "activations", "concept_similarity"})
    rows = project.warehouse.fetch_arrow(
        "SELECT layer, cue, share FROM concept_dominance "
        "WHERE model = 'tiny-llava' AND dataset = 'stroop' AND pooling = 'last'"
    ).to_pylist()
    layers = {r["layer"] for r in rows}
    assert layers == set(HOOK_POINTS["llava"])
    for layer in layers:
        shares = [r["share"] for r in rows if r["layer"] == layer]
        assert sum(shares) == pytest.approx(1.0)  # word + font + background + none
    curve = (
        project.warehouse.fetch_arrow(
            "SELECT DISTINCT cue FROM concept_similarity WHERE model = 'tiny-llava'"
        )
        .column(0)
        .to_pylist()
    )
    assert sorted(curve) == ["background", "font", "word"]
    assert (project.warehouse.root / "reports" / "tiny-llava" / "dominance.png").is_file()
    # Each Stroop row asks its own question, so CLIP's text tower reads four different prompts
    # and is measured beside the image tower
    clip_layers = (
        project.warehouse.fetch_arrow(
            "SELECT DISTINCT layer FROM concept_dominance WHERE model = 'tiny-clip' ORDER BY 1"
        )
        .column(0)
        .to_pylist()
    )
    assert clip_layers == [
        "text_model.encoder.layers.1", "vision_model.encoder.layers.1", "visual_projection",
    ]  # fmt: skip


def test_vision_vs_vlm_solves_the_visual_tasks_at_every_layer_beside_the_answers(
    project: Project,
) -> None:
    """Each row's task solved from every layer's per-image patch features, and the VLM asked
    the row's own question with all its images (a dual encoder is not asked)."""
    datasets = project.configs / "datasets"
    (datasets / "correspondence.yaml").write_text("kind: correspondence\nsize: 4\n")
    (datasets / "odd.yaml").write_text("kind: odd_one_out\nsize: 4\npanel_size: 48\n")
    sync_configs(project.instance)
    project.materialize(assets={"images", "answers", "vision_vs_vlm"})

    def rows(sql: str) -> list[dict]:
        return project.warehouse.fetch_arrow(sql).to_pylist()

    counts = rows(
        "SELECT model, dataset, task, stage, count(DISTINCT layer) AS layers, count(*) AS n "
        "FROM vision_vs_vlm_items GROUP BY ALL ORDER BY ALL"
    )
    expected = [
        ("tiny-clip", "correspondence", "correspondence", "vision", 2),
        ("tiny-clip", "odd", "odd_one_out", "vision", 2),
        *[
            ("tiny-llava", dataset, task, stage, layers)
            for dataset, task in (("correspondence", "correspondence"), ("odd", "odd_one_out"))
            for stage, layers in (("llm", 2), ("projector", 1), ("vision", 2), ("vlm", 1))
        ],
    ]
    assert [(r["model"], r["dataset"], r["task"], r["stage"], r["layers"]) for r in counts] == (
        expected
    )
    # Each item is one dataset row, under its first image.
    (unmatched,) = rows(
        "SELECT count(*) AS n FROM vision_vs_vlm_items AS v WHERE NOT EXISTS (SELECT 1 FROM "
        "dataset_rows AS r WHERE r.dataset = v.dataset AND r.image_ids[1] = v.image_id)"
    )
    assert unmatched["n"] == 0
    summary = rows("SELECT * FROM vision_vs_vlm ORDER BY model, dataset, layer_order")
    llava = [r for r in summary if r["model"] == "tiny-llava" and r["dataset"] == "odd"]
    assert [r["stage"] for r in llava] == ["vision", "vision", "projector", "llm", "llm"]
    # The VLM's own answers agree with the answers asset, which asks the same row questions.
    (answered,) = rows(
        "SELECT avg(correct::INTEGER) AS accuracy, min(len(image_ids)) AS images FROM answers "
        "WHERE model = 'tiny-llava' AND dataset = 'odd'"
    )
    assert answered["images"] == 4
    assert all(r["vlm_accuracy"] == pytest.approx(answered["accuracy"]) for r in llava)
    assert all(r["vlm_accuracy"] is None for r in summary if r["model"] == "tiny-clip")
    assert all(r["chance"] == 0.25 and r["items"] == 4 for r in summary)
    picture = project.warehouse.root / "reports" / "tiny-llava" / "vision_vs_vlm.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    event = project.instance.get_latest_materialization_event(dg.AssetKey("vision_vs_vlm"))
    metadata = event.asset_materialization.metadata
    assert "accuracy_by_layer" in metadata and "vlm_not_asked" in metadata


@pytest.mark.slow
def test_interpretability_fills_its_five_tables_and_skips_a_dual_encoder(
    project: Project,
) -> None:
    datasets = project.configs / "datasets"
    (datasets / "stroop.yaml").write_text("kind: stroop\nsize: 24\n")
    (project.configs / "interpretability.yaml").write_text(
        "max_items: 3\npatching: {max_pairs: 2}\nablation: {heads: "
        '{"**language_model.layers.0": [0, 1]}}\n'
    )
    sync_configs(project.instance)
    project.materialize(assets={"images", "activations", "probe_results", *INTERPRETABILITY_TABLES})

    def rows(sql: str) -> list[dict]:
        return project.warehouse.fetch_arrow(sql).to_pylist()

    counts = {
        table: rows(f"SELECT model, count(*) AS n FROM {table} GROUP BY ALL")
        for table in INTERPRETABILITY_TABLES
    }
    llava_layers, heads = 2, 4  # the tiny LLaVA's decoder layers and attention heads
    assert counts["attention_maps"] == [{"model": "tiny-llava", "n": 3 * llava_layers * heads}]
    assert counts["logit_lens"] == [{"model": "tiny-llava", "n": 3 * llava_layers}]
    assert counts["attributions"] == [{"model": "tiny-llava", "n": 3 * 2}]  # Grad-CAM + pixels
    assert counts["patching_effects"] == [{"model": "tiny-llava", "n": 2 * llava_layers * 2}]
    assert counts["ablation_effects"] == [{"model": "tiny-llava", "n": 3}]
    assert rows("SELECT DISTINCT dataset FROM attention_maps") == [{"dataset": "stroop"}]
    shares = rows("SELECT layer, image_share FROM attention_image_share ORDER BY layer")
    assert len(shares) == llava_layers and all(0 <= r["image_share"] <= 1 for r in shares)
    emergence = rows("SELECT layer_index, top1_share FROM answer_emergence ORDER BY 1")
    assert [r["layer_index"] for r in emergence] == [0, 1]
    beside = rows(
        "SELECT layer, pooling, probe_accuracy, top1_share FROM probe_vs_logit_lens "
        "WHERE model = 'tiny-llava' AND concept = 'font' ORDER BY layer, pooling"
    )
    probed = [r for r in beside if r["probe_accuracy"] is not None]
    assert {r["layer"] for r in probed} == {"model.language_model.layers.1"}  # the hooked one
    assert {r["pooling"] for r in probed} == {"mean_image", "last"}
    assert all(0 <= r["top1_share"] <= 1 for r in beside)
    recovery = rows(
        "SELECT layer, positions, recovery FROM patching_effects WHERE layer LIKE '%layers.1' "
        "AND positions = 'all'"
    )
    assert all(r["recovery"] == pytest.approx(1.0) for r in recovery)  # the last layer, whole
    reports = project.warehouse.root / "reports" / "tiny-llava"
    pictures = [f"attention/model.language_model.layers.{i}" for i in range(llava_layers)]
    pictures += ["attributions", "logit_lens", "patching_effects", "ablation_effects"]
    for picture in pictures:
        assert (reports / f"{picture}.png").read_bytes()[:4] == b"\x89PNG", picture

    def latest(model: str) -> dict:
        (record,) = project.instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey("attention_maps"), asset_partitions=[model]), limit=1
        ).records
        return record.asset_materialization.metadata

    assert "image_share_by_layer" in latest("tiny-llava")
    metadata = latest("tiny-clip")
    assert metadata["rows"].value == 0
    assert "CLIPModel" in metadata["skipped"].value  # no token logits: the reason is stated


# One bad dataset config, as a user writes it, and the words its failure must carry.
BROKEN_DATASETS = {
    "invalid YAML": ("kind: folder\npath: [unclosed\n", "is not valid YAML"),
    "unknown kind": ("kind: shapez\n", "unknown kind 'shapez'"),
    "missing folder": ("kind: folder\npath: {tmp}/nowhere\n", "nowhere is not a folder"),
    "manifest without image_path": (
        "kind: manifest\npath: {tmp}/listed.csv\n",
        "needs an `image_path` column",
    ),
}


def folder_dataset(project: Project, name: str, folder: Path, shades: list[int]) -> Path:
    """A folder dataset of small distinct PNGs, one per shade."""
    folder.mkdir(exist_ok=True)
    for shade in shades:
        Image.new("RGB", (24, 16), (shade, 90, 255 - shade)).save(folder / f"{shade}.png")
    config = project.configs / "datasets" / f"{name}.yaml"
    config.write_text(f"kind: folder\npath: {folder}\n")
    return config


def collected_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "every_dataset_collected"
    ]
    return evaluation


@pytest.mark.parametrize("case", sorted(BROKEN_DATASETS))
def test_one_bad_dataset_config_fails_only_that_dataset(
    datasets_only: Project, tmp_path: Path, case: str
) -> None:
    text, cause = BROKEN_DATASETS[case]
    (tmp_path / "listed.csv").write_text("file,label\na.png,cat\n")
    broken = datasets_only.configs / "datasets" / "broken.yaml"
    broken.write_text(text.format(tmp=tmp_path))
    _, [(_, result)] = datasets_only.materialize(assets={"images"})
    assert len(datasets_only.images_of("shapes")) == 4  # the good dataset landed
    check = collected_check(result)
    assert not check.passed
    assert "dataset 'broken'" in check.description and str(broken) in check.description
    assert cause in check.description


def test_a_failed_dataset_is_named_in_the_log_and_the_metadata(datasets_only: Project) -> None:
    broken = datasets_only.configs / "datasets" / "broken.yaml"
    broken.write_text("kind: shapez\n")
    _, [(_, result)] = datasets_only.materialize(assets={"images"})
    errors = [
        entry.user_message
        for entry in datasets_only.instance.all_logs(result.run_id)
        if entry.level == logging.ERROR
    ]
    assert any(str(broken) in line and "unknown kind" in line for line in errors)
    event = datasets_only.instance.get_latest_materialization_event(IMAGES)
    failed = event.asset_materialization.metadata["failed_datasets"].value
    assert list(failed) == ["broken"] and failed["broken"]["config"] == str(broken)


def test_a_dataset_that_breaks_keeps_its_earlier_rows(
    datasets_only: Project, tmp_path: Path
) -> None:
    config = folder_dataset(datasets_only, "photos", tmp_path / "photos", [10, 60])
    datasets_only.materialize(assets={"images"})
    kept = datasets_only.warehouse.fetch_arrow(
        "SELECT * FROM images WHERE dataset = 'photos' ORDER BY ALL"
    )
    config.write_text("kind: folder\npath: [unclosed\n")
    (datasets_only.configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 5\n")
    datasets_only.materialize(assets={"images"})
    assert len(datasets_only.images_of("shapes")) == 5  # the others are collected again
    after = datasets_only.warehouse.fetch_arrow(
        "SELECT * FROM images WHERE dataset = 'photos' ORDER BY ALL"
    )
    assert after.to_pylist() == kept.to_pylist() and after.num_rows == 2


def test_fixing_a_broken_dataset_collects_it_and_passes_the_check(
    datasets_only: Project, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    (datasets_only.configs / "datasets" / "later.yaml").write_text(
        f"kind: folder\npath: {folder}\n"
    )
    _, [(_, failed)] = datasets_only.materialize(assets={"images"})
    assert not collected_check(failed).passed
    folder_dataset(datasets_only, "later", folder, [30])
    sync_configs(datasets_only.instance)
    assert stale_resolver(datasets_only.instance).get_status(IMAGES) == StaleStatus.STALE
    _, [(_, fixed)] = datasets_only.materialize(assets={"images"})
    assert collected_check(fixed).passed
    assert datasets_only.images_of("later") == ["30.png"]


def test_lens_materialize_retries_images_while_a_dataset_is_failing(
    datasets_only: Project,
) -> None:
    (datasets_only.configs / "datasets" / "broken.yaml").write_text("kind: shapez\n")
    datasets_only.materialize(assets={"images"})
    assert plan(datasets_only.instance, {"images"}).images  # not "everything is up to date"


def test_images_fails_when_no_dataset_can_be_collected(datasets_only: Project) -> None:
    (datasets_only.configs / "datasets" / "shapes.yaml").write_text("kind: shapez\n")
    with pytest.raises(ConfigError, match="no dataset could be collected: dataset 'shapes'"):
        materialize_missing(
            datasets_only.warehouse.root, {"images"}, instance=datasets_only.instance
        )


def test_a_dataset_edit_that_changes_no_rows_re_extracts_no_model(project: Project) -> None:
    sync_configs(project.instance)
    project.materialize(assets={"images", "activations"}, models={"tiny-clip"})
    before = project.partition_files("tiny-clip")
    shapes = project.configs / "datasets" / "shapes.yaml"
    shapes.write_text(shapes.read_text() + "# the same four images\n")
    todo, _ = project.materialize(assets={"images", "activations"}, models={"tiny-clip"})
    assert todo.images and todo.per_model == {}
    assert plan(project.instance, {"images", "activations"}, {"tiny-clip"}).empty
    assert project.partition_files("tiny-clip") == before


def test_a_dataset_edit_that_changes_rows_re_extracts_in_the_same_run(project: Project) -> None:
    """The models' staleness is known only once `images` has written its rows (its data
    version is their hash): one `lens materialize` still does both."""
    sync_configs(project.instance)
    project.materialize(assets={"images", "activations"}, models={"tiny-clip"})
    (project.configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 5\nseed: 1\n")
    todo, _ = project.materialize(assets={"images", "activations"}, models={"tiny-clip"})
    assert todo.images and todo.per_model == {"tiny-clip": ["activations"]}
    assert plan(project.instance, {"images", "activations"}, {"tiny-clip"}).empty
