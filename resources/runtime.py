"""The VLM runtime: device and dtype choice, byte sizes, peak-memory accounting (model loading
is `lens_assets.capture.loading`, which uses these).

Plain Python so notebooks and the CLI use it directly; the Dagster resource wraps it.
"""

from __future__ import annotations

import re
import resource
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class RuntimeConfigError(ValueError):
    """A device or dtype that cannot be used here; the message names the fix."""


RUN_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(name: str | None = "auto") -> torch.device:
    """The device to run on: `auto` (CUDA when visible, else CPU) or one that holds data and
    is there; `meta` holds only shapes, so nothing could be read back from it."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RuntimeConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "meta":
        raise RuntimeConfigError(
            f"device {name!r} holds no data, only shapes, so no activation can be read from "
            "it; use --device (or the config's `device:`) auto, cpu or cuda[:N]"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeConfigError(
                f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu "
                "or --device auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise RuntimeConfigError(
                f"device {name!r} was asked for but {count} CUDA GPU(s) are visible; use "
                f"cuda:0 to cuda:{count - 1}, or --device auto"
            )
    elif device.type not in RUN_DEVICE_TYPES or not _available(device.type):
        raise RuntimeConfigError(
            f"device {name!r} is not one this machine can run on; use auto, cpu or cuda[:N]"
        )
    return device


def _available(kind: str) -> bool:
    if kind == "cpu":
        return True
    backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    return bool(backend is not None and backend.is_available())


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`auto` is float32 on CPU (half precision is slow there) and bfloat16 on CUDA."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise RuntimeConfigError(f"unknown dtype {name!r}; use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10,
              "mib": 2**20, "gib": 2**30}  # fmt: skip


SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str | int | None) -> int | None:
    """`4GiB`, `512MB`, `1.5GB`, `1000000` -> bytes; None or empty -> None (no budget)."""
    if text is None or text == "":
        return None
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in BYTE_UNITS:
        raise RuntimeConfigError(
            f"memory budget {text!r} is not a size; write e.g. 4GiB, 512MB or a number of bytes"
        )
    return int(Fraction(match.group(1)) * BYTE_UNITS[unit])  # exact: no float overflow


class PickleWeightsError(RuntimeConfigError):
    """A checkpoint whose weights exist only as pickle files, loaded without the opt-in."""


class RemoteCodeError(RuntimeConfigError):
    """A checkpoint that runs its own code, loaded without the config's consent."""


def dtype_name(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value).removeprefix("torch.")


class PeakMemory:
    """The peak of one block: CUDA's peak allocation on CUDA; on CPU the resident set's high
    -water mark, reset on entry where Linux allows it (/proc/self/clear_refs), so a run does
    not report an earlier, larger run of the same process. Elsewhere the process's lifetime
    peak (ru_maxrss) is the best there is."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.scoped = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.scoped = _reset_rss_peak()
        return self

    def __exit__(self, *_: object) -> None:
        return None

    @property
    def bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.scoped:
            high_water = _status_kib("VmHWM")
            if high_water is not None:
                return high_water * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
