"""Files every worker must see (the rendered dataset images): a local folder, or an object
store when the warehouse lives on one, so a worker on another machine reads the image the
`images` step wrote. Locations are plain strings: a path, or a URI such as `s3://bucket/key`
(pyarrow's filesystems, credentials from the standard AWS environment variables)."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(root: str | Path, *parts: str) -> str:
    if is_uri(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts))


def parent(location: str) -> str:
    """The folder holding `location` (a trailing slash ignored)."""
    if is_uri(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


@functools.lru_cache(maxsize=8)
def _store(scheme_and_bucket: str) -> pafs.FileSystem:
    """One filesystem per bucket: S3 clients are costly to create."""
    store, _ = pafs.FileSystem.from_uri(scheme_and_bucket)
    return store


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(location)
    return _store(f"{parts.scheme}://{parts.netloc}"), f"{parts.netloc}{parts.path}"


def read_bytes(location: str | Path) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    store, path = _resolve(str(location))
    try:
        with store.open_input_stream(path) as stream:
            return stream.readall()
    except FileNotFoundError:
        raise
    except OSError:  # e.g. the key is missing: say so as a local read would
        if store.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such file: {location}") from None
        raise


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write unless the same bytes are there already (a local file keeps its mtime)."""
    if not is_uri(location):
        path = Path(location)
        if not path.is_file() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return
    store, path = _resolve(str(location))
    info = store.get_file_info(path)
    if info.type == pafs.FileType.File and info.size == len(data) and read_bytes(location) == data:
        return
    with store.open_output_stream(path) as stream:
        stream.write(data)
