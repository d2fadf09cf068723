"""Every picture follows one set of conventions (`analyses.figures`): UI width, layers in model
order, one legend outside the panels, a title that overlaps nothing, nothing clipped. Each
picture is left in tests/artifacts/pictures/ for a look."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lens_assets.analyses import figures, reports
from lens_assets.analyses.attention import render_attention_overlay
from lens_assets.capture.modules import short_layer

OUT = Path(__file__).resolve().parent / "artifacts" / "pictures"
VISION = [f"model.vision_tower.vision_model.encoder.layers.{i}" for i in range(12)]
LANGUAGE = [f"model.language_model.layers.{i}" for i in range(12)]
LAYERS = [*VISION, "model.multi_modal_projector", *LANGUAGE]  # model order
MAX_PIXELS = 800  # the UI's metadata dialog


@pytest.fixture
def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The figures the pictures save, checked for overlaps before they are closed."""
    seen: list[Any] = []
    original = figures.save

    def keep(figure: Any, out: Path) -> Path:
        figure.canvas.draw()
        seen.append(_layout(figure))
        return original(figure, out)

    monkeypatch.setattr(reports, "save", keep)
    yield seen


def _layout(figure: Any) -> dict[str, Any]:
    renderer = figure.canvas.get_renderer()
    axes = [
        a for a in figure.axes if a.get_visible() and a.axison and a.get_label() != "<colorbar>"
    ]
    title = figure._suptitle.get_window_extent(renderer) if figure._suptitle else None
    return {
        "panels": axes,
        "ticks": [[t.get_text() for t in a.get_xticklabels()] for a in axes],
        "legends_inside": [a for a in axes if a.get_legend() is not None],
        "figure_legends": list(figure.legends),
        "title_overlaps": title is not None
        and any(title.overlaps(a.get_window_extent(renderer)) for a in axes),
        "legend_overlaps": any(
            legend.get_window_extent(renderer).overlaps(a.get_window_extent(renderer))
            for legend in figure.legends
            for a in axes
        ),
    }


def _shuffled(items: list[str]) -> list[str]:
    return random.Random(0).sample(items, len(items))


def _in_model_order(ticks: list[str]) -> bool:
    named = [t for t in ticks if t]
    expected = [short_layer(layer) for layer in LAYERS]
    positions = [expected.index(t) for t in named]
    return positions == sorted(positions) and len(named) >= 3


def _width(path: Path) -> int:
    with Image.open(path) as image:
        return image.width


def _probe_rows() -> list[dict[str, Any]]:
    rows = []
    for concept, peak in (("colour", 3), ("shape", 20), ("count", 14)):
        for layer in _shuffled(LAYERS):
            depth = LAYERS.index(layer)
            for pooling in ("mean_image", "last"):
                accuracy = 0.4 + 0.5 * np.exp(-((depth - peak) ** 2) / 20)
                rows.append({"dataset": "clevr-lite", "concept": concept, "layer": layer,
                             "pooling": pooling, "probe": "linear", "accuracy": accuracy,
                             "control_accuracy": 0.35, "selectivity": accuracy - 0.35})  # fmt: skip
    return rows


def _check(path: Path | None, layout: dict[str, Any], panels: int) -> None:
    assert path is not None and path.is_file()
    assert _width(path) <= MAX_PIXELS
    assert len(layout["panels"]) == panels
    assert not layout["legends_inside"], "a legend sits over the data"
    assert not layout["title_overlaps"] and not layout["legend_overlaps"]


def test_probe_curves_draw_one_panel_per_concept_in_model_order(
    drawn_figures: list[dict[str, Any]],
) -> None:
    path = reports.probe_curves(_probe_rows(), "tiny-llava", OUT / "probe_curves.png")
    (layout,) = drawn_figures
    _check(path, layout, panels=3)
    assert [t[0] for t in layout["ticks"]] == [short_layer(VISION[0])] * 3
    assert all(sum(bool(name) for name in t) <= 8 for t in layout["ticks"])  # legible
    assert all(_in_model_order(ticks) for ticks in layout["ticks"])
    assert layout["figure_legends"], "one legend for the figure"


def test_selectivity_heat_map_has_a_row_per_concept_and_layers_in_model_order(
    drawn_figures: list[dict[str, Any]],
) -> None:
    path = reports.selectivity_heatmap(_probe_rows(), "tiny-llava", OUT / "selectivity.png")
    (layout,) = drawn_figures
    _check(path, layout, panels=1)
    (axis,) = layout["panels"]
    assert [t.get_text() for t in axis.get_yticklabels()] == [
        "colour (clevr-lite)", "count (clevr-lite)", "shape (clevr-lite)",
    ]  # fmt: skip
    assert _in_model_order(layout["ticks"][0])
    image = axis.get_images()[0].get_array()
    assert image.shape == (3, len(LAYERS))
    assert int(np.nanargmax(image[0])) == 3  # colour peaks where it was planted


def test_dominance_and_vision_vs_vlm_share_the_conventions(
    drawn_figures: list[dict[str, Any]],
) -> None:
    shares = [
        {"dataset": "stroop", "pooling": pooling, "layer": layer, "cue": cue, "share": 0.25}
        for pooling in ("mean_image", "last")
        for layer in _shuffled(LAYERS)
        for cue in ("word", "font", "background", "none")
    ]
    reports.dominance_by_layer(shares, "tiny-llava", OUT / "dominance.png")
    items = [
        {
            "dataset": "correspondence",
            "task": "match",
            "layer": layer,
            "layer_order": LAYERS.index(layer),
            "stage": "x",
            "feature_accuracy": 0.5,
            "vlm_accuracy": 0.3,
            "chance": 0.25,
        }
        for layer in _shuffled(LAYERS)
    ]
    reports.vision_vs_vlm_by_layer(items, "tiny-llava", OUT / "vision_vs_vlm.png")
    dominance, vision = drawn_figures
    _check(OUT / "dominance.png", dominance, panels=2)
    _check(OUT / "vision_vs_vlm.png", vision, panels=1)
    for layout in (dominance, vision):
        assert all(_in_model_order(ticks) for ticks in layout["ticks"])
        assert layout["figure_legends"]


def test_layer_curves_put_the_legend_below_the_panel(drawn_figures: list[dict[str, Any]]) -> None:
    rows = [{"layer": layer, "positions": where, "recovery": 0.5}
            for layer in _shuffled(LANGUAGE) for where in ("all", "image")]  # fmt: skip
    path = reports.layer_curves(rows, "recovery", "positions", "patching", "recovery",
                                OUT / "patching.png")  # fmt: skip
    (layout,) = drawn_figures
    _check(path, layout, panels=1)
    assert layout["figure_legends"]


def test_cka_heat_map_per_model_pair_leaves_out_pairs_over_too_few_images(
    drawn_figures: list[dict[str, Any]],
) -> None:
    clip = [f"vision_model.encoder.layers.{i}" for i in range(6)]
    rows = [{"model_a": "tiny-llava", "layer_a": a, "model_b": "tiny-clip", "layer_b": b,
             "dataset": "stroop", "pooling": "mean_image", "n": 40,
             "cka": 1.0 - abs(LAYERS.index(a) / len(LAYERS) - j / 6)}
            for a in _shuffled(LAYERS) for j, b in enumerate(clip)]  # fmt: skip
    rows += [{**row, "dataset": "one-image-set", "n": 1} for row in rows]
    path = reports.cka_heatmap(rows, "tiny-llava", "tiny-clip", OUT / "cka-tiny-clip.png")
    (layout,) = drawn_figures
    _check(path, layout, panels=1)  # the one-image set is not drawn
    (axis,) = layout["panels"]
    names = [t.get_text() for t in axis.get_yticklabels() if t.get_text()]
    assert names[0] == short_layer(VISION[0]) and names[-1] == short_layer(LANGUAGE[-1])
    assert axis.get_images()[0].get_array().shape == (len(LAYERS), len(clip))


def test_behaviour_gap_sets_answers_beside_the_best_layer(
    drawn_figures: list[dict[str, Any]],
) -> None:
    rows = [{"dataset": "clevr-lite", "concept": concept, "answer_accuracy": answered,
             "probe_accuracy": probed, "competence_gap": probed - answered,
             "peak_layer": LANGUAGE[3]}
            for concept, answered, probed in (("colour", 0.9, 0.95), ("count", 0.2, 0.8),
                                              ("shape", 0.5, 0.6))]  # fmt: skip
    path = reports.behaviour_gap(rows, "tiny-llava", OUT / "behaviour_gap.png")
    (layout,) = drawn_figures
    _check(path, layout, panels=1)
    (axis,) = layout["panels"]
    labels = [t.get_text() for t in axis.get_yticklabels()]
    assert labels[-1] == "count (clevr-lite)"  # the largest gap on top
    assert layout["figure_legends"]


def test_attention_overlay_fits_the_ui_width(tmp_path: Path) -> None:
    image = Image.new("RGB", (640, 480), (200, 30, 30))
    grid = np.random.default_rng(0).random((24, 24))
    path = render_attention_overlay(image, grid, OUT / "attention.png", title="layers.3")
    assert _width(path) <= MAX_PIXELS


def test_pictures_without_rows_draw_nothing(tmp_path: Path) -> None:
    pictures: list[Callable[..., Path | None]] = [
        reports.probe_curves, reports.selectivity_heatmap, reports.dominance_by_layer,
        reports.vision_vs_vlm_by_layer, reports.behaviour_gap,
    ]  # fmt: skip
    for picture in pictures:
        assert picture([], "m", tmp_path / "x.png") is None
    assert reports.cka_heatmap([], "m", "n", tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_held_out_probes_are_drawn_against_their_shuffled_control(
    drawn_figures: list[dict[str, Any]],
) -> None:
    """protocol vlm-lens has no control task: its pictures set accuracy against the shuffled
    control and say so."""
    rows = [{**row, "control_accuracy": None, "selectivity": None, "shuffled_accuracy": 0.3}
            for row in _probe_rows()]  # fmt: skip
    reports.probe_curves(rows, "tiny-llava", OUT / "probe_curves_vlm_lens.png")
    reports.selectivity_heatmap(rows, "tiny-llava", OUT / "selectivity_vlm_lens.png")
    curves, heat_map = drawn_figures
    _check(OUT / "probe_curves_vlm_lens.png", curves, panels=3)
    labels = [text.get_text() for text in curves["figure_legends"][0].get_texts()]
    assert "shuffled-label control (dashed)" in labels
    image = heat_map["panels"][0].get_images()[0].get_array()
    assert int(np.nanargmax(image[0])) == 3
