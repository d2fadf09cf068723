"""Model configs: VLM-Lens files load unchanged; bad ones fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens_assets.config import (
    MAX_BATCH_SIZE,
    MAX_PROMPT_CHARS,
    ConfigError,
    load_model_config,
    parse_model_config,
    read_yaml,
)

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


def llava_configs(root: Path, **extra_keys: str) -> Path:
    """One minimal LLaVA model config per name under `root/models/llava`, each beginning with
    its own extra keys; returns the folder."""
    models = root / "models" / "llava"
    models.mkdir(parents=True)
    for name, keys in extra_keys.items():
        (models / f"{name}.yaml").write_text(
            keys + "architecture: llava\nmodel_path: x\nmodules: [a]\n"
        )
    return models


def test_a_disabled_config_gets_no_partition_but_still_parses(tmp_path: Path) -> None:
    from lens_assets.catalog import model_configs

    models = llava_configs(tmp_path, on="", off="enabled: false\n")
    (models / "broken.yaml").write_text("enabled: [\n")  # shows its error where it is used
    assert sorted(model_configs(tmp_path)) == ["broken", "on"]
    assert sorted(model_configs(tmp_path, include_disabled=True)) == ["broken", "off", "on"]
    assert load_model_config(models / "off.yaml").enabled is False


def test_the_repo_enables_three_models_the_tutor_and_its_variants_outside_the_demo() -> None:
    """Three plain models and the tutor, trained from tiny-llava, are the demo; the tutor's six
    variants are partitions too (`lens materialize` makes them) but say `demo: false`: the
    study's comparison would triple the demo's time."""
    from lens_assets.catalog import demo_models, model_configs

    assert demo_models() == ["tiny-clip", "tiny-llava", "tiny-qwen2-vl", "tutor"]
    everything = model_configs()
    assert everything["tutor"].kind == "tuning"
    variants = sorted(name for name in everything if name.startswith("tutor-"))
    assert len(variants) == 6 and all(everything[v].kind == "tuning" for v in variants)


def test_a_model_that_says_demo_false_is_a_partition_the_demo_leaves_out(tmp_path: Path) -> None:
    from lens_assets.catalog import demo_models, model_configs

    models = llava_configs(tmp_path, shown="", study="demo: false\n")
    assert sorted(model_configs(tmp_path)) == ["shown", "study"]
    assert demo_models(tmp_path) == ["shown"]
    assert load_model_config(models / "study.yaml").demo is False


def test_a_disabled_tuning_config_gets_no_partition(tmp_path: Path) -> None:
    from lens_assets.catalog import model_configs

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.yaml").write_text("architecture: llava\nmodel_path: x\n")
    (tmp_path / "tuning").mkdir()
    tuning = "base: base\nmethod: full\ntrain: {dataset: shapes}\nsteps: 1\nlearning_rate: 0.1\n"
    (tmp_path / "tuning" / "on.yaml").write_text(tuning)
    (tmp_path / "tuning" / "off.yaml").write_text(tuning + "enabled: false\n")
    assert sorted(model_configs(tmp_path)) == ["base", "on"]
    assert sorted(model_configs(tmp_path, include_disabled=True)) == ["base", "off", "on"]


# -- strict scalars (issue 16): a config says what it means, or fails naming the key ----------


@pytest.mark.parametrize("value", ["yes", "true", "True", 1])
def test_a_quoted_or_numeric_trust_remote_code_is_an_error_not_a_grant(value: object) -> None:
    with pytest.raises(ConfigError, match=r"trust_remote_code: must be a YAML boolean"):
        parse_model_config({**MINIMAL, "trust_remote_code": value})


@pytest.mark.parametrize("value", ["yes", "true", 1])
def test_a_quoted_trust_remote_code_under_model_is_an_error_not_a_grant(value: object) -> None:
    with pytest.raises(ConfigError, match=r"model: trust_remote_code must be a YAML boolean"):
        parse_model_config({**MINIMAL, "model": [{"trust_remote_code": value}]})


def test_only_a_yaml_boolean_true_grants_remote_code(tmp_path: Path) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text("architecture: llava\nmodel_path: x\nmodules: [a]\ntrust_remote_code: true\n")
    assert load_model_config(path).remote_code_requested is True
    path.write_text(
        "architecture: llava\nmodel_path: x\nmodules: [a]\nmodel:\n  - trust_remote_code: true\n"
    )
    assert load_model_config(path).remote_code_requested is True


@pytest.mark.parametrize("field", ["trust_remote_code", "enabled", "pooled_output"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1.0])
def test_boolean_fields_accept_only_booleans(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"{field}: must be a YAML boolean.*{value!r}"):
        parse_model_config({**MINIMAL, field: value})


@pytest.mark.parametrize("value", [True, 1.0, 8.0, "8"])
def test_batch_size_accepts_only_integers(value: object) -> None:
    with pytest.raises(ConfigError, match=r"batch_size: must be an integer"):
        parse_model_config({**MINIMAL, "batch_size": value})


@pytest.mark.parametrize("value", [MAX_BATCH_SIZE + 1, 10**23, 2**63])
def test_batch_size_is_capped_at_validation(value: int) -> None:
    with pytest.raises(ConfigError, match=rf"batch_size: at most {MAX_BATCH_SIZE} images"):
        parse_model_config({**MINIMAL, "batch_size": value})


@pytest.mark.parametrize("written", ["1e23", "1.0e+23", "100000000000000000000000"])
def test_batch_size_1e23_in_a_file_fails_at_validation(tmp_path: Path, written: str) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(f"architecture: llava\nmodel_path: x\nmodules: [a]\nbatch_size: {written}\n")
    with pytest.raises(ConfigError, match=r"batch_size: (must be an integer|at most 4096)"):
        load_model_config(path)


def test_the_largest_batch_size_is_accepted() -> None:
    assert parse_model_config({**MINIMAL, "batch_size": MAX_BATCH_SIZE}).batch_size == 4096


def test_a_prompt_longer_than_the_cap_is_refused_naming_its_length() -> None:
    prompt = "word " * 20_000
    with pytest.raises(
        ConfigError, match=rf"prompt: 100000 characters, over the {MAX_PROMPT_CHARS}"
    ):
        parse_model_config({**MINIMAL, "prompt": prompt})


@pytest.mark.parametrize("path", ["", "   "])
def test_an_empty_model_path_is_refused(path: str) -> None:
    with pytest.raises(ConfigError, match="model_path is empty"):
        parse_model_config({**MINIMAL, "model_path": path})


@pytest.mark.parametrize("device", ["meta", "META", "meta:0"])
def test_the_meta_device_is_refused_in_the_config(device: str) -> None:
    with pytest.raises(ConfigError, match=r"device: .*holds no data.*auto, cpu or cuda"):
        parse_model_config({**MINIMAL, "device": device})


def test_a_config_read_again_is_the_file_as_it_is_now_and_not_what_a_caller_changed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("pooling: [mean_image]\nmodel: {torch_dtype: float32}\n")
    first = read_yaml(path, "model config")
    first["model"]["torch_dtype"] = "float16"
    first["pooling"].append("last")
    assert read_yaml(path, "model config") == {
        "pooling": ["mean_image"],
        "model": {"torch_dtype": "float32"},
    }
    path.write_text("pooling: [last]\nmodel: {torch_dtype: float32}\n")
    assert read_yaml(path, "model config")["pooling"] == ["last"]
