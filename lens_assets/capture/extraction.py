"""Hooked, batched extraction: dataset rows in (each its images and its prompt), one Arrow row
per pooled vector out.

One forward pass per batch under `torch.inference_mode()`; the pooled vectors of every hooked
module are gathered on the device and leave it together, once per batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm
from transformers import BatchFeature

from lens_assets.capture.adapters.base import image_counts
from lens_assets.capture.adapters.forward import forward_kwargs as usable_forward_kwargs
from lens_assets.capture.batching import BatchSizer, fitting_rows
from lens_assets.capture.hooks import StopForward, capture
from lens_assets.capture.loading import LoadedModel, load_model, release
from lens_assets.capture.modules import resolve_modules
from lens_assets.capture.pooling import Pooled, PoolingPlan, plan_pooling
from lens_assets.capture.token_roles import ROLE_NAMES
from lens_assets.config import ModelConfig
from lens_assets.data.images import ImageReadError, LoadedImage, duplicate_of, load_image
from lens_assets.data.rows import RowInput, row_key
from lens_assets.resources.runtime import PeakMemory
from lens_assets.resources.staging import ACTIVATION_ROWS, IMAGE_ROWS, ActivationStage
from lens_assets.resources.warehouse import Warehouse

log = logging.getLogger(__name__)

VECTOR_POOLING = "none"  # a module output with no position axis: stored as it is


NOT_RUN_FIX = (
    "for a dual encoder, the text tower only runs when the config has a prompt: remove it "
    "from `modules` or give the model the input that runs it"
)


def capture_batch(
    loaded: LoadedModel,
    images: Sequence[Any],  # per sample: an image, or the row's list of images (maybe none)
    prompts: Sequence[str],
    modules: Sequence[str],
    poolings: Sequence[str],
    forward_kwargs: dict[str, Any] | None = None,
    stop_early: bool = True,
) -> list[tuple[str, Pooled]]:
    """Run one batch and return (module name, pooled vectors) pairs, still on the device.

    The first pass over a set of modules runs the whole model and notes the last hooked call;
    later passes stop right after it (`stop_early`), so hooking only vision-tower layers does
    not pay for the LLM.
    """
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare_on(  # the length is checked before the forward pass
        loaded.processor, images, prompts, loaded.device, loaded.dtype, loaded.token_limit
    )
    extra = usable_forward_kwargs(loaded.model, forward_kwargs)
    batch_size = len(images)
    counts = image_counts(inputs, batch_size)
    # A row without images runs no vision module; a batch of such rows stores only the others.
    ran_vision = any(counts)
    needed = [m for m in modules if ran_vision or not adapter.is_vision(m)]
    # Where a pass may stop depends on how many images run through the tower (a family may
    # call it once per image), so it is learned per number of images in the batch.
    key = (tuple(modules), sum(counts))
    stop_at = loaded.stop_points.get(key) if stop_early else None

    reduce = pooler(loaded, inputs, poolings, batch_size)
    last_calls = loaded.call_counts.get(key)
    with (
        capture(loaded.model, modules, stop_at, reduce=reduce, last_calls=last_calls) as store,
        torch.inference_mode(),
    ):
        with suppress(StopForward):  # the pass ended after the last hooked module
            adapter.forward(loaded.model, inputs, extra)
        if key not in loaded.stop_points and len(needed) == len(modules):
            loaded.stop_points[key] = store.last_call
            loaded.call_counts[key] = dict(store.calls)
        loaded.capture_bytes[tuple(modules)] = store.output_bytes / max(batch_size, 1)
        store.require(needed, NOT_RUN_FIX)
        pooled = store.finish()
    return [(name, p) for name in needed for p in pooled[name]]


def pooler(
    loaded: LoadedModel, inputs: BatchFeature, poolings: Sequence[str], batch_size: int
) -> Callable[[str, torch.Tensor], list[Pooled]]:
    """What `capture_batch`'s hooks make of a module's output: its pooled vectors for this
    batch, so the full output can be freed as soon as the module has run."""
    adapter = loaded.architecture.adapter
    plans: list[PoolingPlan] = []  # one per distinct token layout the batch's modules have

    def reduce(name: str, output: torch.Tensor) -> list[Pooled]:
        seq = adapter.sequences(name, output, inputs, loaded.layout, batch_size)
        if seq.roles is None:
            samples = torch.arange(batch_size, device=output.device)
            return [Pooled(VECTOR_POOLING, samples, seq.hidden)]
        plan = next((p for p in plans if p.fits(seq.roles, seq.tiles, seq.image_index)), None)
        if plan is None:
            plan = plan_pooling(seq.roles, poolings, seq.tiles, seq.image_index)
            plans.append(plan)
        return plan.apply(seq.hidden)

    return reduce


def pieces_to_table(
    pieces: Sequence[tuple[str, Pooled]],
    rows: Sequence[RowInput],
    prompts: Sequence[str],
    written: Mapping[str, str] | None = None,
) -> pa.Table:
    """Move the batch off the device (its vectors in one transfer, their positions in
    another) and lay them out as Arrow rows, each keyed by its dataset row. `written` gives a
    module's name as the config wrote it, where that is not today's (`layer_as_written`)."""
    if not pieces:
        return ACTIVATION_ROWS.empty_table()
    values = torch.cat([p.vectors.float().reshape(-1) for _, p in pieces]).cpu().numpy()
    samples, token_index, token_role, tile, image_index = (
        torch.cat([p.positions() for _, p in pieces], dim=1).cpu().numpy()
    )
    counts = [len(p.samples) for _, p in pieces]
    piece = pa.array(np.repeat(np.arange(len(pieces)), counts))  # each row's piece
    dims = np.repeat([p.vectors.shape[-1] for _, p in pieces], counts).astype(np.int32)
    offsets = np.zeros(len(dims) + 1, dtype=np.int32)
    np.cumsum(dims, out=offsets[1:])
    by_row = {  # one value per dataset row of the batch, and per piece: each row takes its own
        "row_key": pa.array([row.row_key for row in rows], pa.string()),
        "image_ids": pa.array([list(row.image_ids) for row in rows], pa.list_(pa.string())),
        "image_id": pa.array([r.image_ids[0] if r.image_ids else None for r in rows], pa.string()),
        "prompt": pa.array(list(prompts), pa.string()),
    }
    by_piece = {
        "layer": pa.array([name for name, _ in pieces], pa.string()),
        "layer_as_written": pa.array([(written or {}).get(n) for n, _ in pieces], pa.string()),
        "pooling": pa.array([p.pooling for _, p in pieces], pa.string()),
    }
    sample = pa.array(samples)
    roles = pa.array(np.maximum(token_role, 0), mask=token_role < 0)
    return pa.Table.from_pydict(  # by name: the schema (resources.schemas) sets the order
        {  # every column a `take` from a short array: nothing per row in Python
            **{name: values.take(sample) for name, values in by_row.items()},
            **{name: values.take(piece) for name, values in by_piece.items()},
            "token_index": pa.array(
                np.where(has(token_index), token_index, 0).astype(np.int32), mask=~has(token_index)
            ),
            "token_role": ROLE_ARRAY.take(roles),
            "tile": pa.array(np.where(has(tile), tile, 0).astype(np.int32), mask=~has(tile)),
            "image_index": pa.array(
                np.where(has(image_index), image_index, 0).astype(np.int32),
                mask=~has(image_index),
            ),
            "dim": pa.array(dims),
            "vector": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
        },
        schema=ACTIVATION_ROWS,
    )


def has(positions: np.ndarray) -> np.ndarray:
    """Where a position column holds a value (-1: none)."""
    return positions >= 0


# Role value -> its name, as an array to `take` from.
ROLE_ARRAY = pa.array([ROLE_NAMES.get(value) for value in range(max(ROLE_NAMES) + 1)])


@dataclass(frozen=True)
class LoadedRow:
    """A row with its images read: what one sample of a batch is."""

    row: RowInput
    images: tuple[LoadedImage, ...]


def extract_batch(
    loaded: LoadedModel,
    rows: Sequence[LoadedRow],
    default_prompt: str,
    modules: Sequence[str],
    poolings: Sequence[str],
    forward_kwargs: dict[str, Any] | None = None,
    written: Mapping[str, str] | None = None,
) -> pa.Table:
    prompts = [r.row.asked(default_prompt) for r in rows]
    images = [[i.image for i in r.images] for r in rows]
    pieces = capture_batch(loaded, images, prompts, modules, poolings, forward_kwargs)
    return pieces_to_table(pieces, [r.row for r in rows], prompts, written)


def stage_batch(
    stage: ActivationStage,
    dataset: str,
    pieces: Sequence[tuple[str, Pooled]],
    rows: Sequence[LoadedRow],
    prompts: Sequence[str],
    written: Mapping[str, str] | None = None,
) -> None:
    """One batch's pooled vectors off the device and into the stage, with its images."""
    table = pieces_to_table(pieces, [r.row for r in rows], prompts, written)
    stage.add_activations(table.append_column("dataset", pa.repeat(dataset, len(table))))
    stage.add_images(_image_rows(rows, dataset))


class BatchWriter:
    """Runs each batch's move off the device and its staging on one thread beside the
    forward passes, in the order given, at most `depth` batches behind (torch, numpy, pyarrow
    and Parquet release the GIL, so the next batch computes meanwhile).

    The first error the thread meets is raised in the caller at its next `submit` or at
    `drain`, as it was raised; later work is skipped, so nothing after it is staged and the run
    fails before its commit, leaving the warehouse's rows as they were."""

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lens-batch-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            try:
                if work is None:
                    return
                if self._error is None:
                    work()
            except BaseException as error:  # handed to the caller, raised there
                self._error = error
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, work: Callable[[], None]) -> None:
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the batch writer is closed")
        self._queue.put(work)

    def drain(self) -> None:
        """Wait for every batch given so far; raise the thread's error, if any."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Skipped(NamedTuple):
    """An input file the run could not use, and why: a row of `image_errors`."""

    path: str
    reason: str


class ModelNameTakenError(ValueError):
    """The model name already holds rows extracted from another config file."""


@dataclass
class DatasetRun:
    """One (model, dataset) pass: a row of the `runs` table."""

    dataset: str
    n_images: int
    seconds: float
    peak_memory_bytes: int
    skipped: list[Skipped] = field(default_factory=list)
    batch_size: int = 0  # what the run ended with (lowered by the memory guard or an OOM)
    requested_batch_size: int = 0
    oom_retries: int = 0

    @property
    def per_image_seconds(self) -> float:
        return self.seconds / self.n_images if self.n_images else 0.0


@dataclass
class ExtractionResult:
    model: str
    architecture: str
    rows: int  # the model's rows in the warehouse after the commit
    modules: list[str]
    runs: list[DatasetRun]
    written: int = 0  # the rows this run wrote (its datasets' new rows)

    @property
    def n_images(self) -> int:
        return sum(run.n_images for run in self.runs)

    @property
    def seconds(self) -> float:
        return sum(run.seconds for run in self.runs)

    @property
    def peak_memory_bytes(self) -> int:
        return max((run.peak_memory_bytes for run in self.runs), default=0)

    @property
    def skipped(self) -> list[Skipped]:
        return [skip for run in self.runs for skip in run.skipped]


def _readable(
    rows: Iterable[RowInput | str | Path],
    skipped: list[Skipped],
    seen: dict[str, str] | None = None,
) -> list[LoadedRow]:
    """The rows whose images can all be read, each row once. A bare path is a one-image row
    with no prompt of its own (`lens extract` over a folder), keyed by the image's content, so
    a second file with the same bytes (which would stage every vector twice) is noted in
    `skipped`, as is a row with an unreadable image. `seen` (row key -> its first file) carries
    across calls."""
    seen = {} if seen is None else seen
    ready = []
    for row in rows:
        paths = (row,) if isinstance(row, str | Path) else row.paths
        try:
            images = tuple(load_image(path) for path in paths)
        except ImageReadError as error:
            log.warning("%s; skipped", error)
            skipped.append(Skipped(str(paths[0] if len(paths) == 1 else paths), str(error)))
            continue
        if isinstance(row, str | Path):
            image_id = images[0].image_id
            row = RowInput(row_key([image_id], None), (image_id,), (str(paths[0]),))
        if row.row_key in seen:
            if len(images) == 1 and not row.prompt:
                reason = f"{paths[0]}: {duplicate_of(seen[row.row_key], images[0].image_id)}"
                log.warning("%s", reason)
                skipped.append(Skipped(str(paths[0]), reason))
            continue
        seen[row.row_key] = str(paths[0]) if paths else ""
        ready.append(LoadedRow(row, images))
    return ready


def _image_rows(rows: Sequence[LoadedRow], dataset: str) -> pa.Table:
    images = {i.image_id: i for r in rows for i in r.images}
    return pa.Table.from_pylist(
        [
            {"dataset": dataset, "image_id": i.image_id, "path": i.path, "width": i.width,
             "height": i.height}
            for i in images.values()
        ],
        schema=IMAGE_ROWS,
    )  # fmt: skip


def stage_dataset(
    loaded: LoadedModel,
    config: ModelConfig,
    modules: Sequence[str],
    stage: ActivationStage,
    dataset: str,
    paths: Sequence[RowInput | str | Path],
    batch_size: int,
    progress: bool = True,
    memory_budget: int | None = None,
    written: Mapping[str, str] | None = None,
    writer: BatchWriter | None = None,
) -> DatasetRun:
    """Run one dataset's rows (or image files, one row each) through the hooked model, batch
    by batch, into the stage (`written`: see pieces_to_table); `writer` stages each batch
    while the next one computes (by default, a writer of its own)."""
    if writer is None:
        with BatchWriter() as own:
            return stage_dataset(loaded, config, modules, stage, dataset, paths, batch_size,
                                 progress, memory_budget, written, own)  # fmt: skip
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # row key -> first file: a row is staged once, across batches
    paths, unfit = fitting_rows(loaded, paths)
    if unfit:
        log.warning("%s x %s: %s", loaded.name, dataset, unfit)
        if not paths:  # a one-image family and a dataset of multi-image rows: nothing to run
            return DatasetRun(dataset, 0, 0.0, 0, [], batch_size=batch_size,
                              requested_batch_size=batch_size)  # fmt: skip
    n_images = 0
    sizer = BatchSizer(batch_size, memory_budget)
    clock = time.perf_counter()
    with (
        PeakMemory(loaded.device) as peak,
        tqdm(total=len(paths), desc=f"{loaded.name} x {dataset}", unit="row",
             disable=not progress) as bar,
    ):  # fmt: skip
        start = 0
        while start < len(paths):
            batch = paths[start : start + sizer.size]
            start += len(batch)
            pending = _readable(batch, skipped, seen)
            while pending:
                part = pending[: sizer.size]
                prompts = [r.row.asked(config.prompt or "") for r in part]
                try:
                    pieces = capture_batch(
                        loaded, [[i.image for i in r.images] for r in part], prompts, modules,
                        config.pooling, config.forward,
                    )  # fmt: skip
                except torch.OutOfMemoryError as error:
                    sizer.out_of_memory(error)
                    continue
                writer.submit(partial(stage_batch, stage, dataset, pieces, part, prompts, written))
                n_images += len(part)
                pending = pending[len(part) :]
                sizer.learn(loaded.capture_bytes.get(tuple(modules), 0.0))
            bar.update(len(batch))
        writer.drain()  # this dataset's last batches are staged within its time and memory
    if n_images == 0:
        raise ValueError(
            f"none of the {len(paths)} rows of dataset {dataset!r} could be read: "
            + "; ".join(skip.reason for skip in skipped[:3])
        )
    return DatasetRun(
        dataset, n_images, time.perf_counter() - clock, peak.bytes, skipped,
        batch_size=sizer.size, requested_batch_size=batch_size, oom_retries=sizer.oom_retries,
    )  # fmt: skip


def extract_loaded(
    loaded: LoadedModel,
    config: ModelConfig,
    warehouse: Warehouse,
    sources: Mapping[str, Sequence[RowInput | str | Path]],
    *,
    whole_model: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    memory_budget: int | None = None,
    config_source: str | None = None,
    claim_name: bool = False,
    image_errors: Mapping[str, Sequence[Skipped]] | None = None,
) -> ExtractionResult:
    """Stage every dataset, then replace the rows in one transaction: the model's whole
    partition (`whole_model`), or only the rows of these datasets. `memory_budget` (bytes)
    caps what the hooks hold per batch (see BatchSizer).

    `config_source` (the config file) is logged with each run; unless `claim_name`, a name
    whose rows came from another config file is refused before any inference. With
    `image_errors` (files refused before the run, per dataset), the datasets' `image_errors`
    rows are replaced by those and the run's own skipped files (`lens extract`; under Dagster
    the `images` step records them)."""
    if not sources or not any(sources.values()):
        raise ValueError(f"no images to extract for model {loaded.name!r}")
    if config_source is not None:
        check_name_is_free(warehouse, loaded.name, config_source, claim_name)
    if config.output_db:
        log.info("output_db %s: rows go to the warehouse at %s", config.output_db, warehouse.root)
    config.check_extractable()
    # Read as the config means them (VLM-Lens's regexes, or globs); containers that never run
    # are left out with a warning, and each module keeps the name the config wrote.
    selection = resolve_modules(
        loaded.module_names, config.modules, loaded.model, config.pattern_syntax
    )
    modules = selection.hooked
    size = batch_size or config.batch_size
    started_at = datetime.now(UTC)
    with (
        warehouse.session_ahead() as attached,  # the commit's attach overlaps the batches
        ActivationStage(warehouse.location.staging_dir, loaded.name, loaded.architecture.name)
        as stage,
        BatchWriter() as writer,
    ):  # fmt: skip
        runs = [
            stage_dataset(
                loaded,
                config,
                modules,
                stage,
                dataset,
                paths,
                size,
                progress,
                memory_budget,
                selection.written,
                writer,
            )
            for dataset, paths in sources.items()
        ]
        stage.close()
        attached()
        rows = warehouse.replace_partition(
            stage.path,
            loaded.name,
            loaded.architecture.name,
            None if whole_model else list(sources),
            [
                {
                    "model": loaded.name,
                    "dataset": run.dataset,
                    "device": str(loaded.device),
                    "dtype": str(loaded.dtype).removeprefix("torch."),
                    "batch_size": run.batch_size,
                    "requested_batch_size": run.requested_batch_size,
                    "oom_retries": run.oom_retries,
                    "n_images": run.n_images,
                    "seconds": run.seconds,
                    "per_image_seconds": run.per_image_seconds,
                    "peak_memory_bytes": run.peak_memory_bytes,
                    "started_at": started_at,
                    "config": config_source,
                }
                for run in runs
            ],
            None if image_errors is None else _error_rows(image_errors, runs),
        )
    return ExtractionResult(
        loaded.name, loaded.architecture.name, rows, modules, runs, written=stage.rows
    )


def check_name_is_free(
    warehouse: Warehouse, name: str, config_source: str, claim_name: bool = False
) -> None:
    """A model's name is its config's file stem, so two files named alike in different
    folders would replace each other's rows without a word: refuse, or with `claim_name`
    say so."""
    owner = warehouse.config_of(name)
    if owner in (None, config_source):
        return
    if claim_name:
        log.warning("model %r: replacing the rows extracted from %s with %s's", name, owner,
                    config_source)  # fmt: skip
    else:
        raise ModelNameTakenError(
            f"model name {name!r} already holds rows extracted from {owner}, and this run's "
            f"config is {config_source}: pass --name OTHER_NAME to keep both, or --replace to "
            "replace that config's rows with this one's"
        )


def _error_rows(
    refused: Mapping[str, Sequence[Skipped]], runs: Sequence[DatasetRun]
) -> list[dict[str, str]]:
    found = {dataset: list(skips) for dataset, skips in refused.items()}
    for run in runs:
        found.setdefault(run.dataset, []).extend(run.skipped)
    return [
        {"dataset": dataset, "path": skip.path, "error": skip.reason}
        for dataset, skips in found.items()
        for skip in skips
    ]


def extract_to_warehouse(
    config: ModelConfig,
    name: str,
    warehouse: Warehouse,
    sources: Mapping[str, Sequence[RowInput | str | Path]],
    *,
    whole_model: bool = False,
    batch_size: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    memory_budget: int | None = None,
    config_source: str | None = None,
    claim_name: bool = False,
    image_errors: Mapping[str, Sequence[Skipped]] | None = None,
) -> ExtractionResult:
    """Load the model, extract every dataset, replace its rows in the warehouse (see
    `extract_loaded` for the keyword arguments)."""
    if config_source is not None and not claim_name:
        check_name_is_free(warehouse, name, config_source)  # before the model loads, too
    loaded = load_model(config, name, warehouse.location.models_dir, device, dtype)
    try:
        return extract_loaded(
            loaded, config, warehouse, sources,
            whole_model=whole_model, batch_size=batch_size, progress=progress,
            memory_budget=memory_budget, config_source=config_source, claim_name=True,
            image_errors=image_errors,
        )  # fmt: skip
    finally:
        release(loaded)
