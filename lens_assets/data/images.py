"""Reading images: stable content-hash ids, one RGB form for every file, readable failures.

Greyscale, palette, 16-bit, CMYK and alpha images become 8-bit RGB (alpha composited on
white). Only regular files are read (a named pipe would block forever, a device never end), and
only up to a size cap checked before reading. An empty, truncated, undecodable or oversized file,
or one over the pixel limit (a decompression bomb), raises ImageReadError: the caller records it
and goes on.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from lens_assets.data import files

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 64_000_000  # far beyond any VLM's input size, far below a decompression bomb
# Longer side over shorter side: beyond this, resizing to any VLM input leaves less than a
# patch on the short side (Qwen2-VL's processor itself refuses ratios over 200).
MAX_ASPECT = 100
# Every 8-bit image within MAX_PIXELS fits even uncompressed (64 M pixels x 4 bytes of RGBA in a
# BMP or TIFF is 244 MiB), so a larger file is 16-bit raw data or junk; reading one whole costs
# its size in memory per worker (a sparse file can claim terabytes on a few bytes of disk).
MAX_FILE_BYTES = 256 * 2**20
# Rows converted at a time from 16-bit to 8-bit, in pixels: a few MiB of temporaries per strip.
STRIP_PIXELS = 2**20
FILE_KINDS = {
    stat.S_IFIFO: "a named pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    path: str
    image: Image.Image

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height


def content_id(data: bytes) -> str:
    """The same file has the same id in every dataset, run and machine."""
    return hashlib.sha256(data).hexdigest()[:32]


def escapes_root(root: Path, path: Path) -> str | None:
    """Why `path` may not be read as data under `root`, or None when it may.

    Both are resolved first, so `..`, absolute names and symlinks pointing elsewhere are all
    caught: a dataset reads only what lies under its own folder. A link that never reaches a file
    (a loop) is refused here too, rather than raised, so one bad link does not stop a run."""
    root = root.resolve()
    try:
        resolved = path.resolve()
    except RuntimeError:  # Python before 3.13 raises this for a loop, 3.13 an OSError (ELOOP)
        return f"refused: {path} is a symbolic link loop; point the link at a file or remove it"
    except OSError as error:
        return f"refused: {path} cannot be resolved ({error.strerror or error}); fix or remove it"
    if resolved == root or root in resolved.parents:
        return None
    return f"refused: {path} resolves to {resolved}, outside {root}"


def not_a_regular_file(mode: int) -> str | None:
    """Why a file of this `st_mode` may not be read as an image, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = FILE_KINDS.get(stat.S_IFMT(mode), "a special file")
    return f"not a regular file ({kind}); only image files are read, move it out of the folder"


def _too_large(path: str | Path, size: int) -> str:
    return (
        f"cannot read image {path}: the file is {size:,} bytes ({size / 2**20:,.0f} MiB), over "
        f"the {MAX_FILE_BYTES // 2**20} MiB limit on an image file; downscale or re-encode it"
    )


def _unreadable(path: str | Path, error: OSError) -> ImageReadError:
    if error.errno == errno.ELOOP:
        cause = "it is a symbolic link loop; point the link at a file or remove it"
    else:
        cause = error.strerror or str(error)
    return ImageReadError(f"cannot read image {path}: {cause}")


def _refuse(path: str | Path, status: os.stat_result) -> None:
    if reason := not_a_regular_file(status.st_mode):
        raise ImageReadError(f"cannot read image {path}: it is {reason}")
    if status.st_size > MAX_FILE_BYTES:
        raise ImageReadError(_too_large(path, status.st_size))


@contextmanager
def _open_regular(path: str | Path) -> Iterator[tuple[BinaryIO, int]]:
    """An open regular file under MAX_FILE_BYTES and its size, refused before a byte is read:
    a named pipe would block the run forever, a device never end, a sparse file fill memory.
    It is checked before opening (opening a device can act on it), opened without blocking and
    checked again on the descriptor, so swapping it for a pipe in between changes nothing."""
    try:
        _refuse(path, os.stat(path))
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise _unreadable(path, error) from None
    with open(descriptor, "rb") as stream:
        status = os.fstat(descriptor)
        _refuse(path, status)
        try:
            yield stream, status.st_size
        except OSError as error:
            raise _unreadable(path, error) from None


def read_image_file(path: str | Path) -> bytes:
    """The bytes of a local image file: a regular file under MAX_FILE_BYTES, never more than
    the size checked before reading."""
    with _open_regular(path) as (stream, size):
        return stream.read(size)


def folder_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; set `input_dir` in the config or pass "
            "--input-dir"
        )
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def duplicate_of(first: str | Path, image_id: str) -> str:
    """How a second file with an image's bytes is reported: the image is used once."""
    return f"duplicate of {first} (same bytes, image id {image_id}); used once"


def file_id(path: str | Path) -> str:
    """content_id of a local image file, read in blocks: the same id without holding it."""
    with _open_regular(path) as (stream, _):
        return hashlib.file_digest(stream, "sha256").hexdigest()[:32]


def folder_images_within(
    folder: str | Path, distinct: bool = True
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The folder's image files that may be read, and each one refused with the reason, for
    the caller to report: a link resolving outside the folder or never reaching a file, and
    anything but a regular file. With `distinct`, also a second file holding the bytes of one
    listed before it, which would be extracted twice (only files of equal size are hashed);
    collect_folder leaves copies to DatasetImages, which keeps the copy's labels."""
    kept: list[tuple[Path, int]] = []
    refused: list[tuple[Path, str]] = []
    for path in folder_images(folder):
        if reason := escapes_root(Path(folder), path):
            refused.append((path, reason))
            continue
        try:
            status = path.stat()
        except OSError as error:
            refused.append((path, f"refused: {path} cannot be read ({error.strerror or error})"))
            continue
        if reason := not_a_regular_file(status.st_mode):
            refused.append((path, f"refused: {path} is {reason}"))
        else:
            kept.append((path, status.st_size))
    if not distinct:
        return [path for path, _ in kept], refused
    sizes = Counter(size for _, size in kept)
    first: dict[str, Path] = {}
    inside = []
    for path, size in kept:
        if sizes[size] > 1 and 0 < size <= MAX_FILE_BYTES:
            try:
                image_id = file_id(path)
            except ImageReadError:  # e.g. replaced since it was listed: the reader says why
                inside.append(path)
                continue
            if image_id in first:
                refused.append((path, f"{path}: {duplicate_of(first[image_id], image_id)}"))
                continue
            first[image_id] = path
        inside.append(path)
    return inside, sorted(refused, key=lambda refusal: refusal[0])


def _integer_to_rgb(image: Image.Image) -> Image.Image:
    """A 16-bit or 32-bit integer greyscale image as 8-bit RGB, a strip of rows at a time.

    Each value v (clipped to the range) becomes round(v x 255 / top), halves rounding up, with
    top 65535, or 255 for a 32-bit image whose values all fit in 8 bits. In integers: 255/65535
    is exactly 1/257 and no 16-bit value lies on a half, so it is (v + 128) // 257. Only a strip
    is held as integers: the whole image through float64 cost 8 bytes a pixel, plus copies."""
    top = 255 if image.mode == "I" and image.getextrema()[1] <= 255 else 65535
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(width, 1))
    rgb = Image.new("RGB", image.size)
    for y in range(0, height, rows):
        strip = np.asarray(image.crop((0, y, width, min(y + rows, height))))
        values = np.clip(strip, 0, top).astype(np.uint32)
        if top == 65535:
            values += 128
            values //= 257
        grey = Image.fromarray(values.astype(np.uint8), mode="L")
        rgb.paste(grey.convert("RGB"), (0, y))
    return rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, whatever the file held."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _integer_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


# Pillow's messages name the in-memory buffer it was given, e.g. <_io.BytesIO object at 0x7f...>
_BUFFER_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _cause(error: BaseException) -> str:
    return _BUFFER_REPR.sub("the file", str(error))


def decode(data: bytes, source: str) -> Image.Image:
    """Decode image bytes to RGB, refusing empty, truncated, undecodable and oversized ones."""
    if not data:
        raise ImageReadError(f"cannot read image {source}: the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(_too_large(source, len(data)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ImageReadError(
                        f"cannot read image {source}: {opened.width}x{opened.height} is over the "
                        f"pixel limit of {MAX_PIXELS:,} (a possible decompression bomb)"
                    )
                longer, shorter = max(opened.size), max(min(opened.size), 1)
                if longer / shorter > MAX_ASPECT:
                    raise ImageReadError(
                        f"cannot read image {source}: {opened.width}x{opened.height} has an "
                        f"aspect ratio over {MAX_ASPECT}:1, which leaves less than a patch on "
                        "its short side at any model's input size; crop or pad it first"
                    )
                opened.load()
                return to_rgb(opened)
    except ImageReadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {source}: {error}") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"cannot read image {source}: it is not an image file Pillow can decode (not a "
            "PNG, JPEG, GIF, BMP, TIFF or WebP, or its header is damaged); convert or remove it"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {source}: {_cause(error)}") from None


def load_image(path: str | Path) -> LoadedImage:
    """A local file or an object-store URI (images rendered onto a shared warehouse)."""
    if not files.is_uri(path):
        data = read_image_file(path)
    else:
        try:
            data = files.read_bytes(path)
        except OSError as error:
            raise ImageReadError(f"cannot read image {path}: {error}") from None
    return LoadedImage(content_id(data), str(path), decode(data, str(path)))
