"""Model configs: VLM-Lens files load unchanged; bad ones fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens_assets.config import ConfigError, load_model_config, parse_model_config

VLM_LENS_FILE = """\
architecture: llava
model_path: llava-hf/llava-1.5-7b-hf
model:
  - torch_dtype: float16
  - low_cpu_mem_usage: True
forward:
  - max_new_tokens: 1
input_dir: ./data/test-images/
prompt: "Describe the color in this image in one word."
output_db: output/llava.db
pooling_method: mean
modules:
  - model.vision_tower.vision_model.encoder.layers.*
  - model.language_model.layers.31
"""

MINIMAL = {"architecture": "llava", "model_path": "x", "modules": ["a"]}


def test_vlm_lens_config_file_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "llava-7b.yaml"
    path.write_text(VLM_LENS_FILE)
    config = load_model_config(path)
    assert config.model == {"torch_dtype": "float16", "low_cpu_mem_usage": True}
    assert config.model_kwargs == {"dtype": "float16", "low_cpu_mem_usage": True}
    assert config.forward == {"max_new_tokens": 1}
    assert config.pooling == ["mean"]
    assert config.input_dir == "./data/test-images/"
    assert config.output_db == "output/llava.db"
    assert config.modules[0].endswith("layers.*")


def test_model_kwargs_may_be_a_plain_mapping() -> None:
    config = parse_model_config({**MINIMAL, "model": {"torch_dtype": "bfloat16"}})
    assert config.model_kwargs == {"dtype": "bfloat16"}


def test_vlm_lens_dataset_block_is_accepted() -> None:
    config = parse_model_config(
        {**MINIMAL, "dataset": [{"dataset_path": "compling/CLEVR"}, {"dataset_split": "color"}]}
    )
    assert config.dataset == {"dataset_path": "compling/CLEVR", "dataset_split": "color"}


def test_trust_remote_code_defaults_to_false() -> None:
    config = parse_model_config(MINIMAL)
    assert config.trust_remote_code is False
    assert config.remote_code_requested is False


def test_misspelt_key_names_the_nearest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"modles: unknown key \(did you mean 'modules'\?\)"):
        parse_model_config({**MINIMAL, "modles": ["b"]})


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"batch_size: .*integer.*'lots'"):
        parse_model_config({**MINIMAL, "batch_size": "lots"})


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ConfigError, match="model_path: required field is missing"):
        parse_model_config({"architecture": "llava", "modules": ["a"]})


def test_unknown_pooling_suggests_the_nearest() -> None:
    with pytest.raises(ConfigError, match=r"unknown pooling 'mean_imgae' \(did you mean"):
        parse_model_config({**MINIMAL, "pooling": ["mean_imgae"]})


def test_a_yaml_list_at_top_level_is_rejected_clearly() -> None:
    with pytest.raises(ConfigError, match="expected a YAML mapping"):
        parse_model_config(["architecture", "llava"])


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("architecture: [llava\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML"):
        load_model_config(path)


def test_shipped_tiny_configs_validate() -> None:
    root = Path(__file__).resolve().parent.parent / "configs" / "models"
    paths = sorted(root.glob("**/*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        assert load_model_config(path).modules


def test_a_disabled_config_gets_no_partition_but_still_parses(tmp_path: Path) -> None:
    from lens_assets.catalog import model_configs

    models = tmp_path / "models" / "llava"
    models.mkdir(parents=True)
    body = "architecture: llava\nmodel_path: x\nmodules: [a]\n"
    (models / "on.yaml").write_text(body)
    (models / "off.yaml").write_text("enabled: false\n" + body)
    (models / "broken.yaml").write_text("enabled: [\n")  # shows its error where it is used
    assert sorted(model_configs(tmp_path)) == ["broken", "on"]
    assert sorted(model_configs(tmp_path, include_disabled=True)) == ["broken", "off", "on"]
    assert load_model_config(models / "off.yaml").enabled is False


def test_the_repo_enables_only_the_three_demo_models() -> None:
    from lens_assets.catalog import model_configs

    assert sorted(model_configs()) == ["tiny-clip", "tiny-llava", "tiny-qwen2-vl"]
