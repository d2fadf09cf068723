"""Vision against VLM: the visual tasks solved from each layer's features, item by item, beside
the VLM's own answer to the same question.

An item is one dataset row whose labels describe a correspondence, odd-one-out or art-style task
(see `visual_tasks`): its images in order, its own question, its answer and choices. Two things
are read off each item:

- the readouts: every image of the row goes through the model with every block of its layer
  stacks hooked, one image per forward pass (each with the model config's prompt), so each
  image gets its own patch grid per layer, with patch centres in that image's pixels; the
  task is solved per layer from those grids (REF's patch in the reference image against the
  candidates' patches in the other, each view's mean feature against the others', each
  candidate image against the reference). LLM-layer readouts thus see each image on its own,
  not beside the row's other images;
- the VLM: the row's own question, with ALL the row's images in one prompt (as the study asks
  it), answered greedily and normalised to a choice letter. A family that takes fewer images
  per prompt than the row has, a model that cannot generate (a dual encoder) or a row without
  a question of its own is not asked: no answer row is written and the reason is returned (and
  logged), never an answer to some other question.

One row per (layer, item) records the readout's choice (stages vision, projector, llm), and one
row per item the VLM's (stage `vlm`, layer `answer`, after the last layer). The
`vision_vs_vlm` view sets the accuracy per layer beside chance.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from PIL import Image

from lens_assets.analyses.behaviour import (
    BehaviourNotSupported,
    generate_answers,
    normalise_answer,
    require_generation,
)
from lens_assets.analyses.patches import PatchGrid, StackLayer, patch_grids, stack_layers
from lens_assets.analyses.visual_tasks import Item, TaskLabelError, solve, task_item, task_of
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import load_image
from lens_assets.resources.schemas import VISION_VS_VLM_ITEMS, rows_table
from lens_assets.resources.warehouse import Warehouse

log = logging.getLogger(__name__)

VLM_STAGE, VLM_LAYER = "vlm", "answer"  # the rows holding the VLM's own answers
ANSWER_TOKENS = 5  # as the answers asset asks: room for "The answer is B"


@dataclass(frozen=True)
class TaskRow:
    """One dataset row that is an item of a visual task."""

    dataset: str
    row_key: str
    position: int
    task: str
    item: Item
    image_ids: tuple[str, ...]
    paths: tuple[str, ...]
    prompt: str | None  # the row's own question (None: it has none)
    choices: tuple[str, ...] | None


@dataclass
class Solved:
    """The rows of `vision_vs_vlm_items`, and why the VLM was not asked where it was not."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def table(self) -> pa.Table:
        return rows_table(VISION_VS_VLM_ITEMS, self.rows)


def task_rows(warehouse: Warehouse, dataset: str) -> list[TaskRow]:
    """The dataset's rows that are visual-task items, in the dataset's order."""
    rows = warehouse.fetch_arrow(
        "SELECT row_key, position, image_ids, prompt, choices FROM dataset_rows "
        "WHERE dataset = ? ORDER BY position",
        [dataset],
    ).to_pylist()
    labels: dict[str, dict[str, str]] = {}
    for label in warehouse.fetch_arrow(
        "SELECT row_key, concept, min(value) AS value FROM row_labels "
        "WHERE dataset = ? AND value IS NOT NULL GROUP BY ALL",
        [dataset],
    ).to_pylist():
        labels.setdefault(label["row_key"], {})[label["concept"]] = label["value"]
    paths = {
        image["image_id"]: image["path"]
        for image in warehouse.fetch_arrow(
            "SELECT image_id, min(path) AS path FROM images WHERE dataset = ? GROUP BY ALL",
            [dataset],
        ).to_pylist()
    }
    found = []
    for row in rows:
        mine = labels.get(row["row_key"], {})
        task = task_of(mine)
        if task is None:
            continue
        ids = tuple(row["image_ids"] or ())
        try:
            item = task_item(mine, len(ids), str(row["position"]))
        except TaskLabelError as error:
            raise TaskLabelError(f"dataset {dataset}, row {row['position']}: {error}") from None
        assert item is not None
        missing = [image_id for image_id in ids if image_id not in paths]
        if missing:
            raise TaskLabelError(
                f"dataset {dataset}, row {row['position']}: image {missing[0]} is not in `images`"
            )
        found.append(
            TaskRow(
                dataset, row["row_key"], row["position"], task, item, ids,
                tuple(paths[image_id] for image_id in ids), row["prompt"] or None,
                tuple(row["choices"]) if row["choices"] else None,
            )
        )  # fmt: skip
    return found


def task_datasets(warehouse: Warehouse, datasets: Sequence[str]) -> dict[str, list[str]]:
    """The datasets among `datasets` that hold visual-task items, and which tasks."""
    found = {}
    for dataset in datasets:
        tasks = sorted({row.task for row in task_rows(warehouse, dataset)})
        if tasks:
            found[dataset] = tasks
    return found


# -- the VLM's answer ------------------------------------------------------------------------


def unaskable(loaded: LoadedModel, row: TaskRow) -> str | None:
    """Why the VLM cannot be asked this row's question as the study asks it (all the row's
    images in one prompt), or None when it can."""
    try:
        require_generation(loaded)
    except BehaviourNotSupported as reason:
        return str(reason)
    most = loaded.architecture.adapter.max_images
    if most is not None and len(row.image_ids) > most:
        return (
            f"model {loaded.name!r} (architecture {loaded.architecture.name!r}) takes at most "
            f"{most} image(s) per prompt and a {row.task} question shows {len(row.image_ids)} "
            "together; it is not asked (one image at a time is not the task's question)"
        )
    if row.prompt is None:
        return f"a {row.task} row of {row.dataset} has no question of its own"
    return None


def vlm_choice(text: str | None, row: TaskRow) -> str | None:
    """The choice letter a free-text answer names (through the row's choices where it spells
    them its own way, "(A)" say), or None when it names none or several."""
    letters = row.item.letters
    vocabulary = (
        list(row.choices) if row.choices and len(row.choices) == len(letters) else list(letters)
    )
    said = normalise_answer(text, vocabulary)
    return None if said is None else letters[vocabulary.index(said)]


def ask_vlm(
    loaded: LoadedModel,
    rows: Sequence[TaskRow],
    pictures: Sequence[Sequence[Image.Image]],
    batch_size: int,
) -> list[str | None]:
    """The VLM's choice per row: the row's question with all its images in one prompt."""
    texts = generate_answers(
        loaded,
        [list(images) for images in pictures],
        [row.prompt or "" for row in rows],
        max_new_tokens=ANSWER_TOKENS,
        batch_size=max(batch_size, 1),
    )
    return [vlm_choice(text, row) for text, row in zip(texts, rows, strict=True)]


# -- the readouts ----------------------------------------------------------------------------


def _batches(rows: Sequence[TaskRow], batch_size: int) -> Iterator[list[TaskRow]]:
    """Whole rows per batch (a row's images never split), about `batch_size` images."""
    batch: list[TaskRow] = []
    images = 0
    for row in rows:
        if batch and images + len(row.image_ids) > batch_size:
            yield batch
            batch, images = [], 0
        batch.append(row)
        images += len(row.image_ids)
    if batch:
        yield batch


def row_grids(
    loaded: LoadedModel,
    pictures: Sequence[Sequence[Image.Image]],
    prompt: str,
    layers: Sequence[str],
) -> list[list[dict[str, PatchGrid]]]:
    """Per row, per image of the row: the patch grid of each layer that holds image positions
    (every image its own one-image forward pass, all in one batch)."""
    flat = [image for images in pictures for image in images]
    grids = patch_grids(loaded, flat, prompt, layers) if flat else []
    out, start = [], 0
    for images in pictures:
        out.append(grids[start : start + len(images)])
        start += len(images)
    return out


def _row(loaded: LoadedModel, row: TaskRow, layer: StackLayer | None, order: int,
         choice: str | None) -> dict[str, Any]:  # fmt: skip
    return {
        "model": loaded.name,
        "dataset": row.dataset,
        "task": row.task,
        "stage": VLM_STAGE if layer is None else layer.stage,
        "layer": VLM_LAYER if layer is None else layer.name,
        "layer_order": order,
        "item": row.item.item,
        "image_id": row.image_ids[0],
        "choice": choice,
        "answer": row.item.answer,
        "correct": choice == row.item.answer,
        "options": len(row.item.letters),
    }


def solve_dataset(
    loaded: LoadedModel,
    warehouse: Warehouse,
    dataset: str,
    prompt: str,
    batch_size: int,
    layers: Sequence[StackLayer] | None = None,
) -> Solved:
    """One row per (layer, item) of one dataset, and one per item the VLM was asked."""
    rows = task_rows(warehouse, dataset)
    solved = Solved()
    if not rows:
        return solved
    layers = list(layers or stack_layers(loaded.model, loaded.architecture.adapter.is_vision))
    names = [layer.name for layer in layers]
    gaps = {row.row_key: unaskable(loaded, row) for row in rows}
    for reason, count in Counter(g for g in gaps.values() if g is not None).items():
        note = f"{dataset}: {count} of {len(rows)} items not asked of the VLM: {reason}"
        log.info("%s: %s", loaded.name, note)
        solved.skipped.append(note)
    for batch in _batches(rows, max(batch_size, 1)):
        pictures = [[load_image(path).image for path in row.paths] for row in batch]
        grids = row_grids(loaded, pictures, prompt, names)
        for order, layer in enumerate(layers):
            for row, per_image in zip(batch, grids, strict=True):
                choice = solve(row.item, [grid.get(layer.name) for grid in per_image])
                if choice is not None:
                    solved.rows.append(_row(loaded, row, layer, order, choice))
        asked = [(row, images) for row, images in zip(batch, pictures, strict=True)
                 if gaps[row.row_key] is None]  # fmt: skip
        if asked:
            choices = ask_vlm(loaded, [r for r, _ in asked], [i for _, i in asked], len(asked))
            for (row, _), choice in zip(asked, choices, strict=True):
                solved.rows.append(_row(loaded, row, None, len(layers), choice))
    return solved


def vision_vs_vlm_table(
    loaded: LoadedModel,
    warehouse: Warehouse,
    datasets: Sequence[str],
    prompt: str,
    batch_size: int,
) -> Solved:
    """Every visual-task item among `datasets`, solved at every stack layer and asked of the
    VLM where it can be asked."""
    layers = stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    solved = Solved()
    for dataset in datasets:
        part = solve_dataset(loaded, warehouse, dataset, prompt, batch_size, layers)
        solved.rows.extend(part.rows)
        solved.skipped.extend(part.skipped)
    return solved
