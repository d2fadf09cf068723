"""Visual tasks solved from features alone: correspondence, odd-one-out and art style.

Fu et al. ("Hidden in plain sight", 2025) show that a VLM's vision features often solve tasks
its answers fail. An item is one dataset row: its images in order, asked about together. These
solvers read the task off one layer's patch features, one grid per image of the row (each with
its patch centres in that image's own pixels):

- correspondence: the candidate whose patch (in the candidates' image) is closest (cosine) to
  the REF patch (in the reference image);
- odd-one-out: the view whose mean feature is least similar to the other views';
- art style: the candidate image whose mean feature is closest to the reference image's.

Items come from row labels, so any dataset whose rows carry the same labels (a BLINK export,
say) is solved too. Coordinates are pixel indices (x right, y down) of the image they name.

Correspondence: `answer`, `ref_x`, `ref_y` (pixels of image `ref_image`, default 0), `a_x` ...
(pixels of image `candidates_image`, default 1; two or more consecutive letters from A).
Odd-one-out: `answer` and `a_box` ... ("x0,y0,x1,y1", end-exclusive) of image `a_image` ...
(default 0: views as panels of one picture). Art style: `answer`, `style` and `a_image` ...
(each candidate's image; the reference is image `ref_image`, default 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lens_assets.analyses.patches import PatchGrid

LETTERS = ("A", "B", "C", "D", "E", "F")
TASKS = ("correspondence", "odd_one_out", "art_style")
CORRESPONDENCE_KEYS = ("answer", "ref_x", "ref_y", "a_x", "a_y", "b_x", "b_y")
ODD_ONE_OUT_KEYS = ("answer", "a_box", "b_box", "c_box")
ART_STYLE_KEYS = ("answer", "style", "a_image", "b_image")


class TaskLabelError(ValueError):
    """Row labels that do not describe a complete item of a visual task."""


@dataclass(frozen=True)
class CorrespondenceItem:
    item: str
    ref_image: int  # which of the row's images REF is marked in
    candidates_image: int  # which of the row's images A, B, ... are marked in
    ref: tuple[float, float]
    candidates: tuple[tuple[float, float], ...]  # A, B, ... in the candidates' image
    answer: str

    @property
    def letters(self) -> tuple[str, ...]:
        return LETTERS[: len(self.candidates)]

    @property
    def images(self) -> tuple[int, ...]:
        return self.ref_image, self.candidates_image


@dataclass(frozen=True)
class Panel:
    """One view of an odd-one-out item: a box (x0, y0, x1, y1) in one of the row's images."""

    image: int
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class OddOneOutItem:
    item: str
    panels: tuple[Panel, ...]  # A, B, ...
    answer: str

    @property
    def letters(self) -> tuple[str, ...]:
        return LETTERS[: len(self.panels)]

    @property
    def images(self) -> tuple[int, ...]:
        return tuple(sorted({panel.image for panel in self.panels}))


@dataclass(frozen=True)
class ArtStyleItem:
    item: str
    reference: int  # the reference's image
    candidates: tuple[int, ...]  # the images of A, B, ...
    answer: str

    @property
    def letters(self) -> tuple[str, ...]:
        return LETTERS[: len(self.candidates)]

    @property
    def images(self) -> tuple[int, ...]:
        return self.reference, *self.candidates


Item = CorrespondenceItem | OddOneOutItem | ArtStyleItem


def task_of(labels: Mapping[str, str]) -> str | None:
    """Which task one row's labels describe (correspondence, odd_one_out, art_style), if any."""
    if all(key in labels for key in CORRESPONDENCE_KEYS):
        return "correspondence"
    if all(key in labels for key in ODD_ONE_OUT_KEYS):
        return "odd_one_out"
    if all(key in labels for key in ART_STYLE_KEYS):
        return "art_style"
    return None


def task_item(labels: Mapping[str, str], images: int, item: str) -> Item | None:
    """The task item a row's labels describe (None where they describe none), checked against
    the row's number of images; `item` names it where the labels carry no `item`."""
    task = task_of(labels)
    if task is None:
        return None
    name = labels.get("item", item)
    if task == "correspondence" and "role" in labels and images < 2:
        raise TaskLabelError(
            f"correspondence item {name!r} is labelled in the old layout (one image per row, "
            "label `role`); collect the dataset again (the `images` asset): an item is now one "
            "row with both images"
        )
    if task == "correspondence":
        letters = _letters(labels, "_x")
        found: Item = CorrespondenceItem(
            item=name,
            ref_image=_index(labels, "ref_image", 0),
            candidates_image=_index(labels, "candidates_image", 1),
            ref=(_number(labels, "ref_x"), _number(labels, "ref_y")),
            candidates=tuple(
                (_number(labels, f"{k}_x"), _number(labels, f"{k}_y")) for k in letters
            ),
            answer=labels["answer"],
        )
    elif task == "odd_one_out":
        found = OddOneOutItem(
            item=name,
            panels=tuple(
                Panel(_index(labels, f"{k}_image", 0), _box(labels, f"{k}_box"))
                for k in _letters(labels, "_box")
            ),
            answer=labels["answer"],
        )
    else:
        found = ArtStyleItem(
            item=name,
            reference=_index(labels, "ref_image", 0),
            candidates=tuple(_index(labels, f"{k}_image", 0) for k in _letters(labels, "_image")),
            answer=labels["answer"],
        )
    if found.answer not in found.letters:
        raise TaskLabelError(
            f"{task} item {name!r}: answer {found.answer!r} is not one of {list(found.letters)}"
        )
    if max(found.images) >= images:
        raise TaskLabelError(
            f"{task} item {name!r} names image {max(found.images)} (counting from 0) and its "
            f"row has {images} image(s)"
        )
    return found


def _letters(labels: Mapping[str, str], suffix: str) -> tuple[str, ...]:
    """The candidate letters a row labels (`a` + suffix, `b` + suffix, ..., consecutive)."""
    count = 0
    while count < len(LETTERS) and f"{LETTERS[count].lower()}{suffix}" in labels:
        count += 1
    return tuple(letter.lower() for letter in LETTERS[:count])


def _number(labels: Mapping[str, str], key: str) -> float:
    try:
        return float(labels[key])
    except (KeyError, ValueError):
        raise TaskLabelError(f"label {key!r} is {labels.get(key)!r}; expected a number") from None


def _index(labels: Mapping[str, str], key: str, default: int) -> int:
    value = labels.get(key)
    if value is None:
        return default
    try:
        index = int(value)
    except ValueError:
        index = -1
    if index < 0:
        raise TaskLabelError(f"label {key!r} is {value!r}; expected an image index (0, 1, ...)")
    return index


def _box(labels: Mapping[str, str], key: str) -> tuple[float, float, float, float]:
    parts = labels[key].split(",")
    try:
        x0, y0, x1, y1 = (float(v) for v in parts)
    except ValueError:
        raise TaskLabelError(f"label {key!r} is {labels[key]!r}; expected 'x0,y0,x1,y1'") from None
    return x0, y0, x1, y1


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def solve_correspondence(grids: Sequence[PatchGrid], item: CorrespondenceItem) -> str:
    """The candidate whose patch is most cosine-similar to REF's patch; `grids` holds one grid
    per image of the row."""
    reference, target = grids[item.ref_image], grids[item.candidates_image]
    ref = _unit(reference.features[reference.nearest(item.ref)])
    candidates = _unit(target.features[[target.nearest(p) for p in item.candidates]])
    return item.letters[int(np.argmax(candidates @ ref))]


def region_feature(grid: PatchGrid, box: Sequence[float]) -> np.ndarray:
    """The mean feature of the patches centred in `box`, or the patch nearest the box's centre
    where the grid is too coarse to put one inside."""
    inside = grid.inside(box)
    if len(inside) == 0:
        inside = np.array([grid.nearest(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))])
    return grid.features[inside].mean(axis=0)


def image_feature(grid: PatchGrid) -> np.ndarray:
    """The mean feature of all of an image's patches."""
    return grid.features.mean(axis=0)


def solve_odd_one_out(grids: Sequence[PatchGrid], item: OddOneOutItem) -> str:
    """The view whose mean feature has the lowest mean cosine similarity to the others."""
    views = _unit(np.stack([region_feature(grids[p.image], p.box) for p in item.panels]))
    similarity = views @ views.T
    np.fill_diagonal(similarity, 0.0)
    return item.letters[int(np.argmin(similarity.sum(axis=1)))]


def solve_art_style(grids: Sequence[PatchGrid], item: ArtStyleItem) -> str:
    """The candidate whose mean feature is most cosine-similar to the reference's."""
    reference = _unit(image_feature(grids[item.reference]))
    candidates = _unit(np.stack([image_feature(grids[image]) for image in item.candidates]))
    return item.letters[int(np.argmax(candidates @ reference))]


def solve(item: Item, grids: Sequence[PatchGrid | None]) -> str | None:
    """The item's choice from one layer's grids (one per image of the row), or None where an
    image the item needs has no grid at that layer."""
    if any(grids[image] is None for image in item.images):
        return None
    ready: list[PatchGrid] = [g if g is not None else _EMPTY for g in grids]
    if isinstance(item, CorrespondenceItem):
        return solve_correspondence(ready, item)
    if isinstance(item, OddOneOutItem):
        return solve_odd_one_out(ready, item)
    return solve_art_style(ready, item)


_EMPTY = PatchGrid(np.zeros((0, 1), np.float32), np.zeros((0, 2)))
