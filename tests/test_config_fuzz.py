"""Property-based: whatever a config file holds, reading it ends in a ModelConfig or in a
ConfigError that names the field, never in a traceback from deeper down."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lens_assets.config import (
    FIELD_NAMES,
    ConfigError,
    ModelConfig,
    load_model_config,
    parse_model_config,
)

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
# Keys of three or more word characters: the fixed text of a message ("invalid model config",
# "unknown key", "required field is missing", ...) could hold a short key ('' and "a" are in
# every message), but never the whole error line "  <key>: ..." that `assert_names_the_fields`
# looks for, so the check fails whenever a key goes unnamed.
KEY_CHARACTERS = string.ascii_letters + string.digits + "_"
KEYS = st.sampled_from([*FIELD_NAMES, "modle_path", "poolings", "arch"]) | st.text(
    KEY_CHARACTERS, min_size=3, max_size=10
)
UNKNOWN_KEYS = st.text(KEY_CHARACTERS, min_size=3, max_size=10).filter(
    lambda key: key not in FIELD_NAMES
)
VALID = {"architecture": "llava", "model_path": "x", "modules": ["a"]}
REQUIRED = {name for name, field in ModelConfig.model_fields.items() if field.is_required()}
HEADER = "invalid model config <mapping>:"


def _names(line: str, field: str) -> bool:
    """Whether an error line is about `field` (the field itself or a part of it)."""
    return line.startswith((f"  {field}: ", f"  {field}."))


def assert_names_the_fields(message: str, data: dict) -> None:
    """Each unknown key and each missing required field has its own error line, and every
    error line starts with the key it is about (a model-level error, `(top level)`, names the
    key in its text)."""
    header, *lines = message.splitlines()
    assert header == HEADER, message
    assert lines, message
    unknown, known, missing = (
        set(data) - set(FIELD_NAMES),
        set(data) & set(FIELD_NAMES),
        REQUIRED - set(data),
    )
    for key in unknown:
        assert any(line.startswith(f"  {key}: unknown key") for line in lines), (key, message)
    for field in missing:
        assert f"  {field}: required field is missing" in lines, (field, message)
    for line in lines:
        if line.startswith("   ") or not line.startswith("  "):
            continue  # a message's own continuation line
        assert (
            any(line.startswith(f"  {key}: unknown key") for key in unknown)
            or any(line == f"  {field}: required field is missing" for field in missing)
            or any(_names(line, key) for key in known)
            or (line.startswith("  (top level): ") and any(key in line for key in known))
        ), (line, message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_mapping_validates_or_names_the_field(data: dict) -> None:
    try:
        parse_model_config(data)
    except ConfigError as error:
        assert_names_the_fields(str(error), data)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=5), UNKNOWN_KEYS, VALUES)
def test_the_check_fails_on_a_message_that_does_not_name_the_key(
    data: dict, key: str, value: object
) -> None:
    """The property above is not vacuous: with an unknown key's name blanked out of the real
    message, `assert_names_the_fields` fails."""
    data = {**data, key: value}
    with pytest.raises(ConfigError) as raised:
        parse_model_config(data)
    header, *lines = str(raised.value).splitlines()
    blanked = "\n".join([header, *(line.replace(key, "?") for line in lines)])
    with pytest.raises(AssertionError):
        assert_names_the_fields(blanked, data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*sorted(VALID), "pooling", "batch_size", "prompt", "datasets"]), VALUES)
def test_a_wrong_value_in_a_valid_config_names_that_field(field: str, value: object) -> None:
    try:
        parse_model_config({**VALID, field: value})
    except ConfigError as error:
        header, *lines = str(error).splitlines()
        assert header == HEADER
        assert lines and all(_names(line, field) for line in lines), str(error)


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
