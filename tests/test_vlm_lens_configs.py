"""VLM-Lens's configs mean in LensFlow what they meant in VLM-Lens (issue 19, points 1 and 2).

VLM-Lens compiles each `modules` entry as a regular expression and hooks a module whose name it
fullmatches; its configs were written for transformers 4.x names. A config in its format is read
the same way here: the selection equals `re.fullmatch` over today's names, or over the 4.x names
where the pattern matches none of today's. Every key its shipped configs use loads, a config
without `pooling_method` stores the unpooled tensor, and `lens modules` helps write `modules`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from lens_assets.resources import warehouse as warehouse_module
from lens_assets.resources.warehouse import Warehouse
from torch import nn

from lens_assets.capture.extraction import extract_loaded
from lens_assets.capture.legacy_names import legacy_names
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.modules import ModuleSelectionError, resolve_modules, select_modules
from lens_assets.capture.pooling import pool
from lens_assets.capture.token_roles import DEFAULT_POOLINGS, UNPOOLED, TokenRole
from lens_assets.cli import main
from lens_assets.config import ConfigError, ModelConfig, load_model_config, parse_model_config
from lens_assets.data.images import folder_images
from lens_assets.data.kinds import HfDataset, vlm_lens_dataset

# One VLM-Lens config per pattern style its shipped configs use, against the tiny checkpoint of
# that family: literal 4.x names (llava-1.5-7b-hf.yaml), `language_model.*` (bakLlava,
# LLaVA-NeXT), `.*language_model.*`, `\d+` classes (InternVL's and CLIP's `vision_model...`),
# and today's names read as a regex (27 modules, where the same glob selects 2).
STYLES = [
    ("llava", "language_model.model.layers.1.post_attention_layernorm"),
    ("llava", "vision_tower.vision_model.encoder.layers.1.layer_norm2"),
    ("llava", "language_model.*"),
    ("llava", ".*language_model.*"),
    ("llava", "model.language_model.layers.*"),
    ("llava", r"vision_tower.vision_model.encoder.layers.\d+"),
    ("clip", r"vision_model.encoder.layers.\d+"),
    ("qwen2-vl", r"visual.blocks.\d+"),
    ("qwen2-vl", r"model.layers.\d+.mlp"),
]


def vlm_lens_file(tmp_path: Path, model_path: Path, body: str, name: str = "vlm-lens") -> Path:
    """A config in VLM-Lens's own format (`output_db`, `model:` as one-key maps)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"architecture: llava\nmodel_path: {model_path}\nmodel:\n  - torch_dtype: float32\n"
        f"output_db: output/{name}.db\n{body}"
    )
    return path


def expected_by_fullmatch(pattern: str, loaded: LoadedModel) -> set[str]:
    """What VLM-Lens's `re.fullmatch` selects: today's names, else the 4.x names."""
    names = loaded.module_names
    today = {name for name in names if re.fullmatch(pattern, name)}
    if today:
        return today
    old = legacy_names(loaded.model, names)
    return {name for name, was in old.items() if re.fullmatch(pattern, was)}


def containers(loaded: LoadedModel, names: set[str]) -> set[str]:
    modules = dict(loaded.model.named_modules())
    return {n for n in names if isinstance(modules[n], nn.ModuleList | nn.ModuleDict)}


@pytest.mark.parametrize(("architecture", "pattern"), STYLES)
def test_each_pattern_style_selects_what_fullmatch_selects(
    architecture: str,
    pattern: str,
    tmp_path: Path,
    tiny_dir: Path,
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    body = f"modules:\n  - {pattern}\n"
    config = load_model_config(vlm_lens_file(tmp_path, tiny_dir / architecture, body))
    assert config.pattern_syntax == "regex"
    loaded = load_tiny(architecture)

    selection = resolve_modules(
        loaded.module_names, config.modules, loaded.model, config.pattern_syntax
    )

    expected = expected_by_fullmatch(pattern, loaded)
    assert expected  # every style selects something on its family
    assert set(selection.matched) == expected
    assert set(selection.never_run) == containers(loaded, expected)
    assert set(selection.hooked) == expected - containers(loaded, expected)
    for name, written in selection.written.items():  # the 4.x name the pattern matched
        assert re.fullmatch(pattern, written) and name in expected


def test_the_measured_selections_on_tiny_llava(load_tiny: Callable[[str], LoadedModel]) -> None:
    """The figures the issue measured: `.*language_model.*` 31 modules (an error as a glob),
    `model.language_model.layers.*` 27 as a regex and 2 as a glob; `language_model.*` in 4.x
    names also reaches the LM head (VLM-Lens's `language_model.lm_head`)."""
    loaded = load_tiny("llava")
    names, model = loaded.module_names, loaded.model

    assert len(resolve_modules(names, [".*language_model.*"], model, "regex").matched) == 31
    with pytest.raises(ModuleSelectionError):
        select_modules(names, [".*language_model.*"], model)
    regex = resolve_modules(names, ["model.language_model.layers.*"], model, "regex")
    assert len(regex.matched) == 27
    assert regex.never_run == ["model.language_model.layers"]
    assert len(select_modules(names, ["model.language_model.layers.*"], model)) == 2
    old_style = resolve_modules(names, ["language_model.*"], model, "regex")
    assert "lm_head" in old_style.hooked
    assert old_style.written["lm_head"] == "language_model.lm_head"
    assert old_style.written["model.language_model.layers.0"] == "language_model.model.layers.0"


def test_an_invalid_regex_names_the_pattern_and_the_glob_switch(
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    loaded = load_tiny("llava")
    with pytest.raises(ModuleSelectionError, match=r"module_syntax: glob") as error:
        select_modules(loaded.module_names, ["model.layers.[0"], loaded.model, "regex")
    assert "'model.layers.[0'" in str(error.value)


def test_a_regex_matching_only_a_container_fails_naming_it(
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    loaded = load_tiny("llava")
    with pytest.raises(ModuleSelectionError, match=r"never runs \(model.language_model.layers\)"):
        select_modules(loaded.module_names, ["model.language_model.layers?"], loaded.model, "regex")


def test_which_configs_read_modules_as_regexes(tmp_path: Path) -> None:
    native = {"architecture": "llava", "model_path": "x", "modules": ["a.*"]}
    assert parse_model_config(native).pattern_syntax == "glob"
    assert parse_model_config({**native, "module_syntax": "regex"}).pattern_syntax == "regex"
    for marker in ({"output_db": "x.db"}, {"pooling_method": "mean"}, {"pooled_output": True}):
        assert parse_model_config({**native, **marker}).pattern_syntax == "regex"
    as_list = parse_model_config({**native, "model": [{"torch_dtype": "auto"}]})
    assert as_list.pattern_syntax == "regex"
    assert parse_model_config({**native, "model": {"torch_dtype": "auto"}}).pattern_syntax == "glob"
    kept = parse_model_config({**native, "output_db": "x.db", "module_syntax": "glob"})
    assert kept.pattern_syntax == "glob"
    with pytest.raises(ConfigError, match="module_syntax"):
        parse_model_config({**native, "module_syntax": "wildcard"})


def test_a_vlm_lens_config_without_pooling_method_stores_the_unpooled_tensor() -> None:
    base = {"architecture": "llava", "model_path": "x", "modules": ["a"]}
    assert parse_model_config(base).pooling == list(DEFAULT_POOLINGS)
    assert parse_model_config({**base, "output_db": "x.db"}).pooling == [UNPOOLED]
    assert parse_model_config({**base, "pooling_method": "None"}).pooling == [UNPOOLED]
    assert parse_model_config({**base, "pooling_method": "max"}).pooling == ["max"]
    explicit = {**base, "output_db": "x.db", "pooling": ["last"]}
    assert parse_model_config(explicit).pooling == ["last"]
    assert parse_model_config({**base, "pooling": ["max"]}).pooling == ["max"]


def test_max_pooling_is_the_elementwise_max_over_real_positions() -> None:
    hidden = torch.tensor(
        [[[1.0, -5.0], [3.0, -2.0], [9.0, 9.0]], [[-1.0, -4.0], [-3.0, -6.0], [-2.0, 0.5]]]
    )
    roles = torch.tensor(
        [
            [TokenRole.TEXT, TokenRole.IMAGE, TokenRole.PAD],  # the pad's 9s never win
            [TokenRole.IMAGE, TokenRole.TEXT, TokenRole.TEXT],
        ]
    )
    (pooled,) = pool(hidden, roles, ["max"])
    assert pooled.pooling == "max"
    assert pooled.samples.tolist() == [0, 1]
    assert pooled.vectors.tolist() == [[3.0, -2.0], [-1.0, 0.5]]


@pytest.mark.parametrize(
    ("pattern", "architecture"),
    [(".*language_model.*", "llava"), ("language_model.*", "llava")],
)
def test_a_vlm_lens_config_extracts_unpooled_rows_under_its_own_names(
    pattern: str,
    architecture: str,
    tmp_path: Path,
    tiny_dir: Path,
    image_dir: Path,
    warehouse: Warehouse,
    load_tiny: Callable[[str], LoadedModel],
) -> None:
    """No `pooling_method`: every token's vector, VLM-Lens's unpooled tensor. The `layers`
    container the pattern also matches never runs: left out, the run goes on. The `tensors`
    view names each layer as the config wrote it, `activations` by today's name."""
    body = f'input_dir: {image_dir}\nprompt: "Describe the color."\nmodules:\n  - {pattern}\n'
    config = load_model_config(vlm_lens_file(tmp_path, tiny_dir / architecture, body))
    loaded = load_tiny(architecture)
    images = folder_images(image_dir)[:2]

    result = extract_loaded(loaded, config, warehouse, {"colours": images}, progress=False)

    expected = expected_by_fullmatch(pattern, loaded)
    assert set(result.modules) == expected - {"model.language_model.layers"}
    stored = warehouse.fetch_arrow(
        "SELECT layer, layer_as_written, count(DISTINCT pooling) AS poolings, "
        "count(DISTINCT row_key) AS rows, count(*) AS n FROM activations GROUP BY ALL"
    ).to_pylist()
    assert {r["layer"] for r in stored} == set(result.modules)
    assert all(r["poolings"] == 1 and r["rows"] == 2 and r["n"] > 2 for r in stored)
    poolings = warehouse.fetch_arrow("SELECT DISTINCT pooling_method FROM tensors").to_pylist()
    assert poolings == [{"pooling_method": UNPOOLED}]
    written = {r["layer"]: r["layer_as_written"] for r in stored}
    shown = set(warehouse.fetch_arrow("SELECT DISTINCT layer FROM tensors").column("layer")
                .to_pylist())  # fmt: skip
    if pattern.startswith(".*"):  # today's names match: written as they are
        assert set(written.values()) == {None} and shown == set(result.modules)
    else:  # 4.x names: the tensors view shows them, and a VLM-Lens query finds the rows
        old = {n: re.sub(r"^model\.language_model", "language_model.model", n) for n in written}
        old["lm_head"] = "language_model.lm_head"
        assert written == old and shown == set(old.values())
        query = "SELECT count(*) AS n FROM tensors WHERE layer = 'language_model.model.layers.1'"
        assert warehouse.fetch_arrow(query).column("n")[0].as_py() > 0


# Every key of every config VLM-Lens's repository ships (compling-wat/vlm-lens, configs/), in
# the forms it writes them.
SHIPPED_KEYS = """\
architecture: pixtral
model_path: {model_path}
model:
  - torch_dtype: auto
  - trust_remote_code: True
  - attn_implementation: eager
forward:
  - max_new_tokens: 1
  - do_sample: True
input_dir: ./data/test-images/
prompt: "Describe the color in this image in one word."
output_db: output/Pixtral-12B-2409.db
pooling_method: None
pooled_output: True
download_path: "/project/huggingface/pixtral-12b" # CHANGE THIS
vis_save_path: "./vis_output"
output_dir: ./output_dir/
device: cpu
modules:
  - layers.19.attention_norm
"""


def test_every_shipped_vlm_lens_key_loads_and_says_what_lensflow_does(tmp_path: Path) -> None:
    path = tmp_path / "pixtral.yaml"
    path.write_text(SHIPPED_KEYS.format(model_path="mistralai/Pixtral-12B-2409"))
    config = load_model_config(path)
    assert config.download_path == "/project/huggingface/pixtral-12b"
    assert config.vis_save_path == "./vis_output"
    assert config.pooled_output is True
    assert config.pooling == [UNPOOLED]
    assert config.remote_code_requested
    notes = "\n".join(config.vlm_lens_notes)
    for key in ("output_db", "download_path", "vis_save_path", "output_dir", "pooled_output"):
        assert f"{key}: " in notes
    config.check_extractable()  # none of these changes what the rows mean


def test_vlm_lens_dataset_blocks_load_and_map_onto_a_dataset(tmp_path: Path) -> None:
    """CLEVR's block (text and image datasets apart) and GQA's; `image_split` is joined to
    the image folder as VLM-Lens joins it."""
    clevr = parse_model_config({
        "architecture": "llava", "model_path": "x", "output_db": "x.db",
        "dataset": [
            {"text_dataset_path": "compling/CLEVR_val_categories"},
            {"image_dataset_path": "/data/CLEVR_v1.0/images"}, {"text_split": "boolean"},
            {"image_split": "val"}, {"prompt_column": "Q"}, {"label_column": "A"},
            {"image_column": "image_filename"},
        ],
        "modules": ["language_model.model.layers.16"],
    })  # fmt: skip
    mapped = vlm_lens_dataset(clevr.dataset or {})
    assert isinstance(mapped, HfDataset)
    assert (mapped.kind, mapped.path, mapped.split) == (
        "hf_hub", "compling/CLEVR_val_categories", "boolean",
    )  # fmt: skip
    assert mapped.images_root == str(Path("/data/CLEVR_v1.0/images") / "val")
    assert (mapped.image_column, mapped.prompt_column, mapped.answer_column) == (
        "image_filename", "Q", "A",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="image_regex"):
        vlm_lens_dataset({"text_dataset_path": "compling/GQA", "image_regex": "{id}.jpg"})


def test_ablations_load_but_extraction_refuses_them_naming_what_to_use(tmp_path: Path) -> None:
    path = tmp_path / "llava-ablation.yaml"
    path.write_text(
        "architecture: llava\nmodel_path: llava-hf/llava-1.5-7b-hf\noutput_db: x.db\n"
        "modules:\n  - language_model.model.layers.31.post_attention_layernorm\n"
        "ablations:\n  - language_model.model.layers.26.self_attn: [2, 5]\n"
        "  - language_model.model.layers.28.self_attn: [-1]\n"
    )
    config = load_model_config(path)
    assert config.ablations == {
        "language_model.model.layers.26.self_attn": [2, 5],
        "language_model.model.layers.28.self_attn": [-1],
    }
    with pytest.raises(ConfigError, match="ablation_effects"):
        config.check_extractable()


def test_input_dir_is_read_without_recursing_as_vlm_lens_reads_it(tmp_path: Path) -> None:
    """VLM-Lens lists `input_dir` with os.listdir: images in subfolders are not read."""
    from PIL import Image

    (tmp_path / "red").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "blue.png")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red" / "red_01.png")
    assert folder_images(tmp_path) == [tmp_path / "blue.png"]


def lens(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_lens_modules_needs_no_modules_and_prints_a_list_to_paste(
    tmp_path: Path, tiny_dir: Path
) -> None:
    path = vlm_lens_file(tmp_path, tiny_dir / "llava", 'prompt: "Describe."\n')
    warehouse = str(tmp_path / "wh")

    listed = lens("modules", str(path), "--warehouse", warehouse)
    assert listed.exit_code == 0, listed.output
    assert "regular expressions" in listed.stderr and "VLM-Lens's format" in listed.stderr
    assert "note: output_db:" in listed.stderr
    assert "model.language_model.layers.0" in listed.stdout

    pasted = lens(
        "modules", str(path), "--match", ".*language_model.*", "--yaml", "--warehouse", warehouse
    )
    assert pasted.exit_code == 0, pasted.output
    lines = pasted.stdout.splitlines()
    assert lines[0] == "modules:" and len(lines) == 1 + 30  # 31 matched, `layers` never runs
    assert "  - model.language_model.layers" not in lines
    # Pasted back into the config, the list selects the same modules.
    with_list = vlm_lens_file(tmp_path, tiny_dir / "llava", pasted.stdout, name="pasted")
    again = lens("modules", str(with_list), "--warehouse", warehouse)
    marked = [line.split()[1] for line in again.stdout.splitlines() if line.startswith("*")]
    assert marked == [line.removeprefix("  - ") for line in lines[1:]]

    globbed = lens(
        "modules", str(path), "--syntax", "glob", "--match", "model.language_model.layers.*",
        "--warehouse", warehouse,
    )  # fmt: skip
    assert "globs" in globbed.stderr
    assert sum(line.startswith("*") for line in globbed.stdout.splitlines()) == 2


def test_a_native_config_without_modules_still_fails_for_extraction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="modules: required field is missing"):
        parse_model_config({"architecture": "llava", "model_path": "x"})
    config = parse_model_config({"architecture": "llava", "model_path": "x"}, require_modules=False)
    assert isinstance(config, ModelConfig) and config.modules == []


def test_a_warehouse_written_before_the_column_opens_and_shows_its_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written by the schema before sql/018 keep their layer in the `tensors` view."""
    migrations = sorted(warehouse_module.SQL_DIR.glob("[0-9][0-9][0-9]_*.sql"))
    old_sql = tmp_path / "sql"
    shutil.copytree(warehouse_module.SQL_DIR, old_sql)
    for script in migrations:
        if script.name >= "018":
            (old_sql / script.name).unlink()
    warehouse = Warehouse.at(tmp_path / "wh")
    with monkeypatch.context() as patch:
        patch.setattr(warehouse_module, "SQL_DIR", old_sql)
        with warehouse.connect() as con:
            con.execute("""
                INSERT INTO activations (model, architecture, dataset, image_id, prompt, layer,
                                         pooling, token_index, token_role, dim, vector,
                                         row_key, image_ids)
                VALUES ('m', 'llava', 'd', 'img-a', 'Describe.', 'model.language_model.norm',
                        'mean', NULL, NULL, 2, [1.0, 2.0], 'r1', ['img-a'])
            """)
            columns = {r[0] for r in con.execute("DESCRIBE activations").fetchall()}
            assert "layer_as_written" not in columns
    with warehouse.connect():  # today's code opens it: 018 is applied
        pass
    rows = warehouse.fetch_arrow("SELECT layer, tensor_dim FROM tensors").to_pylist()
    assert rows == [{"layer": "model.language_model.norm", "tensor_dim": 2}]
    written = warehouse.fetch_arrow("SELECT layer_as_written FROM activations").to_pylist()
    assert written == [{"layer_as_written": None}]
