"""Model configs: one YAML file per model, validated by pydantic.

VLM-Lens config files load unchanged: their list-of-one-key-maps style for `model:`,
`forward:` and `dataset:`, `pooling_method`, `input_dir`, `output_db` and every other key its
shipped configs use are accepted and mapped onto LensFlow's own fields, or say what LensFlow
does instead (`vlm_lens_notes`). A config in VLM-Lens's format also means what it meant there:
its `modules` are regular expressions (`module_syntax: regex`) and, without `pooling_method`,
every token's vector is stored (`tokens`), not LensFlow's pooled defaults.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
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

# VLM-Lens's pooling_method values (None, mean, max), mapped onto LensFlow poolings.
VLM_LENS_POOLING = {"none": UNPOOLED, "mean": "mean", "max": "max", "last": "last", "cls": "cls"}

# Keys only VLM-Lens's configs have: one of them (or `model:` as a list of one-key maps) marks
# a config in VLM-Lens's format, whose `modules` are regular expressions.
VLM_LENS_KEYS = frozenset({
    "output_db", "pooling_method", "pooled_output", "dataset", "download_path", "vis_save_path",
    "output_dir", "ablations", "text_prompts", "debug", "log_named_modules",
})  # fmt: skip
# VLM-Lens keys whose work LensFlow does another way: what it does instead.
VLM_LENS_INSTEAD = {
    "output_db": "rows go to the warehouse (`lens sql`, the `tensors` view), not a SQLite file",
    "output_dir": "rows go to the warehouse, not .pt files",
    "download_path": "weights load through transformers' cache (set HF_HOME to move it); "
    "model_path may name a local folder",
    "vis_save_path": "GLaMM's mask visualisations are not drawn; only activations are stored",
    "pooled_output": "LensFlow stores the pooling named by pooling_method (or `pooling`)",
    "debug": "use `lens --help` and the logs; nothing to switch",
    "log_named_modules": "`lens modules CONFIG` lists the named modules",
}
# VLM-Lens keys LensFlow cannot honour: extraction refuses them rather than store rows that
# mean something else.
VLM_LENS_UNSUPPORTED = {
    "ablations": "LensFlow extracts the unablated model; head ablations are the "
    "`ablation_effects` asset (configs/interpretability.yaml, `ablation: {heads: ...}`)",
    "text_prompts": "a prompt per image folder: use a manifest dataset with a prompt column",
}


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
        return copy.deepcopy(_parsed(text))  # a copy: callers may change what they get
    except (DuplicateKeyError, NestingError) as error:
        raise ConfigError(f"{what} {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}") from None


@functools.lru_cache(maxsize=128)  # every shipped config with room to spare
def _parsed(text: str) -> Any:
    """A config's text parsed once: a run reads every model config at each step (which are
    enabled, which tuned models they feed), ~3 s of the demo when each read parsed again. Keyed
    by the text itself, so an edit is always seen."""
    return yaml.load(text, Loader=ConfigLoader)  # a SafeLoader: tags are never calls


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
    modules: NameList = Field(min_length=1, description="Module names or patterns to hook.")
    module_syntax: Literal["glob", "regex"] | None = Field(
        default=None,
        description="How `modules` are read: glob (the default) or regex, Python regular "
        "expressions kept when they match a whole name, as VLM-Lens reads them (the default "
        "of a config in VLM-Lens's format).",
    )
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
    demo: bool = Field(
        default=True,
        strict=True,
        description="false: `lens demo` leaves the model out; `lens materialize` still runs it.",
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
    download_path: str | None = Field(default=None, description=VLM_LENS_INSTEAD["download_path"])
    vis_save_path: str | None = Field(default=None, description=VLM_LENS_INSTEAD["vis_save_path"])
    output_dir: str | None = Field(default=None, description=VLM_LENS_INSTEAD["output_dir"])
    ablations: KwargsMapping | None = Field(
        default=None, description=VLM_LENS_UNSUPPORTED["ablations"]
    )
    text_prompts: Any = Field(default=None, description=VLM_LENS_UNSUPPORTED["text_prompts"])
    debug: bool | None = None
    log_named_modules: bool | None = None
    _vlm_lens: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _vlm_lens_format(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> ModelConfig:
        """Note whether the file is in VLM-Lens's format; without `pooling_method` (or a
        `pooling` list) such a config stores what VLM-Lens stores, the unpooled tensor."""
        config = handler(data)
        if isinstance(data, dict) and is_vlm_lens_format(data):
            config._vlm_lens = True
            if "pooling_method" not in data and "pooling" not in data:
                config.pooling = [UNPOOLED]
        return config

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
    def vlm_lens_format(self) -> bool:
        """Written in VLM-Lens's format (see `is_vlm_lens_format`)."""
        return self._vlm_lens

    @property
    def pattern_syntax(self) -> str:
        """How `modules` are read: `module_syntax`, else regex for a VLM-Lens config."""
        return self.module_syntax or ("regex" if self._vlm_lens else "glob")

    @property
    def vlm_lens_notes(self) -> list[str]:
        """For each VLM-Lens key given whose work LensFlow does another way, what it does."""
        given = self.model_fields_set
        return [f"{key}: {note}" for key, note in VLM_LENS_INSTEAD.items() if key in given]

    def check_extractable(self) -> None:
        """A ConfigError for a VLM-Lens key that would change what the rows mean."""
        for key, instead in VLM_LENS_UNSUPPORTED.items():
            if getattr(self, key):
                raise ConfigError(f"{key}: not supported by LensFlow's extraction; {instead}")

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


def is_vlm_lens_format(data: dict[str, Any]) -> bool:
    """A config in VLM-Lens's format: it says `module_syntax: regex`, or has a key only
    VLM-Lens configs have, or writes `model:` as a list of one-key maps."""
    model = data.get("model")
    marked = data.get("module_syntax") == "regex" or isinstance(model, list)
    return marked or bool(VLM_LENS_KEYS & data.keys())


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


def parse_model_config(
    data: Any, source: str = "<mapping>", require_modules: bool = True
) -> ModelConfig:
    """Validate a mapping as a model config, raising ConfigError with a readable message.
    Without `require_modules`, a config with no `modules` is valid (`lens modules`, like
    VLM-Lens's --log-named-modules, is how one finds them)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid model config {source}: expected a YAML mapping of keys "
            f"(architecture, model_path, modules, ...), got {type(data).__name__}"
        )
    unnamed = not require_modules and data.get("modules") in (None, [])
    try:
        config = ModelConfig.model_validate({**data, "modules": ["-"]} if unnamed else data)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    if unnamed:
        config.modules = []
    return config


def load_model_config(path: str | Path, require_modules: bool = True) -> ModelConfig:
    """Read and validate one model config file (see parse_model_config)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model config {path} does not exist")
    data = read_yaml(path, "model config")
    return parse_model_config(data, source=str(path), require_modules=require_modules)


def model_name(path: str | Path) -> str:
    """A model's name (its partition key and `model` in every table) is its file's stem."""
    return Path(path).stem


REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def configs_dir() -> Path:
    """`configs/` at the repo root unless `LENS_CONFIGS` names another folder."""
    import os

    return Path(os.environ.get("LENS_CONFIGS") or REPO_CONFIGS)
