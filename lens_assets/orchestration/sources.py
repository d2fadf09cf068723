"""The config files as observable source assets: a model config's data version is a hash of
its bytes, so editing one model's YAML makes exactly that model's activations stale (a tuned
model's: of its tuning config, its base's model config and the dataset configs it names, so
editing the tuning config retrains only it, and editing the base restales it too); the
datasets' version also covers the files each one reads, so adding an image to a folder or
editing a manifest makes `images` stale."""

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    DataVersion,
    DataVersionsByPartition,
    OpExecutionContext,
    observable_source_asset,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from lens_assets.catalog import dataset_configs, datasets_version, model_configs
from lens_assets.orchestration.partitions import MODELS

MODEL_CONFIG = AssetKey("model_config")
DATASET_CONFIGS = AssetKey("dataset_configs")


@observable_source_asset(
    partitions_def=MODELS,
    group_name="configs",
    description="configs/models/**/*.yaml and configs/tuning/**/*.yaml, one partition per "
    "model (a tuning config's stem names its tuned model); version = content hash (a tuned "
    "model's also covers its base's model config and the dataset configs it names)",
)
def model_config(context: OpExecutionContext) -> DataVersionsByPartition:
    known = set(context.instance.get_dynamic_partitions(MODELS.name))
    return DataVersionsByPartition(
        {name: f.version for name, f in model_configs().items() if name in known}
    )


@observable_source_asset(
    name=DATASET_CONFIGS.path[-1],
    group_name="configs",
    description="configs/datasets/**/*.yaml and the files they read; version = hash of every "
    "dataset config, of a folder's or manifest's image stats, labels and manifest files",
)
def dataset_configs_source() -> DataVersion:
    return DataVersion(datasets_version(dataset_configs()))


def _observed(instance: DagsterInstance, key: AssetKey, partition: str | None) -> str | None:
    records = instance.fetch_observations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    if not records or records[0].asset_observation is None:
        return None
    return (records[0].asset_observation.tags or {}).get(DATA_VERSION_TAG)


def _observation(key: AssetKey, version: str, partition: str | None = None) -> AssetObservation:
    return AssetObservation(asset_key=key, partition=partition, tags={DATA_VERSION_TAG: version})


def changed_config_observations(instance: DagsterInstance) -> list[AssetObservation]:
    """Observations for every config whose content (for datasets: with their files) differs
    from what was last observed."""
    events = []
    for name, file in model_configs().items():
        if _observed(instance, MODEL_CONFIG, name) != file.version:
            events.append(_observation(MODEL_CONFIG, file.version, name))
    version = datasets_version(dataset_configs())
    if _observed(instance, DATASET_CONFIGS, None) != version:
        events.append(_observation(DATASET_CONFIGS, version))
    return events
