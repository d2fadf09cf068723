"""Loading a model for hooked inference: one `from_pretrained` path for a hub id, a
checkpoint folder or a tiny offline checkpoint, with the checks that make a bad config fail
before any weights load."""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lens_assets.capture.adapters import Architecture, ModelLayout, get_architecture
from lens_assets.capture.adapters.forward import forward_kwargs, position_limit
from lens_assets.capture.families import get_family, require_packages
from lens_assets.config import ModelConfig
from lens_assets.resources.runtime import (
    PickleWeightsError,
    RemoteCodeError,
    RuntimeConfigError,
    dtype_name,
    resolve_device,
    resolve_dtype,
)

TINY_SCHEME = "tiny:"


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def require_safetensors(path: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Weights load from safetensors only, unless the config opts in with
    `model: {use_safetensors: false}`: unpickling a `.bin` file can run code."""
    if kwargs.get("use_safetensors") is False:
        return kwargs
    folder = Path(path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
        if pickled:
            raise PickleWeightsError(
                f"the checkpoint at {path} has its weights only as pickle files "
                f"({', '.join(pickled[:3])}), and unpickling can run code; LensFlow loads "
                "safetensors. Convert the weights (save_pretrained writes safetensors), or, if "
                "you trust the file, opt in with `model: {use_safetensors: false}` in the config"
            )
    return {**kwargs, "use_safetensors": True}


def checkpoint_config(config: ModelConfig, path: str) -> Any:
    """The checkpoint's transformers config; remote code only with `trust_remote_code: true`."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(
            path, trust_remote_code=config.remote_code_requested
        )
    except ValueError as error:
        if "trust_remote_code" not in str(error) or config.remote_code_requested:
            raise
        raise RemoteCodeError(
            f"the checkpoint at {path} runs its own modeling code (config.json `auto_map`); "
            "LensFlow runs it only when the model config says `trust_remote_code: true`. Read "
            "that code first, then add the line to the config"
        ) from None
    except OSError as error:  # the hub: unknown id, no network, gated, no token
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise RuntimeConfigError(
            f"model_path {path!r} is not a folder here and could not be fetched from the hub "
            f"({reason}); fix the path, or check the hub id, the network and HF_TOKEN"
        ) from None


def checked_model_path(model_path: str) -> str:
    """A local checkpoint folder (holding config.json) or a well-formed hub id, else a
    RuntimeConfigError naming model_path and the fix; `~` is expanded, as a shell would."""
    text = model_path.strip()
    if not text:
        raise RuntimeConfigError(
            "model_path is empty; name a hub id (org/name), a checkpoint folder or "
            "tiny:<architecture>"
        )
    folder = Path(text).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise RuntimeConfigError(
                f"model_path {model_path!r} is a folder without config.json; point it at the "
                "checkpoint folder itself (the one holding config.json and the weights)"
            )
        return str(folder)
    if folder.exists():
        raise RuntimeConfigError(
            f"model_path {model_path!r} is a file; point it at the checkpoint folder (the one "
            "holding config.json and the weights) or a hub id (org/name)"
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise RuntimeConfigError(
            f"model_path {model_path!r} is neither an existing folder nor a hub id (org/name); "
            "fix the folder's path or the id"
        ) from None
    return text


def resolve_model_path(model_path: str, models_dir: Path) -> str:
    """`tiny:<architecture>` names the tiny checkpoint built under the warehouse (built on first
    use); anything else is a hub id or a folder, checked (see checked_model_path) and handed
    to `from_pretrained`."""
    if not model_path.startswith(TINY_SCHEME):
        return checked_model_path(model_path)
    from lens_assets.capture.tiny import build_tiny

    architecture = model_path.removeprefix(TINY_SCHEME)
    folder = models_dir / f"tiny-{architecture}"
    if not (folder / "config.json").is_file():
        build_tiny(architecture, folder)
    return str(folder)


# attn_implementation values that need a package transformers does not bring.
ATTENTION_PACKAGES = {
    "flash_attention_2": "flash_attn",
    "flash_attention_3": "flash_attn_interface",
}
# from_pretrained's common kwargs, for the nearest-name hint on a misspelt one.
LOAD_KWARGS = (
    "dtype", "torch_dtype", "device_map", "attn_implementation", "low_cpu_mem_usage",
    "revision", "use_safetensors", "quantization_config", "max_memory", "subfolder", "variant",
    "cache_dir", "local_files_only", "token", "offload_folder", "key_mapping",
)  # fmt: skip


def check_attention(kwargs: dict[str, Any]) -> None:
    """`attn_implementation` names a kernel whose package is installed, before loading (a
    missing flash_attn is otherwise an ImportError from deep inside from_pretrained)."""
    choice = kwargs.get("attn_implementation")
    if choice is None:
        return
    if not isinstance(choice, str):
        raise RuntimeConfigError(
            f"model: attn_implementation must be a name such as sdpa or eager (got {choice!r})"
        )
    package = ATTENTION_PACKAGES.get(choice)
    if package is not None and importlib.util.find_spec(package) is None:
        raise RuntimeConfigError(
            f"model: attn_implementation {choice!r} needs the {package} package, which is not "
            f"installed; install it (CUDA GPUs only) or use attn_implementation sdpa or eager"
        )


def load_error(error: Exception, kwargs: dict[str, Any], model_config: Any) -> Exception:
    """from_pretrained's error for a bad `model:` kwarg, as one line naming it; any other
    error as it is."""
    unknown = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if isinstance(error, TypeError) and unknown and unknown.group(1) in kwargs:
        key = unknown.group(1)
        known = [*LOAD_KWARGS, *getattr(model_config, "to_dict", dict)()]
        return RuntimeConfigError(
            f"model: {key} is neither a from_pretrained argument nor a setting of this "
            f"checkpoint's config{nearest(key, known)}; remove it from `model:`"
        )
    if isinstance(error, ValueError | ImportError) and "attn_implementation" in str(error):
        choice = kwargs.get("attn_implementation")
        first = str(error).strip().splitlines()[0]
        return RuntimeConfigError(f"model: attn_implementation {choice!r} cannot be used: {first}")
    return error


def nearest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class LoadedModel:
    """A model ready for hooked inference, with what the engine needs to read it back."""

    name: str
    architecture: Architecture
    model: nn.Module
    processor: Any
    layout: ModelLayout
    device: torch.device
    dtype: torch.dtype
    # Learnt from the first full pass per set of hooked modules: where later passes may stop
    # (None: they must run to the end), and the bytes the hooks hold per sample.
    # (hooked modules, images in the batch) -> where the pass may stop
    stop_points: dict[tuple[tuple[str, ...], int], Any] = field(default_factory=dict)
    capture_bytes: dict[tuple[str, ...], float] = field(default_factory=dict)
    # (hooked modules, images in the batch) -> calls per module in a pass: a module's output
    # is pooled in its hook at its last call
    call_counts: dict[tuple[tuple[str, ...], int], dict[str, int]] = field(default_factory=dict)

    @property
    def module_names(self) -> list[str]:
        return [name for name, _ in self.model.named_modules() if name]

    @property
    def token_limit(self) -> tuple[int, str] | None:
        """The longest token sequence the language model has positions for, and where that
        number comes from; None for a model without one (a vision encoder)."""
        return position_limit(self.model, self.processor)


def load_model(
    config: ModelConfig,
    name: str,
    models_dir: Path,
    device: str | None = "auto",
    dtype: str | None = None,
) -> LoadedModel:
    """Load through the same `from_pretrained` path for a hub id, a folder or a tiny model."""
    get_family(config.architecture)  # an unknown name fails here, listing the known ones
    target = resolve_device(device or config.device)
    kwargs = config.model_kwargs
    chosen = resolve_dtype(dtype or dtype_name(kwargs.pop("dtype", None)), target)
    path = resolve_model_path(config.model_path, models_dir)
    model_config = checkpoint_config(config, path)
    architecture = get_architecture(config.architecture, model_config)
    if architecture.family is not None:
        require_packages(architecture.family)
    kwargs = require_safetensors(path, kwargs)
    check_attention(kwargs)
    try:
        model, processor = architecture.adapter.load(
            path, {**kwargs, "dtype": chosen}, config.remote_code_requested
        )
    except (TypeError, ValueError, ImportError) as error:
        translated = load_error(error, kwargs, model_config)
        if translated is error:
            raise
        raise translated from None
    forward_kwargs(model, config.forward)  # a bad `forward:` key fails before any inference
    model.to(target)
    return LoadedModel(
        name=name,
        architecture=architecture,
        model=model,
        processor=processor,
        layout=architecture.adapter.layout(model),
        device=target,
        dtype=chosen,
    )


def release(loaded: LoadedModel) -> None:
    """Free the model's memory now rather than whenever the garbage collector runs."""
    import gc

    device = loaded.device
    loaded.model = None  # type: ignore[assignment]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def skeleton(config: ModelConfig, models_dir: Path) -> nn.Module:
    """The model's module tree without its weights (on the meta device): listing the modules
    of a 70B model must not load 70B parameters."""
    import transformers

    path = resolve_model_path(config.model_path, models_dir)
    model_config = checkpoint_config(config, path)
    architecture = get_architecture(config.architecture, model_config)
    auto = getattr(transformers, architecture.adapter.model_class)
    with torch.device("meta"):
        return auto.from_config(model_config, trust_remote_code=config.remote_code_requested)
