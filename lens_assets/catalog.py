"""The configs folder as data: which models and datasets exist, and a version for each.

A config's version is a hash of its bytes, so editing a file (its modules, say) changes that
one model's version and nothing else's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from lens_assets.config import ConfigError, configs_dir, read_yaml


@dataclass(frozen=True)
class ConfigFile:
    name: str  # the file's stem: the model's partition key, `model` in every table
    path: Path

    @property
    def version(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def _discover(folder: Path) -> dict[str, ConfigFile]:
    found: dict[str, ConfigFile] = {}
    for path in sorted(folder.glob("**/*.yaml")) if folder.is_dir() else []:
        if path.stem in found:
            raise ConfigError(
                f"two configs are named {path.stem!r}: {found[path.stem].path} and {path}; a "
                "name is its file's stem and must be unique, so rename one of them"
            )
        found[path.stem] = ConfigFile(path.stem, path)
    return found


def model_configs(
    root: Path | None = None, include_disabled: bool = False
) -> dict[str, ConfigFile]:
    """Every `models/**/*.yaml` under the configs folder, by name, except those that say
    `enabled: false` (a file that does not parse counts as enabled, so its error shows)."""
    found = _discover((root or configs_dir()) / "models")
    if include_disabled:
        return found
    return {name: file for name, file in found.items() if _enabled(file.path)}


def _enabled(path: Path) -> bool:
    try:
        data = read_yaml(path, "model config")
    except ConfigError:
        return True
    return not (isinstance(data, dict) and data.get("enabled") is False)


def dataset_configs(root: Path | None = None) -> dict[str, ConfigFile]:
    """Every `datasets/**/*.yaml` under the configs folder, by name."""
    return _discover((root or configs_dir()) / "datasets")


def combined_version(files: dict[str, ConfigFile]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}={files[name].version};".encode())
    return digest.hexdigest()[:16]


def settings_version(file_name: str) -> str:
    """A settings file's content hash (that of an empty file when it is absent): part of an
    asset's code version, so that editing the file makes the asset stale."""
    path = configs_dir() / file_name
    return hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()[:12]
