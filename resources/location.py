"""Where a warehouse lives: its root, its catalog's attach string and its data path.

Kept apart from the connection code because the CLI, the Dagster resources and the scale-out
settings only need to resolve and describe a location, never to open it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lens_assets.resources.errors import WarehouseError

from lens_assets.data import files

DEFAULT_ROOT = Path("warehouse")


@dataclass(frozen=True)
class WarehouseLocation:
    """Where the catalog and the data live."""

    root: Path
    catalog: str  # e.g. "sqlite:/abs/warehouse/catalog.sqlite" or "postgres:dbname=lens ..."
    data_path: str  # e.g. "/abs/warehouse/data/" or "s3://bucket/lens/"

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> WarehouseLocation:
        """`--warehouse` beats `LENS_WAREHOUSE`, which beats `./warehouse`; `LENS_CATALOG` and
        `LENS_DATA_PATH` move the catalog and the data elsewhere (scale-out)."""
        chosen = Path(root or os.environ.get("LENS_WAREHOUSE") or DEFAULT_ROOT).resolve()
        catalog = os.environ.get("LENS_CATALOG") or f"sqlite:{chosen / 'catalog.sqlite'}"
        data_path = os.environ.get("LENS_DATA_PATH") or f"{chosen / 'data'}/"
        return cls(chosen, catalog, data_path)

    @property
    def is_local(self) -> bool:
        return self.catalog.startswith("sqlite:") and "://" not in self.data_path

    @property
    def is_embedded(self) -> bool:
        """The default layout: catalog and data inside the root, so the root may move."""
        return (
            self.catalog == f"sqlite:{self.root / 'catalog.sqlite'}"
            and self.data_path == f"{self.root / 'data'}/"
        )

    @property
    def extensions(self) -> list[str]:
        needed = ["ducklake"]
        if self.catalog.startswith("sqlite:"):
            needed.append("sqlite_scanner")
        elif self.catalog.startswith("postgres:"):
            needed.append("postgres_scanner")
        if "://" in self.data_path:
            needed.append("httpfs")
        return needed

    @property
    def files_root(self) -> str:
        """Where files every worker must read (rendered dataset images) go: beside the data
        folder, on the same store (the root locally; the bucket prefix on object storage)."""
        return files.parent(self.data_path)

    @property
    def models_dir(self) -> Path:
        """Where tiny checkpoints are built (`model_path: tiny:<architecture>`)."""
        return self.root / "models"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"


def dagster_home_of(root: Path) -> tuple[Path, bool]:
    """The Dagster instance folder that `lens` and `dagster dev` share, and whether it is the
    user's own: DAGSTER_HOME if set, else `<warehouse>/dagster` (LensFlow's)."""
    home = os.environ.get("DAGSTER_HOME")
    return (Path(home), True) if home else (root / "dagster", False)


def s3_secret(env: Mapping[str, str]) -> str:
    """DuckDB's S3 secret from the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL): credentials live
    in the environment, never in a file of the repository."""
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(name)]
    if missing:
        raise WarehouseError(
            f"the warehouse data path is on S3 but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set: export the bucket's credentials"
        )
    options = {
        "KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "SECRET": env["AWS_SECRET_ACCESS_KEY"],
        "REGION": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if env.get("AWS_SESSION_TOKEN"):
        options["SESSION_TOKEN"] = env["AWS_SESSION_TOKEN"]
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:  # MinIO, Ceph, moto...: host:port, path-style URLs
        parts = urlsplit(endpoint)
        options["ENDPOINT"] = parts.netloc or parts.path
        options["URL_STYLE"] = "path"
        options["USE_SSL"] = "true" if parts.scheme != "http" else "false"
    settings = ", ".join(
        f"{key} {value if key == 'USE_SSL' else quoted(value)}" for key, value in options.items()
    )
    return f"CREATE OR REPLACE SECRET lens_s3 (TYPE s3, {settings})"


def quoted(path: Path | str) -> str:
    """A path as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"
