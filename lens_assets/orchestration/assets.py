"""Thin assets: each one reads its config, calls the domain code, and reports metadata."""

import hashlib
import json
from typing import Any, TypedDict

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    AutomationCondition,
    DagsterInstance,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from lens_assets.capture.extraction import extract_loaded
from lens_assets.catalog import ConfigFile, dataset_configs, model_configs
from lens_assets.config import ConfigError
from lens_assets.data.datasets import (
    BlankDataset,
    DatasetConfig,
    DatasetImages,
    collect_images,
    load_dataset_config,
)
from lens_assets.data.files import join
from lens_assets.orchestration.metadata import markdown_table
from lens_assets.orchestration.partitions import ModelStep, per_model_asset
from lens_assets.orchestration.sources import DATASET_CONFIGS, MODEL_CONFIG
from lens_assets.orchestration.tuning import TUNED_MODEL
from lens_assets.resources import schemas
from lens_assets.resources.configurable import WarehouseResource
from lens_assets.resources.warehouse import Warehouse

# Bump when extraction changes what it writes for the same config: every partition goes stale.
EXTRACTION_VERSION = "2"  # 2: one forward pass per dataset row
IMAGES_VERSION = "3"  # 2: dataset rows; 3: label roles (concept, control_type)

IMAGES = AssetKey("images")
IMAGE_LABELS = AssetKey("image_labels")
PROMPTS = AssetKey("prompts")
DATASET_ROWS = AssetKey("dataset_rows")
ROW_LABELS = AssetKey("row_labels")
IMAGE_ERRORS = AssetKey("image_errors")

# warehouse table -> (DatasetImages attribute, Arrow schema)
DATASET_TABLES: dict[str, tuple[str, pa.Schema]] = {
    "images": ("rows", schemas.IMAGES),
    "image_labels": ("labels", schemas.IMAGE_LABELS),
    "prompts": ("prompts", schemas.PROMPTS),
    "dataset_rows": ("row_records", schemas.DATASET_ROWS),
    "row_labels": ("row_label_records", schemas.ROW_LABELS),
    "image_errors": ("errors", schemas.IMAGE_ERRORS),
}
# Metadata of each `images` materialization: the datasets that could not be collected (their
# earlier rows stay), and a content digest per dataset and table (the assets' data versions).
FAILED_DATASETS = "failed_datasets"
DATASET_DIGESTS = "dataset_digests"


class DatasetFailure(TypedDict):
    config: str  # the dataset's YAML file
    error: str  # the cause, as the domain code worded it


def failure_message(name: str, failure: DatasetFailure) -> str:
    return (
        f"dataset {name!r} ({failure['config']}) was not collected: {failure['error']}. Its "
        f"earlier rows are kept; fix {failure['config']} or the files it names, then "
        "materialize `images` again"
    )


def failed_datasets(instance: DagsterInstance) -> dict[str, DatasetFailure]:
    """The datasets the latest `images` materialization could not collect."""
    return _latest_metadata(instance, FAILED_DATASETS) or {}


def _latest_metadata(instance: DagsterInstance, key: str) -> Any:
    event = instance.get_latest_materialization_event(IMAGES)
    entry = event.asset_materialization.metadata.get(key) if event else None
    return entry.value if entry is not None else None


def _dataset_spec(key: AssetKey, description: str) -> AssetSpec:
    return AssetSpec(
        key,
        deps=[DATASET_CONFIGS],
        group_name="datasets",
        code_version=IMAGES_VERSION,
        automation_condition=AutomationCondition.eager(),
        description=description,
        kinds={"duckdb"},
    )


@multi_asset(
    specs=[
        _dataset_spec(IMAGES, "Every dataset's images: content-hash id, path, size, split."),
        _dataset_spec(IMAGE_LABELS, "Ground truth per image: (image_id, dataset, concept, value)."),
        _dataset_spec(PROMPTS, "Questions per image with their answers, for scoring behaviour."),
        _dataset_spec(
            DATASET_ROWS,
            "The unit of data: one row per input (0-4 images in order, its own prompt, its "
            "expected answer and choices, its split).",
        ),
        _dataset_spec(ROW_LABELS, "Ground truth per row: (dataset, row_key, concept, value)."),
        _dataset_spec(IMAGE_ERRORS, "Files a dataset names that could not be used, and why."),
    ],
)
def images(context: AssetExecutionContext, warehouse: WarehouseResource):
    """Collect each dataset on its own: one that fails (bad YAML, a missing folder...) keeps its
    earlier rows and is reported (log, metadata, the `every_dataset_collected` check) while the
    others are written."""
    files = dataset_configs()
    if not files:
        raise ConfigError("no dataset configs: add one under configs/datasets/ (kind: shapes)")
    with warehouse.session() as wh:
        collected, failed = collect_each(files, join(wh.location.files_root, "datasets"))
        if not collected:
            raise ConfigError(
                "no dataset could be collected: "
                + "; ".join(failure_message(name, f) for name, f in failed.items())
            )
        tables = {
            table: pa.Table.from_pylist([r for c in collected for r in getattr(c, part)], schema)
            for table, (part, schema) in DATASET_TABLES.items()
        }
        wh.replace_dataset_rows([c.name for c in collected], tables)
    for c in collected:
        for error in c.errors:
            context.log.warning(f"{c.name}: {error['error']}")
    for name, failure in failed.items():
        context.log.error(failure_message(name, failure))
    digests = _digests(collected, failed, _latest_metadata(context.instance, DATASET_DIGESTS))
    per_dataset = [
        {"dataset": c.name, "rows": len(c.items), "images": len(c.rows),
         "concepts": len({r["concept"] for r in c.labels}), "prompts": len(c.prompts),
         "errors": len(c.errors), "collected": "yes"}
        for c in collected
    ] + [
        {"dataset": name, "rows": "kept", "images": "kept", "concepts": "kept", "prompts": "kept",
         "errors": "kept", "collected": "FAILED (see check every_dataset_collected)"}
        for name in failed
    ]  # fmt: skip
    yield MaterializeResult(
        asset_key=IMAGES,
        data_version=_table_version(digests, "images"),
        metadata={
            "rows": tables["images"].num_rows,
            "datasets": MetadataValue.json({c.name: len(c.rows) for c in collected}),
            "preview": markdown_table(sorted(per_dataset, key=lambda row: str(row["dataset"]))),
            FAILED_DATASETS: MetadataValue.json(failed),
            DATASET_DIGESTS: MetadataValue.json(digests),
        },
    )
    for key, table in ((IMAGE_LABELS, "image_labels"), (PROMPTS, "prompts"),
                       (DATASET_ROWS, "dataset_rows"), (ROW_LABELS, "row_labels"),
                       (IMAGE_ERRORS, "image_errors")):  # fmt: skip
        yield MaterializeResult(
            asset_key=key,
            data_version=_table_version(digests, table),
            metadata={"rows": tables[table].num_rows},
        )


def collect_each(
    files: dict[str, ConfigFile], rendered: str
) -> tuple[list[DatasetImages], dict[str, DatasetFailure]]:
    """Every dataset that can be collected (by name), and why each other one could not.

    Any exception counts, not only a ConfigError: whatever one dataset's cause (a malformed
    CSV, an unreadable folder), the others must still land, and the failure is reported."""
    configs: dict[str, DatasetConfig] = {}
    failed: dict[str, DatasetFailure] = {}
    for name, file in files.items():
        try:
            configs[name] = load_dataset_config(file.path)
        except Exception as error:
            failed[name] = DatasetFailure(config=str(file.path), error=_cause(error))
    done: dict[str, DatasetImages] = {}
    # blank datasets last: they ask the questions of those collected before them
    for name in sorted(configs, key=lambda n: (isinstance(configs[n], BlankDataset), n)):
        config = configs[name]
        try:
            if isinstance(config, BlankDataset) and config.of in failed:
                raise ConfigError(f"it asks the questions of dataset {config.of!r}, which failed")
            done[name] = collect_images(name, config, rendered, done)
        except Exception as error:
            failed[name] = DatasetFailure(config=str(files[name].path), error=_cause(error))
    return [done[name] for name in sorted(done)], dict(sorted(failed.items()))


def _cause(error: Exception) -> str:
    """A ConfigError's own words (they name the field and the fix); anything else with its
    type, which may be all its message leaves to go on."""
    return str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"


def _digests(
    collected: list[DatasetImages],
    failed: dict[str, DatasetFailure],
    before: dict[str, dict[str, str]] | None,
) -> dict[str, dict[str, str]]:
    """Per dataset, a hash of its rows in each table; a failed dataset keeps its earlier rows,
    so it keeps their digests (none when it never had any)."""
    digests = {
        c.name: {table: _digest(getattr(c, part)) for table, (part, _) in DATASET_TABLES.items()}
        for c in collected
    }
    digests.update({name: (before or {}).get(name, {}) for name in failed})
    return dict(sorted(digests.items()))


def _digest(rows: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _table_version(digests: dict[str, dict[str, str]], table: str) -> DataVersion:
    """A table's data version is its content's: collecting the same rows again (a file was
    only touched) leaves every model's activations fresh."""
    digest = hashlib.sha256()
    for name, tables in digests.items():
        digest.update(f"{name}={tables.get(table)};".encode())
    return DataVersion(digest.hexdigest()[:16])


@per_model_asset(
    group="activations",
    deps=[MODEL_CONFIG, TUNED_MODEL, IMAGES, DATASET_ROWS],
    code_version=EXTRACTION_VERSION,
    loads_model=True,
    description="Hooked, pooled activations of one model over its datasets (DuckLake table "
    "`activations`, partitioned by model).",
)
def activations(step: ModelStep) -> MaterializeResult:
    name, config, datasets = step.name, step.config, step.datasets()
    with step.warehouse.session() as wh:
        sources = {dataset: wh.dataset_rows(dataset) for dataset in datasets}
        empty = [d for d, rows in sources.items() if not rows]
        if empty:
            raise ConfigError(
                f"datasets {empty} have no rows in the warehouse yet: materialize `images` "
                "first (it runs automatically upstream of `activations`)"
            )
        with step.load(wh) as loaded:
            result = extract_loaded(
                loaded, config, wh, sources, whole_model=True,
                batch_size=step.batch_size, progress=False,
                memory_budget=step.runtime.memory_budget_bytes(),
                # the configs folder keeps names unique: this partition owns its name
                config_source=str(model_configs()[name].path.resolve()), claim_name=True,
            )  # fmt: skip
        summary = _partition_summary(wh, name)
        stored_bytes = _partition_bytes(wh, name)
    step.context.log.info(f"{name}: {result.rows} rows from {result.n_images} dataset rows")
    return MaterializeResult(
        metadata={
            "rows": result.rows,
            "bytes": MetadataValue.int(stored_bytes),
            "seconds": MetadataValue.float(round(result.seconds, 4)),
            "peak_memory_bytes": MetadataValue.int(result.peak_memory_bytes),
            "images": result.n_images,
            "layers": MetadataValue.json(result.modules),
            "datasets": MetadataValue.json(list(sources)),
            "preview": markdown_table(summary, limit=40),
        }
    )


def _partition_summary(warehouse: Warehouse, model: str) -> list[dict[str, object]]:
    return warehouse.fetch_arrow(
        "SELECT dataset, layer, pooling, count(*) AS rows, any_value(dim) AS dim, "
        "round(avg(list_aggregate(vector, 'avg')), 5) AS mean_value "
        "FROM activations WHERE model = ? GROUP BY ALL ORDER BY ALL",
        [model],
    ).to_pylist()


def _partition_bytes(warehouse: Warehouse, model: str) -> int:
    stored = warehouse.fetch_arrow(
        "SELECT coalesce(sum(data_file_size_bytes), 0) AS bytes "
        "FROM ducklake_list_files('lake', 'activations') WHERE data_file LIKE ?",
        [f"%model={model}/%"],
    )
    return int(stored.column(0)[0].as_py())
