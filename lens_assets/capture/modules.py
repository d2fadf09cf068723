"""Selecting hook points by name: module names, `*` and `**` globs or Python regular
expressions, and helpful misses.

`*` matches within one dotted segment (`model.language_model.layers.*` is every decoder
layer, not every linear inside them); `**` matches across segments. A name without glob
characters must match exactly, and `?` is one character other than a dot. Globs are matched
in time linear in the name whatever the pattern (see Glob), so no pattern can hang a run.

A name that matches nothing as written may be a transformers 4.x name (VLM-Lens's configs):
given the model, it is renamed the way transformers renames that model's old checkpoint keys
(`lens_assets.capture.legacy_names`), and a notice names the new name so the config can be updated.

VLM-Lens reads each entry as a regular expression and hooks a module when it fullmatches the
module's name (`module_syntax: regex`, the default of a config in VLM-Lens's format). A regex
matching no name as written is matched against each module's transformers 4.x name instead,
the names VLM-Lens's configs were written for. A wildcard that matches a container which never
runs (a ModuleList such as `layers`) leaves it out with a warning: VLM-Lens hooks it and it
never fires, so it stores nothing for it either.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from torch import nn

from lens_assets.capture.legacy_names import current_names, key_renamings, legacy_names, rename

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


GLOB, REGEX = "glob", "regex"
MODULE_SYNTAXES = (GLOB, REGEX)
REGEX_SPECIALS = re.compile(r"[\\^$*+?()\[\]{}|]")  # a name has dots, but no other of these


@dataclass(frozen=True)
class Selection:
    """What a config's module patterns select in a model, in model order.

    `matched` is every module a pattern matches; `hooked` leaves out the containers among them
    that never run (`never_run`); `written` is a module's name as the config wrote it (its
    transformers 4.x name) where that differs from today's.
    """

    syntax: str
    matched: list[str]
    never_run: list[str] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)

    @property
    def hooked(self) -> list[str]:
        skip = set(self.never_run)
        return [name for name in self.matched if name not in skip]


def is_wildcard(pattern: str, syntax: str = GLOB) -> bool:
    """Whether a pattern may match more than the one name it spells."""
    if syntax == REGEX:  # a dot is read as the separator it almost always means
        return bool(REGEX_SPECIALS.search(pattern))
    return "*" in pattern or "?" in pattern


def compile_regex(pattern: str) -> re.Pattern[str]:
    """A module regex, or a ModuleSelectionError that says how to read it as a glob."""
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ModuleSelectionError(
            f"module pattern {pattern!r} is not a valid regular expression ({error}); this "
            "config's `modules` are read as regular expressions, as VLM-Lens reads them: fix "
            "the pattern, or set `module_syntax: glob` to read them as globs"
        ) from None


def never_runs(module: nn.Module) -> bool:
    """A container with no forward of its own (ModuleList, ModuleDict): no pass calls it."""
    return getattr(type(module), "forward", None) is nn.Module.forward


def resolve_modules(
    names: Sequence[str],
    patterns: Iterable[str],
    model: nn.Module | None = None,
    syntax: str = GLOB,
) -> Selection:
    """The modules `patterns` select (see the module docstring); a pattern matching none
    raises, naming the closest names."""
    if syntax not in MODULE_SYNTAXES:
        raise ValueError(f"module_syntax {syntax!r}: use one of {', '.join(MODULE_SYNTAXES)}")
    patterns = list(patterns)
    real = [name for name in names if name]
    old_names: dict[str, str] | None = None
    renamings: list[Any] | None = None
    selected: set[str] = set()
    written: dict[str, str] = {}
    wild: set[str] = set()
    for pattern in patterns:
        renamed = pattern
        if syntax == REGEX:
            regex = compile_regex(pattern)
            hits = [name for name in real if regex.fullmatch(name)]
            if not hits and model is not None:
                old_names = legacy_names(model, real) if old_names is None else old_names
                hits = [name for name, old in old_names.items() if regex.fullmatch(old)]
                written.update((name, old_names[name]) for name in hits)
                if hits:
                    log.warning(
                        "module pattern %r matches %s's transformers 4.x module names (%d "
                        "modules, e.g. %r, today %r); update the config to today's names",
                        pattern, type(model).__name__, len(hits),
                        old_names[hits[0]], hits[0],
                    )  # fmt: skip
        else:
            hits = [name for name in real if matches(pattern, name)]
            if not hits and model is not None:
                renamings = key_renamings(model) if renamings is None else renamings
                renamed = rename(pattern, renamings)
                for candidate in current_names(pattern, model, renamings):
                    hits = [name for name in real if matches(candidate, name)]
                    if hits:
                        log.warning(
                            "module name %r is a transformers 4.x name: %s's checkpoint "
                            "conversion renames it to %r, which is hooked instead; update the "
                            "config to the new name",
                            pattern,
                            type(model).__name__,
                            candidate,
                        )
                        old_names = legacy_names(model, real) if old_names is None else old_names
                        written.update(_as_written(pattern, hits, old_names))
                        break
        if not hits:
            raise ModuleSelectionError(_no_match(pattern, renamed, real, syntax))
        selected.update(hits)
        if is_wildcard(pattern, syntax):
            wild.update(hits)
    matched = [name for name in names if name in selected]
    never_run = _never_run(model, [name for name in matched if name in wild])
    if never_run:
        log.warning(
            "%d module(s) matched by a pattern never run, so nothing is stored for them (VLM-Lens "
            "hooks them and they never fire): %s",
            len(never_run),
            ", ".join(never_run[:5]) + (", ..." if len(never_run) > 5 else ""),
        )
        if len(never_run) == len(matched):
            raise ModuleSelectionError(
                "every module the patterns select is a container that never runs ("
                + ", ".join(never_run[:5])
                + "); select the layers inside it, e.g. `NAME.0` or `NAME.\\d+` "
                "(`lens modules CONFIG` lists them)"
            )
    return Selection(syntax, matched, never_run, written)


def _as_written(pattern: str, hits: Sequence[str], old_names: Mapping[str, str]) -> dict[str, str]:
    """Each module a 4.x glob selected, under the 4.x name the glob matches."""
    found = {}
    for name in hits:
        old = old_names.get(name)
        if old is not None and matches(pattern, old):
            found[name] = old
        elif not is_wildcard(pattern):
            found[name] = pattern
    return found


def _never_run(model: nn.Module | None, names: Sequence[str]) -> list[str]:
    if model is None or not names:
        return []
    modules = dict(model.named_modules())
    return [name for name in names if name in modules and never_runs(modules[name])]


def select_modules(
    names: Sequence[str],
    patterns: Iterable[str],
    model: nn.Module | None = None,
    syntax: str = GLOB,
) -> list[str]:
    """Module names to hook: those the patterns select, less containers that never run (see
    `resolve_modules`), in model order; a pattern matching none raises.

    With `model`, a pattern matching none is tried under its transformers 5 name (see the
    module docstring), so VLM-Lens configs written for transformers 4.x keep working.
    """
    return resolve_modules(names, patterns, model, syntax).hooked


def _no_match(pattern: str, renamed: str, names: Sequence[str], syntax: str = GLOB) -> str:
    """The error for a pattern matching nothing, as written or renamed; the renamed pattern is
    nearer today's names, so the closest names are looked up from it first."""
    probes = [renamed, pattern] if renamed != pattern else [pattern]
    if syntax == REGEX:
        probes = [REGEX_SPECIALS.split(pattern, maxsplit=1)[0].rstrip(".") or pattern]
    suggestions = list(dict.fromkeys(s for probe in probes for s in closest_names(probe, names)))
    hint = "; closest module names: " + ", ".join(suggestions[:5]) if suggestions else ""
    also = f" (nor does its transformers 5 name {renamed!r})" if renamed != pattern else ""
    read = (
        " (read as a regular expression that must match the whole name, nor its transformers "
        "4.x name)"
        if syntax == REGEX
        else ""
    )
    return (
        f"module pattern {pattern!r} matches no module of this model{also}{read}{hint}. "
        "Run `lens modules CONFIG` to list every module name."
    )


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    class_name: str
    selected: bool


def list_modules(
    model: nn.Module, patterns: Sequence[str] = (), syntax: str = GLOB
) -> list[ModuleInfo]:
    """Every named module with its class, marking those the patterns select (and hook)."""
    names = [name for name, _ in model.named_modules() if name]
    chosen = set(select_modules(names, patterns, model, syntax)) if patterns else set()
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
