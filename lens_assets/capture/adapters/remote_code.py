"""What the adapters of remote-code families share: CogVLM (cogvlm.py), MiniCPM-V 2.x /
MiniCPM-o (minicpm.py), Molmo v1 (molmo.py), InternLM-XComposer (internlm_xcomposer.py) and
GLaMM (glamm.py).

Their modeling files come with the checkpoint, so each builds its prompt and calls its model
its own way, as its model card and public modeling code do; loading any of them needs
`trust_remote_code: true` in the model config (checked before any of their code is imported).
Only the CogVLM adapter runs in the offline tests (on a tiny model with CogVLM's interface);
the others follow the public code as far as it could be read offline and are untested against
the real checkpoints. What they share is here: a processor for families without a
transformers one, batch padding, and loading through the auto classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer


@dataclass
class RemoteProcessor:
    """What a family without a transformers processor reads its inputs with: its tokenizer,
    its image processor where it has one, and the model, for families whose prompt builder is a
    model method. The model is held weakly, so releasing it still frees its memory."""

    tokenizer: Any
    image_processor: Any = None
    model_ref: Callable[[], Any] | None = None

    @property
    def model(self) -> Any:
        model = self.model_ref() if self.model_ref is not None else None
        if model is None:
            raise RuntimeError("the model this processor builds inputs with has been released")
        return model


def pad_stack(rows: Sequence[torch.Tensor], value: float, side: str = "right") -> torch.Tensor:
    """Stack tensors of unequal sizes, padding every axis to the largest with `value` (1-D
    rows may be padded on the left, as generation needs)."""
    shape = [max(int(row.shape[axis]) for row in rows) for axis in range(rows[0].dim())]
    out = rows[0].new_full((len(rows), *shape), value)
    for index, row in enumerate(rows):
        if side == "left" and row.dim() == 1:
            out[index, shape[0] - len(row) :] = row
        else:
            out[index][tuple(slice(0, size) for size in row.shape)] = row
    return out


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the images must be cast to: remote forwards do not cast them themselves."""
    return next(model.parameters()).dtype


def present(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """The module names among `names` that this model has."""
    modules = dict(model.named_modules())
    return tuple(name for name in names if name in modules)


def load_tokenizer(path: str, trust_remote_code: bool, hint: str = "") -> Any:
    """The checkpoint's tokenizer, padding on the right (as the adapters' batches assume)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise OSError(f"no tokenizer could be loaded from {path}: {error}{hint}") from error
    tokenizer.padding_side = "right"
    return tokenizer


def load_auto_model(auto_class: str, path: str, kwargs: dict[str, Any], trust: bool) -> nn.Module:
    """The model through the transformers auto class its family names, in eval mode."""
    import transformers

    auto = getattr(transformers, auto_class)
    return auto.from_pretrained(path, trust_remote_code=trust, **kwargs).eval()
