"""What a forward pass may be given: the keyword arguments a model's forward takes (a
`forward:` key it would silently ignore is refused) and how many tokens its positions allow."""

from __future__ import annotations

import difflib
import inspect
import logging
import typing
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from lens_assets.config import ConfigError

log = logging.getLogger(__name__)


class ForwardKeyError(ConfigError):
    """A `forward:` key the model's forward does not take (it would be silently ignored)."""


class PromptTooLongError(ValueError):
    """A tokenised prompt longer than the language model has positions for."""


def forward_parameters(model: nn.Module) -> frozenset[str] | None:
    """The keywords the model's forward takes, or None when it takes any (an untyped
    `**kwargs`, as remote code writes): then nothing can be checked.

    transformers types its models' `**kwargs` as `Unpack[SomeTypedDict]` and hands them on to
    the models inside (the language model, the vision tower), so the keywords are the
    forward's own, the TypedDict's, and those of the inner models' forwards.
    """
    from transformers import PreTrainedModel

    inner = (type(m) for m in model.modules() if isinstance(m, PreTrainedModel) and m is not model)
    return _forward_parameters(type(model), tuple(dict.fromkeys(inner)))


@lru_cache(maxsize=64)
def _forward_parameters(model_class: type, inner: tuple[type, ...]) -> frozenset[str] | None:
    own = _keywords(model_class.forward)
    if own is None:
        return None
    for klass in inner:
        own |= _keywords(klass.forward) or set()
    return frozenset(own)


def _keywords(function: Any) -> set[str] | None:
    signature = inspect.signature(function)
    names = {
        name
        for name, parameter in signature.parameters.items()
        if name != "self"
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    var = [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
    if not var:
        return names
    typed = _unpacked(function, var[0])
    return None if typed is None else names | typed


def _unpacked(function: Any, parameter: inspect.Parameter) -> set[str] | None:
    """The keys of a `**kwargs: Unpack[SomeTypedDict]`; None for an untyped `**kwargs`."""
    annotation = parameter.annotation
    if isinstance(annotation, str):
        try:
            annotation = typing.get_type_hints(function, include_extras=True)[parameter.name]
        except Exception:  # an annotation its module cannot resolve: treat as untyped
            return None
    if typing.get_origin(annotation) is typing.Unpack:
        (typed,) = typing.get_args(annotation)
        return set(getattr(typed, "__annotations__", {}))
    return None


@lru_cache(maxsize=1)
def generation_settings() -> frozenset[str]:
    """`generate`'s settings (max_new_tokens, do_sample, ...): VLM-Lens passes its `forward:`
    block to generate, and a LensFlow forward pass is generation's first step."""
    from transformers import GenerationConfig

    return frozenset(key for key in GenerationConfig().to_dict() if not key.startswith("_"))


def forward_kwargs(model: nn.Module, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `forward:` kwargs to hand the model's forward.

    A key the forward takes is passed on. A generation setting it does not take (VLM-Lens's
    `max_new_tokens: 1`) is dropped with a notice: one forward pass is what it asked for. Any
    other key is a ForwardKeyError naming it and the nearest valid key, since the model would
    silently ignore it. A forward with an untyped `**kwargs` (remote code) takes anything, so
    its keys are passed on unchecked.
    """
    if not extra:
        return {}
    accepted = forward_parameters(model)
    if accepted is None:
        return dict(extra)
    generation = generation_settings()
    unknown = [key for key in extra if key not in accepted and key not in generation]
    if unknown:
        known = sorted(accepted | generation)
        described = " and ".join(f"{key!r}{_nearest(key, known)}" for key in unknown)
        verb = "is not a keyword" if len(unknown) == 1 else "are not keywords"
        raise ForwardKeyError(
            f"forward: {described} {verb} {type(model).__name__}.forward takes, so the model "
            "would ignore it; fix or remove it under `forward:`"
        )
    dropped = [key for key in extra if key not in accepted]
    if dropped:
        log.info(
            "forward: %s is a generation setting; LensFlow runs one forward pass (generation's "
            "first step), so it is not passed on",
            ", ".join(dropped),
        )
    return {key: value for key, value in extra.items() if key in accepted}


def _nearest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- sequence length ---------------------------------------------------------------------------

# A tokenizer's model_max_length above this is transformers' "no limit" placeholder (1e30).
SANE_TOKEN_LIMIT = 10_000_000


def position_limit(model: nn.Module, processor: Any) -> tuple[int, str] | None:
    """The longest token sequence the language model has positions for, and its source: the
    text config's max_position_embeddings, else the tokenizer's model_max_length when it is a
    real number; None when neither says (a vision encoder)."""
    config = getattr(model, "config", None)
    for source, name in (
        (getattr(config, "text_config", None), "text_config.max_position_embeddings"),
        (config, "max_position_embeddings"),
    ):
        value = getattr(source, "max_position_embeddings", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, name
    tokenizer = getattr(processor, "tokenizer", processor)
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value <= SANE_TOKEN_LIMIT:
        return value, "the tokenizer's model_max_length"
    return None


def check_sequence_length(
    inputs: Mapping[str, Any], limit: tuple[int, str] | None, prompts: Sequence[str]
) -> None:
    """Refuse a batch whose longest sample (prompt and image tokens) has more tokens than the
    model has positions: past them a model fails deep inside, or runs on garbage."""
    ids = inputs.get("input_ids")
    if limit is None or not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        lengths = mask.sum(dim=1)
    else:
        lengths = torch.full((ids.shape[0],), ids.shape[1])
    longest, sample = int(lengths.max()), int(lengths.argmax())
    maximum, source = limit
    if longest <= maximum:
        return
    shown = f" ({len(prompts[sample])} characters)" if sample < len(prompts) else ""
    raise PromptTooLongError(
        f"prompt too long: sample {sample}'s prompt{shown} is {longest} tokens with its image, "
        f"over this model's limit of {maximum} ({source}); shorten the prompt"
    )
