"""Forward hooks that capture module outputs for one forward pass.

The hook only keeps a reference to the output tensor (already detached under
`torch.inference_mode`); pooling and the move off the device happen once per batch, after the
forward pass, never inside the hook.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class HookOutputError(ValueError):
    """A hooked module returned something with no tensor to capture."""


def output_tensor(output: Any) -> torch.Tensor | None:
    """The activation a module produced: a tensor, a tuple's first tensor, a list of per-image
    tensors packed into one, a ModelOutput's hidden state (`last_hidden_state`, else its first
    tensor)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):  # transformers ModelOutput is an OrderedDict
        preferred = output.get("last_hidden_state")
        if isinstance(preferred, torch.Tensor):
            return preferred
        values = list(output.values())
    elif isinstance(output, list) and _stackable(output):
        # A list of like tensors is one tensor per image (MiniCPM-V's merger): keep them all,
        # packed along the first axis, for the adapter to split per image.
        return torch.cat(output)
    elif isinstance(output, tuple | list):
        values = list(output)
    else:
        return None
    for value in values:
        found = output_tensor(value)
        if found is not None:
            return found
    return None


def _stackable(values: list[Any]) -> bool:
    """Tensors (at least one) that differ at most in their first axis."""
    if not values or not all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in values):
        return False
    return len({tuple(v.shape[1:]) for v in values}) == 1


class StopForward(Exception):
    """Raised by the hook of the last module a pass needs: nothing after it has to run."""


@dataclass(frozen=True)
class StopPoint:
    """Where a forward pass may stop: after `calls` calls of module `name`."""

    name: str
    calls: int


class ActivationCapture:
    """What the hooks saw in one forward pass: module name -> output tensor."""

    def __init__(self, stop_at: StopPoint | None = None) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []  # hooked modules in the order they ran (one entry per call)
        self.stop_at = stop_at

    @property
    def last_call(self) -> StopPoint | None:
        """The point after which no hooked module ran in this pass."""
        if not self.order:
            return None
        name = self.order[-1]
        return StopPoint(name, self.calls[name])

    @property
    def output_bytes(self) -> int:
        """Bytes the hooks hold: what the forward pass adds to memory for capture."""
        return sum(t.numel() * t.element_size() for t in self.outputs.values())

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
            self.order.append(name)
            stop = self.stop_at
            if stop is not None and name == stop.name and self.calls[name] == stop.calls:
                raise StopForward

        return hook

    def clear(self) -> None:
        self.outputs.clear()
        self.calls.clear()


@contextmanager
def capture(
    model: nn.Module, names: Sequence[str], stop_at: StopPoint | None = None
) -> Iterator[ActivationCapture]:
    """Hook the named modules for the duration of the block; hooks are always removed.

    With `stop_at`, the pass ends (StopForward) right after that module's last needed call,
    so layers past the deepest hooked one cost nothing (baukit's StopForward idea); the
    caller catches StopForward around the forward call.
    """
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in {type(model).__name__}")
    store = ActivationCapture(stop_at)
    handles = [modules[name].register_forward_hook(store.hook_for(name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
