"""Selecting hook points by name: module names, `*` and `**` globs, and helpful misses.

`*` matches within one dotted segment (`model.language_model.layers.*` is every decoder
layer, not every linear inside them); `**` matches across segments. A name without glob
characters must match exactly.

A name that matches nothing as written may be a transformers 4.x name (VLM-Lens's configs):
given the model, it is renamed the way transformers renames that model's old checkpoint keys
(`lens_assets.legacy_names`), and a notice names the new name so the config can be updated.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from torch import nn

from lens_assets.legacy_names import current_names, key_renamings, rename

log = logging.getLogger(__name__)


class ModuleSelectionError(ValueError):
    """A module pattern that selects nothing; the message lists the closest names."""


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^.]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^.]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts))


def matches(pattern: str, name: str) -> bool:
    return glob_to_regex(pattern).fullmatch(name) is not None


def closest_names(pattern: str, names: Sequence[str], n: int = 5) -> list[str]:
    """Names nearest to a pattern, for error messages; globs compare by their literal prefix."""
    literal = re.split(r"[*?]", pattern, maxsplit=1)[0].rstrip(".")
    probe = literal or pattern
    close = difflib.get_close_matches(probe, names, n=n, cutoff=0.4)
    if not close and literal:
        close = [name for name in names if name.startswith(literal.rsplit(".", 1)[0])][:n]
    return close


def select_modules(
    names: Sequence[str], patterns: Iterable[str], model: nn.Module | None = None
) -> list[str]:
    """Module names matched by any pattern, in model order; a pattern matching none raises.

    With `model`, a pattern matching none is tried under its transformers 5 name (see the
    module docstring), so VLM-Lens configs written for transformers 4.x keep working.
    """
    patterns = list(patterns)
    real = [name for name in names if name]
    renamings: list[Any] | None = None
    selected: set[str] = set()
    for pattern in patterns:
        hits = [name for name in real if matches(pattern, name)]
        renamed = pattern
        if not hits and model is not None:
            renamings = key_renamings(model) if renamings is None else renamings
            renamed = rename(pattern, renamings)
            for candidate in current_names(pattern, model, renamings):
                hits = [name for name in real if matches(candidate, name)]
                if hits:
                    log.warning(
                        "module name %r is a transformers 4.x name: %s's checkpoint conversion "
                        "renames it to %r, which is hooked instead; update the config to the new "
                        "name",
                        pattern,
                        type(model).__name__,
                        candidate,
                    )
                    break
        if not hits:
            raise ModuleSelectionError(_no_match(pattern, renamed, real))
        selected.update(hits)
    return [name for name in names if name in selected]


def _no_match(pattern: str, renamed: str, names: Sequence[str]) -> str:
    """The error for a pattern matching nothing, as written or renamed; the renamed pattern is
    nearer today's names, so the closest names are looked up from it first."""
    probes = [renamed, pattern] if renamed != pattern else [pattern]
    suggestions = list(dict.fromkeys(s for probe in probes for s in closest_names(probe, names)))
    hint = "; closest module names: " + ", ".join(suggestions[:5]) if suggestions else ""
    also = f" (nor does its transformers 5 name {renamed!r})" if renamed != pattern else ""
    return (
        f"module pattern {pattern!r} matches no module of this model{also}{hint}. "
        "Run `lens modules CONFIG` to list every module name."
    )


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    class_name: str
    selected: bool


def list_modules(model: nn.Module, patterns: Sequence[str] = ()) -> list[ModuleInfo]:
    """Every named module with its class, marking those the patterns select."""
    names = [name for name, _ in model.named_modules() if name]
    chosen = set(select_modules(names, patterns, model)) if patterns else set()
    return [
        ModuleInfo(name, type(module).__name__, name in chosen)
        for name, module in model.named_modules()
        if name
    ]


def short_layer(layer: str) -> str:
    """The last three parts of a module name: enough to tell layers apart on a plot."""
    parts = layer.split(".")
    return ".".join(parts[-3:]) if len(parts) > 3 else layer
