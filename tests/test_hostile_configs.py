"""Hostile and careless inputs (issue 16): each fails with one line naming the field or file
and the fix, never a traceback, and loses no stored data."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner, Result
from lens_assets.resources.configurable import VLMRuntimeResource
from lens_assets.resources.runtime import RuntimeConfigError, parse_bytes, resolve_device
from lens_assets.resources.staging import StageDiskFullError
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.capture.adapters.forward import ForwardKeyError, PromptTooLongError
from lens_assets.capture.extraction import capture_batch, extract_loaded
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.cli import main
from lens_assets.config import ConfigError, load_model_config
from lens_assets.data.datasets import load_dataset_config
from tests.conftest import tiny_config

LLAVA_LAYER = "model.language_model.layers.1"


def lens(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def fails_cleanly(result: Result, *expected: str) -> None:
    """The CLI's contract for a bad input: exit non-zero, `Error: ...` naming the cause, and
    no traceback."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ")
    for text in expected:
        assert text in result.output


def config_file(folder: Path, body: str | bytes, name: str = "model.yaml") -> Path:
    path = folder / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return path


VALID = "architecture: llava\nmodel_path: x\nmodules: [a]\n"


# -- 1. config files ---------------------------------------------------------------------------


def test_a_non_utf8_config_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID.encode() + b"prompt: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"{path} is not UTF-8 text \(byte 0xe9 on line 4\)"):
        load_model_config(path)


@pytest.mark.parametrize(
    "body",
    ["[" * 20_000, "{a: " * 20_000, "a:\n" + "- " * 20_000 + "x\n"],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_a_20000_level_deep_config_is_refused_naming_the_file(tmp_path: Path, body: str) -> None:
    path = config_file(tmp_path, body)
    with pytest.raises(ConfigError, match=rf"{path}: nested more than 64 levels deep"):
        load_model_config(path)


def test_a_config_nested_a_few_levels_still_loads(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + "dataset: {a: {b: {c: {d: [1, [2, [3]]]}}}}\n")
    assert load_model_config(path).dataset == {"a": {"b": {"c": {"d": [1, [2, [3]]]}}}}


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + "batch_size: 4\nprompt: hi\nbatch_size: 64\n")
    with pytest.raises(ConfigError, match=r"key 'batch_size' appears twice \(lines 4 and 6\)"):
        load_model_config(path)


def test_a_duplicate_key_in_a_nested_mapping_is_refused(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + "model:\n  dtype: float16\n  dtype: float32\n")
    with pytest.raises(ConfigError, match=r"key 'dtype' appears twice \(lines 5 and 6\)"):
        load_model_config(path)


def test_a_yaml_merge_key_may_still_be_overridden_beside_it(tmp_path: Path) -> None:
    body = VALID + "dataset:\n  <<: {dataset_path: a, dataset_split: x}\n  dataset_split: y\n"
    config = load_model_config(config_file(tmp_path, body))
    assert config.dataset == {"dataset_path": "a", "dataset_split": "y"}


def test_a_dataset_config_with_a_duplicate_key_is_refused_too(tmp_path: Path) -> None:
    path = config_file(tmp_path, "kind: shapes\nsize: 4\nsize: 400\n", "shapes.yaml")
    with pytest.raises(ConfigError, match=rf"dataset config {path}: key 'size' appears twice"):
        load_dataset_config(path)


def test_a_config_file_over_256_kib_is_refused_unread(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + "#" * (256 * 1024) + "\n")
    with pytest.raises(ConfigError, match=rf"{path} is larger than 256 KiB"):
        load_model_config(path)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (VALID.encode() + b"prompt: \xff\n", "is not UTF-8 text"),
        ("[" * 20_000, "nested more than 64 levels deep"),
        (VALID + "modules: [b]\n", "key 'modules' appears twice"),
    ],
    ids=["non-utf8", "deep", "duplicate-key"],
)
def test_lens_extract_reports_a_bad_config_file_in_one_line(
    tmp_path: Path, body: str | bytes, expected: str
) -> None:
    path = config_file(tmp_path, body)
    fails_cleanly(lens("extract", str(path)), str(path), expected)


# -- 2. types: `trust_remote_code: "yes"` (tests/test_config.py has the per-field cases) -------


def test_a_quoted_yes_in_a_config_file_grants_no_remote_code(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + 'trust_remote_code: "yes"\n')
    fails_cleanly(lens("extract", str(path)), "trust_remote_code: must be a YAML boolean")


def test_batch_size_1e23_fails_before_any_inference(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + "batch_size: 1.0e+23\n")
    fails_cleanly(lens("extract", str(path)), "batch_size: must be an integer")


@pytest.mark.parametrize("value", [True, 0, 4097])
def test_the_runtime_resource_bounds_its_batch_size(value: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        VLMRuntimeResource(batch_size=value)


@pytest.mark.parametrize("value", ["lots", "8.5", "0", "100000", "true"])
def test_a_bad_lens_batch_size_variable_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
) -> None:
    monkeypatch.setenv("LENS_BATCH_SIZE", value)
    config = load_model_config(config_file(tmp_path, VALID))
    with pytest.raises(RuntimeConfigError, match=r"LENS_BATCH_SIZE .* from 1 to 4096"):
        VLMRuntimeResource().effective_batch_size(config)


# -- 3. forward keys ---------------------------------------------------------------------------


def test_an_unknown_forward_key_fails_at_load_naming_the_nearest(tiny_dir: Path) -> None:
    config = tiny_config("llava", tiny_dir, forward={"output_attentons": True})
    with pytest.raises(
        ForwardKeyError, match=r"forward: 'output_attentons' \(did you mean 'output_attentions'\?\)"
    ):
        load_model(config, "llava", tiny_dir, device="cpu")


def test_an_unknown_forward_key_fails_before_the_forward_pass(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    with pytest.raises(ForwardKeyError, match=r"'max_new_token' \(did you mean 'max_new_tokens'"):
        capture_batch(
            load_tiny("llava"),
            images[:1],
            ["Shape?"],
            [LLAVA_LAYER],
            ["last"],
            {"max_new_token": 1},
        )


def test_forward_keys_the_model_takes_and_vlm_lens_generation_keys_are_accepted(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    extra = {"use_cache": False, "output_hidden_states": False, "max_new_tokens": 1}
    pieces = capture_batch(
        load_tiny("llava"), images[:1], ["Shape?"], [LLAVA_LAYER], ["last"], extra
    )
    assert [name for name, _ in pieces] == [LLAVA_LAYER]


# -- 4. loading --------------------------------------------------------------------------------


def test_an_unknown_model_kwarg_names_it(tiny_dir: Path) -> None:
    config = tiny_config("llava", tiny_dir, model={"low_cpu_mem_usag": True})
    with pytest.raises(
        RuntimeConfigError,
        match=r"model: low_cpu_mem_usag is neither .* \(did you mean 'low_cpu_mem_usage'\?\)",
    ):
        load_model(config, "llava", tiny_dir, device="cpu")


@pytest.mark.parametrize(
    ("model_path", "expected"),
    [
        ("{tmp}/no-such-folder", "is neither an existing folder nor a hub id"),
        ("a/b/c/d", "is neither an existing folder nor a hub id"),
        ("{tmp}", "is a folder without config.json"),
        ("{tmp}/file.txt", "is a file; point it at the checkpoint folder"),
    ],
    ids=["missing-folder", "malformed-hub-id", "no-config-json", "a-file"],
)
def test_a_bad_model_path_names_it_and_the_fix(
    tmp_path: Path, tiny_dir: Path, model_path: str, expected: str
) -> None:
    (tmp_path / "file.txt").write_text("not a checkpoint")
    config = tiny_config("llava", tiny_dir, model_path=model_path.format(tmp=tmp_path))
    with pytest.raises(RuntimeConfigError, match=rf"model_path '.*' {expected}"):
        load_model(config, "llava", tiny_dir, device="cpu")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("flash_attn") is not None,
    reason="flash_attn is installed here",
)
def test_flash_attention_without_its_package_names_the_package(tiny_dir: Path) -> None:
    config = tiny_config("llava", tiny_dir, model={"attn_implementation": "flash_attention_2"})
    with pytest.raises(
        RuntimeConfigError, match=r"attn_implementation 'flash_attention_2' needs the flash_attn"
    ):
        load_model(config, "llava", tiny_dir, device="cpu")


def test_the_meta_device_is_refused_at_load(tiny_dir: Path) -> None:
    config = tiny_config("llava", tiny_dir)
    with pytest.raises(RuntimeConfigError, match=r"device 'meta' holds no data"):
        load_model(config, "llava", tiny_dir, device="meta")


@pytest.mark.parametrize("name", ["meta", "vulkan", "cuda:x"])
def test_resolve_device_refuses_a_device_that_cannot_run(name: str) -> None:
    with pytest.raises(RuntimeConfigError, match=rf"'{name}'.*auto, cpu or cuda"):
        resolve_device(name)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--device", "meta"], "device 'meta' holds no data"),
        (["--memory-budget", "1.2.3GiB"], "memory budget '1.2.3GiB' is not a size"),
    ],
    ids=["device-meta", "memory-budget"],
)
def test_lens_extract_reports_a_bad_option_in_one_line(
    tmp_path: Path, tiny_dir: Path, image_dir: Path, args: list[str], expected: str
) -> None:
    body = {
        "architecture": "llava",
        "model_path": str(tiny_dir / "llava"),
        "input_dir": str(image_dir),
        "modules": [LLAVA_LAYER],
    }
    path = config_file(tmp_path, yaml.safe_dump(body))
    fails_cleanly(lens("extract", str(path), *args, "--warehouse", str(tmp_path / "wh")), expected)


def test_lens_extract_reports_a_missing_model_path_in_one_line(
    tmp_path: Path, image_dir: Path
) -> None:
    body = {"architecture": "llava", "model_path": str(tmp_path / "gone"), "modules": ["a"]}
    path = config_file(tmp_path, yaml.safe_dump({**body, "input_dir": str(image_dir)}))
    result = lens("extract", str(path), "--warehouse", str(tmp_path / "wh"))
    fails_cleanly(result, "model_path", "is neither an existing folder nor a hub id")


# -- 5. memory budget --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1.2.3GiB", "1..5GB", "4 GiB GiB", "-1GiB", "1e3"])
def test_a_malformed_memory_budget_is_refused_clearly(text: str) -> None:
    with pytest.raises(RuntimeConfigError, match=r"is not a size; write e.g. 4GiB"):
        parse_bytes(text)


def test_memory_budgets_still_parse() -> None:
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes(".5kb") == 500
    assert parse_bytes("9" * 400) == int("9" * 400)  # exact, no float overflow


# -- 7. prompt length --------------------------------------------------------------------------


def test_a_prompt_past_the_models_positions_names_its_tokens_and_the_limit(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    long = " ".join(f"w{i}" for i in range(6_000))  # about 20k tokens; the tiny LLaVA has 4,096
    with pytest.raises(
        PromptTooLongError,
        match=r"sample 1's prompt \(\d+ characters\) is \d+ tokens with its image, over this "
        r"model's limit of 4096 \(text_config.max_position_embeddings\); shorten the prompt",
    ):
        capture_batch(load_tiny("llava"), images[:2], ["Shape?", long], [LLAVA_LAYER], ["last"])


def test_a_clip_prompt_past_its_77_positions_is_refused(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    with pytest.raises(PromptTooLongError, match=r"over this model's limit of 77"):
        capture_batch(
            load_tiny("clip"), images[:1], ["a red cube " * 40], ["visual_projection"], ["last"]
        )


def test_a_20000_word_prompt_in_a_config_is_refused_before_loading(tmp_path: Path) -> None:
    path = config_file(tmp_path, VALID + f"prompt: {'word ' * 20_000}\n")
    fails_cleanly(lens("extract", str(path)), "prompt: ", "characters, over the 65536")


# -- 8. a full disk while staging ---------------------------------------------------------------


def test_a_full_disk_while_staging_keeps_the_previous_partition_and_removes_the_stage(
    load_tiny: Callable[[str], LoadedModel],
    tiny_dir: Path,
    image_dir: Path,
    warehouse: Warehouse,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = load_tiny("llava")
    config = tiny_config("llava", tiny_dir, modules=[LLAVA_LAYER], pooling=["last"])
    sources = {"shapes": sorted(image_dir.glob("*.png"))}
    extract_loaded(loaded, config, warehouse, sources, progress=False)
    query = "SELECT image_id, layer, vector FROM activations ORDER BY ALL"
    before = warehouse.fetch_arrow(query)

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    with pytest.raises(StageDiskFullError) as caught:
        extract_loaded(loaded, config, warehouse, sources, progress=False)
    message = str(caught.value)
    assert str(warehouse.location.staging_dir) in message
    assert "is full" in message and "LENS_WAREHOUSE" in message and "\n" not in message
    assert not list(warehouse.location.staging_dir.glob("run-*"))
    assert warehouse.fetch_arrow(query).equals(before)
