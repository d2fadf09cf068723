"""The one hook engine: every hook LensFlow puts on a model is registered and removed here.

Each context manager resolves its module names first (one `HookPointError` for a name the
model lacks), registers its hooks, and removes them in a `finally`, so an error anywhere in
the forward pass, or after it inside the block, never leaves a model hooked:

- `capture`: module outputs, detached, optionally stopping the pass at a `StopPoint`
  (extraction, patch grids, patching's clean cache);
- `keep_outputs`: module outputs kept in the autograd graph (gradient attribution);
- `watch_outputs`: a reader per module sees its raw output, and the pass may stop once every
  watched module has run (attention rows, the logit lens);
- `replace_outputs`: a hook whose return value replaces a module's output (patching);
- `input_hooks`: pre-hooks that read or replace a module's positional inputs (head ablation).

Hooks keep references (detached under `torch.inference_mode`), or, given a `reduce`, hand a
module's output to it as soon as its last call returns (extraction pools there, so a batch never
holds thirty full outputs at once); the move off the device happens once per batch, after the
forward pass, never inside a hook.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# What to do about a name the model lacks, or a module the pass did not reach.
MISSING_FIX = "list the model's modules with `lens modules CONFIG` and pick one of them"
NOT_RUN_FIX = "choose a module on the path this model's input takes (`lens modules CONFIG`)"

OutputHook = Callable[[nn.Module, Any, Any], Any]
InputHook = Callable[[tuple[Any, ...]], tuple[Any, ...] | None]


class HookPointError(LookupError, ValueError):
    """A hook point a pass cannot use: no module of that name, or a module that did not run in
    the forward pass. A ValueError too, so the CLI shows the message instead of a traceback."""


class HookOutputError(ValueError):
    """A hooked module returned something with no tensor to capture."""


class StopForward(Exception):
    """Raised by the hook of the last module a pass needs: nothing after it has to run."""


def hook_modules(
    model: nn.Module, names: Iterable[str], fix: str = MISSING_FIX
) -> dict[str, nn.Module]:
    """Name -> module for each name, in order; a HookPointError names the first one missing,
    with the nearest real name, before any hook is registered."""
    modules = dict(model.named_modules())
    found: dict[str, nn.Module] = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, list(modules), n=1, cutoff=0.8)
            near = f" (did you mean {close[0]!r}?)" if close else ""
            raise HookPointError(f"no module named {name!r} in {type(model).__name__}{near}; {fix}")
        found[name] = modules[name]
    return found


def require_ran(names: Iterable[str], ran: Collection[str], fix: str = NOT_RUN_FIX) -> None:
    """A HookPointError for the first of `names` that is not in `ran`: a module the forward
    pass never called has no output, and a missing value must not pass for a result."""
    for name in names:
        if name not in ran:
            raise HookPointError(f"module {name!r} did not run in the forward pass; {fix}")


@contextmanager
def _hooked(
    model: nn.Module,
    hooks: Sequence[tuple[str, Callable[..., Any]]],
    register: Callable[[nn.Module, Callable[..., Any]], RemovableHandle],
) -> Iterator[None]:
    """Register (module name, hook) pairs with `register` for the block; every handle is
    removed in a `finally`, also when a later registration or the block fails."""
    modules = hook_modules(model, [name for name, _ in hooks])
    handles: list[RemovableHandle] = []
    try:
        for name, hook in hooks:
            handles.append(register(modules[name], hook))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


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


# -- capturing outputs -------------------------------------------------------------------------


@dataclass(frozen=True)
class StopPoint:
    """Where a forward pass may stop: after `calls` calls of module `name`."""

    name: str
    calls: int


Reduce = Callable[[str, torch.Tensor], Any]


class ActivationCapture:
    """What the hooks saw in one forward pass: module name -> output tensor, or, for a module
    reduced in its hook, module name -> what `reduce` made of it (`reduced`)."""

    def __init__(
        self,
        stop_at: StopPoint | None = None,
        detach: bool = True,
        reduce: Reduce | None = None,
        last_calls: Mapping[str, int] | None = None,
    ) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.reduced: dict[str, Any] = {}
        self.calls: dict[str, int] = {}
        self.order: list[str] = []  # hooked modules in the order they ran (one entry per call)
        self.stop_at = stop_at
        self.detach = detach
        # `reduce` runs in the hook at a module's last call (a module called several times per
        # pass keeps its last call); where that is not known, the output is kept instead.
        self.reduce = reduce
        self.last_calls = dict(last_calls or {})
        self._reduced_bytes: dict[str, int] = {}

    @property
    def last_call(self) -> StopPoint | None:
        """The point after which no hooked module ran in this pass."""
        if not self.order:
            return None
        name = self.order[-1]
        return StopPoint(name, self.calls[name])

    @property
    def output_bytes(self) -> int:
        """Bytes of the captured outputs (reduced ones counted at full size): what capture
        may add to memory in a pass, the bound batch sizing works with."""
        held = {name: t.numel() * t.element_size() for name, t in self.outputs.items()}
        return sum((self._reduced_bytes | held).values())

    def require(self, names: Iterable[str], fix: str = NOT_RUN_FIX) -> None:
        """A HookPointError for the first of `names` that produced no output in the pass."""
        require_ran(names, self.calls, fix)

    def finish(self) -> dict[str, Any]:
        """After the pass: `reduce` of every module's last output, reduced in its hook or
        now (a module whose last call was not known, or that ran more often than expected)."""
        assert self.reduce is not None, "finish() is for a capture with a reduce"
        for name in list(self.outputs):
            self.reduced[name] = self.reduce(name, self.outputs.pop(name))
        return self.reduced

    def hook_for(self, name: str) -> OutputHook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            tensor = output_tensor(output)
            if tensor is None:
                raise HookOutputError(
                    f"module {name!r} returned {type(output).__name__}, which holds no tensor; "
                    "choose a module whose output is a tensor (see `lens modules CONFIG`)"
                )
            # A module called twice per forward (shared weights) keeps its last call.
            tensor = tensor.detach() if self.detach else tensor
            self.calls[name] = self.calls.get(name, 0) + 1
            self.order.append(name)
            if self.reduce is not None and self.calls[name] == self.last_calls.get(name):
                self.reduced[name] = self.reduce(name, tensor)
                self._reduced_bytes[name] = tensor.numel() * tensor.element_size()
                self.outputs.pop(name, None)
            else:
                self.outputs[name] = tensor
            stop = self.stop_at
            if stop is not None and name == stop.name and self.calls[name] == stop.calls:
                raise StopForward

        return hook


@contextmanager
def capture(
    model: nn.Module,
    names: Sequence[str],
    stop_at: StopPoint | None = None,
    detach: bool = True,
    reduce: Reduce | None = None,
    last_calls: Mapping[str, int] | None = None,
) -> Iterator[ActivationCapture]:
    """Hook the named modules for the duration of the block; hooks are always removed.

    With `stop_at`, the pass ends (StopForward) right after that module's last needed call,
    so layers past the deepest hooked one cost nothing (baukit's StopForward idea); the
    caller catches StopForward around the forward call. `detach=False` keeps the outputs in
    the autograd graph (see `keep_outputs`). With `reduce`, a module's output is reduced in
    its hook at its last call (`last_calls`: calls per pass, learnt from an earlier pass) and
    dropped, so its memory is free for the layers after it; `finish()` reduces the rest.
    """
    store = ActivationCapture(stop_at, detach, reduce, last_calls)
    hooks = [(name, store.hook_for(name)) for name in dict.fromkeys(names)]
    with _hooked(model, hooks, nn.Module.register_forward_hook):
        yield store


@contextmanager
def keep_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[ActivationCapture]:
    """`capture` without the detach: each output stays in the graph, so a gradient can be
    taken with respect to it after the pass (run the pass with autograd on)."""
    with capture(model, names, detach=False) as store:
        yield store


# -- reading raw outputs -----------------------------------------------------------------------


class OutputWatch:
    """Which watched modules ran in the pass, and how often."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.calls: dict[str, int] = {}

    def require(self, fix: str = NOT_RUN_FIX) -> None:
        """A HookPointError for the first watched module that did not run."""
        require_ran(self.names, self.calls, fix)


@contextmanager
def watch_outputs(
    model: nn.Module,
    readers: Mapping[str, Callable[[Any], None]],
    stop_when_all_ran: bool = False,
) -> Iterator[OutputWatch]:
    """Call `readers[name](output)` with each named module's raw output (a tuple, a
    ModelOutput: whatever it returned) for the block; hooks are always removed.

    A reader keeps what it needs (one row, one position), not the whole output. With
    `stop_when_all_ran`, the pass ends (StopForward, for the caller to catch) once every
    watched module has run, so layers after the deepest one cost nothing.
    """
    watch = OutputWatch(list(readers))

    def hook_for(name: str, read: Callable[[Any], None]) -> OutputHook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            read(output)
            watch.calls[name] = watch.calls.get(name, 0) + 1
            if stop_when_all_ran and len(watch.calls) == len(watch.names):
                raise StopForward

        return hook

    hooks = [(name, hook_for(name, read)) for name, read in readers.items()]
    with _hooked(model, hooks, nn.Module.register_forward_hook):
        yield watch


# -- changing outputs and inputs ---------------------------------------------------------------


@contextmanager
def replace_outputs(
    model: nn.Module, replacements: Mapping[str, Callable[[Any], Any]]
) -> Iterator[None]:
    """Each named module's output becomes `replacements[name](output)` for the block; hooks are
    always removed. They go first among the module's forward hooks, so observers (`capture`,
    the model's own output recorders) see the replaced output."""

    def hook_for(replace: Callable[[Any], Any]) -> OutputHook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            return replace(output)

        return hook

    hooks = [(name, hook_for(replace)) for name, replace in replacements.items()]
    with _hooked(model, hooks, _register_first):
        yield


@contextmanager
def input_hooks(
    model: nn.Module, hooks: Sequence[tuple[str, InputHook]], first: bool = False
) -> Iterator[None]:
    """Forward pre-hooks on the named modules' positional inputs for the block; hooks are
    always removed. A hook that returns a tuple replaces the inputs, one that returns None
    only reads them. `first` puts each hook before the module's other pre-hooks (each later
    pair before the earlier ones on a shared module). A name may appear more than once."""

    def hook_for(hook: InputHook) -> Callable[[nn.Module, tuple[Any, ...]], Any]:
        def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> Any:
            return hook(args)

        return pre_hook

    wrapped = [(name, hook_for(hook)) for name, hook in hooks]
    register = _register_pre_first if first else nn.Module.register_forward_pre_hook
    with _hooked(model, wrapped, register):
        yield


def _register_first(module: nn.Module, hook: Callable[..., Any]) -> RemovableHandle:
    return module.register_forward_hook(hook, prepend=True)


def _register_pre_first(module: nn.Module, hook: Callable[..., Any]) -> RemovableHandle:
    return module.register_forward_pre_hook(hook, prepend=True)


__all__ = [
    "MISSING_FIX",
    "NOT_RUN_FIX",
    "ActivationCapture",
    "HookOutputError",
    "HookPointError",
    "OutputWatch",
    "StopForward",
    "StopPoint",
    "capture",
    "hook_modules",
    "input_hooks",
    "keep_outputs",
    "output_tensor",
    "replace_outputs",
    "require_ran",
    "watch_outputs",
]
