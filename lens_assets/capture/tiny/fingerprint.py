"""Fingerprints of the tiny checkpoints, to prove a refactoring of the builders changed nothing.

A fingerprint holds what a build writes that matters: every JSON file parsed (minus keys that
name the library version), the other files hashed, and each safetensors tensor's dtype, shape
and a hash of its bytes (so two builds compare equal exactly when their weights are identical,
whatever the file's header order). The ``small`` and ``base`` presets are too large to build
here, so only their configs are fingerprinted.

``python -m lens_assets.capture.tiny.fingerprint record FILE`` writes the fingerprints of every
tiny family; ``... compare FILE`` builds them again and lists every difference (exit 1 if any).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

from lens_assets.capture.tiny import TINY_PRESETS, _builder, build_tiny, tiny_architectures

VOLATILE_KEYS = frozenset({"transformers_version"})


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def tensor_hashes(path: Path) -> dict[str, list[Any]]:
    """``name -> [dtype, shape, sha256 of the bytes]`` read straight from the safetensors file."""
    data = path.read_bytes()
    (header_size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_size])
    body = data[8 + header_size :]
    tensors: dict[str, list[Any]] = {}
    for name, entry in sorted(header.items()):
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        digest = hashlib.sha256(body[start:end]).hexdigest()
        tensors[name] = [entry["dtype"], entry["shape"], digest]
    return tensors


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Every file of a built checkpoint folder, in a form that compares across library versions."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".safetensors":
            files[name] = tensor_hashes(path)
        elif path.suffix == ".json":
            files[name] = _without_volatile(json.loads(path.read_text()))
        else:
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def preset_config(architecture: str, preset: str) -> dict[str, Any]:
    """The config a preset builds, without building its (possibly large) weights."""
    builder = _builder(architecture)
    assert builder is not None, architecture
    _, config, _ = builder(preset)
    return _without_volatile(config.to_dict())


def fingerprints(architectures: list[str]) -> dict[str, Any]:
    """Build each family's tiny checkpoint into a temporary folder and fingerprint it."""
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for architecture in architectures:
            folder = build_tiny(architecture, Path(tmp) / architecture)
            entry: dict[str, Any] = {"tiny": folder_fingerprint(folder)}
            for preset in TINY_PRESETS:
                if preset != "tiny":
                    entry[f"{preset} config"] = preset_config(architecture, preset)
            result[architecture] = entry
    return result


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Paths at which two fingerprints differ, for a readable report."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after)):
            if key not in after:
                found.append(f"{where}/{key}: missing after")
            elif key not in before:
                found.append(f"{where}/{key}: new after")
            else:
                found += differences(before[key], after[key], f"{where}/{key}")
        return found
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["record", "compare"])
    parser.add_argument("file", type=Path)
    parser.add_argument("--only", nargs="*", help="families to fingerprint (default: all)")
    args = parser.parse_args(argv)
    names = args.only or tiny_architectures()
    current = fingerprints(names)
    if args.action == "record":
        args.file.write_text(json.dumps(current, indent=1, sort_keys=True))
        print(f"recorded {len(current)} families into {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    # Round-trip through JSON so tuples and lists compare alike.
    current = json.loads(json.dumps(current))
    identical = 0
    for name in names:
        found = differences(recorded.get(name), current[name], name)
        print(f"{name}: {'identical' if not found else 'DIFFERENT'}")
        for line in found[:20]:
            print(f"  {line}")
        identical += not found
    print(f"{identical} of {len(names)} families identical")
    return 0 if identical == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
