"""The one Definitions object of the code location (`dagster dev`, `-m lens_assets`)."""

from __future__ import annotations

from dagster import Definitions

from lens_assets.orchestration.assets import activations, images
from lens_assets.orchestration.behaviour import answers, behaviour_vs_competence
from lens_assets.orchestration.checks import ACTIVATION_CHECKS, CHECK_JOB, DATASET_CHECKS
from lens_assets.orchestration.concepts import concept_pca
from lens_assets.orchestration.executors import executor_from_env
from lens_assets.orchestration.interpretability import interpretability
from lens_assets.orchestration.probes import probe_results
from lens_assets.orchestration.sensors import model_configs_sensor
from lens_assets.orchestration.similarity import (
    blind_test,
    concept_similarity,
    layer_similarity,
)
from lens_assets.orchestration.sources import dataset_configs_source, model_config
from lens_assets.orchestration.tuning import tuned_model, tuning_effects
from lens_assets.orchestration.vision import vision_vs_vlm
from lens_assets.resources.configurable import VLMRuntimeResource, WarehouseResource

# Every asset of the graph; `lens materialize` runs from this same list.
ASSETS = [
    model_config,
    dataset_configs_source,
    images,
    tuned_model,  # before every asset that loads the model: it trains a tuned one
    activations,
    answers,
    probe_results,
    behaviour_vs_competence,
    layer_similarity,
    blind_test,
    concept_similarity,
    concept_pca,
    vision_vs_vlm,
    tuning_effects,  # after vision_vs_vlm: it reads the readouts
    interpretability,
]

defs = Definitions(
    assets=ASSETS,
    asset_checks=[*DATASET_CHECKS, *ACTIVATION_CHECKS],
    jobs=[CHECK_JOB],
    sensors=[model_configs_sensor],
    resources={"runtime": VLMRuntimeResource(), "warehouse": WarehouseResource()},
    executor=executor_from_env(),  # LENS_EXECUTOR: multiprocess (default) or celery
)
