"""Dagster resources over the plain runtime and warehouse: settable from run config and the
environment, holding no global state, so any executor (multiprocess here; k8s, celery, dask
in production) can run any step."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from lens_assets.resources.runtime import RuntimeConfigError, parse_bytes
from lens_assets.resources.warehouse import Warehouse, WarehouseLocation
from pydantic import Field

from lens_assets.capture.loading import LoadedModel, load_model, release
from lens_assets.config import MAX_BATCH_SIZE, ModelConfig


class WarehouseResource(ConfigurableResource):
    """The DuckLake attach: catalog and data path. Unset fields fall back to LENS_WAREHOUSE,
    LENS_CATALOG and LENS_DATA_PATH, then to ./warehouse."""

    root: str | None = Field(default=None, description="Warehouse root folder.")
    catalog: str | None = Field(default=None, description="e.g. sqlite:/path/catalog.sqlite")
    data_path: str | None = Field(default=None, description="e.g. /path/data/ or s3://b/p/")

    def location(self) -> WarehouseLocation:
        base = WarehouseLocation.resolve(self.root)
        return WarehouseLocation(
            base.root, self.catalog or base.catalog, self.data_path or base.data_path
        )

    @contextmanager
    def session(self) -> Iterator[Warehouse]:
        """One read-write connection for the whole step."""
        with Warehouse(self.location()).session() as warehouse:
            yield warehouse


class VLMRuntimeResource(ConfigurableResource):
    """Device, dtype and batch size for hooked inference; unset fields fall back to
    LENS_DEVICE, LENS_DTYPE and LENS_BATCH_SIZE, then to auto / auto / the config's own."""

    device: str | None = Field(default=None, description="auto, cpu or cuda[:N]")
    dtype: str | None = Field(default=None, description="auto, float32, float16, bfloat16")
    batch_size: int | None = Field(
        default=None, ge=1, le=MAX_BATCH_SIZE, strict=True, description="Images per forward pass."
    )
    memory_budget: str | None = Field(
        default=None,
        description="Cap on the activations the hooks hold per batch, e.g. 4GiB (env "
        "LENS_MEMORY_BUDGET); the batch size is lowered to fit.",
    )

    def memory_budget_bytes(self) -> int | None:
        return parse_bytes(self.memory_budget or os.environ.get("LENS_MEMORY_BUDGET"))

    def effective_batch_size(self, config: ModelConfig) -> int:
        env = os.environ.get("LENS_BATCH_SIZE")
        return self.batch_size or (batch_size_from_env(env) if env else config.batch_size)

    @contextmanager
    def model(self, config: ModelConfig, name: str, warehouse: Warehouse) -> Iterator[LoadedModel]:
        """Load once for the step, free it after, even when the step fails."""
        loaded = load_model(
            config,
            name,
            warehouse.location.models_dir,
            self.device or os.environ.get("LENS_DEVICE"),
            self.dtype or os.environ.get("LENS_DTYPE"),
        )
        try:
            yield loaded
        finally:
            release(loaded)


def batch_size_from_env(text: str) -> int:
    """LENS_BATCH_SIZE as a whole number in the config's bounds, else one clear error."""
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_BATCH_SIZE:
        raise RuntimeConfigError(
            f"LENS_BATCH_SIZE {text!r} is not a batch size; set it to a whole number from 1 "
            f"to {MAX_BATCH_SIZE}, or unset it to use the config's batch_size"
        )
    return int(value)
