"""Vision against VLM: the visual tasks solved from each layer's features, item by item.

For every dataset whose labels describe a correspondence or odd-one-out task, the model's
images go through once with every block of its layer stacks hooked; each layer's patch features
solve each item (see `visual_tasks`), and one row per (layer, item) records the choice. The
`vision_vs_vlm` view sets the accuracy per layer beside the model's own answers and chance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from lens_assets.analyses.patches import PatchGrid, StackLayer, patch_grids, stack_layers
from lens_assets.analyses.reading import labels_by_image
from lens_assets.analyses.visual_tasks import (
    LETTERS,
    CorrespondenceItem,
    OddOneOutItem,
    correspondence_items,
    odd_one_out_items,
    solve_correspondence,
    solve_odd_one_out,
    task_of,
)
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import load_image
from lens_assets.resources.schemas import VISION_VS_VLM_ITEMS, rows_table
from lens_assets.resources.warehouse import Warehouse

Item = CorrespondenceItem | OddOneOutItem


def task_datasets(warehouse: Warehouse, datasets: Sequence[str]) -> dict[str, str]:
    """The datasets among `datasets` that hold a visual task, and which task."""
    found = {}
    for dataset in datasets:
        task = task_of(labels_by_image(warehouse, dataset))
        if task is not None:
            found[dataset] = task
    return found


def _images_of(item: Item) -> tuple[str, ...]:
    if isinstance(item, CorrespondenceItem):
        return item.reference, item.target
    return (item.image,)


def _solve(item: Item, grids: dict[str, dict[str, PatchGrid]], layer: str) -> str | None:
    """The item's choice at `layer`, or None where a view has no image positions there."""
    if isinstance(item, CorrespondenceItem):
        reference, target = grids[item.reference].get(layer), grids[item.target].get(layer)
        if reference is None or target is None:
            return None
        return solve_correspondence(reference, target, item)
    grid = grids[item.image].get(layer)
    return None if grid is None else solve_odd_one_out(grid, item)


def _batches(items: Sequence[Item], batch_size: int) -> Iterator[list[Item]]:
    """Whole items per batch (a correspondence pair never splits), about `batch_size` images."""
    batch: list[Item] = []
    images = 0
    for item in items:
        if batch and images + len(_images_of(item)) > max(batch_size, 2):
            yield batch
            batch, images = [], 0
        batch.append(item)
        images += len(_images_of(item))
    if batch:
        yield batch


def solve_dataset(
    loaded: LoadedModel,
    warehouse: Warehouse,
    dataset: str,
    prompt: str,
    batch_size: int,
    layers: Sequence[StackLayer] | None = None,
) -> list[dict[str, Any]]:
    """One row per (layer, item) of one dataset."""
    labels = labels_by_image(warehouse, dataset)
    task = task_of(labels)
    if task is None:
        return []
    items: list[Item] = list(
        correspondence_items(labels) if task == "correspondence" else odd_one_out_items(labels)
    )
    found = warehouse.fetch_arrow(
        "SELECT image_id, any_value(path) AS path FROM images WHERE dataset = ? GROUP BY ALL",
        [dataset],
    ).to_pylist()
    paths = {row["image_id"]: row["path"] for row in found}
    layers = list(layers or stack_layers(loaded.model, loaded.architecture.adapter.is_vision))
    names = [layer.name for layer in layers]
    order = {name: index for index, name in enumerate(names)}
    rows: list[dict[str, Any]] = []
    for batch in _batches(items, batch_size):
        ids = [image_id for item in batch for image_id in _images_of(item)]
        pictures = [load_image(paths[image_id]).image for image_id in ids]
        grids = dict(zip(ids, patch_grids(loaded, pictures, prompt, names), strict=True))
        for layer in layers:
            for item in batch:
                choice = _solve(item, grids, layer.name)
                if choice is None:
                    continue
                rows.append(
                    {
                        "model": loaded.name,
                        "dataset": dataset,
                        "task": task,
                        "stage": layer.stage,
                        "layer": layer.name,
                        "layer_order": order[layer.name],
                        "item": item.item,
                        "image_id": _images_of(item)[-1],
                        "choice": choice,
                        "answer": item.answer,
                        "correct": choice == item.answer,
                        "options": len(LETTERS),
                    }
                )
    return rows


def vision_vs_vlm_table(
    loaded: LoadedModel,
    warehouse: Warehouse,
    datasets: Sequence[str],
    prompt: str,
    batch_size: int,
) -> pa.Table:
    """Every visual-task dataset among `datasets`, solved at every stack layer."""
    layers = stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    rows = [
        row
        for dataset in datasets
        for row in solve_dataset(loaded, warehouse, dataset, prompt, batch_size, layers)
    ]
    return rows_table(VISION_VS_VLM_ITEMS, rows)
