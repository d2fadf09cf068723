"""VLM-Lens configs name modules as transformers 4.x did; they still select today's modules.

The old names are renamed the way transformers renames the model's old checkpoint keys on
load, and a warning names the new name so the config can be updated. A name that matches
nothing, old or new, still fails with the nearest names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from lens_assets.resources.warehouse import Warehouse

from lens_assets.capture.extraction import extract_loaded
from lens_assets.capture.legacy_names import current_names, key_renamings
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import ModuleSelectionError, list_modules, select_modules
from lens_assets.config import ModelConfig, load_model_config
from lens_assets.data.images import folder_images

LOGGER = "lens_assets.capture.modules"

# VLM-Lens's own style: `model:` as a list of one-key maps, `pooling_method`, `output_db`,
# and module names from its transformers 4.x configs (tiny checkpoints have two layers).
VLM_LENS_CONFIGS = {
    "llava": """\
architecture: llava
model_path: {model_path}
model:
  - torch_dtype: float32
output_db: output/llava.db
input_dir: {input_dir}
prompt: "Describe the color in this image in one word."
pooling_method: mean
modules:
  - language_model.model.layers.1.post_attention_layernorm
  - vision_tower.vision_model.encoder.layers.1.layer_norm2
  - multi_modal_projector
""",
    "qwen2-vl": """\
architecture: qwen
model_path: {model_path}
model:
  - torch_dtype: float32
output_db: output/qwen.db
input_dir: {input_dir}
prompt: "Describe the color in this image in one word."
pooling_method: mean
modules:
  - visual.blocks.\\d+
  - model.layers.1
""",
}

# Each old name (VLM-Lens's regexes) as transformers 5 calls it (the first module it selects),
# and the modules it selects.
RENAMED = {
    "llava": {
        "language_model.model.layers.1.post_attention_layernorm": (
            "model.language_model.layers.1.post_attention_layernorm",
            ["model.language_model.layers.1.post_attention_layernorm"],
        ),
        "vision_tower.vision_model.encoder.layers.1.layer_norm2": (
            "model.vision_tower.encoder.layers.1.layer_norm2",
            ["model.vision_tower.encoder.layers.1.layer_norm2"],
        ),
        "multi_modal_projector": ("model.multi_modal_projector", ["model.multi_modal_projector"]),
    },
    "qwen2-vl": {
        "visual.blocks.\\d+": (
            "model.visual.blocks.0",
            ["model.visual.blocks.0", "model.visual.blocks.1"],
        ),
        "model.layers.1": ("model.language_model.layers.1", ["model.language_model.layers.1"]),
    },
}


def vlm_lens_config(
    architecture: str, tiny_dir: Path, image_dir: Path, tmp_path: Path
) -> ModelConfig:
    """The VLM-Lens config written to a file and read back as `lens` reads configs."""
    path = tmp_path / f"vlm-lens-{architecture}.yaml"
    text = VLM_LENS_CONFIGS[architecture].format(
        model_path=tiny_dir / architecture, input_dir=image_dir
    )
    path.write_text(text)
    return load_model_config(path)


def renamed_notices(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER
        and r.levelno == logging.WARNING
        and "transformers 4.x" in r.getMessage()
    ]


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_a_vlm_lens_config_extracts_from_the_renamed_modules(
    architecture: str,
    tiny_dir: Path,
    image_dir: Path,
    tmp_path: Path,
    warehouse: Warehouse,
    load_tiny: Callable[[str], LoadedModel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = vlm_lens_config(architecture, tiny_dir, image_dir, tmp_path)
    assert config.pooling == ["mean"]
    loaded = load_tiny(architecture)
    renamed = RENAMED[architecture]
    assert not set(config.modules) & set(loaded.module_names)  # none matches as written

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = extract_loaded(
            loaded,
            config,
            warehouse,
            {"shapes": folder_images(config.input_dir or image_dir)},
            progress=False,
        )

    selected = {module for _, modules in renamed.values() for module in modules}
    assert result.modules == [name for name in loaded.module_names if name in selected]
    layers = warehouse.fetch_arrow(
        "SELECT DISTINCT layer, pooling FROM activations ORDER BY layer"
    ).to_pylist()
    assert layers == [{"layer": name, "pooling": "mean"} for name in sorted(selected)]
    # VLM-Lens's table keeps the names as the config wrote them (4.x names).
    written = warehouse.fetch_arrow("SELECT DISTINCT layer FROM tensors").column("layer")
    assert not set(written.to_pylist()) & selected
    notices = renamed_notices(caplog)
    assert len(notices) == len(renamed)
    for (old, (new, _)), notice in zip(renamed.items(), notices, strict=True):
        assert repr(old) in notice and repr(new) in notice


def test_the_renaming_is_the_models_own_checkpoint_conversion(
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    """The CLIP tower inside LLaVA lost its `vision_model.` level: renamed by the tower's own
    scoped mapping, after LLaVA's moved it under `model.`."""
    model = load_tiny("llava").model
    assert key_renamings(model)
    assert current_names("vision_tower.vision_model.encoder.layers.1", model)[0] == (
        "model.vision_tower.encoder.layers.1"
    )
    assert current_names("language_model.lm_head", model)[0] == "lm_head"


def test_a_name_that_matches_as_written_is_not_renamed(
    load_tiny: Callable[[str], LoadedModel], caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_tiny("qwen2-vl")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        chosen = select_modules(
            loaded.module_names, ["model.visual.blocks.1", "lm_head"], loaded.model
        )
    assert chosen == ["model.visual.blocks.1", "lm_head"]
    assert renamed_notices(caplog) == []


def test_lens_modules_marks_the_modules_old_names_select(
    load_tiny: Callable[[str], LoadedModel], caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_tiny("llava")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        infos = list_modules(loaded.model, ["language_model.model.layers.*"])
    assert [i.name for i in infos if i.selected] == [
        "model.language_model.layers.0",
        "model.language_model.layers.1",
    ]
    assert "model.language_model.layers.*" in renamed_notices(caplog)[0]


@pytest.mark.parametrize(
    ("architecture", "pattern", "nearest"),
    [
        (
            "llava",
            "language_model.model.layers.1.post_attention_layernom",
            "model.language_model.layers.1.post_attention_layernorm",
        ),
        ("qwen2-vl", "model.layer.1", "model.language_model.layers.1"),
        ("llava", "no_such_tower.blocks.1", None),
    ],
)
def test_a_name_matching_nothing_old_or_new_fails_with_the_nearest_names(
    architecture: str,
    pattern: str,
    nearest: str | None,
    load_tiny: Callable[[str], LoadedModel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    loaded = load_tiny(architecture)
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        pytest.raises(ModuleSelectionError, match="matches no module") as error,
    ):
        select_modules(loaded.module_names, [pattern], loaded.model)
    if nearest is not None:
        assert nearest in str(error.value)
        assert "transformers 5 name" in str(error.value)
    assert renamed_notices(caplog) == []
