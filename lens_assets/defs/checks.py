"""Asset checks on every activation partition, run after each materialization (and on demand
from the UI): complete, finite, one width per layer."""

from collections.abc import Callable

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, asset_check

from lens_assets import integrity
from lens_assets.defs.assets import activations
from lens_assets.defs.partitions import MODELS
from resources.configurable import WarehouseResource
from resources.warehouse import Warehouse


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
    _check("row_count", integrity.row_counts, "Rows = images x layers x poolings."),
    _check("finite_values", integrity.finite_values, "No NaN or Inf in any vector."),
    _check("one_dim_per_layer", integrity.one_dimension_per_layer, "One width per layer."),
]
