"""The study's comparison (issue 20, point 4): tuning configs whose base is the tutor (itself a
tuned model), and view `tuning_effects`, which sets each tuned model beside its base on the
same held-out rows.

The shipped configs are copied into a tmp configs folder and shrunk (a few rows, two steps), then
trained and compared through a real Dagster `materialize` on the `tiny` LLaVA, into a real
warehouse. What is checked is what the graph and the view say, never how fast anything ran."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import yaml
from dagster._core.definitions.data_version import StaleStatus
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.schemas import TUNING_ANSWERS
from lens_assets.resources.warehouse import Warehouse

from lens_assets.capture.loading import LoadedModel
from lens_assets.catalog import bases_first, demo_models, model_configs, tuning_configs
from lens_assets.orchestration.materialize import EVERY_ASSET, plan, resources_for, stale_resolver
from lens_assets.orchestration.sensors import sync_configs
from lens_assets.orchestration.tuning import TUNED_MODEL
from lens_assets.tuning import (
    TuningConfigError,
    load_rows,
    load_tuning_config,
    resolve_base,
)
from lens_assets.tuning.config import RowsSpec
from lens_assets.tuning.effects import image_shares
from tests.test_dagster import Project, new_project

warnings.filterwarnings("ignore", category=dg.BetaWarning)
SHIPPED = Path(__file__).resolve().parent.parent / "configs"  # the repository's own
VARIANTS = (
    "tutor-lora-llm",
    "tutor-lora-projector",
    "tutor-lora-vision",
    "tutor-soft-1",
    "tutor-soft-5",
    "tutor-soft-10",
)
ROOT, TUTOR, LORA, SOFT = "tiny-llava", "tutor", "tutor-lora-llm", "tutor-soft-5"
TUNING_EFFECTS = dg.AssetKey("tuning_effects")
MEASURES = ("accuracy", "vision_readout", "projector_readout", "language_readout",
            "tv_labels", "image_share")  # fmt: skip
MIGRATIONS = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
EFFECTS_MIGRATION = next(i for i, m in enumerate(MIGRATIONS) if m.name.startswith("023_"))


def shrunk(name: str, **overrides: Any) -> dict[str, Any]:
    """A shipped tuning config, enabled, with two steps on four rows."""
    data = yaml.safe_load((SHIPPED / "tuning" / f"{name}.yaml").read_text())
    data["train"]["dataset"]["size"] = 4
    return {**data, "enabled": True, "steps": 2, "warmup_steps": 0, **overrides}


def write_tuning(project: Project, name: str, data: dict[str, Any]) -> Path:
    path = project.configs / "tuning" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def compared_project(root: Path, tiny_dir: Path, patch: pytest.MonkeyPatch) -> Project:
    """The tiny LLaVA; the tutor trained from it (held out: the correspondence dataset, as its
    variants, so its own numbers can be set beside theirs); a LoRA and a soft-prompt variant."""
    project = new_project(root, patch, tiny_dir)
    (project.configs / "datasets" / "shapes.yaml").unlink()
    (project.configs / "datasets" / "correspondence.yaml").write_text(
        "kind: correspondence\nsize: 4\nseed: 0\nimage_size: 96\n"
    )  # and one dataset the variants skip: their configs name `datasets: [correspondence]`
    (project.configs / "datasets" / "colours.yaml").write_text(
        "kind: colour_patches\nsize: 2\nseed: 0\n"
    )
    project.add_model(ROOT, "llava")
    tutor = shrunk(TUTOR, base=ROOT, held_out={"dataset": "correspondence"})
    write_tuning(project, TUTOR, tutor)
    for name in (LORA, SOFT):
        data = shrunk(name)
        data["train"]["dataset"]["image_size"] = 96
        write_tuning(project, name, data)
    return project


@pytest.fixture(scope="module")
def compared(
    tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path
) -> Iterator[tuple[Project, dict[str, dict[str, Any]]]]:
    """The four partitions trained and compared once, and the view's rows by model."""
    with pytest.MonkeyPatch.context() as patch:
        project = compared_project(tmp_path_factory.mktemp("effects"), tiny_dir, patch)
        project.materialize(assets={"images", "activations", "vision_vs_vlm", "tuning_effects"})
        rows = project.warehouse.fetch_arrow("SELECT * FROM tuning_effects").to_pylist()
        yield project, {row["model"]: row for row in rows}


@pytest.mark.slow  # trains and compares the four partitions
def test_each_tuned_model_has_one_row_beside_its_base_with_every_measure(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    _, effects = compared
    assert sorted(effects) == [TUTOR, LORA, SOFT]
    assert {m: (r["base"], r["method"]) for m, r in effects.items()} == {
        TUTOR: (ROOT, "full"),
        LORA: (TUTOR, "lora"),
        SOFT: (TUTOR, "prompt_tuning"),
    }
    for row in effects.values():
        assert row["dataset"] == "correspondence" and row["n"] == 4
        assert row["chance"] == pytest.approx(0.25)
        empty = [column for column, value in row.items() if value is None]
        assert not empty, (row["model"], empty)
        for measure in MEASURES:
            for value in (row[measure], row[f"base_{measure}"]):
                assert 0.0 <= value <= 1.0, (row["model"], measure, value)
        # the answer position reads both text and image tokens
        assert 0.0 < row["image_share"] < 1.0 and 0.0 < row["base_image_share"] < 1.0


def test_a_variant_runs_only_on_the_datasets_its_tuning_config_names(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, _ = compared
    ran = project.warehouse.fetch_arrow(
        "SELECT DISTINCT model, dataset FROM activations ORDER BY ALL"
    ).to_pylist()
    assert {(r["model"], r["dataset"]) for r in ran} == {
        (ROOT, "colours"), (ROOT, "correspondence"),  # the base's list: every dataset
        (TUTOR, "colours"), (TUTOR, "correspondence"),
        (LORA, "correspondence"), (SOFT, "correspondence"),
    }  # fmt: skip


def test_the_bases_numbers_are_the_bases_own(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, effects = compared
    tutor = effects[TUTOR]  # the tutor as a tuned model, on the same held-out rows
    for variant in (LORA, SOFT):
        for measure in MEASURES:
            assert effects[variant][f"base_{measure}"] == pytest.approx(tutor[measure], abs=1e-9)
    # the readouts are the base's own partition's: its best vision_vs_vlm layer per stage
    best = {
        row["stage"]: row["best"]
        for row in project.warehouse.fetch_arrow(
            "SELECT stage, max(feature_accuracy) AS best FROM vision_vs_vlm "
            "WHERE model = ? AND dataset = 'correspondence' GROUP BY stage",
            [TUTOR],
        ).to_pylist()
    }
    assert effects[LORA]["base_vision_readout"] == pytest.approx(best["vision"])
    assert effects[LORA]["base_projector_readout"] == pytest.approx(best["projector"])
    assert effects[LORA]["base_language_readout"] == pytest.approx(best["llm"])


def latest_metadata(project: Project, key: dg.AssetKey, partition: str) -> dict[str, Any]:
    (record,) = project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_the_ui_shows_each_tuned_model_beside_its_base_as_a_picture(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, _ = compared
    shown = latest_metadata(project, TUNING_EFFECTS, LORA)
    assert shown["compared"].startswith(f"{LORA} (lora) beside {TUTOR} on 4 held-out rows")
    assert shown["tuning_effects"].startswith("![")  # inline, so the UI draws it
    picture = Path(shown["tuning_effects_path"])
    assert picture.is_file() and picture.read_bytes().startswith(b"\x89PNG")
    assert "| measure |" in shown["effects"] and "image_share" in shown["effects"]
    plain = latest_metadata(project, TUNING_EFFECTS, ROOT)
    assert plain["compared"].startswith("nothing") and "tuning_effects_path" not in plain


def test_the_tuned_model_step_records_the_base_accuracy_beside_its_own(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, effects = compared
    trained = latest_metadata(project, TUNED_MODEL, SOFT)
    assert trained["base"] == TUTOR and trained["method"] == "prompt_tuning"
    base = effects[SOFT]["base_accuracy"]
    assert trained["base_held_out_accuracy"] == pytest.approx(base, abs=1e-4)
    answered = project.warehouse.fetch_arrow(
        "SELECT role, answered_by, count(*) AS n FROM tuning_answers WHERE model = ? "
        "GROUP BY ALL ORDER BY role",
        [SOFT],
    ).to_pylist()
    assert answered == [
        {"role": "base", "answered_by": TUTOR, "n": 4},
        {"role": "tuned", "answered_by": SOFT, "n": 4},
    ]


def test_lens_materialize_trains_a_base_before_the_models_tuned_from_it(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, _ = compared
    assert bases_first([SOFT, LORA, "other", TUTOR, ROOT]) == [ROOT, TUTOR, SOFT, LORA, "other"]
    path = project.configs / "tuning" / f"{TUTOR}.yaml"
    original = path.read_text()
    try:  # a new tutor restales it and both variants; the plan trains it first
        write_tuning(project, TUTOR, {**yaml.safe_load(original), "steps": 3})
        sync_configs(project.instance)
        assert list(plan(project.instance, {"tuned_model"}).per_model) == [TUTOR, LORA, SOFT]
    finally:
        path.write_text(original)
        sync_configs(project.instance)


def test_editing_the_base_tuning_config_restales_the_models_tuned_from_it(
    compared: tuple[Project, dict[str, dict[str, Any]]],
) -> None:
    project, _ = compared
    path = project.configs / "tuning" / f"{TUTOR}.yaml"
    original = path.read_text()
    before = {name: file.version for name, file in model_configs().items()}
    assert str(path) in tuning_configs()[LORA].inputs  # the variant's version covers tutor.yaml
    try:
        write_tuning(project, TUTOR, {**yaml.safe_load(original), "learning_rate": 0.5})
        after = {name: file.version for name, file in model_configs().items()}
        assert [n for n in sorted(before) if before[n] != after[n]] == [TUTOR, LORA, SOFT]
        sync_configs(project.instance)
        resolver = stale_resolver(project.instance)
        for name in (TUTOR, LORA, SOFT):
            assert resolver.get_status(TUNED_MODEL, name) == StaleStatus.STALE, name
        assert resolver.get_status(TUNED_MODEL, ROOT) == StaleStatus.FRESH

        # the variant cannot train on the tutor's old checkpoint: it says to retrain the tutor
        result = dg.materialize(
            EVERY_ASSET, selection=[TUNED_MODEL], partition_key=LORA,
            instance=project.instance, resources=resources_for(project.warehouse.root),
            raise_on_error=False,
        )  # fmt: skip
        assert not result.success
        (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        message = str(failure.step_failure_data.error)
        assert "was trained from another version of" in message
        assert f"materialize `tuned_model` for partition '{TUTOR}' first" in message
    finally:
        path.write_text(original)
        sync_configs(project.instance)


@pytest.mark.slow
def test_a_variant_whose_base_is_not_trained_says_to_materialize_the_base_first(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = compared_project(tmp_path, tiny_dir, monkeypatch)
    sync_configs(project.instance)
    result = dg.materialize(
        EVERY_ASSET, selection=[TUNED_MODEL], partition_key=LORA, instance=project.instance,
        resources=resources_for(project.warehouse.root), raise_on_error=False,
    )  # fmt: skip
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = str(failure.step_failure_data.error)
    assert f"base '{TUTOR}' is a tuned model" in message and "does not exist yet" in message
    assert f"lens materialize --select tuned_model --model {TUTOR}" in message


@pytest.mark.parametrize("name", VARIANTS)
def test_each_shipped_variant_loads_and_resolves_the_tutor_as_its_base(name: str) -> None:
    config = load_tuning_config(SHIPPED / "tuning" / f"{name}.yaml")
    tutor = load_tuning_config(SHIPPED / "tuning" / f"{TUTOR}.yaml")
    assert config.base == TUTOR
    assert tutor.enabled or not config.enabled  # never trained without its base
    # `lens materialize` makes it, on its held-out dataset only; `lens demo` leaves it out
    assert config.enabled and not config.demo and config.datasets == ["correspondence"]
    assert tutor.demo and name not in demo_models(SHIPPED) and TUTOR in demo_models(SHIPPED)
    base_name, base = resolve_base(config.base, SHIPPED)
    _, root = resolve_base(tutor.base, SHIPPED)
    assert base_name == TUTOR and base == root  # the tutor's model config: its architecture
    assert config.held_out is not None and config.held_out.dataset == "correspondence"
    assert (SHIPPED / "datasets" / "correspondence.yaml").is_file()  # readouts cover it
    assert isinstance(config.train.dataset, dict)
    assert config.train.dataset["kind"] == "correspondence"
    assert config.train.dataset["seed"] != 0  # other scenes than the held-out dataset's
    files = tuning_configs(SHIPPED)
    assert str(SHIPPED / "tuning" / f"{TUTOR}.yaml") in files[name].inputs


def test_a_tuned_base_without_a_checkpoint_names_the_step_and_the_enabled_flag(
    tmp_path: Path,
) -> None:
    config = load_tuning_config(SHIPPED / "tuning" / f"{LORA}.yaml")
    with pytest.raises(TuningConfigError) as refused:
        resolve_base(config.base, SHIPPED, tmp_path / "models")
    message = str(refused.value)
    assert "materialize `tuned_model` for partition 'tutor' first" in message
    if not load_tuning_config(SHIPPED / "tuning" / f"{TUTOR}.yaml").enabled:
        assert "`enabled: false`" in message and "set `enabled: true`" in message


def test_tuning_configs_that_name_each_other_as_bases_are_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    folder = tmp_path / "tuning"
    folder.mkdir()
    for name, base in (("a", "b"), ("b", "a")):
        data = {"base": base, "method": "full", "train": {"dataset": "x"}, "steps": 1,
                "learning_rate": 0.1}  # fmt: skip
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(TuningConfigError, match=r"cycle \(b -> a -> b\)"):
        resolve_base("b", tmp_path)
    assert "cyclic base" in tuning_configs(tmp_path)["a"].inputs


def answer(model: str, role: str, said: str | None, expected: str, share: float) -> dict:
    return {
        "model": model, "role": role, "answered_by": model if role == "tuned" else "base",
        "dataset": "d", "row_key": f"{expected}{said}", "image_ids": [f"i-{expected}{said}"],
        "kind": "k", "prompt": "p", "answer_text": said or "?", "answer": said,
        "expected": expected, "correct": said == expected, "options": 4, "image_share": share,
    }  # fmt: skip


def test_the_view_scores_the_answers_against_the_labels(warehouse: Warehouse) -> None:
    truth = ["A", "B", "B", "C"]
    said = {"tuned": ["A", "A", "B", None], "base": ["C", "C", "C", "C"]}
    shares = {"tuned": 0.2, "base": 0.4}
    rows = [
        answer("v", role, s, e, shares[role])
        for role, answers in said.items()
        for s, e in zip(answers, truth, strict=True)
    ]
    with warehouse.session() as wh:
        wh.replace_model_rows("tuning_answers", "v", pa.Table.from_pylist(rows, TUNING_ANSWERS))
    (row,) = warehouse.fetch_arrow("SELECT * FROM tuning_effects").to_pylist()
    assert row["base"] == "base" and row["n"] == 4 and row["chance"] == pytest.approx(0.25)
    assert row["accuracy"] == 0.5 and row["base_accuracy"] == 0.25
    # answers A .5, B .25, (none) .25 against labels A .25, B .5, C .25
    assert row["tv_labels"] == pytest.approx(0.5)
    assert row["base_tv_labels"] == pytest.approx(0.75)  # all C against C .25
    assert row["image_share"] == pytest.approx(0.2) and row["base_image_share"] == 0.4
    # no visual-task readouts for these rows: NULL, not zero
    assert row["vision_readout"] is None and row["base_language_readout"] is None
    assert row["method"] is None  # no `models` row written for "v"


def test_image_shares_do_not_depend_on_the_batch(load_tiny: Any) -> None:
    loaded: LoadedModel = load_tiny("llava")
    rows = load_rows(
        RowsSpec(dataset={"kind": "correspondence", "size": 3, "seed": 2, "image_size": 96}),
        "",
    )
    one = image_shares(loaded, rows, batch_size=1)
    together = image_shares(loaded, rows, batch_size=3)
    assert all(share is not None and 0.0 < share < 1.0 for share in one)
    assert together == pytest.approx(one, abs=1e-5)


def test_a_warehouse_from_before_tuning_effects_opens_and_gains_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in MIGRATIONS[EFFECTS_MIGRATION:]:
        (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute(
                "INSERT INTO models (model, kind, method, config_hash, version) "
                "VALUES ('m', 'model', 'none', 'h', 'v')"
            )
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            }
            assert "tuning_answers" not in tables
    with warehouse.connect() as con:  # today's code opens it: 023 is applied
        names = {r[0] for r in con.execute("SELECT name FROM lens_migrations").fetchall()}
        assert MIGRATIONS[EFFECTS_MIGRATION].name in names
        assert con.execute("SELECT count(*) FROM tuning_answers").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM tuning_effects").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM models").fetchone()[0] == 1


def test_the_effects_picture_follows_the_house_conventions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lens_assets.analyses import tuning_plots
    from tests.test_pictures import MAX_PIXELS, OUT, _layout, _width

    seen: list[dict[str, Any]] = []
    original = tuning_plots.save

    def keep(figure: Any, out: Path) -> Path:
        figure.canvas.draw()
        seen.append(_layout(figure))
        seen[-1]["texts"] = [t.get_text() for a in figure.axes for t in a.texts]
        return original(figure, out)

    monkeypatch.setattr(tuning_plots, "save", keep)
    row = {"model": LORA, "method": "lora", "base": TUTOR, "dataset": "correspondence",
           "n": 8, "chance": 0.25, "accuracy": 0.5, "base_accuracy": 0.25,
           "vision_readout": 0.75, "base_vision_readout": 0.75, "projector_readout": 0.5,
           "base_projector_readout": 0.5, "language_readout": None,
           "base_language_readout": 0.375, "tv_labels": 0.25, "base_tv_labels": 0.75,
           "image_share": 0.3, "base_image_share": 0.2}  # fmt: skip
    path = tuning_plots.effects_chart(row, OUT / "tuning_effects.png")
    assert path is not None and _width(path) <= MAX_PIXELS
    (layout,) = seen
    assert len(layout["panels"]) == 1 and not layout["legends_inside"]
    assert not layout["legend_overlaps"]
    (legend,) = layout["figure_legends"]
    assert {t.get_text() for t in legend.get_texts()} == {
        LORA, f"base: {TUTOR}", "chance (accuracy)",
    }  # fmt: skip
    (axis,) = layout["panels"]
    assert [t.get_text() for t in axis.get_yticklabels()] == [
        label for label, _ in tuning_plots.EFFECT_MEASURES
    ]
    assert "n/a" in layout["texts"] and "0.38" in layout["texts"]  # no bar drawn as a zero
    empty = {"model": LORA, "base": TUTOR}
    assert tuning_plots.effects_chart(empty, OUT / "nothing.png") is None
