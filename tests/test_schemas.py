"""One schema per table: the Arrow schemas in resources/schemas.py against the tables the sql/
migrations make, in a fresh warehouse and in one upgraded from an earlier schema, and the
writers' rows against the schemas."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from lens_assets.resources import schemas
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.schemas import TABLES, conform, rows_table, sql_type, without
from lens_assets.resources.staging import ACTIVATION_ROWS, IMAGE_ROWS, STAGED_ACTIVATIONS
from lens_assets.resources.warehouse import Warehouse

from lens_assets.analyses.blind import blind_test_rows
from lens_assets.analyses.layer_pairs import similarity_rows
from lens_assets.analyses.stroop import CUES, concept_similarity_rows

MIGRATIONS = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
# Every table rows are written to (the migration log is the warehouse's own).
WRITTEN = {table: schema for table, schema in TABLES.items() if table != "lens_migrations"}


def described(warehouse: Warehouse) -> dict[str, list[tuple[str, str]]]:
    """Every table of the lake, as DESCRIBE spells its columns (name, type), in order."""
    with warehouse.connect() as con:
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' ORDER BY 1"
        ).fetchall()
        return {
            table: [(row[0], row[1]) for row in con.execute(f"DESCRIBE {table}").fetchall()]
            for (table,) in tables
        }


def declared(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(field.name, sql_type(field.type)) for field in schema]


def assert_declared(found: dict[str, list[tuple[str, str]]]) -> None:
    """Same tables, and per table the same column names, order and types."""
    assert sorted(found) == sorted(TABLES), "a table without a schema in resources/schemas.py"
    for table, schema in TABLES.items():
        assert found[table] == declared(schema), table


def counts(warehouse: Warehouse, tables: Iterable[str]) -> dict[str, int]:
    """Rows per table, read on one connection (each read-only open costs a lake attach)."""
    with warehouse.connect(read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def test_every_table_of_a_fresh_warehouse_is_its_declared_schema(tmp_path: Path) -> None:
    assert_declared(described(Warehouse.at(tmp_path / "wh")))


def sample(field: pa.Field, index: int) -> Any:
    """A value of the field's type, different per row and exact in FLOAT."""
    kind = field.type
    if pa.types.is_list(kind):
        return [sample(pa.field("item", kind.value_type), index)] * 2
    if pa.types.is_string(kind):
        return f"{field.name}-{index}"
    if pa.types.is_boolean(kind):
        return index % 2 == 0
    if pa.types.is_integer(kind):
        return index + 1
    if pa.types.is_floating(kind):
        return index + 0.5
    if pa.types.is_timestamp(kind):
        return datetime(2026, 1, 2, 3, 4, 5 + index, tzinfo=UTC)
    raise AssertionError(f"no sample value for {kind}")


def samples(schema: pa.Schema, rows: int = 2) -> pa.Table:
    return pa.Table.from_pylist(
        [{field.name: sample(field, i) for field in schema} for i in range(rows)], schema=schema
    )


def test_rows_of_every_declared_schema_are_stored_and_read_back_unchanged(
    tmp_path: Path,
) -> None:
    warehouse = Warehouse.at(tmp_path / "wh")
    written = {table: samples(schema) for table, schema in WRITTEN.items()}
    warehouse.replace_rows("true", [], written)
    with warehouse.connect(read_only=True) as con:
        for table, schema in WRITTEN.items():
            back = con.execute(f"SELECT * FROM {table} ORDER BY ALL").to_arrow_table()
            assert back.column_names == schema.names, table
            assert back.cast(schema).equals(written[table]), table


@pytest.mark.parametrize(
    "kept",
    [14, 10],
    ids=lambda kept: f"until-{MIGRATIONS[kept - 1].name}",
)
def test_a_warehouse_of_an_earlier_schema_upgrades_to_the_declared_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    """Made by the first `kept` migrations (the schema before `runs.config`, and one
    from before `tile` and the runs' batch columns), with a row in it; today's code migrates
    it to exactly the declared schemas, keeps the row and writes rows of every schema."""
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in MIGRATIONS[kept:]:
        (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute("INSERT INTO runs (model, dataset, n_images) VALUES ('old', 'd', 1)")
        old = described(warehouse)
    assert old != {table: declared(schema) for table, schema in TABLES.items()}

    assert_declared(described(warehouse))
    assert warehouse.fetch_arrow("SELECT model, config FROM runs").to_pylist() == [
        {"model": "old", "config": None}
    ]
    warehouse.replace_rows("true", [], {table: samples(s) for table, s in WRITTEN.items()})
    assert counts(warehouse, WRITTEN) == dict.fromkeys(WRITTEN, 2)


def test_the_stage_holds_the_activations_and_images_columns_less_what_the_commit_adds() -> None:
    assert without(schemas.ACTIVATIONS, "model", "architecture") == STAGED_ACTIVATIONS
    assert without(STAGED_ACTIVATIONS, "dataset") == ACTIVATION_ROWS
    assert without(schemas.IMAGES, "split") == IMAGE_ROWS
    with pytest.raises(KeyError, match="tiles"):
        without(schemas.ACTIVATIONS, "tiles")


def test_rows_must_carry_exactly_their_tables_columns() -> None:
    row = {name: None for name in schemas.BLIND_TEST.names}
    assert rows_table(schemas.BLIND_TEST, [row]).schema == schemas.BLIND_TEST
    misspelt = {**{k: v for k, v in row.items() if k != "n_real"}, "n_reel": 3}
    with pytest.raises(ValueError, match=r"missing \['n_real'\], extra \['n_reel'\]"):
        rows_table(schemas.BLIND_TEST, [misspelt])
    narrow = conform(pa.table({"model": ["m"]}), schemas.BLIND_TEST)
    assert narrow.schema == schemas.BLIND_TEST and narrow.column("n_real").null_count == 1


# Writers that still spell their own schema: each must equal the declared one (less the columns
# its caller adds). Delete a line once that writer takes its schema from resources.schemas.
def pooled_rows(model: str, layer: str, vectors: np.ndarray) -> pa.Table:
    """Pooled `activations` rows of one layer on images img-0..n-1 of dataset `d`."""
    n, dim = vectors.shape
    rows = pa.table(
        {
            "model": [model] * n,
            "architecture": ["test"] * n,
            "dataset": ["d"] * n,
            "image_id": [f"img-{i}" for i in range(n)],
            "row_key": [f"img-{i}" for i in range(n)],
            "layer": [layer] * n,
            "pooling": ["mean"] * n,
            "dim": pa.array([dim] * n, pa.int32()),
            "vector": pa.array(vectors.astype(np.float32).tolist(), pa.list_(pa.float32())),
        }
    )
    return conform(rows, schemas.ACTIVATIONS)


def test_the_similarity_writers_rows_are_their_tables_columns(tmp_path: Path) -> None:
    """layer_similarity, concept_similarity, concept_dominance and blind_test rows, as the
    analyses return them, are exactly the declared columns and are stored as they are."""
    warehouse = Warehouse.at(tmp_path / "wh")
    rng = np.random.default_rng(0)
    n = 12
    vectors = pa.concat_tables(
        pooled_rows(model, layer, rng.normal(size=(n, 6)))
        for model in ("a", "b")
        for layer in ("layers.0", "layers.1")
    )
    colours = ("red", "green", "blue")
    cues = {cue: [colours[(i + k * (i // 3)) % 3] for i in range(n)] for k, cue in enumerate(CUES)}
    labels = [
        {"image_id": f"img-{i}", "dataset": "d", "concept": cue, "value": values[i]}
        for cue, values in cues.items()
        for i in range(n)
    ]
    answers = [
        {name: None for name in schemas.ANSWERS.names}
        | {"model": "a", "dataset": dataset, "image_id": f"img-{i}", "prompt_id": 0,
           "concept": "colour", "answer": answer, "expected": "red", "correct": answer == "red"}
        for dataset, answer in (("d", "red"), ("blank", "blue"))
        for i in range(4)
    ]  # fmt: skip
    warehouse.replace_rows(
        "true",
        [],
        {
            "activations": vectors,
            "image_labels": rows_table(schemas.IMAGE_LABELS, labels),
            "row_labels": rows_table(
                schemas.ROW_LABELS,
                [
                    {
                        "dataset": r["dataset"],
                        "row_key": r["image_id"],
                        "concept": r["concept"],
                        "value": r["value"],
                        "role": None,
                    }
                    for r in labels
                ],
            ),
            "answers": rows_table(schemas.ANSWERS, answers),
        },
    )

    pairs = rows_table(schemas.LAYER_SIMILARITY, similarity_rows(warehouse, "b"))
    curves, shares = concept_similarity_rows(warehouse, "a")
    tables = {
        "layer_similarity": pairs,
        "concept_similarity": rows_table(schemas.CONCEPT_SIMILARITY, curves),
        "concept_dominance": rows_table(schemas.CONCEPT_DOMINANCE, shares),
        "blind_test": rows_table(
            schemas.BLIND_TEST, blind_test_rows(warehouse, "a", {"blank": "d"})
        ),
    }
    written = {table: rows.num_rows for table, rows in tables.items()}
    assert all(written.values()), written
    warehouse.replace_rows("true", [], tables)
    assert counts(warehouse, tables) == written
