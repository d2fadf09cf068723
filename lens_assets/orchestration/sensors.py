"""Keeps Dagster in step with the configs folder: one partition per model config and per tuning
config (a tuned model), and a new observation whenever a config's content changes (which makes
its partition stale)."""

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from lens_assets.catalog import model_configs
from lens_assets.orchestration.partitions import MODELS
from lens_assets.orchestration.sources import changed_config_observations


def partition_changes(instance: DagsterInstance) -> tuple[list[str], list[str]]:
    """(model names to add, partitions whose config is gone)."""
    names = set(model_configs())
    existing = set(instance.get_dynamic_partitions(MODELS.name))
    return sorted(names - existing), sorted(existing - names)


@sensor(minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING)
def model_configs_sensor(context: SensorEvaluationContext) -> SensorResult:
    """Add a partition per new model or tuning config; automation conditions then materialize
    it (a tuned model: `tuned_model` trains it first)."""
    added, removed = partition_changes(context.instance)
    requests = []
    if added:
        requests.append(MODELS.build_add_request(added))
    if removed:
        requests.append(MODELS.build_delete_request(removed))
    return SensorResult(
        dynamic_partitions_requests=requests,
        asset_events=changed_config_observations(context.instance),
    )


def sync_configs(instance: DagsterInstance) -> tuple[list[str], list[str]]:
    """What the sensor does, applied at once (for `lens materialize` and tests)."""
    added, removed = partition_changes(instance)
    if added:
        instance.add_dynamic_partitions(MODELS.name, added)
    for name in removed:
        instance.delete_dynamic_partition(MODELS.name, name)
    for event in changed_config_observations(instance):
        instance.report_runless_asset_event(event)
    return added, removed
