"""What each interpretability analysis costs per image, beside the plain forward pass, on the
tiny and small presets of LLaVA and Qwen2-VL, all in one run: attention maps (every LLM
layer), the logit lens (every layer), Grad-CAM and input x gradient, activation patching (one
clean/corrupted pair, one layer, all positions) and zero head ablation (one layer's heads).

Timings are the median over the images of the wall time per image, batch size 1, after one
warm-up call each, on the machine's default torch threads.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.probes import _load_average, _machine
from lens_assets.analyses.attention import attention_maps
from lens_assets.analyses.attribution import attribute, gradcam_layer
from lens_assets.analyses.interventions import (
    PatchPair,
    Sample,
    activation_patching,
    head_ablation,
    prepare_input,
    run_logits,
)
from lens_assets.analyses.logit_lens import logit_lens
from lens_assets.capture.loading import LoadedModel, load_model, release
from lens_assets.capture.tiny import build_tiny
from lens_assets.config import parse_model_config
from lens_assets.data.generators import generate, params_model

ARCHITECTURES = ("llava", "qwen2-vl")
PRESETS = ("tiny", "small")
PROMPT = "What is the background colour?"
LAYERS = "**language_model.layers.*"


def stroop_images(count: int) -> list[Image.Image]:
    """Stroop images of one size, so any two make a patching pair for every family."""
    params = params_model("stroop").model_validate({})
    return [sample.image for sample in generate("stroop", params, count, 0)]


def median_ms(work: Callable[[Image.Image, Image.Image], Any], images: list[Image.Image]) -> float:
    work(images[0], images[1])  # warm-up: first-call allocations, lazy imports
    times = []
    for index in range(len(images) - 1):
        start = time.perf_counter()
        work(images[index], images[index + 1])
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def analyses(loaded: LoadedModel) -> dict[str, Callable[[Image.Image, Image.Image], Any]]:
    last_layer = [n for n in loaded.module_names if n.endswith("language_model.layers.1")]
    cam = gradcam_layer(loaded)
    return {
        "plain forward": lambda image, _: run_logits(loaded, prepare_input(loaded, image, PROMPT)),
        "attention maps": lambda image, _: attention_maps(loaded, [image], [PROMPT], [LAYERS]),
        "logit lens": lambda image, _: logit_lens(loaded, [image], [PROMPT], ["red"]),
        "Grad-CAM": lambda image, _: attribute(loaded, image, PROMPT, [cam], pixels=False),
        "input x gradient": lambda image, _: attribute(loaded, image, PROMPT, [], pixels=True),
        "patching (1 pair, 1 layer)": lambda clean, corrupted: activation_patching(
            loaded, [PatchPair("p", clean, corrupted, PROMPT)], last_layer, ["all"]
        ),
        "head ablation (zero)": lambda image, _: head_ablation(
            loaded, [Sample("s", image, PROMPT)], {last_layer[0]: [0, 1]}
        ),
    }


def run(quick: bool, out_dir: Path) -> dict[str, Any]:
    images = stroop_images(6 if quick else 17)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="lens-interp-") as temp:
        for architecture in ARCHITECTURES:
            for preset in PRESETS[:1] if quick else PRESETS:
                folder = build_tiny(architecture, Path(temp) / f"{architecture}-{preset}", preset)
                config = parse_model_config(
                    {"architecture": architecture, "model_path": str(folder), "modules": ["x"]}
                )
                loaded = load_model(config, f"{architecture}-{preset}", Path(temp), "cpu")
                column = f"{architecture} {preset}"
                results[column] = {name: median_ms(work, images)
                                   for name, work in analyses(loaded).items()}  # fmt: skip
                release(loaded)
                print(column, results[column], flush=True)
    result = {"machine": _machine(), "load_average": _load_average(), "images": len(images) - 1,
              "ms_per_image": results}  # fmt: skip
    suffix = "-quick" if quick else ""
    (out_dir / f"interpretability{suffix}.json").write_text(json.dumps(result, indent=2))
    columns = list(results)
    names = list(next(iter(results.values())))
    lines = [
        "# Interpretability: milliseconds per image (median, batch size 1), and x plain forward",
        "",
        "| analysis | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(
            f"| {name} | "
            + " | ".join(
                f"{results[c][name]} ({results[c][name] / results[c]['plain forward']:.1f}x)"
                for c in columns
            )
            + " |"
            for name in names
        ),
        "",
        f"Machine: {result['machine']['cores']} cores, CPU, float32; "
        f"load average {result['load_average']}.",
    ]
    (out_dir / f"interpretability{suffix}.md").write_text("\n".join(lines) + "\n")
    return result
