"""What every intervention shares: one sample's inputs, plain runs, the answer token and the
effect sizes read from logits.

Every run is one sample at batch size 1: no padding, so the last position is the last prompt
token and patched logits compare exactly with unpatched ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from PIL import Image
from transformers import BatchFeature

from lens_assets.analyses.answer_tokens import answer_token_id
from lens_assets.capture.loading import LoadedModel


class InterventionError(ValueError):
    """An intervention that cannot be run as asked; the message names the cause and the fix."""


@dataclass(frozen=True)
class Sample:
    """One (image, prompt) input, or a row's images and its prompt; `answer` picks the answer
    token (see `answer_token_id`)."""

    sample_id: str
    image: Image.Image | Sequence[Image.Image]
    prompt: str
    answer: str | int | None = None


# -- inputs and plain runs -------------------------------------------------------------------


def prepare_input(
    loaded: LoadedModel, image: Image.Image | Sequence[Image.Image], prompt: str
) -> BatchFeature:
    """One sample's processor inputs on the model's device, as extraction builds them: one
    image, or a row's images in one prompt."""
    adapter = loaded.architecture.adapter
    return adapter.prepare_on(loaded.processor, [image], [prompt], loaded.device, loaded.dtype)


def forward_logits(loaded: LoadedModel, inputs: BatchFeature) -> torch.Tensor:
    """The run's token logits, refused with a reason for a model that has none to intervene on
    (the caller picks the grad mode)."""
    output = loaded.architecture.adapter.forward(loaded.model, inputs, {})
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise InterventionError(
            f"model {loaded.name!r} ({type(loaded.model).__name__}) gives no next-token logits "
            "(a dual encoder scores image-text pairs); interventions need an image-text-to-text "
            "model"
        )
    return logits


def run_logits(loaded: LoadedModel, inputs: BatchFeature) -> torch.Tensor:
    """(1, positions, vocab) logits of one run, with whatever hooks are in place."""
    with torch.inference_mode():
        return forward_logits(loaded, inputs)


# -- answer token and effect sizes -----------------------------------------------------------


def pick_answer_token(
    loaded: LoadedModel, prompt: str, answer: str | int | None, reference: torch.Tensor
) -> int:
    """The given answer's first token, else the reference run's own top token at the last
    position: the token whose logit every intervention row reads."""
    if answer is None:
        return int(reference[0, -1].argmax())
    return answer_token_id(loaded, prompt, answer)


def answer_logit(logits: torch.Tensor, token: int) -> float:
    """The answer token's logit at the last position (the last prompt token at batch size 1)."""
    return float(logits[0, -1, token].float())


def final_kl(base: torch.Tensor, changed: torch.Tensor) -> float:
    """KL(base || changed) of the next-token distributions at the last position, in nats."""
    log_p = torch.log_softmax(base[0, -1].double(), dim=-1)
    log_q = torch.log_softmax(changed[0, -1].double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def recovery(clean: float, corrupted: float, patched: float) -> float:
    """(patched - corrupted) / (clean - corrupted): 0 is the corrupted run, 1 the clean one.

    NaN where the two runs give the same logit (nothing to recover), never a division error."""
    gap = clean - corrupted
    if gap == 0 or not math.isfinite(gap):
        return math.nan
    return (patched - corrupted) / gap + 0.0  # + 0.0: no -0.0 in the tables


def rows_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as Arrow with the table's schema, ready for `Warehouse.replace_model_rows`."""
    return pa.Table.from_pylist(list(rows), schema=schema)
