"""Live progress of in-process materializations, one line per asset step as it starts and
ends, for the CLI (`lens demo`, `lens materialize`) to print.

The step factory (`partitions.per_model_asset`) announces every step; whoever listens (the CLI,
for the length of one run) hears it. In the UI or on workers nobody listens and nothing is
printed: the run's own events say the same there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str], None]
_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Hear every step announced inside this block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def announce(message: str) -> None:
    for listener in list(_listeners):
        listener(message)


@contextmanager
def step(asset: str, partition: str) -> Iterator[None]:
    """Announce a step's start, and its end with its time (or that it failed)."""
    announce(f"    {partition}: {asset} ...")
    started = time.monotonic()
    try:
        yield
    except BaseException:
        announce(f"    {partition}: {asset} failed after {time.monotonic() - started:.1f} s")
        raise
    announce(f"    {partition}: {asset} done in {time.monotonic() - started:.1f} s")
