"""Remote-code checkpoints load only behind `trust_remote_code: true`, and then extract like
any other model.

The checkpoints are tiny and built offline (`tests/remote_code.py`); their code files touch a
marker when imported, so a refused load can be shown to have run none of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from lens_assets.resources.runtime import RemoteCodeError
from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters import get_architecture
from lens_assets.capture.adapters.base import ModelLayout
from lens_assets.capture.adapters.cogvlm import COGVLM, CogVLMAdapter
from lens_assets.capture.adapters.glamm import GLAMM, IMAGE_TOKEN_INDEX, GLaMMAdapter, SplicedLayout
from lens_assets.capture.adapters.internlm_xcomposer import XCOMPOSER, XComposerAdapter
from lens_assets.capture.adapters.minicpm import MINICPM, MiniCPMAdapter
from lens_assets.capture.adapters.molmo import MOLMO, MolmoAdapter
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel, load_model, skeleton
from lens_assets.capture.token_roles import TokenRole
from lens_assets.cli import main
from lens_assets.config import ModelConfig, parse_model_config
from tests.remote_code import PATCHES, RemoteCheckpoint, build_remote_checkpoint

GENERIC_MODULES = ["vision_tower.blocks.1", "multi_modal_projector", "language_model.layers.1"]
COGVLM_MODULES = ["model.vision.transformer.layers.1", "model.vision.linear_proj", "model.layers.1"]
POOLINGS = ["mean_image", "mean_text", "last", "cls", "tokens"]
PROMPTS = ["What colour is it?", "Describe the shapes in this picture, please.", "Hm?"]


def lens(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="session")
def remote_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote-code")


@pytest.fixture(scope="session")
def untrusted(remote_root: Path) -> RemoteCheckpoint:
    """Only ever loaded without the grant, so its code must never have run."""
    return build_remote_checkpoint(remote_root / "untrusted", "generic")


@pytest.fixture(scope="session")
def generic(remote_root: Path) -> RemoteCheckpoint:
    return build_remote_checkpoint(remote_root / "generic", "generic")


@pytest.fixture(scope="session")
def cogvlm(remote_root: Path) -> RemoteCheckpoint:
    return build_remote_checkpoint(remote_root / "cogvlm", "cogvlm")


@pytest.fixture(scope="session")
def load_cogvlm(cogvlm: RemoteCheckpoint, remote_root: Path) -> Callable[[], LoadedModel]:
    cache: list[LoadedModel] = []

    def load() -> LoadedModel:
        if not cache:
            config = cogvlm_config(cogvlm, model=[{"trust_remote_code": True}])
            cache.append(load_model(config, "tiny-cogvlm", remote_root, device="cpu"))
        return cache[0]

    return load


def generic_config(checkpoint: RemoteCheckpoint, **overrides: Any) -> ModelConfig:
    # A LLaVA-like model shipped as remote code: the llava family, the generic adapter.
    data = {
        "architecture": "llava",
        "model_path": str(checkpoint.path),
        "modules": GENERIC_MODULES,
        "prompt": "What colour is the shape?",
        "pooling": POOLINGS,
        **overrides,
    }
    return parse_model_config(data)


def cogvlm_config(checkpoint: RemoteCheckpoint, **overrides: Any) -> ModelConfig:
    data = {
        "architecture": "cogvlm",
        "model_path": str(checkpoint.path),
        "modules": COGVLM_MODULES,
        "prompt": "What colour is the shape?",
        "pooling": POOLINGS,
        **overrides,
    }
    return parse_model_config(data)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# -- (a) no grant: refused, naming the setting, and nothing from the folder ran ----------------


@pytest.mark.parametrize(
    "grant",
    [
        {},
        {"trust_remote_code": False},
        {"model": [{"trust_remote_code": False}]},
        {"model": [{"trust_remote_code": "false"}, {"torch_dtype": "float32"}]},
    ],
    ids=["absent", "false", "vlm-lens-false", "vlm-lens-quoted-false"],
)
def test_load_without_the_grant_is_refused_before_any_checkpoint_code_runs(
    untrusted: RemoteCheckpoint, remote_root: Path, grant: dict[str, Any]
) -> None:
    config = generic_config(untrusted, **grant)
    assert config.remote_code_requested is False
    with pytest.raises(RemoteCodeError, match="trust_remote_code: true"):
        load_model(config, "untrusted", remote_root, device="cpu")
    with pytest.raises(RemoteCodeError, match="trust_remote_code: true"):
        skeleton(config, remote_root)  # what `lens modules` builds
    assert untrusted.code_that_ran() == []


def test_lens_cli_without_the_grant_fails_cleanly_and_runs_nothing(
    untrusted: RemoteCheckpoint, image_dir: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "untrusted.yaml",
        {
            "architecture": "llava",
            "model_path": str(untrusted.path),
            "input_dir": str(image_dir),
            "modules": GENERIC_MODULES,
        },
    )
    for args in (["modules", str(config)], ["extract", str(config), "--device", "cpu"]):
        result = lens(*args, "--warehouse", str(tmp_path / "wh"))
        assert result.exit_code != 0
        assert "trust_remote_code: true" in result.output
        assert "Traceback" not in result.output
    assert untrusted.code_that_ran() == []


# -- (b) with the grant: `lens extract` stores rows like for any other model -------------------


def test_lens_extract_with_the_grant_stores_rows_with_image_roles(
    generic: RemoteCheckpoint, image_dir: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "tiny-remote.yaml",
        {
            "architecture": "llava",
            "model_path": str(generic.path),
            "input_dir": str(image_dir),
            "prompt": "What colour is the shape?",
            "modules": GENERIC_MODULES,
            "pooling": ["mean_image", "mean_text", "last", "tokens"],
            "trust_remote_code": True,
        },
    )
    warehouse = str(tmp_path / "wh")
    modules = lens("modules", str(config), "--match", "language_model.layers.*")
    assert modules.exit_code == 0, modules.output
    assert "language_model.layers.1" in modules.stdout

    result = lens(
        "extract", str(config), "--batch-size", "2", "--device", "cpu", "--warehouse", warehouse
    )
    assert result.exit_code == 0, result.output
    assert "5 rows x 3 modules" in result.stdout
    # AutoConfig, the model class and AutoProcessor all got the grant: each file was imported.
    assert generic.code_that_ran() == [
        "configuration_lens_tiny",
        "modeling_lens_tiny",
        "processing_lens_tiny",
    ]

    def sql(query: str) -> list[dict[str, Any]]:
        out = lens("sql", query, "--format", "json", "--warehouse", warehouse)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    pooled = sql(
        "SELECT layer, pooling, count(DISTINCT image_id) AS images FROM activations "
        "WHERE pooling <> 'tokens' GROUP BY ALL ORDER BY ALL"
    )
    assert {(r["layer"], r["pooling"]) for r in pooled} == {
        (layer, pooling) for layer in GENERIC_MODULES for pooling in ("mean_image", "last")
    } | {("language_model.layers.1", "mean_text")}
    assert {r["images"] for r in pooled} == {5}
    # Every image's <image> expands to one LLM position per patch, each with the image role,
    # as do the vision tower's and projector's positions.
    roles = sql(
        "SELECT layer, token_role, count(*) AS n, count(DISTINCT image_id) AS images "
        "FROM activations WHERE pooling = 'tokens' GROUP BY ALL ORDER BY ALL"
    )
    image_rows = {r["layer"]: r for r in roles if r["token_role"] == "image"}
    assert {layer: (r["n"], r["images"]) for layer, r in image_rows.items()} == {
        layer: (5 * PATCHES, 5) for layer in GENERIC_MODULES
    }
    assert {(r["layer"], r["token_role"]) for r in roles} == {
        *((layer, "image") for layer in GENERIC_MODULES),
        ("language_model.layers.1", "text"),
    }
    runs = sql("SELECT model, n_images, batch_size FROM runs")
    assert runs == [{"model": "tiny-remote", "n_images": 5, "batch_size": 2}]


# -- (c) VLM-Lens's `model: [{trust_remote_code: true}]` grants it too --------------------------


def test_vlm_lens_model_list_grants_remote_code() -> None:
    config = parse_model_config(
        {
            "architecture": "cogvlm",
            "model_path": "somewhere",
            "modules": ["model.layers.1"],
            "model": [{"trust_remote_code": True}, {"torch_dtype": "float32"}],
        }
    )
    assert config.trust_remote_code is False
    assert config.remote_code_requested is True
    # The grant goes to from_pretrained once, as its own argument, not among the kwargs.
    assert config.model_kwargs == {"dtype": "float32"}


def test_cogvlm_adapter_extracts_through_the_remote_interface(
    load_cogvlm: Callable[[], LoadedModel], cogvlm: RemoteCheckpoint, images: list[Image.Image]
) -> None:
    loaded = load_cogvlm()
    assert isinstance(loaded.architecture.adapter, CogVLMAdapter)
    assert cogvlm.code_that_ran() == ["configuration_lens_cogvlm", "modeling_lens_cogvlm"]
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare(loaded.processor, images[:3], PROMPTS)
    pieces = capture_batch(loaded, images[:3], PROMPTS, COGVLM_MODULES, POOLINGS)
    tokens = {name: p for name, p in pieces if p.pooling == "tokens"}

    # The LLM's image role sits exactly on the positions CogVLM marks as vision (token type 1):
    # every patch plus boi and eoi.
    llm = tokens["model.layers.1"]
    sample, _, role, _, _ = llm.positions()
    for index in range(3):
        expected = int((inputs["token_type_ids"][index] == 1).sum())
        assert expected == PATCHES + 2
        assert int(((sample == index) & (role == TokenRole.IMAGE)).sum()) == expected
    # The vision tower has its class token first; the projection has dropped it.
    tower = tokens["model.vision.transformer.layers.1"]
    _, index, role, _, _ = tower.positions()
    assert (index[role == TokenRole.CLS] == 0).all()
    assert int((role == TokenRole.CLS).sum()) == 3
    assert int((role == TokenRole.IMAGE).sum()) == 3 * PATCHES
    projection = tokens["model.vision.linear_proj"]
    assert set(projection.positions()[2].tolist()) == {TokenRole.IMAGE}
    assert not any(name == "model.vision.linear_proj" and p.pooling == "cls" for name, p in pieces)


def test_cogvlm_adapter_vectors_do_not_depend_on_the_batch(
    load_cogvlm: Callable[[], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_cogvlm()
    poolings = ["mean_image", "mean_text", "last"]
    together = capture_batch(loaded, images[:3], PROMPTS, COGVLM_MODULES, poolings)
    for index in range(3):
        alone = capture_batch(
            loaded, images[index : index + 1], PROMPTS[index : index + 1], COGVLM_MODULES, poolings
        )
        for (name, batched), (_, single) in zip(together, alone, strict=True):
            row = batched.samples.tolist().index(index)
            torch.testing.assert_close(
                batched.vectors[row], single.vectors[0], atol=1e-5, rtol=1e-4, msg=name
            )


# -- adapter choice and the adapters' own bookkeeping ------------------------------------------


@pytest.mark.parametrize(
    ("family", "model_type", "adapter"),
    [
        ("cogvlm", "", CogVLMAdapter),  # CogVLM's config class sets no model_type
        ("cogvlm", "lens_tiny_cogvlm", CogVLMAdapter),
        ("glamm", "llava", GLaMMAdapter),  # GLaMM checkpoints say "llava"
        ("minicpm", "minicpmv", MiniCPMAdapter),
        ("minicpm", "minicpmo", MiniCPMAdapter),
        ("molmo", "molmo", MolmoAdapter),
        ("internlm-xcomposer", "internlmxcomposer2", XComposerAdapter),
    ],
)
def test_remote_families_pick_their_adapter(family: str, model_type: str, adapter: type) -> None:
    assert BY_NAME[family].remote_code
    config = SimpleNamespace(model_type=model_type)
    assert isinstance(get_architecture(family, config).adapter, adapter)


def test_a_native_family_keeps_the_checkpoint_s_adapter() -> None:
    llava = get_architecture("llava", SimpleNamespace(model_type="lens_tiny_remote"))
    assert type(llava.adapter).__name__ == "Adapter"


def test_remote_adapters_say_they_follow_public_code() -> None:
    for adapter in (COGVLM, MINICPM, MOLMO, XCOMPOSER, GLAMM):
        doc = " ".join((type(adapter).__doc__ or "").split())
        assert "public" in doc and "untested" in doc, type(adapter).__name__


def test_glamm_needs_the_grant_although_its_checkpoint_has_no_auto_map(tmp_path: Path) -> None:
    with pytest.raises(RemoteCodeError, match="trust_remote_code: true"):
        GLAMM.load(str(tmp_path), {}, trust_remote_code=False)


def test_minicpm_roles_follow_image_bound_and_slices_drop_padded_patches() -> None:
    ids = torch.zeros(2, 9, dtype=torch.long)
    inputs = BatchFeature(
        {
            "input_ids": ids,
            "attention_mask": torch.tensor([[1] * 9, [1] * 7 + [0] * 2]),
            "image_bound": [torch.tensor([[1, 3], [4, 6]]), torch.tensor([[2, 4]])],
            "pixel_values": [[torch.zeros(1)] * 2, [torch.zeros(1)]],
            "tgt_sizes": [torch.tensor([[2, 2], [1, 3]]), torch.tensor([[2, 1]])],
        }
    )
    roles = MINICPM.text_roles(inputs, ModelLayout())
    image, text, pad = TokenRole.IMAGE, TokenRole.TEXT, TokenRole.PAD
    assert roles.tolist() == [
        [text, image, image, text, image, image, text, text, text],
        [text, text, image, image, text, text, text, pad, pad],
    ]
    # vpm sees three slices padded to four patches; the second and third have 3 and 2.
    seq = MINICPM.sequences("vpm.encoder.layers.0", torch.randn(3, 4, 5), inputs, ModelLayout(), 2)
    assert seq.roles is not None and seq.tiles is not None
    assert seq.roles.tolist() == [[image] * 4 + [image] * 3 + [pad], [image] * 2 + [pad] * 6]
    assert seq.tiles.tolist() == [[0] * 4 + [1] * 4, [0] * 4 + [-1] * 4]


def test_molmo_roles_follow_image_input_idx_and_padding_crops_are_left_out() -> None:
    images = -torch.ones(2, 3, 4, 6)
    images[0, :2] = 0.5  # sample 0: two crops; sample 1: one
    images[1, :1] = 0.5
    inputs = BatchFeature(
        {
            "input_ids": torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, -1, -1]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
            "images": images,
            "image_input_idx": torch.tensor([[[1, 2], [3, -1], [-1, -1]], [[1, -1]] * 3]),
        }
    )
    roles = MOLMO.text_roles(inputs, ModelLayout())
    image, text, pad = TokenRole.IMAGE, TokenRole.TEXT, TokenRole.PAD
    assert roles.tolist() == [[text, image, image, image, text], [text, image, text, pad, pad]]
    layout = ModelLayout(cls_towers=("model.vision_backbone.image_vit",))
    vit = MOLMO.sequences(
        "model.vision_backbone.image_vit.transformer.resblocks.0", torch.randn(6, 3, 5), inputs,
        layout, 2,
    )  # fmt: skip
    assert vit.roles is not None
    cls = TokenRole.CLS
    assert vit.roles.tolist() == [[cls, image, image] * 2, [cls, image, image] + [pad] * 3]
    projector = MOLMO.sequences(
        "model.vision_backbone.image_projector", torch.randn(2, 3, 2, 5), inputs, layout, 2
    )
    assert projector.tiles is not None
    assert projector.tiles.tolist() == [[0, 0, 1, 1], [0, 0, -1, -1]]


def test_glamm_roles_expand_the_image_placeholder() -> None:
    inputs = BatchFeature(
        {
            "input_ids": torch.tensor(
                [[1, 7, IMAGE_TOKEN_INDEX, 8, 9], [1, IMAGE_TOKEN_INDEX, 8, 0, 0]]
            ),
            "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        }
    )
    roles = GLAMM.text_roles(inputs, SplicedLayout(image_positions=3))
    image, text, pad = TokenRole.IMAGE, TokenRole.TEXT, TokenRole.PAD
    assert roles.tolist() == [
        [text, text, image, image, image, text, text],
        [text, image, image, image, text, pad, pad],
    ]


def test_cogvlm_runs_a_text_only_row_beside_an_image_row_exactly(
    load_cogvlm: Callable[[], LoadedModel], images: list[Image.Image]
) -> None:
    """A row without images is CogVLM's text-only chat (token type 0 throughout, no pixels);
    beside an image row it gives what it gives alone, and it has no image positions."""
    loaded = load_cogvlm()
    poolings = ["mean_text", "last", "tokens"]
    rows, prompts = [[], [images[0]]], ["Name a colour.", PROMPTS[0]]
    together = capture_batch(loaded, rows, prompts, COGVLM_MODULES, poolings)
    alone = capture_batch(loaded, rows[:1], prompts[:1], COGVLM_MODULES, poolings)
    assert {name for name, _ in alone} == {"model.layers.1"}  # the tower does not run
    for name, single in alone:
        (batched,) = [p for n, p in together if n == name and p.pooling == single.pooling]
        keep = batched.samples == 0
        torch.testing.assert_close(batched.vectors[keep], single.vectors, atol=1e-5, rtol=1e-4)
        if single.token_role is not None:
            assert TokenRole.IMAGE not in single.token_role.tolist()


# -- text-only rows of the families whose code is not in the tests -----------------------------
# Fakes that keep only the input contract of each family's public processor or model code.


class _ChatTokenizer:
    pad_token_id = 0

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        return f"<user>{messages[0]['content']}<assistant>"


class _MiniCPMProcessor:
    """MiniCPM-V 2.6's processor: one slice per image, its query tokens between bounds; with
    `images=None` it only tokenizes."""

    tokenizer = _ChatTokenizer()

    def __call__(self, texts: list[str], images: Any, return_tensors: str) -> dict[str, Any]:
        n_images = len(images[0]) if images else 0
        assert texts[0].count("(<image>./</image>)") == n_images
        length = len(texts[0].split())
        ids = torch.arange(1, 5 + length).reshape(1, -1)
        if images is None:
            return {"input_ids": ids}
        return {
            "input_ids": ids,
            "pixel_values": [[torch.zeros(3, 4, 4)]],
            "tgt_sizes": [torch.tensor([[2, 2]])],
            "image_bound": [torch.tensor([[1, 3]])],
        }


def test_minicpm_runs_a_text_only_row_without_slices_or_placeholder() -> None:
    picture = Image.new("RGB", (8, 8))
    inputs = MINICPM.prepare_on(
        _MiniCPMProcessor(), [[picture], []], ["What colour?", "Name a colour."],
        torch.device("cpu"), torch.float32,
    )  # fmt: skip
    assert [len(p) for p in inputs["pixel_values"]] == [1, 0]
    assert inputs["image_bound"][1].shape == (0, 2)
    roles = MINICPM.text_roles(inputs, ModelLayout())
    assert TokenRole.IMAGE in roles[0].tolist() and TokenRole.IMAGE not in roles[1].tolist()
    vpm = MINICPM.sequences("vpm.encoder.layers.0", torch.randn(1, 4, 5), inputs, ModelLayout(), 2)
    assert vpm.roles is not None and set(vpm.roles[1].tolist()) == {TokenRole.PAD}


class _MolmoProcessor:
    """Molmo v1's `process`: two crops of three patches per image; without images only ids."""

    def process(self, images: Any, text: str) -> dict[str, Any]:
        ids = torch.arange(1, 6 + len(text.split()))
        if images is None:
            return {"input_ids": ids}
        return {
            "input_ids": ids,
            "images": torch.zeros(2, 3, 4),
            "image_input_idx": torch.tensor([[1, 2, 3], [4, 5, -1]]),
            "image_masks": torch.ones(2, 3),
        }


def test_molmo_runs_a_text_only_row_as_padding_crops_beside_an_image_row() -> None:
    picture = Image.new("RGB", (8, 8))
    prompts = ["What colour?", "Name a colour."]
    inputs = MOLMO.prepare_on(
        _MolmoProcessor(), [[picture], []], prompts, torch.device("cpu"), torch.float32
    )
    assert inputs["images"].shape == (2, 2, 3, 4)
    assert bool((inputs["images"][1] == -1).all())
    assert bool((inputs["image_input_idx"][1] == -1).all())
    roles = MOLMO.text_roles(inputs, ModelLayout())
    assert roles[0].tolist().count(TokenRole.IMAGE) == 5
    assert TokenRole.IMAGE not in roles[1].tolist()
    vit = MOLMO.sequences("model.vision_backbone.image_vit", torch.randn(4, 3, 5), inputs,
                          ModelLayout(), 2)  # fmt: skip
    assert vit.roles is not None and set(vit.roles[1].tolist()) == {TokenRole.PAD}
    alone = MOLMO.prepare_on(
        _MolmoProcessor(), [[]], prompts[1:], torch.device("cpu"), torch.float32
    )
    assert "images" not in alone
    assert TokenRole.IMAGE not in MOLMO.text_roles(alone, ModelLayout()).tolist()[0]


class _WordTokenizer:
    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        ids = [len(word) + 10 for word in text.split()]
        return SimpleNamespace(input_ids=([1] if add_special_tokens else []) + ids)


class _PixelProcessor:
    def __call__(self, images: list[Image.Image], return_tensors: str) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([torch.full((3, 4, 4), float(sum(i.getpixel((0, 0)))))
                                             for i in images])}  # fmt: skip


def test_glamm_runs_a_text_only_row_without_the_image_sentence() -> None:
    """LLaVA-1 takes one image per sample, so a text-only row beside an image row holds a
    black stand-in, marked padding in the vision modules; its tokens are not expanded."""
    from lens_assets.capture.adapters.remote_code import RemoteProcessor

    processor = RemoteProcessor(_WordTokenizer(), image_processor=_PixelProcessor())
    assert "picture" not in GLAMM.prompt_text(processor, "Name a colour.", 0)
    picture = Image.new("RGB", (8, 8), (200, 10, 10))
    inputs = GLAMM.prepare_on(processor, [[picture], []], ["What colour?", "Name a colour."],
                              torch.device("cpu"), torch.float32)  # fmt: skip
    ids = inputs["input_ids"]
    assert (ids[0] == IMAGE_TOKEN_INDEX).sum() == 1 and (ids[1] == IMAGE_TOKEN_INDEX).sum() == 0
    assert inputs["images"][1].abs().sum() == 0  # the stand-in is black
    roles = GLAMM.text_roles(inputs, SplicedLayout(image_positions=3))
    assert roles[0].tolist().count(TokenRole.IMAGE) == 3
    assert TokenRole.IMAGE not in roles[1].tolist()
    real = int(inputs["attention_mask"][1].sum())
    assert roles[1, :real].tolist() == [TokenRole.TEXT] * real
    tower = GLAMM.sequences("model.vision_tower.encoder.layers.0", torch.randn(2, 5, 6), inputs,
                            ModelLayout(), 2)  # fmt: skip
    assert tower.roles is not None and set(tower.roles[1].tolist()) == {TokenRole.PAD}
    assert TokenRole.IMAGE in tower.roles[0].tolist()
    alone = GLAMM.prepare_on(processor, [[]], ["Name a colour."], torch.device("cpu"),
                             torch.float32)  # fmt: skip
    assert "images" not in alone


class _XComposer25(torch.nn.Module):
    """InternLM-XComposer-2.5's input builder: `interleav_wrap_chat(query, images, ...)` gives
    the embeddings and the image mask; an empty image list gives text alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 6)
        self.tokenizer = _WordTokenizer()
        self.seen: dict[str, Any] = {}

    def vis_processor(self, picture: Image.Image) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    def interleav_wrap_chat(self, query: str, image: list[torch.Tensor], history: list[Any],
                            meta_instruction: str, hd_num: int = 24) -> Any:  # fmt: skip
        ids = torch.tensor(self.tokenizer(query).input_ids)
        text = self.embed(ids)
        pictures = [torch.ones(4, 6) for _ in image]
        embeds = torch.cat([*pictures, text])[None]
        mask = torch.cat([torch.ones(4 * len(image)), torch.zeros(len(ids))])[None]
        return {"inputs_embeds": embeds}, mask

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                im_mask: torch.Tensor) -> Any:  # fmt: skip
        self.seen = {"embeds": inputs_embeds, "mask": attention_mask, "im_mask": im_mask}
        return SimpleNamespace(logits=inputs_embeds)


def test_xcomposer_runs_a_text_only_row_through_chat_s_path_without_an_image() -> None:
    model = _XComposer25()
    picture = Image.new("RGB", (8, 8))
    prompts = ["What colour?", "Name a colour please."]
    inputs = XCOMPOSER.prepare_on(None, [[picture], []], prompts, torch.device("cpu"),
                                  torch.float32)  # fmt: skip
    XCOMPOSER.forward(model, inputs, {})
    assert model.seen["im_mask"][0].sum() == 4 and model.seen["im_mask"][1].sum() == 0
    roles = XCOMPOSER.text_roles(inputs, ModelLayout())
    assert TokenRole.IMAGE not in roles[1].tolist()
    assert int(inputs["attention_mask"][1].sum()) == 1 + len(prompts[1].split())
