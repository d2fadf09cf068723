"""The logit lens: what each LLM layer would answer if the model stopped there.

Each decoder layer's hidden state at the answer position (the last prompt token, whose output
predicts the answer's first token) goes through the model's own final norm and output head.
The last layer's readout is then the model's actual next-token distribution, and earlier
layers show at which depth the answer (the label's first token) rises to the top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from PIL import Image
from torch import nn

from lens_assets.analyses.answer_tokens import answer_token_id
from lens_assets.analyses.attention import answer_positions
from lens_assets.capture.hooks import StopForward, output_tensor, watch_outputs
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import select_modules
from lens_assets.resources import schemas

# Names a decoder stack gives the norm after its last layer (Llama, Qwen, Gemma: `norm`;
# OPT: `final_layer_norm`; GPT-2 style: `ln_f`).
FINAL_NORMS = ("norm", "final_layer_norm", "final_layernorm", "ln_f")

# The table's columns but `dataset`, which the asset adds.
LOGIT_LENS_ROWS = schemas.without(schemas.LOGIT_LENS, "dataset")


class LogitLensError(ValueError):
    """A model whose decoder stack, final norm or output head cannot be found."""


@dataclass(frozen=True)
class DecoderStack:
    """Where the LLM's decoder layers and its final norm are."""

    layers: list[str]  # decoder layer names in depth order
    norm: str  # the final norm's module name


def decoder_stack(loaded: LoadedModel) -> DecoderStack:
    """The LLM's layer stack: a non-vision `ModuleList` whose parent holds a final norm
    (`model.language_model.layers` beside `model.language_model.norm`, OPT's
    `decoder.layers` beside `decoder.final_layer_norm`)."""
    adapter = loaded.architecture.adapter
    modules = dict(loaded.model.named_modules())
    for name, module in reversed(list(modules.items())):
        if not isinstance(module, nn.ModuleList) or adapter.is_vision(name) or "." not in name:
            continue
        parent = name.rsplit(".", 1)[0]
        norm = next((n for n in FINAL_NORMS if f"{parent}.{n}" in modules), None)
        if norm is not None and len(module) > 0:
            return DecoderStack([f"{name}.{i}" for i in range(len(module))], f"{parent}.{norm}")
    raise LogitLensError(
        f"no LLM decoder stack with a final norm ({', '.join(FINAL_NORMS)}) in "
        f"{type(loaded.model).__name__}; the logit lens needs a decoder-only language model"
    )


def output_head(model: nn.Module) -> nn.Module:
    """The unembedding (`lm_head`), found the way transformers finds it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise LogitLensError(f"{type(model).__name__} has no output embeddings (lm_head)")
    return head


def _softcap(model: nn.Module) -> float | None:
    """Gemma-style final logit soft-capping, applied by the model after its head."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "final_logit_softcapping", None)


@dataclass
class LayerLogits:
    """One batch's readout: every selected layer's next-token logits at the answer position."""

    layers: list[str]
    layer_index: list[int]  # each layer's depth in the decoder stack
    logits: torch.Tensor  # (layers, batch, vocab) float32 on the CPU


def layer_logits(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    layers: Sequence[str] | None = None,
    forward_kwargs: dict[str, Any] | None = None,
) -> LayerLogits:
    """One forward pass: the selected decoder layers' (globs; all by default) hidden states at
    the answer position, read through the final norm and the output head.

    The hooks keep one vector per sample and layer, and the pass stops after the deepest
    selected layer: the norm and head are applied here, to those vectors only.
    """
    adapter, model = loaded.architecture.adapter, loaded.model
    stack = decoder_stack(loaded)
    chosen = stack.layers
    if layers is not None:
        picked = set(select_modules(loaded.module_names, layers, model))
        chosen = [layer for layer in stack.layers if layer in picked]
        if not chosen:
            raise LogitLensError(
                f"{', '.join(layers)} selects none of the decoder layers "
                f"({stack.layers[0]} ... {stack.layers[-1]})"
            )
    modules = dict(model.named_modules())
    inputs = adapter.prepare_on(loaded.processor, images, prompts, loaded.device, loaded.dtype)
    answer = answer_positions(inputs)
    samples = torch.arange(len(answer), device=answer.device)
    states: dict[str, torch.Tensor] = {}

    def reader(name: str) -> Callable[[Any], None]:
        def read(output: Any) -> None:
            hidden = output_tensor(output)
            if hidden is None or hidden.dim() != 3:
                raise LogitLensError(f"decoder layer {name!r} returned no (batch, tokens, dim)")
            states[name] = hidden[samples, answer.to(hidden.device)]

        return read

    kwargs = {"use_cache": False, **(forward_kwargs or {})}
    readers = {name: reader(name) for name in chosen}
    with torch.inference_mode():
        with (
            watch_outputs(model, readers, stop_when_all_ran=True) as watch,
            suppress(StopForward),  # the pass ended after the deepest selected layer
        ):
            adapter.forward(model, inputs, kwargs)
        watch.require("select decoder layers the image and prompt pass through")
        hidden = torch.stack([states[name] for name in chosen])  # (layers, batch, dim)
        logits = output_head(model)(modules[stack.norm](hidden)).float()
        cap = _softcap(model)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    depth = {name: index for index, name in enumerate(stack.layers)}
    return LayerLogits(chosen, [depth[name] for name in chosen], logits.cpu())


def logit_lens(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    labels: Sequence[str | None] | None = None,
    image_ids: Sequence[str | None] | None = None,
    layers: Sequence[str] | None = None,
    top_k: int = 5,
    batch_size: int = 8,
    forward_kwargs: dict[str, Any] | None = None,
) -> pa.Table:
    """Rows of `logit_lens`: one per (image and prompt, decoder layer), with the top-k next
    tokens and, where a label is given, its first token's rank and probability."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pair them one to one")
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    count = len(images)
    labels = list(labels) if labels is not None else [None] * count
    ids = list(image_ids) if image_ids is not None else [None] * count
    label_ids = [
        None if label is None else answer_token_id(loaded, prompt, label)
        for label, prompt in zip(labels, prompts, strict=True)
    ]
    records: list[dict[str, Any]] = []
    for start in range(0, count, max(batch_size, 1)):
        part = slice(start, min(start + batch_size, count))
        readout = layer_logits(loaded, images[part], prompts[part], layers, forward_kwargs)
        probs = readout.logits.softmax(dim=-1)  # (layers, batch, vocab)
        top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        words = {token: tokenizer.decode([token]) for token in top_ids.unique().tolist()}
        for offset in range(probs.shape[1]):
            sample = start + offset
            label_id = label_ids[sample]
            for index, layer in enumerate(readout.layers):
                row_ids = top_ids[index, offset].tolist()
                rank = prob = None
                if label_id is not None:
                    prob = float(probs[index, offset, label_id])
                    rank = int((probs[index, offset] > probs[index, offset, label_id]).sum())
                records.append(
                    {
                        "model": loaded.name,
                        "image_id": ids[sample],
                        "prompt": prompts[sample],
                        "layer": layer,
                        "layer_index": readout.layer_index[index],
                        "top_token_ids": row_ids,
                        "top_tokens": [words[token] for token in row_ids],
                        "top_probs": top_probs[index, offset].tolist(),
                        "label": labels[sample],
                        "label_token_id": label_id,
                        "label_rank": rank,
                        "label_prob": prob,
                    }
                )
    return pa.Table.from_pylist(records, schema=LOGIT_LENS_ROWS)


__all__ = [
    "FINAL_NORMS",
    "LOGIT_LENS_ROWS",
    "DecoderStack",
    "LayerLogits",
    "LogitLensError",
    "decoder_stack",
    "layer_logits",
    "logit_lens",
    "output_head",
]
