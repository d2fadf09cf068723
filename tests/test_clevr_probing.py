"""VLM-Lens's CLEVR probing layout on clevr_lite, end to end through the domain code: one forward
pass per (scene, question) row, its vector at the answer position, a probe per question type's
answer by layer with folds that keep a scene's questions together, beside the model's own
answer accuracy in `behaviour_vs_competence`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from lens_assets.resources.schemas import PROBE_RESULTS, rows_table
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.answers import answer_questions
from lens_assets.analyses.probing import ProbeSettings, probe_layers
from lens_assets.analyses.reading import load_vectors
from lens_assets.capture.extraction import extract_loaded
from lens_assets.capture.loading import load_model, release
from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.generators.clevr_lite import CONCEPTS
from lens_assets.orchestration.assets import DATASET_TABLES
from tests.conftest import tiny_config

LAYERS = ["model.language_model.layers.0", "model.language_model.layers.1"]


@pytest.fixture(scope="module")
def clevr_warehouse(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Warehouse:
    root = tmp_path_factory.mktemp("clevr")
    warehouse = Warehouse.at(root / "wh")
    collected = collect_images(
        "clevr", parse_dataset_config({"kind": "clevr_lite", "size": 8}, "t"), root / "files"
    )
    warehouse.replace_dataset_rows(
        ["clevr"],
        {
            table: pa.Table.from_pylist(getattr(collected, part), schema)
            for table, (part, schema) in DATASET_TABLES.items()
        },
    )
    config = tiny_config("llava", tiny_dir, modules=LAYERS, pooling=["last", "mean_image"])
    loaded = load_model(config, "tiny-llava", warehouse.location.models_dir, "cpu", "float32")
    try:
        extract_loaded(loaded, config, warehouse, {"clevr": warehouse.dataset_rows("clevr")},
                       whole_model=True, batch_size=4, progress=False)  # fmt: skip
        answers = answer_questions(loaded, warehouse, ["clevr"], batch_size=8)
    finally:
        release(loaded)
    warehouse.replace_model_rows("answers", "tiny-llava", answers)
    settings = ProbeSettings(permutations=0, folds=3, max_iter=50)
    probes = probe_layers(warehouse, "tiny-llava", settings)
    warehouse.replace_model_rows("probe_results", "tiny-llava", rows_table(PROBE_RESULTS, probes))
    return warehouse


def test_each_scene_question_is_one_forward_pass_with_its_own_answer_position(
    clevr_warehouse: Warehouse,
) -> None:
    rows = clevr_warehouse.fetch_arrow(
        "SELECT r.kind, a.image_id, a.prompt FROM activations AS a "
        "JOIN dataset_rows AS r USING (dataset, row_key) "
        "WHERE a.layer = ? AND a.pooling = 'last'",
        [LAYERS[1]],
    ).to_pylist()
    assert len(rows) == 8 * 6  # six question kinds per scene
    assert {r["kind"] for r in rows} == {"colour", "shape", "material", "size", "count", "exists"}
    per_scene = {}
    for r in rows:
        per_scene.setdefault(r["image_id"], set()).add(r["prompt"])
    assert all(len(prompts) == 6 for prompts in per_scene.values())
    _, vectors = load_vectors(clevr_warehouse, "tiny-llava", "clevr", LAYERS[1], "last")
    assert len(np.unique(vectors.round(5), axis=0)) == len(vectors)  # no two questions alike


def test_every_question_types_answer_is_probed_at_every_layer(
    clevr_warehouse: Warehouse,
) -> None:
    probed = clevr_warehouse.fetch_arrow(
        "SELECT DISTINCT concept, layer FROM probe_results "
        "WHERE pooling = 'last' AND concept LIKE 'answer:%'"
    ).to_pylist()
    concepts = {r["concept"] for r in probed}
    assert {"answer:count", "answer:exists", "answer:colour"} <= concepts
    assert {r["layer"] for r in probed} == set(LAYERS)
    n = (
        clevr_warehouse.fetch_arrow(
            "SELECT max(n) AS n FROM probe_results WHERE concept = 'answer:exists'"
        )
        .column(0)[0]
        .as_py()
    )
    assert n == 8  # one row per scene asks whether something exists


def test_only_the_labels_clevr_declares_concepts_are_probed(clevr_warehouse: Warehouse) -> None:
    probed = clevr_warehouse.fetch_arrow(
        "SELECT DISTINCT concept FROM probe_results WHERE concept NOT LIKE 'answer:%'"
    ).column(0)
    roles = clevr_warehouse.fetch_arrow(
        "SELECT DISTINCT concept, role FROM row_labels WHERE dataset = 'clevr'"
    ).to_pylist()
    assert {r["role"] for r in roles} == {"concept"}  # every clevr label is a concept
    assert "count" in probed.to_pylist()
    assert set(probed.to_pylist()) <= set(CONCEPTS)


def test_behaviour_vs_competence_sets_each_question_types_answers_beside_its_probe(
    clevr_warehouse: Warehouse,
) -> None:
    found = clevr_warehouse.fetch_arrow(
        "SELECT concept, probe_concept, questions, answer_accuracy, probe_accuracy "
        "FROM behaviour_vs_competence WHERE probe_concept LIKE 'answer:%' ORDER BY concept"
    ).to_pylist()
    by_concept = {r["concept"]: r for r in found}
    assert by_concept["exists"]["probe_concept"] == "answer:exists"
    assert by_concept["exists"]["questions"] == 8
    assert 0 <= by_concept["count"]["answer_accuracy"] <= 1
    assert by_concept["colour"]["probe_accuracy"] is not None
