"""Model configs: one YAML file per model, validated by pydantic.

VLM-Lens config files load unchanged: their list-of-one-key-maps style for `model:`,
`forward:` and `dataset:`, `pooling_method`, `input_dir` and `output_db` are all accepted and
mapped onto LensFlow's own fields.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lens_assets.capture.token_roles import DEFAULT_POOLINGS, POOLINGS, UNPOOLED

DEFAULT_BATCH_SIZE = 8
# Images per forward pass. Far above what any one accelerator holds for a VLM (an 80 GB GPU
# runs a 7B LLaVA at a few hundred), and small enough that a batch's images, its padded
# token tensor and the `runs` table's INTEGER column stay sane: a typo such as 1e23 fails at
# validation, not at the commit after the whole inference.
MAX_BATCH_SIZE = 4096
# A prompt is a question about an image, not a document: 64 Ki characters is about 16k
# tokens, past the position limit of most families LensFlow ships and far past any probing
# prompt. The exact bound is the model's own, checked per batch once it is tokenised.
MAX_PROMPT_CHARS = 65_536
# Config files are a few hundred bytes and a few levels deep; the caps keep a hostile or
# mistaken file (a 20,000-level `[[[[...`, a log pasted into the folder) from exhausting the
# parser's stack before any field is read, or its time: pure-Python YAML parses a pathological
# file at about 30 KiB a second, so 256 KiB (over 40 times the largest config shipped) is
# refused or read within seconds.
MAX_CONFIG_BYTES = 256 * 1024
MAX_CONFIG_DEPTH = 64

# Quoted refusals of remote code that VLM-Lens configs write under `model:`.
QUOTED_NO = frozenset({"false", "no", "off", "0"})

# VLM-Lens's pooling_method values, mapped onto LensFlow poolings.
VLM_LENS_POOLING = {"none": UNPOOLED, "mean": "mean", "last": "last", "cls": "cls"}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field and the fix."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names a key twice: YAML loaders keep the last silently."""


class NestingError(yaml.YAMLError):
    """Nesting deeper than any config needs; deeper still would exhaust the parser's stack."""


class ConfigLoader(yaml.SafeLoader):
    """`safe_load`'s loader (tags are errors, never calls, so no config can run code) that
    also refuses a key given twice and nesting past MAX_CONFIG_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Composing recurses once per level: count the levels before Python's stack does."""
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise NestingError(
                    f"nested more than {MAX_CONFIG_DEPTH} levels deep (line {line}); a config "
                    "needs a few levels: flatten it"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<:` merges are meant to be overridden by the keys beside them
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice (lines {seen[key]} and {line}) and only the "
                    "last would count; keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, what: str) -> Any:
    """A config file's data, or a ConfigError naming the file: too large, not UTF-8, not
    YAML, nested too deep, or a key given twice."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what} {path} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a config is a few "
            "lines of YAML: check that the path names the config file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: tags are never calls
    except (DuplicateKeyError, NestingError) as error:
        raise ConfigError(f"{what} {path}: {error}") from None
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
    prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    modules: NameList = Field(min_length=1, description="Module names or globs to hook.")
    pooling: NameList = Field(default_factory=lambda: list(DEFAULT_POOLINGS))
    # Strict scalars: pydantic's coercion would read `batch_size: true` as 1, `"8"` as 8 and
    # `trust_remote_code: "yes"` as true; a config says what it means or fails naming the key.
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, strict=True)
    trust_remote_code: bool = Field(default=False, strict=True)
    enabled: bool = Field(
        default=True,
        strict=True,
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
    pooled_output: bool | None = Field(default=None, strict=True)
    device: str | None = None

    @field_validator("architecture")
    @classmethod
    def _normalise_architecture(cls, value: str) -> str:
        return value.strip().lower()

    @field_validator("model_path")
    @classmethod
    def _model_path_is_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "model_path is empty; name a hub id (org/name), a checkpoint folder or "
                "tiny:<architecture>"
            )
        return value

    @field_validator("device")
    @classmethod
    def _device_holds_data(cls, value: str | None) -> str | None:
        """The meta device has shapes but no values: every activation read from it fails."""
        if value is not None and value.strip().lower().split(":")[0] == "meta":
            raise ValueError(
                f"device {value!r} holds no data, only shapes; use auto, cpu or cuda[:N]"
            )
        return value

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
        """VLM-Lens's `model: [{trust_remote_code: ...}]` grants remote code only as the YAML
        boolean true: a quoted "yes" or "true" is an error, not a grant. VLM-Lens configs quote
        "false", which can only refuse, so a quoted no is read as false."""
        if "trust_remote_code" in self.model:
            value = self.model["trust_remote_code"]
            if isinstance(value, str) and value.strip().lower() in QUOTED_NO:
                self.model["trust_remote_code"] = False  # refusing is safe whatever the spelling
            elif not isinstance(value, bool):
                raise ValueError(
                    f"model: trust_remote_code must be a YAML boolean, true or false without "
                    f"quotes (got {value!r}); only true grants remote code"
                )
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


# Strict fields' errors, said in YAML's terms: the fix is to drop the quotes or the decimals.
TYPE_HINTS = {
    "bool_type": "must be a YAML boolean, true or false without quotes",
    "int_type": "must be an integer, a whole number without quotes or decimals",
}


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid model config {source}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][0])
            lines.append(f"  {field}: unknown key{_nearest(key, FIELD_NAMES)}")
        elif item["type"] == "missing":
            lines.append(f"  {field}: required field is missing")
        elif item["type"] in TYPE_HINTS:
            got = item.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"  {field}: {TYPE_HINTS[item['type']]}{shown}")
        elif field == "batch_size" and item["type"] == "less_than_equal":
            lines.append(
                f"  batch_size: at most {MAX_BATCH_SIZE} images per forward pass "
                f"(got {item.get('input')!r}); use a smaller batch_size"
            )
        elif field == "prompt" and item["type"] == "string_too_long":
            lines.append(
                f"  prompt: {len(item.get('input', ''))} characters, over the "
                f"{MAX_PROMPT_CHARS} a prompt may have; shorten it"
            )
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
