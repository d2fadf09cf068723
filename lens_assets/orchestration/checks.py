"""Asset checks, run after each materialization (and on demand from the UI): every dataset
config was collected into `images`; every activation partition is complete, finite, and of
one width per layer."""

from collections.abc import Callable

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetSelection,
    MetadataValue,
    asset_check,
    define_asset_job,
)

from lens_assets.capture import integrity
from lens_assets.orchestration.assets import (
    IMAGES,
    activations,
    failed_datasets,
    failure_message,
)
from lens_assets.orchestration.partitions import MODELS
from lens_assets.resources.configurable import WarehouseResource
from lens_assets.resources.warehouse import Warehouse


def _check(name: str, finding: Callable[[Warehouse, str], integrity.Finding], doc: str):
    @asset_check(asset=activations, name=name, partitions_def=MODELS, description=doc)
    def check(
        context: AssetCheckExecutionContext, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        with warehouse.session() as wh:
            result = finding(wh, context.partition_key)
        return AssetCheckResult(
            passed=result.passed,
            description=result.message,
            metadata={"message": result.message, **result.figures},
        )

    return check


ACTIVATION_CHECKS: list[AssetChecksDefinition] = [
    _check("row_count", integrity.row_counts, "Rows = dataset rows x layers x poolings."),
    _check("finite_values", integrity.finite_values, "No NaN or Inf in any vector."),
    _check("one_dim_per_layer", integrity.one_dimension_per_layer, "One width per layer."),
]


@asset_check(
    asset=IMAGES,
    description="Every dataset config was collected by the latest `images` run; one that "
    "failed kept its earlier rows, and this check names it, its file and the cause.",
)
def every_dataset_collected(context: AssetCheckExecutionContext) -> AssetCheckResult:
    failed = failed_datasets(context.instance)
    message = "; ".join(failure_message(name, failure) for name, failure in failed.items())
    return AssetCheckResult(
        passed=not failed,
        description=message or "every dataset config was collected",
        metadata={"failed": MetadataValue.json(failed)},
    )


DATASET_CHECKS: list[AssetChecksDefinition] = [every_dataset_collected]


# Re-run the checks of one partition (say, after the warehouse was changed by hand) without
# re-extracting it: launch this job with the tag dagster/partition=<model>. A job that selects
# only checks has no partitions of its own, so the partition travels as that tag.
CHECK_JOB = define_asset_job(
    "check_activations", selection=AssetSelection.checks_for_assets(activations)
)
