"""Model configs: one YAML file per model, validated by pydantic.

VLM-Lens config files load unchanged: their list-of-one-key-maps style for `model:`,
`forward:` and `dataset:`, `pooling_method`, `input_dir` and `output_db` are all accepted and
mapped onto LensFlow's own fields.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

Pooling = Literal["mean_image", "mean_text", "last", "cls", "mean", "tokens"]
POOLINGS: tuple[str, ...] = ("mean_image", "mean_text", "last", "cls", "mean", "tokens")
DEFAULT_POOLINGS: tuple[str, ...] = ("mean_image", "mean_text", "last")
DEFAULT_BATCH_SIZE = 8

# VLM-Lens's pooling_method values, mapped onto LensFlow poolings.
VLM_LENS_POOLING = {"none": "tokens", "mean": "mean", "last": "last", "cls": "cls"}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field and the fix."""


def read_yaml(path: Path, what: str) -> Any:
    """A config file's data. `safe_load` only: a tag such as `!!python/object/apply` is an
    error, never a call, so no config can run code."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None


def _merge_one_key_maps(value: Any) -> Any:
    """VLM-Lens writes `model:` as a list of one-key mappings; merge it into one mapping."""
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        merged: dict[str, Any] = {}
        for item in value:
            merged.update(item)
        return merged
    return value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


KwargsMapping = Annotated[dict[str, Any], BeforeValidator(_merge_one_key_maps)]
NameList = Annotated[list[str], BeforeValidator(_as_list)]


class ModelConfig(BaseModel):
    """What to run (model, prompt, images) and what to capture (modules, poolings)."""

    model_config = ConfigDict(extra="forbid")

    architecture: str = Field(description="Registry name, e.g. llava, qwen2-vl, clip.")
    model_path: str = Field(
        description="Hub id, local folder, or tiny:<architecture> for a built tiny checkpoint."
    )
    model: KwargsMapping = Field(default_factory=dict, description="from_pretrained kwargs.")
    forward: KwargsMapping = Field(default_factory=dict, description="Extra forward kwargs.")
    prompt: str = ""
    modules: NameList = Field(min_length=1, description="Module names or globs to hook.")
    pooling: NameList = Field(default_factory=lambda: list(DEFAULT_POOLINGS))
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1)
    trust_remote_code: bool = False
    enabled: bool = Field(
        default=True,
        description="false keeps the model out of the asset graph (no partition); `lens "
        "extract` still runs it. Real-model example configs ship disabled.",
    )
    datasets: NameList = Field(default_factory=list)
    input_dir: str | None = None
    # VLM-Lens keys, accepted so its files load unchanged.
    pooling_method: str | None = None
    output_db: str | None = Field(
        default=None, description="VLM-Lens's SQLite file; LensFlow writes to the warehouse."
    )
    dataset: KwargsMapping | None = None
    pooled_output: bool | None = None
    device: str | None = None

    @field_validator("architecture")
    @classmethod
    def _normalise_architecture(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("pooling")
    @classmethod
    def _known_poolings(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in POOLINGS:
                hint = _nearest(name, POOLINGS)
                raise ValueError(
                    f"unknown pooling {name!r}{hint}; choose from {', '.join(POOLINGS)}"
                )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _apply_vlm_lens_pooling(self) -> ModelConfig:
        if self.pooling_method is None:
            return self
        mapped = VLM_LENS_POOLING.get(self.pooling_method.lower())
        if mapped is None:
            raise ValueError(
                f"pooling_method {self.pooling_method!r} is not supported; "
                f"use one of {', '.join(VLM_LENS_POOLING)} or the `pooling` list"
            )
        self.pooling = [mapped]
        return self

    @model_validator(mode="after")
    def _trust_flag_is_a_boolean(self) -> ModelConfig:
        """VLM-Lens's `model: [{trust_remote_code: ...}]` must say yes or no: a quoted "false"
        must not grant remote code by being a non-empty string."""
        if "trust_remote_code" in self.model:
            value = self.model["trust_remote_code"]
            try:
                self.model["trust_remote_code"] = TypeAdapter(bool).validate_python(value)
            except ValidationError:
                raise ValueError(
                    f"model: trust_remote_code must be true or false (got {value!r})"
                ) from None
        return self

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """from_pretrained kwargs; VLM-Lens's `torch_dtype` is transformers 5's `dtype`."""
        kwargs = dict(self.model)
        if "torch_dtype" in kwargs:
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        kwargs.pop("trust_remote_code", None)
        return kwargs

    @property
    def remote_code_requested(self) -> bool:
        """Granted by `trust_remote_code: true`, or by VLM-Lens's entry under `model:`."""
        return self.trust_remote_code or self.model.get("trust_remote_code") is True


FIELD_NAMES: tuple[str, ...] = tuple(ModelConfig.model_fields)


def _nearest(name: str, candidates: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid model config {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][0])
            lines.append(f"  {field}: unknown key{_nearest(key, FIELD_NAMES)}")
        elif item["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        else:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"  {field}: {item['msg']}{shown}")
    return "\n".join(lines)


def parse_model_config(data: Any, source: str = "<mapping>") -> ModelConfig:
    """Validate a mapping as a model config, raising ConfigError with a readable message."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid model config {source}: expected a YAML mapping of keys "
            f"(architecture, model_path, modules, ...), got {type(data).__name__}"
        )
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate one model config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model config {path} does not exist")
    return parse_model_config(read_yaml(path, "model config"), source=str(path))


def model_name(path: str | Path) -> str:
    """A model's name (its partition key and `model` in every table) is its file's stem."""
    return Path(path).stem


REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def configs_dir() -> Path:
    """`configs/` at the repo root unless `LENS_CONFIGS` names another folder."""
    import os

    return Path(os.environ.get("LENS_CONFIGS") or REPO_CONFIGS)
