"""Property-based: whatever a config file holds, reading it ends in a ModelConfig or in a
ConfigError that names the field, never in a traceback from deeper down."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lens_assets.config import FIELD_NAMES, ConfigError, load_model_config, parse_model_config

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from([*FIELD_NAMES, "modle_path", "poolings", "arch"]) | st.text(max_size=10)
VALID = {"architecture": "llava", "model_path": "x", "modules": ["a"]}


def named_in(message: str, keys: set[str]) -> bool:
    return any(key in message for key in keys) or "(top level)" in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_mapping_validates_or_names_the_field(data: dict) -> None:
    try:
        parse_model_config(data)
    except ConfigError as error:
        assert str(error).startswith("invalid model config")
        assert named_in(str(error), set(data) | set(VALID))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*sorted(VALID), "pooling", "batch_size", "prompt", "datasets"]), VALUES)
def test_a_wrong_value_in_a_valid_config_names_that_field(field: str, value: object) -> None:
    try:
        parse_model_config({**VALID, field: value})
    except ConfigError as error:
        assert field in str(error)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=60))
def test_any_file_text_loads_or_fails_with_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(text)
    try:
        load_model_config(path)
    except ConfigError as error:
        assert str(path) in str(error) or "invalid model config" in str(error)


def test_broken_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(VALID) + "modules: [unclosed\n")
    try:
        load_model_config(path)
    except ConfigError as error:
        assert "not valid YAML" in str(error)
    else:  # pragma: no cover
        raise AssertionError("broken YAML was accepted")


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=80))
def test_any_file_bytes_load_or_fail_with_a_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.yaml"
    path.write_bytes(data)
    try:
        load_model_config(path)
    except ConfigError as error:
        assert str(path) in str(error) or "invalid model config" in str(error)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(min_value=0, max_value=30_000), st.sampled_from(["[", "{a: ", "- ", "a: - "]))
def test_any_nesting_depth_loads_or_fails_with_a_config_error(
    tmp_path: Path, depth: int, opener: str
) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(opener * depth + "x\n")
    try:
        load_model_config(path)
    except ConfigError as error:
        assert str(path) in str(error) or "invalid model config" in str(error)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(FIELD_NAMES), SCALARS, SCALARS)
def test_a_key_given_twice_is_named_never_silently_overwritten(
    tmp_path: Path, key: str, first: object, second: object
) -> None:
    path = tmp_path / "model.yaml"
    body = yaml.safe_dump({key: first}) + yaml.safe_dump({key: second})
    path.write_text(body)
    try:
        load_model_config(path)
    except ConfigError as error:
        assert f"key {key!r} appears twice" in str(error)
    else:  # pragma: no cover
        raise AssertionError(f"{key} given twice was accepted")
