"""The warehouse's errors: each message names the cause and the fix, so the CLI shows one line."""

from __future__ import annotations


class WarehouseError(RuntimeError):
    """The warehouse cannot be opened or used; the message names the cause and the fix."""


class ReadOnlyError(WarehouseError):
    """A statement the read path refuses: a write, an escape, or more than one statement."""


class QueryLimitError(WarehouseError):
    """A read that ran past its time or memory limit."""
