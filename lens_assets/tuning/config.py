"""Tuning configs: `configs/tuning/<name>.yaml` says what to train, from what, on which rows.

A tuning config is data, validated by pydantic with unknown keys refused, so a typo fails
before any weights load. Its name (the file's stem) becomes the tuned model's name, and its
hash (`config_hash`) is what marks the tuned model stale when the file changes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lens_assets.capture.tiny import TINY_PRESETS
from lens_assets.config import (
    ConfigError,
    ModelConfig,
    configs_dir,
    load_model_config,
    read_yaml,
)

__all__ = [
    "LORA_PRESETS",
    "METHODS",
    "LoraSpec",
    "PromptTuningSpec",
    "RowsSpec",
    "TuningConfig",
    "TuningConfigError",
    "config_hash",
    "load_tuning_config",
    "parse_tuning_config",
    "resolve_base",
    "tuning_files",
    "tuning_name",
]

METHODS = ("full", "lora", "prompt_tuning")
# LoRA target presets: a part of the VLM, resolved through `capture.modules.stage_of`.
LORA_PRESETS = {"llm": "language", "projector": "projector", "vision": "vision"}
MAX_VIRTUAL_TOKENS = 256  # the study uses 1, 5 and 10; a guard against a typo such as 10000


class TuningConfigError(ConfigError):
    """A tuning config that cannot be used; the message names the field and the fix."""


class RowsSpec(BaseModel):
    """Which rows to train (or evaluate) on: a dataset, optionally one split and some kinds."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | dict[str, Any] = Field(
        description="A dataset config name under configs/datasets/ (e.g. clevr-lite), or an "
        "inline dataset config (a mapping with `kind`, as in a dataset file)."
    )
    split: str | None = Field(default=None, description="Keep only rows of this split.")
    kinds: list[str] | None = Field(
        default=None, min_length=1, description="Keep only these question kinds (e.g. colour)."
    )
    limit: int | None = Field(default=None, ge=1, strict=True, description="At most this many.")


class LoraSpec(BaseModel):
    """LoRA's targets (presets `llm`, `projector`, `vision`, or module-name globs) and size."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(min_length=1)
    rank: int = Field(default=8, ge=1, le=4096, strict=True)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)


class PromptTuningSpec(BaseModel):
    """Soft prompt: this many learned token embeddings put before every prompt."""

    model_config = ConfigDict(extra="forbid")

    virtual_tokens: int = Field(ge=1, le=MAX_VIRTUAL_TOKENS, strict=True)


class TuningConfig(BaseModel):
    """One trained or tuned model: its base, the method, the rows and the optimiser's settings."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(
        description="The base model config: its name (stem or family/stem under "
        "configs/models/) or a path to its YAML file."
    )
    preset: Literal["tiny", "small", "base"] | None = Field(
        default=None,
        description="For a base whose model_path is tiny:<architecture>: which tiny preset to "
        "build (default: tiny, the one the base config loads).",
    )
    from_scratch: bool = Field(
        default=False,
        strict=True,
        description="Re-initialise every weight from the base's architecture with `seed` "
        "before training (a model trained from random weights).",
    )
    method: Literal["full", "lora", "prompt_tuning"]
    lora: LoraSpec | None = None
    prompt_tuning: PromptTuningSpec | None = None
    train: RowsSpec
    held_out: RowsSpec | None = Field(
        default=None, description="Rows to measure the tuned model on (never trained on)."
    )
    steps: int = Field(ge=1, le=10_000_000, strict=True)
    learning_rate: float = Field(gt=0, le=10)
    batch_size: int = Field(default=8, ge=1, le=4096, strict=True)
    seed: int = Field(default=0, strict=True)
    warmup_steps: int = Field(default=0, ge=0, strict=True)
    schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    description: str | None = None
    enabled: bool = Field(
        default=True,
        strict=True,
        description="false: shipped but not a model partition (as for model configs).",
    )
    demo: bool = Field(
        default=True,
        strict=True,
        description="false: `lens demo` leaves this model out to stay quick; `lens "
        "materialize` and the UI still make it.",
    )
    datasets: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The datasets the tuned model's partition runs on (default: its base's): "
        "a variant measured on one dataset need not pay for every other.",
    )

    @model_validator(mode="after")
    def _method_settings(self) -> TuningConfig:
        if self.method == "lora" and self.lora is None:
            raise ValueError(
                "method lora needs a `lora:` section with `targets` (llm, projector, vision, "
                "or module globs)"
            )
        if self.method == "prompt_tuning" and self.prompt_tuning is None:
            raise ValueError(
                "method prompt_tuning needs a `prompt_tuning:` section with `virtual_tokens`"
            )
        if self.lora is not None and self.method != "lora":
            raise ValueError(f"a `lora:` section is only read with method lora (got {self.method})")
        if self.prompt_tuning is not None and self.method != "prompt_tuning":
            raise ValueError(
                f"a `prompt_tuning:` section is only read with method prompt_tuning "
                f"(got {self.method})"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})"
            )
        return self


FIELD_NAMES = {
    (): tuple(TuningConfig.model_fields),
    ("train",): tuple(RowsSpec.model_fields),
    ("held_out",): tuple(RowsSpec.model_fields),
    ("lora",): tuple(LoraSpec.model_fields),
    ("prompt_tuning",): tuple(PromptTuningSpec.model_fields),
}


def _nearest(name: str, candidates: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid tuning config {source}:"]
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        field = ".".join(loc) or "(top level)"
        got = item.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
        if item["type"] == "extra_forbidden":
            known = FIELD_NAMES.get(loc[:-1], ())
            lines.append(f"  {field}: unknown key{_nearest(loc[-1], known)}")
        elif item["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        elif item["type"] == "literal_error":
            lines.append(f"  {field}: {item['msg']}{shown}")
        elif item["type"] == "value_error":
            lines.append(f"  {field}: {str(item['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"  {field}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_tuning_config(data: Any, source: str = "<mapping>") -> TuningConfig:
    """Validate a mapping as a tuning config; a TuningConfigError names each bad field."""
    if not isinstance(data, dict):
        raise TuningConfigError(
            f"invalid tuning config {source}: expected a YAML mapping of keys (base, method, "
            f"train, steps, learning_rate, ...), got {type(data).__name__}"
        )
    try:
        return TuningConfig.model_validate(data)
    except ValidationError as error:
        raise TuningConfigError(_describe(error, source)) from None


def load_tuning_config(path: str | Path) -> TuningConfig:
    """Read and validate one `configs/tuning/<name>.yaml`."""
    path = Path(path)
    if not path.is_file():
        raise TuningConfigError(f"tuning config {path} does not exist")
    return parse_tuning_config(read_yaml(path, "tuning config"), str(path))


def tuning_name(path: str | Path) -> str:
    """The tuned model's name (its model partition key): the tuning config file's stem."""
    return Path(path).stem


def config_hash(config: TuningConfig) -> str:
    """A hash of what the config says about training (not how the file is laid out): comments,
    key order, spacing, `description`, `enabled`, `demo` and `datasets` (where the tuned model
    runs, not what it is) do not change it; any training setting does."""
    settings = config.model_dump(
        mode="json", exclude={"description", "enabled", "demo", "datasets"}
    )
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _model_configs(root: Path) -> dict[str, Path]:
    """Model config names under `root`: `family/stem` and the bare stem (unique by design)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.yaml")):
        relative = path.relative_to(root).with_suffix("").as_posix()
        names[relative] = path
        names.setdefault(path.stem, path)
    return names


def tuning_files(configs: Path | None = None) -> dict[str, Path]:
    """Tuning config names under `configs/tuning/` (every `**/*.yaml`, by stem): the tuned
    models a tuning config may name as its base."""
    root = (configs or configs_dir()) / "tuning"
    return {path.stem: path for path in sorted(root.rglob("*.yaml"))} if root.is_dir() else {}


def resolve_base(
    base: str,
    configs: Path | None = None,
    models_dir: Path | None = None,
    _seen: tuple[str, ...] = (),
) -> tuple[str, ModelConfig]:
    """The base model's name and its config: `base` is a path to a YAML file, a name under
    `configs/models/` (`tiny-llava` or `llava/tiny-llava`), or the name of another tuning
    config (`tutor`), whose tuned model is then the base.

    A tuned base's config is the model config at the root of its chain (architecture, prompt,
    modules); with `models_dir` its `model_path` is the checkpoint the base's `tuned_model`
    step saved there, checked to exist and to come from the base's current config (else a
    TuningConfigError says to materialize the base first). Without `models_dir` the root's
    `model_path` is kept: good for the prompt and the architecture, not for loading."""
    root = (configs or configs_dir()) / "models"
    as_path = Path(base).expanduser()
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path.stem, load_model_config(as_path, require_modules=False)
    known = _model_configs(root) if root.is_dir() else {}
    found = known.get(base.removesuffix(".yaml"))
    if found is not None:
        return found.stem, load_model_config(found, require_modules=False)
    tuned = tuning_files(configs)
    name = Path(base.removesuffix(".yaml")).name
    if name in tuned:
        return name, _tuned_base(name, tuned[name], configs, models_dir, _seen)
    close = difflib.get_close_matches(base, [*known, *tuned], n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise TuningConfigError(
        f"base: {base!r} is neither a model config under {root}, a tuning config under "
        f"{root.parent / 'tuning'} nor a YAML file{hint}; name a model config (e.g. "
        "llava/tiny-llava), a tuning config (e.g. tutor) or give the path to a model config"
    )


def _tuned_base(
    name: str, path: Path, configs: Path | None, models_dir: Path | None, seen: tuple[str, ...]
) -> ModelConfig:
    """A tuning config named as a base: its root model config, at its checkpoint."""
    if name in seen:
        chain = " -> ".join([*seen, name])
        raise TuningConfigError(
            f"base: the tuning configs name each other as bases in a cycle ({chain}); a tuned "
            "model's base must lead back to a model config"
        )
    config = load_tuning_config(path)
    _, root = resolve_base(config.base, configs, None, (*seen, name))
    if models_dir is None:
        return root
    from lens_assets.tuning.checkpoint import read_metadata, tuned_dir  # torch: only to load

    checkpoint = tuned_dir(models_dir, name)
    materialize = (
        f"materialize `tuned_model` for partition {name!r} first (lens materialize --select "
        f"tuned_model --model {name}, or in the UI)"
    )
    if not (checkpoint / "config.json").is_file():
        off = (
            f"; {path} says `enabled: false`, so no run trains it: set `enabled: true`"
            if not config.enabled
            else ""
        )
        raise TuningConfigError(
            f"base {name!r} is a tuned model ({path}) and its checkpoint {checkpoint} does not "
            f"exist yet: {materialize}{off}"
        )
    trained = (read_metadata(checkpoint) or {}).get("config_hash")
    if trained != config_hash(config):
        raise TuningConfigError(
            f"base {name!r}'s checkpoint {checkpoint} was trained from another version of "
            f"{path} (settings hash {trained}, now {config_hash(config)}): {materialize}"
        )
    return root.model_copy(update={"model_path": str(checkpoint.resolve())})


def check_preset(config: TuningConfig, base: ModelConfig) -> str | None:
    """The tiny preset to build, or None for a base that is not a tiny checkpoint."""
    is_tiny = base.model_path.startswith("tiny:")
    if config.preset is not None and not is_tiny:
        raise TuningConfigError(
            f"preset: {config.preset!r} applies only to a base whose model_path is "
            f"tiny:<architecture>, and {config.base!r} loads {base.model_path!r}; remove "
            "`preset`, or name a tiny base"
        )
    if not is_tiny:
        return None
    preset = config.preset or "tiny"
    assert preset in TINY_PRESETS
    return preset
