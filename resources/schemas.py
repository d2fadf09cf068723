"""One Arrow schema per warehouse table: its columns' names, order and types, written once.

The tables themselves are made by the numbered migrations in sql/ (a shipped migration is never
edited, so that a warehouse written by any earlier version upgrades by them). Every Python
writer takes its columns from here instead of spelling them again, and tests/test_schemas.py
checks these schemas against a freshly migrated warehouse (and one upgraded from the previous
schema), so the DDL and the Python side cannot drift apart. A new table needs a schema here,
or that test fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

_TEXT = pa.string()  # VARCHAR
_INT = pa.int32()  # INTEGER
_BIGINT = pa.int64()  # BIGINT
_DOUBLE = pa.float64()  # DOUBLE
_FLOAT = pa.float32()  # FLOAT
_BOOL = pa.bool_()  # BOOLEAN
_TIMESTAMPTZ = pa.timestamp("us", tz="UTC")  # TIMESTAMP WITH TIME ZONE

# -- the datasets (sql/001, 005) --------------------------------------------------------------

IMAGES = pa.schema(
    [
        ("image_id", _TEXT),
        ("dataset", _TEXT),
        ("path", _TEXT),
        ("width", _INT),
        ("height", _INT),
        ("split", _TEXT),
    ]
)
IMAGE_LABELS = pa.schema(
    [
        ("image_id", _TEXT),
        ("dataset", _TEXT),
        ("concept", _TEXT),
        ("value", _TEXT),
    ]
)
PROMPTS = pa.schema(
    [
        ("image_id", _TEXT),
        ("dataset", _TEXT),
        ("prompt_id", _INT),
        ("prompt", _TEXT),
        ("answer", _TEXT),
        ("kind", _TEXT),
        ("concept", _TEXT),
    ]
)
DATASET_ROWS = pa.schema(
    [
        ("dataset", _TEXT),
        ("row_key", _TEXT),
        ("position", _INT),
        ("image_ids", pa.list_(_TEXT)),
        ("prompt", _TEXT),
        ("answer", _TEXT),
        ("choices", pa.list_(_TEXT)),
        ("split", _TEXT),
        ("kind", _TEXT),
        ("concept", _TEXT),
    ]
)
ROW_LABELS = pa.schema(
    [
        ("dataset", _TEXT),
        ("row_key", _TEXT),
        ("concept", _TEXT),
        ("value", _TEXT),
        ("role", _TEXT),  # concept | control_type | other; NULL: the dataset declares nothing
    ]
)
IMAGE_ERRORS = pa.schema(
    [
        ("dataset", _TEXT),
        ("path", _TEXT),
        ("error", _TEXT),
    ]
)

# -- extraction (sql/002, 003, 011, 012, 015) ---------------------------------------------------

ACTIVATIONS = pa.schema(
    [
        ("model", _TEXT),
        ("architecture", _TEXT),
        ("dataset", _TEXT),
        ("image_id", _TEXT),
        ("prompt", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("token_index", _INT),
        ("token_role", _TEXT),
        ("dim", _INT),
        ("vector", pa.list_(_FLOAT)),
        ("tile", _INT),
        ("row_key", _TEXT),
        ("image_ids", pa.list_(_TEXT)),
        ("image_index", _INT),
        ("layer_as_written", _TEXT),  # the name as the config wrote it, where not `layer` (018)
    ]
)
RUNS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("device", _TEXT),
        ("dtype", _TEXT),
        ("batch_size", _INT),
        ("n_images", _INT),
        ("seconds", _DOUBLE),
        ("per_image_seconds", _DOUBLE),
        ("peak_memory_bytes", _BIGINT),
        ("started_at", _TIMESTAMPTZ),
        ("oom_retries", _INT),
        ("requested_batch_size", _INT),
        ("config", _TEXT),
    ]
)

# -- analyses (sql/006-010) ---------------------------------------------------------------------

PROBE_RESULTS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("concept", _TEXT),
        ("probe", _TEXT),
        ("accuracy", _DOUBLE),
        ("control_accuracy", _DOUBLE),
        ("selectivity", _DOUBLE),
        ("p_value", _DOUBLE),
        ("n", _INT),
        ("fold_std", _DOUBLE),
        ("shuffled_accuracy", _DOUBLE),
        ("z_p_value", _DOUBLE),
        ("classes", _INT),
    ]
)
# The probe_results table is the columns above, which every protocol fills (and
# `probing.probe_layers` returns), then what sql/020 added: which protocol made the row and
# what only the held-out protocol ('vlm-lens') knows. z_p_value is the one-sided z-test (probe
# above the shuffled control); z_p_two_sided is VLM-Lens's two-sided one on the same counts.
PROBE_RESULTS_TABLE = pa.schema(
    [
        *PROBE_RESULTS,
        ("protocol", _TEXT),  # 'cv' | 'vlm-lens'
        ("z_p_two_sided", _DOUBLE),
        ("n_test", _INT),  # held-out rows; NULL for 'cv' (every row is tested once)
        ("hyperparameters", _TEXT),  # JSON: the grid point chosen by CV on the training split
        ("probe_file", _TEXT),  # the saved probe, relative to the warehouse root
    ]
)
# Each held-out row's prediction by each saved probe (sql/020).
PROBE_PREDICTIONS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("concept", _TEXT),
        ("probe", _TEXT),
        ("row_key", _TEXT),
        ("label", _TEXT),
        ("predicted", _TEXT),
        ("correct", _BOOL),
    ]
)
ANSWERS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("image_id", _TEXT),
        ("prompt_id", _INT),
        ("prompt", _TEXT),
        ("concept", _TEXT),
        ("kind", _TEXT),
        ("answer_text", _TEXT),
        ("answer", _TEXT),
        ("expected", _TEXT),
        ("correct", _BOOL),
        ("row_key", _TEXT),
        ("image_ids", pa.list_(_TEXT)),
    ]
)
LAYER_SIMILARITY = pa.schema(
    [
        ("model_a", _TEXT),
        ("layer_a", _TEXT),
        ("model_b", _TEXT),
        ("layer_b", _TEXT),
        ("dataset", _TEXT),
        ("pooling", _TEXT),
        ("n", _INT),
        ("cka", _DOUBLE),
        ("cka_unbiased", _DOUBLE),
    ]
)
BLIND_TEST = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("blank_dataset", _TEXT),
        ("concept", _TEXT),
        ("n_real", _INT),
        ("n_blank", _INT),
        ("accuracy_real", _DOUBLE),
        ("accuracy_blank", _DOUBLE),
        ("tv_real_labels", _DOUBLE),
        ("tv_blank_labels", _DOUBLE),
        ("tv_real_blank", _DOUBLE),
    ]
)
CONCEPT_SIMILARITY = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("cue", _TEXT),
        ("components", _INT),
        ("nearest_centroid_accuracy", _DOUBLE),
        ("knn_accuracy", _DOUBLE),
    ]
)
CONCEPT_DOMINANCE = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("cue", _TEXT),
        ("share", _DOUBLE),
        ("components_needed", _INT),
    ]
)
# -- the concept workflow (sql/021) --
CONCEPT_PCA = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("concept_dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("row_key", _TEXT),
        ("truth", _TEXT),
        ("concept", _TEXT),
        ("similarities", pa.list_(_DOUBLE)),
        ("knn_components", _INT),
        ("knn_vote", _DOUBLE),
        ("knn_concept", _TEXT),
    ]
)
CONCEPT_PCA_LAYERS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("concept_dataset", _TEXT),
        ("layer", _TEXT),
        ("pooling", _TEXT),
        ("components", _INT),
        ("n", _INT),
        ("explained_variance", _DOUBLE),
        ("centroid_accuracy", _DOUBLE),
        ("knn_accuracy", _DOUBLE),
        ("own_similarity", _DOUBLE),
        ("other_similarity", _DOUBLE),
    ]
)
VISION_VS_VLM_ITEMS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("task", _TEXT),
        ("stage", _TEXT),
        ("layer", _TEXT),
        ("layer_order", _INT),
        ("item", _TEXT),
        ("image_id", _TEXT),
        ("choice", _TEXT),
        ("answer", _TEXT),
        ("correct", _BOOL),
        ("options", _INT),
    ]
)

# -- interpretability (sql/013) -----------------------------------------------------------------

ATTENTION_MAPS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("image_id", _TEXT),
        ("prompt", _TEXT),
        ("layer", _TEXT),
        ("head", _INT),
        ("grid_rows", _INT),
        ("grid_cols", _INT),
        ("weights", pa.list_(_FLOAT)),
        ("image_share", _DOUBLE),
        ("row_key", _TEXT),
        ("image_index", _INT),
    ]
)
LOGIT_LENS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("image_id", _TEXT),
        ("prompt", _TEXT),
        ("layer", _TEXT),
        ("layer_index", _INT),
        ("top_token_ids", pa.list_(_INT)),
        ("top_tokens", pa.list_(_TEXT)),
        ("top_probs", pa.list_(_FLOAT)),
        ("label", _TEXT),
        ("label_token_id", _INT),
        ("label_rank", _INT),
        ("label_prob", _FLOAT),
    ]
)
ATTRIBUTIONS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("image_id", _TEXT),
        ("prompt", _TEXT),
        ("method", _TEXT),
        ("layer", _TEXT),
        ("target_token", _BIGINT),
        ("grid_rows", _INT),
        ("grid_cols", _INT),
        ("heatmap", pa.list_(_FLOAT)),
    ]
)
PATCHING_EFFECTS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("pair_id", _TEXT),
        ("layer", _TEXT),
        ("positions", _TEXT),
        ("patched_positions", _INT),
        ("answer_token", _BIGINT),
        ("clean_logit", _DOUBLE),
        ("corrupted_logit", _DOUBLE),
        ("patched_logit", _DOUBLE),
        ("recovery", _DOUBLE),
    ]
)
ABLATION_EFFECTS = pa.schema(
    [
        ("model", _TEXT),
        ("dataset", _TEXT),
        ("sample_id", _TEXT),
        ("layer", _TEXT),
        ("heads", pa.list_(_INT)),
        ("mode", _TEXT),
        ("answer_token", _BIGINT),
        ("base_logit", _DOUBLE),
        ("ablated_logit", _DOUBLE),
        ("logit_change", _DOUBLE),
        ("kl", _DOUBLE),
        ("max_abs_diff", _DOUBLE),
    ]
)

MODELS = pa.schema(
    [
        ("model", _TEXT),
        ("kind", _TEXT),
        ("base", _TEXT),
        ("method", _TEXT),
        ("config_hash", _TEXT),
        ("version", _TEXT),
        ("config", _TEXT),
        ("checkpoint", _TEXT),
        ("steps", _INT),
        ("final_loss", _DOUBLE),
        ("seconds", _DOUBLE),
        ("held_out_accuracy", _DOUBLE),
    ]
)
# Each held-out row of a tuned model asked of it and of its base (sql/023; view tuning_effects).
TUNING_ANSWERS = pa.schema(
    [
        ("model", _TEXT),
        ("role", _TEXT),  # 'tuned' | 'base'
        ("answered_by", _TEXT),
        ("dataset", _TEXT),
        ("row_key", _TEXT),
        ("image_ids", pa.list_(_TEXT)),
        ("kind", _TEXT),
        ("prompt", _TEXT),
        ("answer_text", _TEXT),
        ("answer", _TEXT),
        ("expected", _TEXT),
        ("correct", _BOOL),
        ("options", _INT),
        ("image_share", _DOUBLE),
    ]
)

# -- the migration log (made in Python by `create_table`, not by a migration) -------------------

LENS_MIGRATIONS = pa.schema([("name", _TEXT), ("applied_at", _TIMESTAMPTZ)])

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "image_labels": IMAGE_LABELS,
    "prompts": PROMPTS,
    "dataset_rows": DATASET_ROWS,
    "row_labels": ROW_LABELS,
    "image_errors": IMAGE_ERRORS,
    "activations": ACTIVATIONS,
    "runs": RUNS,
    "probe_results": PROBE_RESULTS_TABLE,
    "probe_predictions": PROBE_PREDICTIONS,
    "answers": ANSWERS,
    "layer_similarity": LAYER_SIMILARITY,
    "blind_test": BLIND_TEST,
    "concept_similarity": CONCEPT_SIMILARITY,
    "concept_dominance": CONCEPT_DOMINANCE,
    "concept_pca": CONCEPT_PCA,
    "concept_pca_layers": CONCEPT_PCA_LAYERS,
    "vision_vs_vlm_items": VISION_VS_VLM_ITEMS,
    "attention_maps": ATTENTION_MAPS,
    "logit_lens": LOGIT_LENS,
    "attributions": ATTRIBUTIONS,
    "patching_effects": PATCHING_EFFECTS,
    "ablation_effects": ABLATION_EFFECTS,
    "models": MODELS,
    "tuning_answers": TUNING_ANSWERS,
    "lens_migrations": LENS_MIGRATIONS,
}

_SQL_TYPES: dict[pa.DataType, str] = {
    _TEXT: "VARCHAR",
    _INT: "INTEGER",
    _BIGINT: "BIGINT",
    _DOUBLE: "DOUBLE",
    _FLOAT: "FLOAT",
    _BOOL: "BOOLEAN",
    _TIMESTAMPTZ: "TIMESTAMP WITH TIME ZONE",
}


def sql_type(arrow: pa.DataType) -> str:
    """The DuckDB type an Arrow type is stored as, spelled as DESCRIBE spells it (so the test
    compares the two sides as text)."""
    if pa.types.is_list(arrow):
        return f"{sql_type(arrow.value_type)}[]"
    try:
        return _SQL_TYPES[arrow]
    except KeyError:
        raise TypeError(f"no warehouse type for Arrow {arrow}: add one to _SQL_TYPES") from None


def create_table(name: str, schema: pa.Schema) -> str:
    """`CREATE TABLE IF NOT EXISTS` from a schema, for the one table Python itself creates (the
    migration log, which must exist before the first migration runs)."""
    columns = ", ".join(f"{field.name} {sql_type(field.type)}" for field in schema)
    return f"CREATE TABLE IF NOT EXISTS {name} ({columns})"


def without(schema: pa.Schema, *names: str) -> pa.Schema:
    """`schema` less the named columns: for a writer that leaves them to its caller (the stage
    leaves model and architecture to the commit)."""
    missing = set(names) - set(schema.names)
    if missing:
        raise KeyError(f"no column {sorted(missing)} to leave out of {schema.names}")
    return pa.schema([field for field in schema if field.name not in names])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with `schema`'s columns in its order; a column it lacks is all NULL."""
    columns = [
        table.column(field.name).cast(field.type)
        if field.name in table.column_names
        else pa.nulls(table.num_rows, field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def rows_table(schema: pa.Schema, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Row dicts as Arrow with a table's schema. Each row must carry exactly the schema's
    columns: `pa.Table.from_pylist` would store a misspelt or missing key as a NULL column
    and drop an extra one without a word."""
    rows = list(rows)
    expected = set(schema.names)
    for row in rows:
        if row.keys() != expected:
            missing, extra = sorted(expected - row.keys()), sorted(row.keys() - expected)
            raise ValueError(
                f"a row does not match its table's columns: missing {missing}, extra {extra}"
            )
    return pa.Table.from_pylist(rows, schema=schema)
