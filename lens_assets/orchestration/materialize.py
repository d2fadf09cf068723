"""`lens materialize`: bring Dagster in step with the configs, then materialize, in-process,
whatever is missing or stale: the images, then each model partition with its checks."""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetsDefinition,
    AssetSelection,
    DagsterInstance,
    ExecuteInProcessResult,
    materialize,
)
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from lens_assets.catalog import bases_first
from lens_assets.config import ConfigError
from lens_assets.definitions import defs
from lens_assets.orchestration.assets import IMAGES, failed_datasets
from lens_assets.orchestration.partitions import MODELS
from lens_assets.orchestration.progress import listening
from lens_assets.orchestration.sensors import sync_configs
from lens_assets.orchestration.tuning import TUNED_MODEL
from lens_assets.resources.configurable import VLMRuntimeResource, WarehouseResource
from lens_assets.resources.location import dagster_home_of
from lens_assets.resources.warehouse import WarehouseLocation

ACTIVATIONS = AssetKey("activations")
_GRAPH = defs.resolve_asset_graph()
# Every asset key of the Definitions, with the keys its step writes alongside it (`images` also
# writes image_labels, prompts and image_errors; one interpretability step writes five tables):
# a step cannot run for one of its assets alone.
STEP_OF: dict[str, tuple[str, ...]] = {
    key.to_user_string(): tuple(k.to_user_string() for k in _GRAPH.assets_def_for_key(key).keys)
    for key in _GRAPH.get_all_asset_keys()
}
# What `--select` accepts: every asset the Definitions hold. The config sources (model_config,
# dataset_configs) are observed, never run: every `lens materialize` observes them first.
SELECTABLE = frozenset(STEP_OF)
# What runs when nothing is selected: every asset, none left out.
DEFAULT_SELECTION = SELECTABLE
# Assets with one partition per model, in the order of the Definitions' list (the order a run
# needs them); the config source is observed, not run.
PER_MODEL = {
    key.to_user_string(): key
    for asset in defs.assets or []
    if isinstance(asset, AssetsDefinition) and asset.partitions_def == MODELS
    if not asset.is_observable
    for key in asset.keys
}


def selection(assets: set[str] | None = None) -> set[str]:
    """The assets named (every asset when none is), each with the assets its step also writes;
    a name the Definitions do not hold is a ConfigError listing those they do."""
    chosen = assets or DEFAULT_SELECTION
    unknown = sorted(set(chosen) - SELECTABLE)
    if unknown:
        raise ConfigError(
            f"unknown assets {unknown} to select; choose from {', '.join(sorted(SELECTABLE))}"
        )
    return with_step_mates(chosen)


def with_step_mates(names: Iterable[str]) -> set[str]:
    """The assets named and those their steps also write."""
    return {mate for name in names for mate in STEP_OF[name]}


EVERY_ASSET = [*(defs.assets or []), *(defs.asset_checks or [])]
# The assets that load the model: a step of theirs needs the partition's `tuned_model` (a tuned
# model's checkpoint), so a plan that runs one of them brings it along while it is missing or
# stale, selected or not.
MODEL_READERS = frozenset(
    with_step_mates(child.to_user_string() for child in _GRAPH.get(TUNED_MODEL).child_keys)
)


# The instance LensFlow creates: no telemetry and no first-launch community modal, and no
# "no dagster.yaml" warning when `dagster dev` opens it.
INSTANCE_SETTINGS = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
UI_PORT = 3000


def dagster_home(warehouse_root: str | Path | None = None) -> Path:
    """DAGSTER_HOME if set, else `<warehouse>/dagster`, shared by `lens` and `dagster dev`.
    The folder LensFlow creates gets a dagster.yaml; a DAGSTER_HOME of the user's is theirs."""
    path, users_own = dagster_home_of(WarehouseLocation.resolve(warehouse_root).root)
    path.mkdir(parents=True, exist_ok=True)
    settings = path / "dagster.yaml"
    if not users_own and not settings.exists():
        settings.write_text(INSTANCE_SETTINGS)
    return path.resolve()


def ui_command(warehouse_root: str | Path | None = None) -> str:
    """The one command that opens this warehouse's run history in the Dagster UI."""
    root = WarehouseLocation.resolve(warehouse_root).root
    return (
        f"DAGSTER_HOME={dagster_home(root)} LENS_WAREHOUSE={root} dagster dev -p {UI_PORT}"
        f"   # then open http://127.0.0.1:{UI_PORT}"
    )


def open_instance(warehouse_root: str | Path | None = None) -> DagsterInstance:
    return DagsterInstance.from_config(str(dagster_home(warehouse_root)))


def stale_resolver(instance: DagsterInstance) -> CachingStaleStatusResolver:
    """The resolver behind the UI's "stale" badges, for one point in time."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance, graph, view)


@dataclass
class Plan:
    images: bool
    per_model: dict[str, list[str]] = field(default_factory=dict)  # model -> assets to run

    @property
    def models(self) -> list[str]:
        return list(self.per_model)

    @property
    def empty(self) -> bool:
        return not self.images and not self.per_model


def _needs(
    instance: DagsterInstance, resolver: CachingStaleStatusResolver, key: AssetKey, name: str
) -> bool:
    return (
        name not in instance.get_materialized_partitions(key)
        or resolver.get_status(key, name) == StaleStatus.STALE
    )


def plan(
    instance: DagsterInstance, assets: set[str] | None = None, models: set[str] | None = None
) -> Plan:
    """What is missing or stale, restricted to the selected assets and models. An asset that
    re-runs takes along the selected assets that read it (activations: probes, similarity),
    and one that loads the model takes along `tuned_model` while that is missing or stale
    (a tuned model trains first; a plain model's step records what it is).
    `images` also re-runs while a dataset failed last time: never "up to date" while one is
    broken, and a passing cause (an unmounted disk) heals without an edit."""
    wanted = selection(assets)
    resolver = stale_resolver(instance)
    need_images = "images" in wanted and (
        instance.get_latest_materialization_event(IMAGES) is None
        or resolver.get_status(IMAGES) == StaleStatus.STALE
        or bool(failed_datasets(instance))
    )
    per_model: dict[str, list[str]] = {}
    for name in bases_first(instance.get_dynamic_partitions(MODELS.name)):  # bases train first
        if models is not None and name not in models:
            continue
        stale = {
            a for a in PER_MODEL if a in wanted and _needs(instance, resolver, PER_MODEL[a], name)
        }
        readers = {
            child.to_user_string() for a in stale for child in _GRAPH.get(PER_MODEL[a]).child_keys
        }
        chosen = with_step_mates(stale | (readers & wanted))
        if chosen & MODEL_READERS and _needs(instance, resolver, TUNED_MODEL, name):
            chosen.add(TUNED_MODEL.to_user_string())  # train before anything loads the model
        needed = [a for a in PER_MODEL if a in chosen]
        if needed:
            per_model[name] = needed
    return Plan(need_images, per_model)


def resources_for(
    warehouse_root: str | Path | None = None,
    device: str | None = None,
    batch_size: int | None = None,
) -> dict[str, object]:
    root = str(warehouse_root) if warehouse_root else None
    return {
        "warehouse": WarehouseResource(root=root),
        "runtime": VLMRuntimeResource(device=device, batch_size=batch_size),
    }


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


Progress = Callable[[str], None]


def run(
    instance: DagsterInstance,
    todo: Plan,
    resources: dict[str, object],
    progress: Progress | None = None,
) -> list[tuple[str, ExecuteInProcessResult]]:
    """Materialize the plan in-process; the console logs only warnings and errors (every event
    is in the instance's run history, which the UI shows). `progress` hears each partition as
    it starts and, when it ends, which assets it materialized and how long it took."""
    say = progress or (lambda _: None)
    steps: list[tuple[str, AssetSelection, str | None, list[str | AssetKey]]] = []
    if todo.images:
        keys = list(STEP_OF["images"])
        steps.append(("images", AssetSelection.assets(*keys), None, keys))
    for name, needed in todo.per_model.items():
        keys = [PER_MODEL[a] for a in needed]
        chosen = AssetSelection.assets(*keys)
        if "activations" in needed:
            chosen |= AssetSelection.checks_for_assets(ACTIVATIONS)
        steps.append((name, chosen, name, keys))
    results = []
    for label, chosen, partition, keys in steps:
        wanted = ", ".join(sorted(AssetKey.from_coercible(key).to_user_string() for key in keys))
        say(f"... {label}: materializing {wanted}")
        started = time.monotonic()
        with listening(say):  # each asset step of the run, live
            result = materialize(
                EVERY_ASSET, selection=chosen, partition_key=partition, instance=instance,
                resources=resources, raise_on_error=partition is None, run_config=QUIET,
            )  # fmt: skip
        done = sorted(
            {
                event.asset_key.to_user_string()
                for event in result.get_asset_materialization_events()
            }
        )
        outcome = "done" if result.success else "FAILED"
        say(f"... {label}: {outcome} in {time.monotonic() - started:.0f} s ({', '.join(done)})")
        results.append((label, result))
    return results


def materialize_missing(
    warehouse_root: str | Path | None = None,
    assets: set[str] | None = None,
    models: set[str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    instance: DagsterInstance | None = None,
    progress: Progress | None = None,
) -> tuple[Plan, list[tuple[str, ExecuteInProcessResult]]]:
    """Bring `images` up to date, then the model partitions its new data version made stale.

    Two steps, because `images` reports its data version (a hash of the rows it wrote): until
    it runs, nobody knows whether the models' input changed (a touched file changes nothing)."""
    selection(assets)  # an unknown name fails before anything is synced or run
    instance = instance or open_instance(warehouse_root)
    resources = resources_for(warehouse_root, device, batch_size)
    sync_configs(instance)
    todo = plan(instance, assets, models)
    results = run(instance, Plan(images=todo.images), resources, progress)
    if todo.images:
        todo = Plan(images=True, per_model=plan(instance, assets, models).per_model)
    rest = run(instance, Plan(images=False, per_model=todo.per_model), resources, progress)
    return todo, results + rest


def record_outside_run(
    warehouse_root: str | Path | None, model: str, metadata: dict[str, object]
) -> Path | None:
    """Tell the Dagster instance that `lens extract` replaced a model's activations outside a
    Dagster run, so the UI shows it (and what reads the partition becomes stale). Only where an
    instance already exists and knows the model's partition: returns its folder, else None."""
    folder, _ = dagster_home_of(WarehouseLocation.resolve(warehouse_root).root)
    if not folder.is_dir():
        return None
    instance = DagsterInstance.from_config(str(folder))
    if not instance.has_dynamic_partition(MODELS.name, model):
        return None
    instance.report_runless_asset_event(
        AssetMaterialization(
            asset_key=ACTIVATIONS,
            partition=model,
            description="written by `lens extract`, outside a Dagster run",
            metadata={"source": "lens extract", **metadata},
        )
    )
    return folder.resolve()
