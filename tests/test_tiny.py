"""Tiny checkpoints: real transformers classes, built offline, loaded like a hub model."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from lens_assets.capture.tiny import build_tiny

EXPECTED = {
    "llava": (AutoModelForImageTextToText, "LlavaForConditionalGeneration", True),
    "qwen2-vl": (AutoModelForImageTextToText, "Qwen2VLForConditionalGeneration", True),
    "clip": (AutoModel, "CLIPModel", False),
}


@pytest.mark.parametrize("architecture", sorted(EXPECTED))
def test_tiny_checkpoint_loads_through_from_pretrained(architecture: str, tiny_dir: Path) -> None:
    folder = tiny_dir / architecture
    auto, class_name, has_template = EXPECTED[architecture]
    model = auto.from_pretrained(folder)
    assert type(model).__name__ == class_name
    processor = AutoProcessor.from_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    assert (folder / "chat_template.jinja").is_file() == has_template
    assert bool(getattr(processor, "chat_template", None)) == has_template
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 3 * 2**20, f"{architecture} tiny checkpoint is {size} bytes"


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_image_token_id_is_the_expanded_placeholder(architecture: str, tiny_dir: Path) -> None:
    folder = tiny_dir / architecture
    config = AutoConfig.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids(processor.image_token)


def test_same_seed_gives_the_same_weights(tmp_path: Path, tiny_dir: Path) -> None:
    build_tiny("llava", tmp_path / "again", seed=0)
    build_tiny("llava", tmp_path / "other", seed=1)
    original = (tiny_dir / "llava" / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == original
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != original


def test_unknown_architecture_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny architecture 'gpt-vision'") as raised:
        build_tiny("gpt-vision", tmp_path)
    assert all(name in str(raised.value) for name in ("clip", "llava", "qwen2-vl"))
