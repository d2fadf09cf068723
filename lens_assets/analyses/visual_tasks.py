"""Visual tasks solved from features alone: correspondence and odd-one-out.

Fu et al. ("Hidden in plain sight", 2025) show that a VLM's vision features often solve tasks
its answers fail. These solvers read a task off one layer's patch features: correspondence
takes the candidate whose patch feature is closest (cosine) to the REF patch's; odd-one-out
takes the panel whose mean patch feature is least similar to the other three. Items come from
image labels, so any dataset that carries the same labels (a BLINK export, say) is solved too.

Correspondence labels (both images of a pair): `item`, `role` (reference / target), `answer`,
`ref_x`, `ref_y`, and `a_x` ... `d_y`. Odd-one-out labels: `answer` and `a_box` ... `d_box`
("x0,y0,x1,y1", end-exclusive). Coordinates are pixel indices of the image as stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lens_assets.analyses.patches import PatchGrid

LETTERS = ("A", "B", "C", "D")
POINTS = tuple(f"{letter.lower()}_{axis}" for letter in LETTERS for axis in "xy")
CORRESPONDENCE_KEYS = ("item", "role", "answer", "ref_x", "ref_y", *POINTS)
ODD_ONE_OUT_KEYS = ("answer", *(f"{letter.lower()}_box" for letter in LETTERS))


class TaskLabelError(ValueError):
    """Image labels that do not describe a complete item of a visual task."""


@dataclass(frozen=True)
class CorrespondenceItem:
    item: str
    reference: str  # image_id of the view with REF
    target: str  # image_id of the view with A-D
    ref: tuple[float, float]
    candidates: tuple[tuple[float, float], ...]  # A-D in the target view
    answer: str


@dataclass(frozen=True)
class OddOneOutItem:
    item: str
    image: str  # image_id
    panels: tuple[tuple[float, float, float, float], ...]  # A-D boxes
    answer: str


def task_of(labels: Mapping[str, Mapping[str, str]]) -> str | None:
    """Which task a dataset's labels describe (correspondence, odd_one_out), if any."""
    concepts = set().union(*(row.keys() for row in labels.values())) if labels else set()
    if concepts.issuperset(CORRESPONDENCE_KEYS):
        return "correspondence"
    if concepts.issuperset(ODD_ONE_OUT_KEYS):
        return "odd_one_out"
    return None


def correspondence_items(labels: Mapping[str, Mapping[str, str]]) -> list[CorrespondenceItem]:
    """Pairs of (reference, target) images with REF and A-D, from per-image labels."""
    views: dict[str, dict[str, str]] = {}
    for image_id, row in labels.items():
        if "role" in row and "item" in row:
            views.setdefault(row["item"], {})[row["role"]] = image_id
    items = []
    for item, pair in sorted(views.items(), key=lambda kv: _item_key(kv[0])):
        if set(pair) != {"reference", "target"}:
            raise TaskLabelError(
                f"correspondence item {item!r} has views {sorted(pair)}; it needs one "
                "`reference` and one `target` image (label `role`)"
            )
        row = labels[pair["target"]]
        items.append(
            CorrespondenceItem(
                item=item,
                reference=pair["reference"],
                target=pair["target"],
                ref=(_number(row, "ref_x"), _number(row, "ref_y")),
                candidates=tuple(
                    (_number(row, f"{k}_x"), _number(row, f"{k}_y"))
                    for k in (letter.lower() for letter in LETTERS)
                ),
                answer=row["answer"],
            )
        )
    return items


def odd_one_out_items(labels: Mapping[str, Mapping[str, str]]) -> list[OddOneOutItem]:
    """One item per image with four panel boxes."""
    items = []
    for image_id, row in labels.items():
        panels = []
        for letter in LETTERS:
            box = row[f"{letter.lower()}_box"].split(",")
            if len(box) != 4:
                raise TaskLabelError(
                    f"image {image_id}: {letter.lower()}_box is {row[f'{letter.lower()}_box']!r}"
                    "; expected 'x0,y0,x1,y1'"
                )
            panels.append(tuple(float(v) for v in box))
        items.append(
            OddOneOutItem(row.get("item", image_id), image_id, tuple(panels), row["answer"])  # type: ignore[arg-type]
        )
    return sorted(items, key=lambda i: _item_key(i.item))


def _number(row: Mapping[str, str], key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        raise TaskLabelError(f"label {key!r} is {row.get(key)!r}; expected a number") from None


def _item_key(item: str) -> tuple[int, str]:
    return (int(item), item) if item.isdigit() else (1 << 62, item)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def solve_correspondence(reference: PatchGrid, target: PatchGrid, item: CorrespondenceItem) -> str:
    """The candidate whose patch is most cosine-similar to REF's patch."""
    ref = _unit(reference.features[reference.nearest(item.ref)])
    candidates = _unit(target.features[[target.nearest(p) for p in item.candidates]])
    return LETTERS[int(np.argmax(candidates @ ref))]


def panel_features(grid: PatchGrid, panels: Sequence[Sequence[float]]) -> np.ndarray:
    """(panels, dim): the mean feature of the patches centred in each panel, or the nearest
    patch to the panel's centre where the grid is too coarse to put one inside."""
    rows = []
    for box in panels:
        inside = grid.inside(box)
        if len(inside) == 0:
            inside = np.array([grid.nearest(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))])
        rows.append(grid.features[inside].mean(axis=0))
    return np.stack(rows)


def solve_odd_one_out(grid: PatchGrid, item: OddOneOutItem) -> str:
    """The panel whose mean feature has the lowest mean cosine similarity to the others."""
    panels = _unit(panel_features(grid, item.panels))
    similarity = panels @ panels.T
    np.fill_diagonal(similarity, 0.0)
    return LETTERS[int(np.argmin(similarity.sum(axis=1)))]
