"""A run's rows spooled on local disk until the lake commit succeeds.

Inference and the lake transaction are decoupled: batches stream into private, uncompressed
Parquet files (memory stays flat however many images; writing them costs next to nothing
beside the forward pass), and the commit (delete the partition's old rows, insert the new
ones) reads them back and can be retried as a whole when a concurrent writer holds the
catalog, without recomputing anything.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from lens_assets.resources.schemas import ACTIVATIONS, IMAGES, conform, without

# What the stage holds: the `activations` row less model and architecture, which the commit
# supplies; a batch's rows before the stage adds their dataset; and the `images` row less the
# split, which only a dataset's own `images` step knows.
STAGED_ACTIVATIONS = without(ACTIVATIONS, "model", "architecture")
ACTIVATION_ROWS = without(STAGED_ACTIVATIONS, "dataset")
IMAGE_ROWS = without(IMAGES, "split")
FLUSH_BYTES = 16 * 1024 * 1024  # a row group of the stage file
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
    `images.parquet`) that the lake commit reads."""

    def __init__(self, directory: Path) -> None:
        remove_stale_stages(directory)
        self.path = directory / f"run-{os.getpid()}-{uuid.uuid4().hex}"
        self._writer: pq.ParquetWriter | None = None
        with self._writing():
            self.path.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(
                self.path / "activations.parquet", STAGED_ACTIVATIONS, compression="none"
            )
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._images: list[pa.Table] = []
        self.rows = 0

    def add_activations(self, table: pa.Table) -> None:
        self._pending.append(conform(table, STAGED_ACTIVATIONS))
        self._pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def add_images(self, rows: pa.Table) -> None:
        self._images.append(conform(rows, IMAGE_ROWS))

    def flush(self) -> None:
        if not self._pending:
            return
        assert self._writer is not None, "stage already closed"
        with self._writing():
            self._writer.write_table(pa.concat_tables(self._pending))
        self._pending.clear()
        self._pending_bytes = 0

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
