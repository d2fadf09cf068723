"""Reading a folder of images: stable content-hash ids, RGB conversion, readable failures."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the run records it and goes on."""


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
    """The same picture has the same id in every dataset, run and machine."""
    return hashlib.sha256(data).hexdigest()[:32]


def folder_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so runs are reproducible."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {folder} does not exist; set `input_dir` in the config or pass "
            "--input-dir"
        )
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path: str | Path) -> LoadedImage:
    path = Path(path)
    try:
        data = path.read_bytes()
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"cannot read image {path}: {error}") from None
    return LoadedImage(content_id(data), str(path), image)
