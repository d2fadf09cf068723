"""The one Definitions object of the code location (`dagster dev`, `-m lens_assets`)."""

from __future__ import annotations

from dagster import Definitions, multiprocess_executor

from lens_assets.defs.assets import activations, images
from lens_assets.defs.checks import ACTIVATION_CHECKS
from lens_assets.defs.sensors import model_configs_sensor
from lens_assets.defs.sources import dataset_configs_source, model_config
from resources.configurable import VLMRuntimeResource, WarehouseResource

defs = Definitions(
    assets=[model_config, dataset_configs_source, images, activations],
    asset_checks=ACTIVATION_CHECKS,
    sensors=[model_configs_sensor],
    resources={"runtime": VLMRuntimeResource(), "warehouse": WarehouseResource()},
    executor=multiprocess_executor,
)
