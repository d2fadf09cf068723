"""Selecting hook points by name: module names, `*` and `**` globs, and helpful misses.

`*` matches within one dotted segment (`model.language_model.layers.*` is every decoder
layer, not every linear inside them); `**` matches across segments. A name without glob
characters must match exactly, and `?` is one character other than a dot. Globs are matched
in time linear in the name whatever the pattern (see Glob), so no pattern can hang a run.

A name that matches nothing as written may be a transformers 4.x name (VLM-Lens's configs):
given the model, it is renamed the way transformers renames that model's old checkpoint keys
(`lens_assets.capture.legacy_names`), and a notice names the new name so the config can be updated.
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

from lens_assets.capture.legacy_names import current_names, key_renamings, rename

log = logging.getLogger(__name__)


class ModuleSelectionError(ValueError):
    """A module pattern that selects nothing; the message lists the closest names."""


# Pattern tokens: a literal character, or one of these.
STAR = "*"  # any run of characters within one dotted segment
DOUBLE_STAR = "**"  # any run of characters, dots included
ANY_ONE = "?"  # one character other than a dot


@dataclass(frozen=True)
class Glob:
    """A compiled module glob, matched in time linear in the name for any pattern.

    A backtracking regex (`*` as `[^.]*`, `**` as `.*`) takes exponential time on a pattern
    such as `********************Z`. Here a run of stars is first collapsed (two or more are
    one `**`, which any longer run equals), and the name is then read once, one character at
    a time, with every pattern position it may have reached held as a bit of an int (the
    shift-and automaton): O(len(pattern) x len(name)) bit work at worst, no backtracking. A
    literal head and tail are compared as strings first, which settles most names
    (`model.language_model.layers.*`) at once.
    """

    head: str
    tail: str
    length: int  # pattern tokens between head and tail; bit `length` set means matched
    literals: dict[str, int]  # character -> bits of the positions that are that literal
    any_one: int  # bits of `?` positions: one character other than a dot
    stars: int  # bits of `*` and `**` positions: they may match nothing, or loop
    dot_loops: int  # bits of `**` positions: the only ones that loop over a dot

    def matches(self, name: str) -> bool:
        if len(name) < len(self.head) + len(self.tail):
            return False
        if not (name.startswith(self.head) and name.endswith(self.tail)):
            return False
        middle = name[len(self.head) : len(name) - len(self.tail)]
        live = self._skip_stars(1)
        for char in middle:
            if char == ".":
                step, loops = self.literals.get(char, 0), self.dot_loops
            else:
                step, loops = self.literals.get(char, 0) | self.any_one, self.stars
            live = self._skip_stars((live & loops) | ((live & step) << 1))
            if not live:
                return False
        return bool(live >> self.length & 1)

    def _skip_stars(self, live: int) -> int:
        """Add the positions just past each live star: a star may match the empty string."""
        while True:
            grown = live | ((live & self.stars) << 1)
            if grown == live:
                return live
            live = grown


def tokenize(pattern: str) -> list[str]:
    """Pattern tokens: STAR, DOUBLE_STAR, ANY_ONE or a literal character; a run of two or more
    stars is one DOUBLE_STAR (`**` then `*` already matched anything, as `.*[^.]*`)."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "*":
            run = len(pattern) - i - len(pattern[i:].lstrip("*"))
            tokens.append(DOUBLE_STAR if run >= 2 else STAR)
            i += run
        else:
            tokens.append(pattern[i])  # "?" is ANY_ONE; anything else is itself
            i += 1
    return tokens


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> Glob:
    tokens = tokenize(pattern)
    wild = [i for i, token in enumerate(tokens) if token in (STAR, DOUBLE_STAR, ANY_ONE)]
    if not wild:
        return Glob(pattern, "", 0, {}, 0, 0, 0)
    middle = tokens[wild[0] : wild[-1] + 1]
    literals: dict[str, int] = {}
    any_one = stars = dot_loops = 0
    for i, token in enumerate(middle):
        if token == ANY_ONE:
            any_one |= 1 << i
        elif token in (STAR, DOUBLE_STAR):
            stars |= 1 << i
            dot_loops |= (token == DOUBLE_STAR) << i
        else:
            literals[token] = literals.get(token, 0) | 1 << i
    head, tail = "".join(tokens[: wild[0]]), "".join(tokens[wild[-1] + 1 :])
    return Glob(head, tail, len(middle), literals, any_one, stars, dot_loops)


def matches(pattern: str, name: str) -> bool:
    """Whether `name` is matched in full by `pattern` (see the module docstring)."""
    return compile_glob(pattern).matches(name)


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


def natural_key(name: str) -> tuple[Any, ...]:
    """A sort key that puts `layers.2` before `layers.10`."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


# Where a module sits in a VLM, by the names transformers gives its parts: the vision tower,
# the projector that maps its features into the language model, and the language model.
VISION_TOWERS = frozenset({"vision_tower", "visual", "vision_model", "vision_encoder"})
PROJECTORS = frozenset({"multi_modal_projector", "visual_projection", "connector", "aligner"})
STAGES = ("vision", "projector", "language")


def stage_of(name: str) -> str:
    """The part of the model a module belongs to (Qwen-VL's `visual.merger` is its projector)."""
    parts = name.split(".")
    if any(part in PROJECTORS or part == "merger" for part in parts):
        return "projector"
    if any(part in VISION_TOWERS for part in parts):
        return "vision"
    return "language"


def model_order(name: str) -> tuple[Any, ...]:
    """A sort key in the order data flows through a VLM: vision tower, projector, language
    model, and by depth within each (`layers.2` before `layers.10`)."""
    return (STAGES.index(stage_of(name)), natural_key(name))
