"""Selecting hook points by name: module names, `*` and `**` globs, and helpful misses.

`*` matches within one dotted segment (`model.language_model.layers.*` is every decoder
layer, not every linear inside them); `**` matches across segments. A name without glob
characters must match exactly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from torch import nn


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


def select_modules(names: Sequence[str], patterns: Iterable[str]) -> list[str]:
    """Module names matched by any pattern, in model order; a pattern matching none raises."""
    patterns = list(patterns)
    selected: set[str] = set()
    for pattern in patterns:
        hits = [name for name in names if name and matches(pattern, name)]
        if not hits:
            suggestions = closest_names(pattern, [n for n in names if n])
            hint = "; closest module names: " + ", ".join(suggestions) if suggestions else ""
            raise ModuleSelectionError(
                f"module pattern {pattern!r} matches no module of this model{hint}. "
                "Run `lens modules CONFIG` to list every module name."
            )
        selected.update(hits)
    return [name for name in names if name in selected]


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    class_name: str
    selected: bool


def list_modules(model: nn.Module, patterns: Sequence[str] = ()) -> list[ModuleInfo]:
    """Every named module with its class, marking those the patterns select."""
    names = [name for name, _ in model.named_modules() if name]
    chosen = set(select_modules(names, patterns)) if patterns else set()
    return [
        ModuleInfo(name, type(module).__name__, name in chosen)
        for name, module in model.named_modules()
        if name
    ]
