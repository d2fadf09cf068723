"""A run's rows spooled on local disk until the lake commit succeeds.

Inference and the lake transaction are decoupled: batches stream into a private Parquet file
(memory stays flat however many images), and the commit (delete the partition's old rows, add
the new ones) can be retried as a whole when a concurrent writer holds the catalog, without
recomputing anything.

A stage that knows its model and architecture writes the lake's own data file: every column of
`activations`, rows clustered by layer then pooling (a flush sorts what it holds, and a row
group holds whole layers, so a reader of one layer skips the others' row groups), keys
dictionary- and run-length-encoded and compressed, vectors stored raw (floats do not compress;
compressing them only costs time). The commit then registers that file instead of rewriting
it (`writes.replace_partition`).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from lens_assets.resources.schemas import ACTIVATIONS, IMAGES, conform, without

# What the stage holds: the `activations` row less model and architecture, which the commit
# supplies; a batch's rows before the stage adds their dataset; and the `images` row less the
# split, which only a dataset's own `images` step knows.
STAGED_ACTIVATIONS = without(ACTIVATIONS, "model", "architecture")
ACTIVATION_ROWS = without(STAGED_ACTIVATIONS, "dataset")
IMAGE_ROWS = without(IMAGES, "split")
FLUSH_BYTES = 64 * 1024 * 1024  # rows held before a flush sorts and writes them
ROW_GROUP_BYTES = 1024 * 1024  # whole layers are packed into row groups of at least this
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StageDiskFullError(ValueError):
    """The disk under the staging folder filled up while a run was being staged. The stage is
    removed and nothing was committed, so the warehouse still holds the previous rows."""


def _disk_full(error: OSError) -> bool:
    """ENOSPC or a quota, by errno or, from pyarrow (which may not set it), by its text."""
    return error.errno in DISK_FULL or any(os.strerror(code) in str(error) for code in DISK_FULL)


def remove_stale_stages(directory: Path) -> list[Path]:
    """Delete the stages of runs whose process is gone (killed before its commit); a live
    run's stage, here or in another process, is left alone. Stages are per machine, so the
    process id in the folder name says whose it is."""
    removed = []
    for stage in directory.glob("run-*-*") if directory.is_dir() else []:
        pid = stage.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class ActivationStage:
    """Collects Arrow batches into a per-run folder of Parquet files (`activations.parquet`,
    `images.parquet`) that the lake commit reads.

    Given `model` and `architecture`, the activations file holds every column of the table
    (`lake_ready`), ready to become one of the lake's data files; without them it holds
    `STAGED_ACTIVATIONS` and the commit supplies the two."""

    def __init__(
        self, directory: Path, model: str | None = None, architecture: str | None = None
    ) -> None:
        remove_stale_stages(directory)
        self.path = directory / f"run-{os.getpid()}-{uuid.uuid4().hex}"
        self.model, self.architecture = model, architecture
        self.lake_ready = model is not None and architecture is not None
        self.schema = ACTIVATIONS if self.lake_ready else STAGED_ACTIVATIONS
        self._writer: pq.ParquetWriter | None = None
        with self._writing():
            self.path.mkdir(parents=True, exist_ok=True)
            keys = [_leaf(field) for field in self.schema if field.name != "vector"]
            self._writer = pq.ParquetWriter(
                self.path / "activations.parquet",
                self.schema,
                compression={**dict.fromkeys(keys, "zstd"), "vector.list.element": "none"},
                use_dictionary=keys,
                write_statistics=keys,
            )
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._images: list[pa.Table] = []
        self.rows = 0

    def add_activations(self, table: pa.Table) -> None:
        """A batch's rows: `STAGED_ACTIVATIONS`' columns (the stage adds model and
        architecture)."""
        if self.lake_ready:
            table = table.append_column("model", pa.repeat(self.model, len(table)))
            table = table.append_column("architecture", pa.repeat(self.architecture, len(table)))
        self._pending.append(conform(table, self.schema))
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def add_images(self, rows: pa.Table) -> None:
        self._images.append(conform(rows, IMAGE_ROWS))

    def flush(self) -> None:
        """Write what is held, sorted by layer then pooling (each in the order first met,
        rows otherwise in arrival order), whole layers to a row group."""
        if not self._pending:
            return
        assert self._writer is not None, "stage already closed"
        rows = pa.concat_tables(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        layers = _codes(rows.column("layer"))
        order = np.argsort(layers * 1024 + _codes(rows.column("pooling")), kind="stable")
        rows, layers = rows.take(order), layers[order]
        starts = [0, *(np.flatnonzero(np.diff(layers)) + 1).tolist()]
        bytes_per_row = rows.nbytes / max(len(rows), 1)
        with self._writing():
            begin = 0
            for end in [*starts[1:], len(rows)]:
                if (end - begin) * bytes_per_row >= ROW_GROUP_BYTES or end == len(rows):
                    part = rows.slice(begin, end - begin)
                    self._writer.write_table(part, row_group_size=max(len(part), 1))
                    begin = end

    def close(self) -> Path:
        """Flush and close, leaving the files for the lake commit to read."""
        if self._writer is not None:
            self.flush()
            with self._writing():
                self._writer.close()
                self._writer = None
                images = (
                    pa.concat_tables(self._images) if self._images else IMAGE_ROWS.empty_table()
                )
                pq.write_table(images, self.path / "images.parquet", compression="none")
        return self.path

    def discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            with suppress(OSError):  # e.g. the disk is full: the files are deleted next
                writer.close()
        shutil.rmtree(self.path, ignore_errors=True)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A full disk while staging: remove the stage and say which disk and what to do,
        instead of a traceback from inside pyarrow."""
        try:
            yield
        except OSError as error:
            if not _disk_full(error):
                raise
            self.discard()
            raise StageDiskFullError(
                f"the disk holding the staging folder {self.path.parent} is full "
                f"({os.strerror(errno.ENOSPC)}); nothing was committed and the warehouse "
                "keeps its previous rows. Free space there, or point LENS_WAREHOUSE (or "
                "--warehouse) at a disk with room, and run again"
            ) from None

    def __enter__(self) -> ActivationStage:
        return self

    def __exit__(self, *_: object) -> None:
        self.discard()


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Each value's index among the column's distinct values, in the order first met."""
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _leaf(field: pa.Field) -> str:
    """The Parquet column path of a field's values, which per-column writer options name (a
    list's values are `NAME.list.element`; the bare name would leave them plain)."""
    return f"{field.name}.list.element" if pa.types.is_list(field.type) else field.name
