"""Tiny remote-code checkpoints, built offline for the trust_remote_code tests.

A folder holds what a hub checkpoint with custom code holds: `config.json` whose `auto_map`
names `configuration_*.py` / `modeling_*.py` beside it, safetensors weights, and a tokenizer
and processor. The code files come from `tests/remote_code_assets/`; each one, when imported,
touches a file in the checkpoint's marker folder, so a test can tell whether a load ran any of
the checkpoint's code.

Two styles:

- `generic`: a LLaVA-like model behind `AutoModelForImageTextToText`, with its own processor
  class behind `AutoProcessor` (the generic adapter's path);
- `cogvlm`: CogVLM's public interface behind `AutoModelForCausalLM` (a tokenizer only, the
  prompt built by the model's `build_conversation_input_ids`, images as a list of lists,
  vision positions marked by `token_type_ids`), so the CogVLM adapter runs offline.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPImageProcessor, PreTrainedModel

from lens_assets.capture.tiny.llava import CHAT_TEMPLATE
from lens_assets.capture.tiny.tokenizer import build_tokenizer

ASSETS = Path(__file__).resolve().parent / "remote_code_assets"
MARKER_LINE = re.compile(r'^RUN_MARKER_DIR = ""$', re.MULTILINE)
IMAGE_SIZE = 32
PATCH_SIZE = 8
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2


@dataclass(frozen=True)
class RemoteCheckpoint:
    """A built folder and the folder its code files leave a trace in when imported."""

    path: Path
    marker_dir: Path

    def code_that_ran(self) -> list[str]:
        return sorted(p.stem for p in self.marker_dir.glob("*.ran"))


@dataclass(frozen=True)
class Style:
    files: tuple[str, ...]  # code files copied into the checkpoint
    auto_map: dict[str, str]  # config.json's auto_map
    processor_auto_map: dict[str, str] | None = None  # processor_config.json's, if any


STYLES: dict[str, Style] = {
    "generic": Style(
        files=(
            "configuration_lens_tiny.py",
            "modeling_lens_tiny.py",
            "processing_lens_tiny.py",
            "lens_tiny_layers.py",
        ),
        auto_map={
            "AutoConfig": "configuration_lens_tiny.LensTinyRemoteConfig",
            "AutoModelForImageTextToText": (
                "modeling_lens_tiny.LensTinyRemoteForConditionalGeneration"
            ),
        },
        processor_auto_map={"AutoProcessor": "processing_lens_tiny.LensTinyRemoteProcessor"},
    ),
    "cogvlm": Style(
        files=("configuration_lens_cogvlm.py", "modeling_lens_cogvlm.py", "lens_tiny_layers.py"),
        auto_map={
            "AutoConfig": "configuration_lens_cogvlm.LensCogVLMConfig",
            "AutoModelForCausalLM": "modeling_lens_cogvlm.LensCogVLMForCausalLM",
        },
    ),
}


def build_remote_checkpoint(
    folder: Path, style: str = "generic", marker_dir: Path | None = None, seed: int = 0
) -> RemoteCheckpoint:
    """Write a tiny remote-code checkpoint of `style` into `folder`."""
    spec = STYLES[style]
    marker_dir = marker_dir or folder.with_name(f"{folder.name}-ran")
    marker_dir.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        named_tokens={"image_token": "<image>"} if style == "generic" else None,
        add_bos=style == "generic",
    )
    model = _model(style, tokenizer, seed)
    model.save_pretrained(folder)
    _update_json(folder / "config.json", auto_map=spec.auto_map)
    if style == "generic":
        processor = _generic_processor(tokenizer)
        processor.save_pretrained(folder)
        _update_json(folder / "processor_config.json", auto_map=spec.processor_auto_map)
    else:
        tokenizer.save_pretrained(folder)
    for name in spec.files:
        source = (ASSETS / name).read_text()
        (folder / name).write_text(MARKER_LINE.sub(f"RUN_MARKER_DIR = {str(marker_dir)!r}", source))
    return RemoteCheckpoint(folder, marker_dir)


def _model(style: str, tokenizer: Any, seed: int) -> PreTrainedModel:
    """The model, built from the asset classes imported as test code (no marker set there)."""
    if style == "generic":
        from tests.remote_code_assets.configuration_lens_tiny import LensTinyRemoteConfig
        from tests.remote_code_assets.modeling_lens_tiny import (
            LensTinyRemoteForConditionalGeneration,
        )

        config: Any = LensTinyRemoteConfig(
            vocab_size=len(tokenizer),
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model_class: type[PreTrainedModel] = LensTinyRemoteForConditionalGeneration
    else:
        from tests.remote_code_assets.configuration_lens_cogvlm import LensCogVLMConfig
        from tests.remote_code_assets.modeling_lens_cogvlm import LensCogVLMForCausalLM

        config = LensCogVLMConfig(
            vocab_size=len(tokenizer),
            vision_config={
                "image_size": IMAGE_SIZE,
                "patch_size": PATCH_SIZE,
                "hidden_size": 24,
                "num_hidden_layers": 2,
                "num_heads": 2,
            },
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model_class = LensCogVLMForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config).to(torch.float32).eval()


def _generic_processor(tokenizer: Any) -> Any:
    from tests.remote_code_assets.processing_lens_tiny import LensTinyRemoteProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    return LensTinyRemoteProcessor(
        image_processor, tokenizer, chat_template=CHAT_TEMPLATE, image_seq_length=PATCHES
    )


def _update_json(path: Path, **values: Any) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")
