"""The configured studies (configs/interpretability.yaml): patching pairs and head ablations
read from the warehouse, as rows of `patching_effects` and `ablation_effects`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from PIL import Image

from lens_assets.analyses.answers import questions_with_answers
from lens_assets.analyses.interpretability import (
    AblationSettings,
    PatchingSettings,
    clean_corrupted_pairs,
)
from lens_assets.analyses.interventions.ablation import (
    ABLATION_EFFECTS,
    ablate_sample,
    expand_layers,
    head_means,
)
from lens_assets.analyses.interventions.patching import (
    PATCHING_EFFECTS,
    PatchPair,
    activation_patching,
)
from lens_assets.analyses.interventions.runs import InterventionError, Sample, rows_table
from lens_assets.analyses.reading import labels_by_image
from lens_assets.capture.hooks import HookPointError
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import load_image
from lens_assets.resources.warehouse import Warehouse

log = logging.getLogger(__name__)


def patch_pairs(
    labels: Mapping[str, Mapping[str, str]],
    questions: Sequence[Mapping[str, Any]],
    settings: PatchingSettings,
) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(clean image id, corrupted image id, the clean image's question) per pair.

    `labels` is image id -> concept -> value; `questions` are `answers.questions_with_answers`
    rows. Pairs agree on `settings.same` and differ on `settings.differ`; the question is the
    one about `settings.concept` (first by prompt id), asked of both images, and its expected
    answer for the clean image is the answer token read. Pairs whose clean image has no such
    question are left out.
    """
    asked: dict[str, Mapping[str, Any]] = {}
    for question in questions:
        if question.get("concept") == settings.concept:
            asked.setdefault(question["image_id"], question)
    candidates = {image: values for image, values in labels.items() if image in asked}
    chosen = clean_corrupted_pairs(candidates, settings.same, settings.differ, settings.max_pairs)
    return [(clean, corrupted, asked[clean]) for clean, corrupted in chosen]


def patching_effects(
    loaded: LoadedModel, warehouse: Warehouse, settings: PatchingSettings
) -> pa.Table:
    """The configured patching study as `patching_effects` rows (pair_id 'clean>corrupted').

    Images, labels and questions come from the warehouse's `settings.dataset`. A pair whose
    images do not line up position by position (different image-token counts), or whose
    hook point did not run, is skipped with a warning, so one odd image does not cost the
    whole study.
    """
    dataset = settings.dataset
    labels = labels_by_image(warehouse, dataset)
    questions = questions_with_answers(warehouse, [dataset])
    paths = {q["image_id"]: q["path"] for q in questions}
    rows: list[dict[str, Any]] = []
    for clean, corrupted, question in patch_pairs(labels, questions, settings):
        corrupted_path = paths.get(corrupted) or _stored_path(warehouse, dataset, corrupted)
        pair = PatchPair(
            f"{clean}>{corrupted}",
            load_image(question["path"]).image,
            load_image(corrupted_path).image,
            question["prompt"],
            question["expected"],
        )
        try:
            rows += activation_patching(
                loaded, [pair], settings.layers, settings.positions, dataset=dataset
            )
        except (InterventionError, HookPointError) as error:
            log.warning("pair %s skipped: %s", pair.pair_id, error)
    return rows_table(rows, PATCHING_EFFECTS)


def _stored_path(warehouse: Warehouse, dataset: str, image_id: str) -> str:
    """An image's stored path (for a corrupted image that has no question of its own)."""
    rows = warehouse.fetch_arrow(
        "SELECT any_value(path) FROM images WHERE dataset = ? AND image_id = ?",
        [dataset, image_id],
    )
    path = rows.column(0)[0].as_py() if rows.num_rows else None
    if path is None:
        raise InterventionError(f"image {image_id!r} of dataset {dataset!r} is not stored")
    return str(path)


def ablation_effects(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    image_ids: Sequence[str],
    settings: AblationSettings,
    datasets: Sequence[str | None] | None = None,
    answers: Sequence[str | int | None] | None = None,
) -> pa.Table:
    """The configured head ablations on these (image, prompt) items as `ablation_effects` rows
    (sample_id = image id). Mean ablation averages over the same items; `answers` (default:
    each base run's top token) pick the answer token, `datasets` fill the dataset column."""
    answers = answers or [None] * len(images)
    datasets = datasets or [None] * len(images)
    rows: list[dict[str, Any]] = []
    samples = [
        Sample(image_id, image, prompt, answer)
        for image_id, image, prompt, answer in zip(image_ids, images, prompts, answers, strict=True)
    ]
    means = None
    heads = expand_layers(loaded, settings.heads)
    if settings.mode == "mean" and heads:
        means = head_means(loaded, samples, list(heads))
    for sample, dataset in zip(samples, datasets, strict=True):
        rows += ablate_sample(loaded, sample, heads, (settings.mode,), means, dataset)
    return rows_table(rows, ABLATION_EFFECTS)
