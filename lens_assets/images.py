"""Reading images: stable content-hash ids, one RGB form for every file, readable failures.

Greyscale, palette, 16-bit, CMYK and alpha images become 8-bit RGB (alpha composited on
white). An empty, truncated or undecodable file, or one over the pixel limit (a decompression
bomb), raises ImageReadError: the caller records it and goes on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lens_assets import files

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
MAX_PIXELS = 64_000_000  # far beyond any VLM's input size, far below a decompression bomb
# Longer side over shorter side: beyond this, resizing to any VLM input leaves less than a
# patch on the short side (Qwen2-VL's processor itself refuses ratios over 200).
MAX_ASPECT = 100


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
    caught: a dataset reads only what lies under its own folder."""
    root, resolved = root.resolve(), path.resolve()
    if resolved == root or root in resolved.parents:
        return None
    return f"refused: {path} resolves to {resolved}, outside {root}"


def folder_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; set `input_dir` in the config or pass "
            "--input-dir"
        )
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_images_within(folder: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The folder's image files that resolve inside it, and each one that does not (a link
    pointing elsewhere) with the reason it is refused, for the caller to report."""
    inside, refused = [], []
    for path in folder_images(folder):
        if reason := escapes_root(Path(folder), path):
            refused.append((path, reason))
        else:
            inside.append(path)
    return inside, refused


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, whatever the file held."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def decode(data: bytes, source: str) -> Image.Image:
    """Decode image bytes to RGB, refusing empty, truncated, undecodable and oversized ones."""
    if not data:
        raise ImageReadError(f"cannot read image {source}: the file is empty")
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
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"cannot read image {source}: {error}") from None


def load_image(path: str | Path) -> LoadedImage:
    """A local file or an object-store URI (images rendered onto a shared warehouse)."""
    try:
        data = files.read_bytes(path)
    except OSError as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from None
    return LoadedImage(content_id(data), str(path), decode(data, str(path)))
