"""Forward hooks that capture module outputs for one forward pass.

The hook only keeps a reference to the output tensor (already detached under
`torch.inference_mode`); pooling and the move off the device happen once per batch, after the
forward pass, never inside the hook.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class HookOutputError(ValueError):
    """A hooked module returned something with no tensor to capture."""


def output_tensor(output: Any) -> torch.Tensor | None:
    """The activation a module produced: a tensor, a tuple's first tensor, a ModelOutput's
    hidden state (`last_hidden_state`, else its first tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # transformers ModelOutput is an OrderedDict
        preferred = output.get("last_hidden_state")
        if isinstance(preferred, torch.Tensor):
            return preferred
        values = list(output.values())
    elif isinstance(output, tuple | list):
        values = list(output)
    else:
        return None
    for value in values:
        found = output_tensor(value)
        if found is not None:
            return found
    return None


class ActivationCapture:
    """What the hooks saw in one forward pass: module name -> output tensor."""

    def __init__(self) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def hook_for(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output_tensor(output)
            if tensor is None:
                raise HookOutputError(
                    f"module {name!r} returned {type(output).__name__}, which holds no tensor; "
                    "choose a module whose output is a tensor (see `lens modules CONFIG`)"
                )
            # A module called twice per forward (shared weights) keeps its last call.
            self.outputs[name] = tensor.detach()
            self.calls[name] = self.calls.get(name, 0) + 1

        return hook

    def clear(self) -> None:
        self.outputs.clear()
        self.calls.clear()


@contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[ActivationCapture]:
    """Hook the named modules for the duration of the block; hooks are always removed."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in {type(model).__name__}")
    store = ActivationCapture()
    handles = [modules[name].register_forward_hook(store.hook_for(name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
