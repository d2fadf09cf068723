"""The configured studies (configs/interpretability.yaml): patching pairs and head ablations
read from the warehouse, as rows of `patching_effects` and `ablation_effects`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from PIL import Image

from lens_assets.analyses.answers import questions_of
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
from lens_assets.analyses.reading import labels_by_image, load_labels, row_images
from lens_assets.capture.hooks import HookPointError
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import load_image
from lens_assets.resources.warehouse import Warehouse

log = logging.getLogger(__name__)


def row_labels_of(warehouse: Warehouse, dataset: str) -> dict[str, dict[str, str]]:
    """row_key -> concept -> value: a row's own labels, over the labels of its image where it
    has exactly one (a Stroop question row carries its picture's word, ink and background)."""
    by_image = labels_by_image(warehouse, dataset)
    labels = {
        key: dict(by_image.get(images[0], {})) if len(images) == 1 else {}
        for key, images in row_images(warehouse, dataset).items()
    }
    for concept, values in load_labels(warehouse, dataset).items():
        for key, value in values.items():
            labels.setdefault(key, {})[concept] = value
    return labels


def patch_pairs(
    labels: Mapping[str, Mapping[str, str]],
    questions: Sequence[Mapping[str, Any]],
    settings: PatchingSettings,
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(clean row, corrupted row) per pair, both `answers.questions_of` rows.

    `labels` is row_key -> concept -> value. Candidates are the rows asking about
    `settings.concept` with a known answer; pairs agree on `settings.same`, differ on
    `settings.differ` and hold as many images, so their sequences can line up. The clean
    row's question is asked of both; its expected answer is the answer token read.
    """
    asked = {
        q["row_key"]: q
        for q in questions
        if q.get("concept") == settings.concept and q.get("expected") is not None
    }
    by_count: dict[int, dict[str, Mapping[str, str]]] = {}
    for key, question in asked.items():
        by_count.setdefault(len(question["image_ids"]), {})[key] = labels.get(key, {})
    chosen = sorted(
        pair
        for count, candidates in by_count.items()
        if count > 0
        for pair in clean_corrupted_pairs(
            dict(candidates), settings.same, settings.differ, settings.max_pairs
        )
    )[: settings.max_pairs]
    return [(asked[clean], asked[corrupted]) for clean, corrupted in chosen]


def pair_id(clean: Mapping[str, Any], corrupted: Mapping[str, Any]) -> str:
    """'clean>corrupted' in image ids ('a>b'; a two-image row reads 'a+b>c+d')."""
    return f"{'+'.join(clean['image_ids'])}>{'+'.join(corrupted['image_ids'])}"


def patching_effects(
    loaded: LoadedModel, warehouse: Warehouse, settings: PatchingSettings
) -> pa.Table:
    """The configured patching study as `patching_effects` rows, one pair of dataset rows at a
    time, every image of a row in its one prompt.

    Rows, labels and questions come from the warehouse's `settings.dataset`. A pair whose
    rows do not line up position by position (different image-token counts), or whose hook
    point did not run, is skipped with a warning, so one odd row does not cost the study.
    """
    dataset = settings.dataset
    labels = row_labels_of(warehouse, dataset)
    questions = [q for q in questions_of(warehouse, [dataset]) if q["image_ids"]]
    rows: list[dict[str, Any]] = []
    for clean, corrupted in patch_pairs(labels, questions, settings):
        pair = PatchPair(
            pair_id(clean, corrupted),
            [load_image(path).image for path in clean["paths"]],
            [load_image(path).image for path in corrupted["paths"]],
            clean["prompt"],
            clean["expected"],
        )
        try:
            rows += activation_patching(
                loaded, [pair], settings.layers, settings.positions, dataset=dataset
            )
        except (InterventionError, HookPointError) as error:
            log.warning("pair %s skipped: %s", pair.pair_id, error)
    return rows_table(rows, PATCHING_EFFECTS)


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
