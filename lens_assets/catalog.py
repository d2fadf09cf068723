"""The configs folder as data: which models and datasets exist, and a version for each.

A config's version is a hash of its bytes, so editing a file (its modules, say) changes that
one model's version and nothing else's. A dataset's version also covers the files it reads
(a folder's images, a manifest and the images it names), so adding an image or editing a
manifest changes it too.

A model is a model config (`models/**/*.yaml`) or a tuning config (`tuning/**/*.yaml`, a model
trained from a base): both are model partitions, named by their file's stem. A tuned model's
version also covers its base's model config and the dataset configs it trains on by name, so
editing the base restales the tuned model too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lens_assets.config import ConfigError, configs_dir, read_yaml

ConfigKind = Literal["model", "tuning", "dataset"]


@dataclass(frozen=True)
class ConfigFile:
    name: str  # the file's stem: the model's partition key, `model` in every table
    path: Path
    # "model": a model config; "tuning": a tuning config (a model trained from a base, whose
    # checkpoint the `tuned_model` asset writes); "dataset": a dataset config
    kind: ConfigKind = "model"
    # other config files the version covers: a tuned model's base model config and the dataset
    # configs it names (a path that does not resolve is named instead, so a fix changes it)
    inputs: tuple[str, ...] = ()

    @property
    def tuned(self) -> bool:
        return self.kind == "tuning"

    @property
    def version(self) -> str:
        """A hash of the file's bytes (a plain config's version is exactly that, as before
        tuning configs existed); a tuned model's also covers its `inputs`."""
        digest = hashlib.sha256(self.path.read_bytes())
        if not self.inputs:
            return digest.hexdigest()[:16]
        for entry in self.inputs:
            digest.update(_input_token(entry).encode())
        return digest.hexdigest()[:16]


def _input_token(entry: str) -> str:
    path = Path(entry)
    try:
        return f"{entry}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
    except OSError as error:
        return f"{entry}\t{type(error).__name__}\n"


def _discover(folder: Path, kind: ConfigKind = "model") -> dict[str, ConfigFile]:
    found: dict[str, ConfigFile] = {}
    for path in sorted(folder.glob("**/*.yaml")) if folder.is_dir() else []:
        if path.stem in found:
            raise ConfigError(
                f"two configs are named {path.stem!r}: {found[path.stem].path} and {path}; a "
                "name is its file's stem and must be unique, so rename one of them"
            )
        found[path.stem] = ConfigFile(path.stem, path, kind)
    return found


def model_configs(
    root: Path | None = None, include_disabled: bool = False
) -> dict[str, ConfigFile]:
    """Every model partition's config by name: each `models/**/*.yaml` under the configs
    folder and each `tuning/**/*.yaml` (kind "tuning"), except those that say `enabled: false`
    (a file that does not parse counts as enabled, so its error shows). A name both folders
    hold is a ConfigError: a partition has one config."""
    root = root or configs_dir()
    plain = _discover(root / "models")
    tuned = tuning_configs(root, plain)
    both = sorted(set(plain) & set(tuned))
    if both:
        clashes = "; ".join(f"{plain[n].path} and {tuned[n].path}" for n in both)
        raise ConfigError(
            f"{', '.join(map(repr, both))} named both a model config and a tuning config "
            f"({clashes}); a model partition is named by its file's stem, so rename the tuning "
            "config (its stem is the tuned model's name) or the model config"
        )
    enabled = {n: f for n, f in {**plain, **tuned}.items() if include_disabled or _enabled(f.path)}
    return enabled


def tuning_configs(
    root: Path | None = None, models: dict[str, ConfigFile] | None = None
) -> dict[str, ConfigFile]:
    """Every `tuning/**/*.yaml` under the configs folder, by name (the tuned model's name),
    with the files its version covers: the base model config and the named datasets' configs.
    Never raises for what a file says: training reports a broken config."""
    root = root or configs_dir()
    models = _discover(root / "models") if models is None else models
    tuned = _discover(root / "tuning", "tuning")
    return {
        name: ConfigFile(name, file.path, "tuning", _tuning_inputs(file.path, root, models, tuned))
        for name, file in tuned.items()
    }


def _tuning_inputs(
    path: Path,
    root: Path,
    models: dict[str, ConfigFile],
    tuned: dict[str, ConfigFile] | None = None,
    seen: tuple[Path, ...] = (),
) -> tuple[str, ...]:
    """The base's model config (a path to a YAML file, `family/stem` or a stem under
    models/), then each dataset config `train` and `held_out` name; what cannot be resolved
    is named as such (the version changes when it is fixed). A base that is another tuning
    config stands for its file and, in turn, its own inputs: editing the tutor restales
    every model tuned from it."""
    try:
        data = read_yaml(path, "tuning config")
    except ConfigError:
        return ("unparsed",)
    if not isinstance(data, dict):
        return ("unparsed",)
    inputs = [_base_file(str(data.get("base")), root, models)]
    base = (tuned or {}).get(Path(str(data.get("base")).removesuffix(".yaml")).name)
    if inputs[0].startswith("unresolved base") and base is not None:
        cyclic = base.path in (*seen, path)
        inputs = [str(base.path)] + (
            ["cyclic base"] if cyclic else
            list(_tuning_inputs(base.path, root, models, tuned, (*seen, path)))
        )  # fmt: skip
    for part in ("train", "held_out"):
        rows = data.get(part)
        dataset = rows.get("dataset") if isinstance(rows, dict) else None
        if isinstance(dataset, str):
            inputs.append(str(root / "datasets" / f"{dataset}.yaml"))
    return tuple(inputs)


def bases_first(names: Iterable[str], root: Path | None = None) -> list[str]:
    """`names` in their order, except that a tuned model comes after its base: its
    `tuned_model` step loads a tuned base's checkpoint, so the base trains first (and a base's
    readouts exist when the tuned model is compared with it)."""
    names = list(names)
    files = tuning_configs(root)
    every = model_configs(root, include_disabled=True)
    by_path = {str(file.path): name for name, file in every.items()}
    base_of = {name: by_path.get(file.inputs[0]) for name, file in files.items() if file.inputs}
    placed: list[str] = []

    def place(name: str, seen: frozenset[str]) -> None:
        if name in placed or name in seen:
            return
        base = base_of.get(name)
        if base is not None and base in names:
            place(base, seen | {name})
        placed.append(name)

    for name in names:
        place(name, frozenset())
    return placed


def _base_file(base: str, root: Path, models: dict[str, ConfigFile]) -> str:
    as_path = Path(base).expanduser()
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return str(as_path.resolve())
    name = base.removesuffix(".yaml")
    nested = root / "models" / f"{name}.yaml"
    if nested.is_file():
        return str(nested)
    found = models.get(Path(name).name)
    return str(found.path) if found else f"unresolved base {base!r}"


def _enabled(path: Path, key: str = "enabled") -> bool:
    try:
        data = read_yaml(path, "model config")
    except ConfigError:
        return True
    return not (isinstance(data, dict) and data.get(key) is False)


def demo_models(root: Path | None = None) -> list[str]:
    """The model partitions `lens demo` makes: every enabled one except those that say
    `demo: false` (the tutor's study variants, which would triple the demo's time)."""
    return sorted(n for n, f in model_configs(root).items() if _enabled(f.path, "demo"))


def dataset_configs(root: Path | None = None) -> dict[str, ConfigFile]:
    """Every `datasets/**/*.yaml` under the configs folder, by name."""
    return _discover((root or configs_dir()) / "datasets", "dataset")


# Small files (a labels CSV, a manifest) enter a dataset's version whole, so an edit that keeps
# their size and lands within the file system's timestamp tick still counts; larger ones, and
# every image, by their stats alone, so a version costs a directory listing, not a read.
WHOLE_FILE_BYTES = 16 * 2**20


def dataset_version(file: ConfigFile) -> str:
    """A hash of the dataset's YAML and of the files it reads: the stats (name, size, mtime)
    of a folder's images, of the images a manifest names and of a local Hugging Face dataset's
    files, and the bytes of a labels file or manifest. Generated and blank datasets follow from
    their YAML alone, hub datasets cannot be listed cheaply: their YAML stands for them.

    Never raises: a config that does not parse, or a path that is missing or unreadable, is
    hashed as such (collecting the dataset reports it), and a fix changes the version."""
    digest = hashlib.sha256(_file_token(file.path, whole=True).encode())
    for token in _data_tokens(file.path):
        digest.update(token.encode())
    return digest.hexdigest()[:16]


def datasets_version(files: dict[str, ConfigFile]) -> str:
    """One version for every dataset together: what the `images` asset was collected from."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}={dataset_version(files[name])};".encode())
    return digest.hexdigest()[:16]


def _data_tokens(config_path: Path) -> list[str]:
    from lens_assets.data import datasets  # the kinds' models, only where a version is computed

    try:
        config: Any = datasets.load_dataset_config(config_path)
    except Exception:  # whatever is wrong with the YAML, collecting the dataset reports it
        return ["unparsed"]
    if isinstance(config, datasets.FolderDataset):
        folder = Path(config.path)
        # a concept image set's images are in subfolders: every file under it counts
        listed = _tree if config.concept_from == "subfolder" else _folder_images
        tokens = [_listing(folder, lambda: listed(folder))]
        if config.labels:
            tokens.append(_file_token(folder / config.labels, whole=True))
        return tokens
    if isinstance(config, datasets.ManifestDataset):
        manifest = Path(config.path)
        return [_file_token(manifest, whole=True), _listing(manifest, lambda: _named(manifest))]
    if isinstance(config, datasets.HfDataset) and config.kind == "hf_disk":
        source = Path(config.path)
        if source.is_dir():
            return [_listing(source, lambda: _tree(source))]
        return [_file_token(source, whole=False)]
    return []


def _folder_images(folder: Path) -> list[Path]:
    from lens_assets.data.images import folder_images

    return folder_images(folder)


def _named(manifest: Path) -> list[Path]:
    """The images a manifest names, as the collector finds them (beside the manifest): each
    row's `image_path`, or every one of its `image_paths`."""
    from lens_assets.data.tabular import image_names, manifest_rows

    manifest = manifest.resolve()
    rows = manifest_rows(manifest) if _regular(manifest) else []
    return [
        manifest.parent / name
        for row in rows
        for column in ("image_paths", "image_path")
        for name in image_names(row.get(column))
    ]


def _tree(folder: Path) -> list[Path]:
    """Every file under a `save_to_disk` folder (a few Arrow files and their JSON)."""
    return sorted(
        Path(top, name) for top, _, names in os.walk(folder, onerror=_raise) for name in names
    )


def _raise(error: OSError) -> None:
    raise error


def _listing(root: Path, paths: Callable[[], Iterable[Path]]) -> str:
    """The stats of each path `paths` lists under `root`; a listing that fails (the folder
    is missing, the manifest unreadable) is itself the token, so fixing it changes it."""
    try:
        found = list(paths())
    except Exception as error:  # a version never fails: collecting the dataset reports it
        return f"{os.path.abspath(root)}: cannot list ({type(error).__name__}: {error})\n"
    return f"{os.path.abspath(root)}:\n" + "".join(_file_token(p, whole=False) for p in found)


def _file_token(path: Path, whole: bool) -> str:
    """A file as (path, hash of its bytes) when `whole` and it is a small regular file, else
    as (path, size, mtime); the error's name when it cannot be read (missing, a symlink loop)."""
    try:
        info = path.stat()
        if whole and stat.S_ISREG(info.st_mode) and info.st_size <= WHOLE_FILE_BYTES:
            return f"{path}\t{hashlib.sha256(path.read_bytes()).hexdigest()}\n"
    except OSError as error:
        return f"{path}\t{type(error).__name__}\n"
    return f"{path}\t{info.st_size}\t{info.st_mtime_ns}\n"


def _regular(path: Path) -> bool:
    """Only a regular file is read (a named pipe would block the sensor forever)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def settings_version(file_name: str) -> str:
    """A settings file's content hash (that of an empty file when it is absent): part of an
    asset's code version, so that editing the file makes the asset stale."""
    path = configs_dir() / file_name
    return hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()[:12]
