"""The model partitions, and the one factory every asset with a partition per model is
declared with.

One dynamic partition per model config and per tuning config (a tuned model, named by its
file's stem); the sensor (or `lens materialize`) keeps them in step with
`configs/models/**/*.yaml` and `configs/tuning/**/*.yaml`. Every per-model asset shares those
partitions, its automation (eager: a new or edited config, or new upstream rows, re-runs it)
and its step's shape (the model's name and config, the warehouse, the runtime when it loads the
model); only its group, deps, version, kinds and description differ, so `per_model_asset`
holds the shared choices."""

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    AutomationCondition,
    DynamicPartitionsDefinition,
    MaterializeResult,
    asset,
    multi_asset,
)

from lens_assets.capture.loading import LoadedModel
from lens_assets.catalog import ConfigFile, dataset_configs, model_configs
from lens_assets.config import ConfigError, ModelConfig, load_model_config
from lens_assets.orchestration import progress
from lens_assets.resources.configurable import VLMRuntimeResource, WarehouseResource
from lens_assets.resources.warehouse import Warehouse

Results = MaterializeResult | Iterator[MaterializeResult]
Body = Callable[..., Iterator[MaterializeResult]]
Dep = AssetKey | AssetsDefinition | AssetDep

MODELS = DynamicPartitionsDefinition(name="models")


@dataclass(frozen=True)
class ModelStep:
    """What one model partition's computation gets: its context and the resources it asked for."""

    context: AssetExecutionContext
    warehouse: WarehouseResource
    model_runtime: VLMRuntimeResource | None = None

    @property
    def name(self) -> str:
        """The model: a partition's key is its config's name."""
        return self.context.partition_key

    @property
    def runtime(self) -> VLMRuntimeResource:
        """The runtime, for assets declared with `loads_model=True` (the others do not ask
        Dagster for one, so a step that only reads the warehouse never builds it)."""
        if self.model_runtime is None:
            raise TypeError(f"{self.context.op_def.name} was declared without loads_model=True")
        return self.model_runtime

    @cached_property
    def config(self) -> ModelConfig:
        """The model's config, read once per step; a tuned model's is its base's, loading the
        checkpoint `tuned_model` wrote under the warehouse's models folder."""
        return model_config_of(self.name, self.warehouse.location().models_dir)

    def datasets(self) -> list[str]:
        """The datasets the config names (checked to exist), or every dataset."""
        return datasets_of(self.config.datasets, self.name)

    @property
    def batch_size(self) -> int:
        """The config's batch size, unless the runtime or LENS_BATCH_SIZE overrides it."""
        return self.runtime.effective_batch_size(self.config)

    def load(self, warehouse: Warehouse) -> AbstractContextManager[LoadedModel]:
        """The model, loaded for this step and freed after it."""
        return self.runtime.model(self.config, self.name, warehouse)


Compute = Callable[[ModelStep], Results]


def per_model_asset(
    *,
    group: str,
    deps: Iterable[Dep],
    code_version: str,
    description: str | Mapping[str, str],
    loads_model: bool = False,
    kinds: Iterable[str] = (),
) -> Callable[[Compute], AssetsDefinition]:
    """Declare `compute(step)` as a per-model asset named after it.

    `description` is the asset's; a mapping of asset key to description declares those assets
    instead, all computed by the one step (say, to load the model once), which yields one
    MaterializeResult per key. Kinds: duckdb always (every such asset writes warehouse rows),
    pytorch when `loads_model` (the step then gets `step.runtime`), and `kinds`."""
    upstream = list(deps)
    eager = AutomationCondition.eager()
    all_kinds = {"duckdb", *(["pytorch"] if loads_model else []), *kinds}

    def declare(compute: Compute) -> AssetsDefinition:
        body = _with_resources(compute, loads_model)
        if isinstance(description, str):
            return asset(
                name=compute.__name__, partitions_def=MODELS, deps=upstream, group_name=group,
                code_version=code_version, automation_condition=eager, kinds=all_kinds,
                description=description,
            )(body)  # fmt: skip
        specs = [
            AssetSpec(key, deps=upstream, group_name=group, description=text,
                      automation_condition=eager, kinds=all_kinds)
            for key, text in description.items()
        ]  # fmt: skip
        return multi_asset(
            specs=specs, name=compute.__name__, partitions_def=MODELS, code_version=code_version
        )(body)

    return declare


def _with_resources(compute: Compute, loads_model: bool) -> Body:
    """The function Dagster calls: its parameters name the resources it injects, so only a
    step that loads the model asks for the runtime. A generator, whatever `compute` returns:
    Dagster infers no output type from one, as it inferred none from `-> MaterializeResult`."""
    if loads_model:

        def body(
            context: AssetExecutionContext,
            runtime: VLMRuntimeResource,
            warehouse: WarehouseResource,
        ) -> Iterator[MaterializeResult]:
            with progress.step(compute.__name__, context.partition_key):
                yield from _each(compute(ModelStep(context, warehouse, runtime)))

    else:

        def body(
            context: AssetExecutionContext, warehouse: WarehouseResource
        ) -> Iterator[MaterializeResult]:
            with progress.step(compute.__name__, context.partition_key):
                yield from _each(compute(ModelStep(context, warehouse)))

    body.__name__ = body.__qualname__ = compute.__name__
    body.__module__ = compute.__module__
    return body


def _each(results: Results) -> Iterator[MaterializeResult]:
    return iter([results]) if isinstance(results, MaterializeResult) else results


def model_config_of(name: str, models_dir: Path) -> ModelConfig:
    """The config behind a model partition: its model config, or for a tuned model the
    base's config pointing at the checkpoint in `models_dir` (see `tuned_config_of`)."""
    files = model_configs()
    if name not in files:
        raise ConfigError(
            f"model {name!r} has no config under configs/models/ or configs/tuning/ any more; "
            "restore the file or let the sensor remove the partition"
        )
    file = files[name]
    if file.tuned:
        return tuned_config_of(file, models_dir)
    return load_model_config(file.path)


def tuned_config_of(file: ConfigFile, models_dir: Path) -> ModelConfig:
    """A tuned model's config: its base's, with `model_path` at the checkpoint `tuned_model`
    saved (`tuned_dir(models_dir, name)`); a missing checkpoint says which step makes it."""
    from lens_assets.tuning import (  # torch and peft, only where a tuned model runs
        load_tuning_config,
        resolve_base,
        tuned_dir,
        tuned_model_config,
    )

    config = load_tuning_config(file.path)
    _, base = resolve_base(config.base)
    checkpoint = tuned_dir(models_dir, file.name)
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(
            f"model {file.name!r} is tuned ({file.path}) and its checkpoint {checkpoint} does "
            f"not exist yet: materialize `tuned_model` for partition {file.name!r} first "
            f"(lens materialize --select tuned_model --model {file.name}, or in the UI)"
        )
    return tuned_model_config(base, checkpoint, config.datasets)


def datasets_of(requested: list[str], model: str) -> list[str]:
    """`requested` when every one has a config (an empty list means all of them)."""
    known = sorted(dataset_configs())
    unknown = [d for d in requested if d not in known]
    if unknown:
        raise ConfigError(
            f"model {model!r} names datasets {unknown} that have no config; known datasets: "
            f"{', '.join(known) or '(none: add configs/datasets/<name>.yaml)'}"
        )
    return requested or known
