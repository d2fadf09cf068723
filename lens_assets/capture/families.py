"""The model families LensFlow covers: one row of data per family, no code paths.

A family is what a user names in `architecture:` (LensFlow's name or VLM-Lens's), what
`lens tiny` builds, and what `lens models` lists. Which adapter reads a loaded model back is
decided by the checkpoint's own `config.model_type` (see `lens_assets.capture.adapters`), so a
family row never branches the engine.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str  # `architecture:` value, `lens tiny` name, configs/models/<name>/
    title: str
    model_class: str  # the transformers class (for remote code: what its auto_map names)
    hub_example: str  # a public checkpoint, for the real-model config
    model_types: tuple[str, ...] = ()  # config.model_type values of its checkpoints
    aliases: tuple[str, ...] = ()  # other accepted names (VLM-Lens's among them)
    extra: str | None = None  # pyproject extra with the packages it needs beyond the base
    requires: tuple[str, ...] = ()  # importable modules that extra provides
    remote_code: bool = False  # loads only with trust_remote_code: true
    tiny: str | None = None  # module under lens_assets.capture.tiny that builds a tiny checkpoint
    # The tiny checkpoint's vision-tower block, projector and LLM layer (tests, configs).
    hook_points: tuple[str, ...] = field(default=())
    encoder: bool = False  # image (and text) towers only: no generation

    @property
    def tested_offline(self) -> bool:
        return self.tiny is not None

    def missing_packages(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


FAMILIES: tuple[Family, ...] = (
    Family("llava", "LLaVA-1.5", "LlavaForConditionalGeneration", "llava-hf/llava-1.5-7b-hf",
           ("llava",), tiny="llava",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("llava-next", "LLaVA-NeXT", "LlavaNextForConditionalGeneration",
           "llava-hf/llava-v1.6-mistral-7b-hf", ("llava_next",), aliases=("llavanext",),
           tiny="llava_next",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("llava-onevision", "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration",
           "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", ("llava_onevision",),
           tiny="llava_onevision",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("blip-2", "BLIP-2", "Blip2ForConditionalGeneration", "Salesforce/blip2-opt-2.7b",
           ("blip-2",), aliases=("blip2",), tiny="blip2",
           hook_points=("vision_model.encoder.layers.1", "language_projection",
                        "language_model.model.decoder.layers.1")),
    Family("instructblip", "InstructBLIP", "InstructBlipForConditionalGeneration",
           "Salesforce/instructblip-vicuna-7b", ("instructblip",), tiny="instructblip",
           hook_points=("vision_model.encoder.layers.1", "language_projection",
                        "language_model.model.layers.1")),
    Family("paligemma", "PaliGemma", "PaliGemmaForConditionalGeneration",
           "google/paligemma-3b-mix-224", ("paligemma",), tiny="paligemma",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("qwen2-vl", "Qwen2-VL", "Qwen2VLForConditionalGeneration",
           "Qwen/Qwen2-VL-2B-Instruct", ("qwen2_vl",), aliases=("qwen",), tiny="qwen2_vl",
           hook_points=("model.visual.blocks.1", "model.visual.merger",
                        "model.language_model.layers.1")),
    Family("qwen2.5-vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration",
           "Qwen/Qwen2.5-VL-3B-Instruct", ("qwen2_5_vl",), aliases=("qwen2_5-vl",),
           tiny="qwen2_5_vl",
           hook_points=("model.visual.blocks.1", "model.visual.merger",
                        "model.language_model.layers.1")),
    Family("qwen3-vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration",
           "Qwen/Qwen3-VL-2B-Instruct", ("qwen3_vl",), tiny="qwen3_vl",
           hook_points=("model.visual.blocks.1", "model.visual.merger",
                        "model.language_model.layers.1")),
    Family("internvl", "InternVL (-hf)", "InternVLForConditionalGeneration",
           "OpenGVLab/InternVL3-1B-hf", ("internvl",), tiny="internvl",
           hook_points=("model.vision_tower.encoder.layer.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("janus", "Janus", "JanusForConditionalGeneration", "deepseek-community/Janus-Pro-1B",
           ("janus",), tiny="janus",
           hook_points=("model.vision_model.encoder.layers.1", "model.aligner",
                        "model.language_model.layers.1")),
    Family("aya-vision", "Aya-Vision", "AyaVisionForConditionalGeneration",
           "CohereLabs/aya-vision-8b", ("aya_vision",), tiny="aya_vision",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("pixtral", "Pixtral (LLaVA with a Pixtral tower)", "LlavaForConditionalGeneration",
           "mistral-community/pixtral-12b", ("llava",), tiny="pixtral",
           hook_points=("model.vision_tower.transformer.layers.1",
                        "model.multi_modal_projector", "model.language_model.layers.1")),
    Family("mistral3", "Mistral3", "Mistral3ForConditionalGeneration",
           "mistralai/Mistral-Small-3.1-24B-Instruct-2503", ("mistral3",), tiny="mistral3",
           hook_points=("model.vision_tower.transformer.layers.1",
                        "model.multi_modal_projector", "model.language_model.layers.1")),
    Family("perception-lm", "PerceptionLM", "PerceptionLMForConditionalGeneration",
           "facebook/Perception-LM-1B", ("perception_lm",), aliases=("plm",),
           extra="perception-lm", requires=("timm",), tiny="perception_lm",
           hook_points=("model.vision_tower.timm_model.blocks.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("idefics3", "Idefics3", "Idefics3ForConditionalGeneration",
           "HuggingFaceM4/Idefics3-8B-Llama3", ("idefics3",), tiny="idefics3",
           hook_points=("model.vision_model.encoder.layers.1", "model.connector",
                        "model.text_model.layers.1")),
    Family("smolvlm", "SmolVLM", "SmolVLMForConditionalGeneration",
           "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", ("smolvlm",), extra="smolvlm",
           requires=("num2words",), tiny="smolvlm",
           hook_points=("model.vision_model.encoder.layers.1", "model.connector",
                        "model.text_model.layers.1")),
    Family("gemma3", "Gemma3", "Gemma3ForConditionalGeneration", "google/gemma-3-4b-it",
           ("gemma3",), tiny="gemma3",
           hook_points=("model.vision_tower.encoder.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("minicpm-v", "MiniCPM-V 4.6", "MiniCPMV4_6ForConditionalGeneration",
           "openbmb/MiniCPM-V-4.6", ("minicpmv4_6",), tiny="minicpm_v",
           hook_points=("model.vision_tower.encoder.layers.1", "model.merger",
                        "model.language_model.layers.1")),
    Family("molmo2", "Molmo2", "Molmo2ForConditionalGeneration", "allenai/Molmo2-4B",
           ("molmo2",), tiny="molmo2",
           hook_points=("model.vision_tower.layers.1", "model.multi_modal_projector",
                        "model.language_model.layers.1")),
    Family("clip", "CLIP", "CLIPModel", "openai/clip-vit-base-patch32", ("clip",), tiny="clip",
           encoder=True,
           hook_points=("vision_model.encoder.layers.1", "visual_projection",
                        "text_model.encoder.layers.1")),
    Family("siglip", "SigLIP", "SiglipModel", "google/siglip-base-patch16-224", ("siglip",),
           tiny="siglip", encoder=True,
           hook_points=("vision_model.encoder.layers.1", "vision_model.head",
                        "text_model.encoder.layers.1")),
    Family("dinov2", "DINOv2", "Dinov2Model", "facebook/dinov2-small", ("dinov2",),
           tiny="dinov2", encoder=True,
           hook_points=("encoder.layer.1", "layernorm")),
    # Remote code only: their modeling files come with the checkpoint.
    Family("cogvlm", "CogVLM", "CogVLMForCausalLM", "THUDM/cogvlm-chat-hf", ("cogvlm",),
           remote_code=True),
    Family("internlm-xcomposer", "InternLM-XComposer", "InternLMXComposer2ForCausalLM",
           "internlm/internlm-xcomposer2d5-7b", ("internlmxcomposer2",), remote_code=True),
    Family("minicpm", "MiniCPM-o / MiniCPM-V 2.x", "MiniCPMO", "openbmb/MiniCPM-o-2_6",
           ("minicpmo", "minicpmv"), aliases=("minicpm-o", "minicpm-v2"), remote_code=True),
    Family("molmo", "Molmo (v1)", "MolmoForCausalLM", "allenai/Molmo-7B-D-0924", ("molmo",),
           remote_code=True),
    Family("glamm", "GLaMM", "GLaMMForCausalLM", "MBZUAI/GLaMM-FullScope", ("glamm",),
           remote_code=True),
)  # fmt: skip

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}
ALIASES: dict[str, str] = {alias: family.name for family in FAMILIES for alias in family.aliases}


class UnknownArchitectureError(ValueError):
    """An architecture name no family answers to."""


def get_family(name: str) -> Family:
    """The family an `architecture:` value names (LensFlow's name or an alias)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in BY_NAME:
        return BY_NAME[key]
    known = sorted([*BY_NAME, *ALIASES])
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownArchitectureError(
        f"unknown architecture {name!r}{hint}; known architectures: {', '.join(known)}"
    )


class MissingExtraError(ImportError):
    """A family needs packages beyond the base install."""


def require_packages(family: Family) -> None:
    missing = family.missing_packages()
    if missing:
        raise MissingExtraError(
            f"the {family.title} family needs {', '.join(missing)}, which is not installed; "
            f'install its extra: pip install -e ".[{family.extra}]"'
        )
