"""The base model and the tuning method: full training, LoRA, or a soft prompt.

The base loads through `capture.loading.load_model`, the one `from_pretrained` path every model
takes. LoRA and soft prompts use peft; both end as plain weights (`merged`), so a tuned
checkpoint is a checkpoint of the base's own class and loads like any other model.

A soft prompt here is `virtual_tokens` new tokens added to the tokenizer and the embedding
matrix and written by the chat template before every prompt; only their embedding rows train
(peft's TrainableTokens). Classic prompt tuning prepends learned vectors outside the vocabulary,
which no checkpoint format can hold; as tokens, the learned vectors are ordinary weights, the
saved chat template puts them where training put them, and `from_pretrained` plus the normal
prompt path reproduce the tuned model exactly: one loading path, nothing stored beside it.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lens_assets.analyses.behaviour import supports_generation
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.modules import closest_names, matches, stage_of
from lens_assets.capture.tiny import build_tiny
from lens_assets.config import ModelConfig
from lens_assets.tuning.config import (
    LORA_PRESETS,
    TuningConfig,
    TuningConfigError,
    check_preset,
    resolve_base,
)

__all__ = [
    "VIRTUAL_TOKEN",
    "Base",
    "Tunable",
    "TuningNotSupported",
    "apply_method",
    "load_base",
    "lora_targets",
    "merged",
]

VIRTUAL_TOKEN = "<lens_vt_{}>"  # the soft prompt's tokens, numbered from 0
# Module types peft's LoRA wraps that a target may name (Linear above all).
LORA_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


class TuningNotSupported(TuningConfigError):
    """The method cannot train this model (family, module types, prompt path); the message
    names the family and what to use instead."""


@dataclass
class Base:
    """The loaded base model and where it came from."""

    name: str
    config: ModelConfig
    loaded: LoadedModel
    path: str  # the checkpoint folder or hub id it loaded from


@dataclass
class Tunable:
    """The model being trained (peft-wrapped for LoRA and soft prompts) and what trains."""

    model: nn.Module
    trainable: list[str]  # names of the parameters the optimiser updates
    virtual_tokens: list[str] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)


def tiny_folder(models_dir: Path, architecture: str, preset: str) -> Path:
    """Where a tiny preset is built: the `tiny` preset where `tiny:<arch>` builds it."""
    suffix = "" if preset == "tiny" else f"-{preset}"
    return models_dir / f"tiny-{architecture}{suffix}"


def load_base(
    config: TuningConfig,
    models_dir: Path,
    device: str = "cpu",
    dtype: str | None = "float32",
    configs: Path | None = None,
) -> Base:
    """Load the base model named by the config on `device` in `dtype` (a tuned base: its
    checkpoint under `models_dir`); with `from_scratch`, its weights are replaced by a fresh
    initialisation of its architecture seeded by `seed`."""
    name, base_config = resolve_base(config.base, configs, models_dir)
    preset = check_preset(config, base_config)
    if preset is not None:
        architecture = base_config.model_path.removeprefix("tiny:")
        folder = tiny_folder(models_dir, architecture, preset)
        if not (folder / "config.json").is_file():
            build_tiny(architecture, folder, preset=preset)
        base_config = base_config.model_copy(update={"model_path": str(folder)})
    loaded = load_model(base_config, name, models_dir, device=device, dtype=dtype)
    check_family(config, loaded)
    if config.from_scratch:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            fresh = type(loaded.model)._from_config(loaded.model.config, dtype=loaded.dtype)
        loaded.model = fresh.to(loaded.device).eval()
    return Base(name, base_config, loaded, str(base_config.model_path))


def check_family(config: TuningConfig, loaded: LoadedModel) -> None:
    """Tuning learns answers with a next-token loss: the model must write text about images."""
    if not supports_generation(loaded):
        raise TuningNotSupported(
            f"base {config.base!r} is family {loaded.architecture.name!r} "
            f"({type(loaded.model).__name__}), which cannot answer questions (an image or "
            "dual encoder has no language model to train with a next-token loss); tune an "
            "image-text-to-text family such as llava or qwen2-vl"
        )


def _lora_leaves(model: nn.Module, name: str, module: nn.Module) -> list[str]:
    """The module itself when LoRA can wrap it, else the Linear layers inside it."""
    if isinstance(module, LORA_TYPES):
        return [name]
    return [
        f"{name}.{inner}" for inner, child in module.named_modules() if isinstance(child, nn.Linear)
    ]


def lora_targets(model: nn.Module, targets: list[str], family: str = "") -> list[str]:
    """Module names for LoRA, in model order. A preset (`llm`, `projector`, `vision`) is every
    Linear layer of that part of the VLM (`capture.modules.stage_of`), the output head left
    out; anything else is a glob over module names (`*` within a dotted segment, `**` across),
    and a matched container stands for the Linear layers inside it."""
    modules = dict(model.named_modules())
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen: set[str] = set()
    for target in targets:
        if target in LORA_PRESETS:
            stage = LORA_PRESETS[target]
            found = [
                name
                for name, module in modules.items()
                if name and isinstance(module, nn.Linear) and module is not head
                if stage_of(name) == stage
            ]
            if not found:
                raise TuningNotSupported(
                    f"lora target {target!r}: family {family or type(model).__name__} has no "
                    f"Linear layer in its {stage} part (by module name); name its modules as "
                    "globs instead (`lens modules CONFIG` lists them)"
                )
        else:
            hits = [name for name in modules if name and matches(target, name)]
            if not hits:
                close = closest_names(target, [name for name in modules if name])
                hint = f"; closest module names: {', '.join(close)}" if close else ""
                presets = ", ".join(LORA_PRESETS)
                raise TuningConfigError(
                    f"lora target {target!r} is not a preset ({presets}) and matches no module "
                    f"of this model{hint}. Run `lens modules CONFIG` to list every module name"
                )
            found = [leaf for name in hits for leaf in _lora_leaves(model, name, modules[name])]
            if not found:
                kinds = sorted({type(modules[name]).__name__ for name in hits})
                raise TuningNotSupported(
                    f"lora target {target!r} matches only {', '.join(kinds)} modules of family "
                    f"{family or type(model).__name__}, which peft's LoRA cannot wrap (it wraps "
                    "Linear, Conv and Embedding layers); target the Linear layers instead"
                )
        chosen.update(found)
    return [name for name in modules if name in chosen]


def apply_method(config: TuningConfig, loaded: LoadedModel) -> Tunable:
    """Make the model trainable the config's way; the RNG is seeded by the caller."""
    model, family = loaded.model, loaded.architecture.name
    if config.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return Tunable(model, [name for name, _ in model.named_parameters()])
    if config.method == "lora":
        return _lora(config, model, family)
    return _soft_prompt(config, loaded)


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def _lora(config: TuningConfig, model: nn.Module, family: str) -> Tunable:
    from peft import LoraConfig, get_peft_model

    assert config.lora is not None
    targets = lora_targets(model, config.lora.targets, family)
    peft_config = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
    )
    try:
        with _quiet_peft():
            wrapped = get_peft_model(model, peft_config)
    except (ValueError, TypeError) as error:
        first = str(error).strip().splitlines()[0]
        raise TuningNotSupported(
            f"peft cannot put LoRA on family {family} ({type(model).__name__}): {first}; "
            "target other modules (Linear layers), or use method full"
        ) from None
    return Tunable(wrapped, _trainable(wrapped), lora_targets=targets)


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft 0.21 calls a transformers method that transformers 5 deprecates; the warning is
    peft's to fix, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def _template_of(processor: Any) -> str | None:
    template = getattr(processor, "chat_template", None)
    return template if isinstance(template, str) else None


def _soft_prompt(config: TuningConfig, loaded: LoadedModel) -> Tunable:
    """New tokens written before every prompt by the chat template; only their embeddings
    train. Their output-head rows stay zero and generation never writes them."""
    from peft import TrainableTokensConfig, get_peft_model

    assert config.prompt_tuning is not None
    model, processor, family = loaded.model, loaded.processor, loaded.architecture.name
    tokenizer = getattr(processor, "tokenizer", processor)
    template = _template_of(processor)
    if template is None:
        raise TuningNotSupported(
            f"prompt_tuning writes its virtual tokens through the chat template, and family "
            f"{family} builds its prompt without one; use method lora (llm or projector) or "
            "full for this family"
        )
    vocabulary = tokenizer.get_vocab()
    names: list[str] = []
    index = 0
    while len(names) < config.prompt_tuning.virtual_tokens:
        if (token := VIRTUAL_TOKEN.format(index)) not in vocabulary:
            names.append(token)
        index += 1
    old_size = model.get_input_embeddings().weight.shape[0]
    tokenizer.add_tokens(names, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(names)
    if min(ids) < old_size:  # a tokenizer smaller than its embedding matrix (padded vocab)
        raise TuningNotSupported(
            f"family {family}: the tokenizer gave the virtual tokens ids {ids[:3]}..., inside the "
            f"embedding matrix's {old_size} rows (a padded vocabulary); use method lora or full"
        )
    prefix = "".join(names)
    processor.chat_template = prefix + template
    if getattr(tokenizer, "chat_template", None) is not None and tokenizer is not processor:
        tokenizer.chat_template = prefix + template
    shown = loaded.architecture.adapter.prompt_text(processor, "question")
    if prefix not in shown:
        raise TuningNotSupported(
            f"family {family} builds its prompt without the processor's chat template, so "
            "virtual tokens put there would never reach the model; use method lora or full"
        )
    model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    _init_virtual_rows(model, old_size, ids)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        suppressed = list(getattr(generation, "suppress_tokens", None) or [])
        generation.suppress_tokens = [*suppressed, *ids]
    embeddings = model.get_input_embeddings()
    target = next(name for name, module in model.named_modules() if module is embeddings)
    with _quiet_peft():
        wrapped = get_peft_model(
            model, TrainableTokensConfig(token_indices=ids, target_modules=[target])
        )
    return Tunable(wrapped, _trainable(wrapped), virtual_tokens=names)


def _init_virtual_rows(model: nn.Module, old_size: int, ids: list[int]) -> None:
    """Start each virtual token as a copy of a real token's embedding (sampled with the
    seeded RNG, as peft's sample-vocab init does); zero its row in an untied output head, so
    its logit is 0 whatever the input and no real token's logit changes."""
    embeddings = model.get_input_embeddings().weight
    rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
    with torch.no_grad():
        for token in ids:
            embeddings[token] = embeddings[rng.randrange(old_size)]
        head = model.get_output_embeddings()
        if head is not None and head.weight is not embeddings:
            head.weight[old_size:] = 0
            if getattr(head, "bias", None) is not None:
                head.bias[old_size:] = 0


def merged(model: nn.Module) -> nn.Module:
    """The trained model as plain weights of the base's own class (peft's adapters merged)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
