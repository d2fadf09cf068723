"""Adapters by checkpoint: `config.model_type` picks how a loaded model is prompted and read.

The generic adapter serves every family transformers supports natively; a family gets its own
adapter only where it truly differs. Keys are `config.model_type`, optionally refined by the
vision tower's type ("llava/pixtral": a LLaVA whose tower is Pixtral). Values name the adapter
as "module:attribute" and are imported on first use, so one family's optional dependency
cannot stop another from loading.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from lens_assets.capture.adapters.base import Adapter, ModelLayout, Sequences
from lens_assets.capture.families import Family, UnknownArchitectureError, get_family

GENERIC = Adapter()

ADAPTERS: dict[str, str] = {
    "qwen2_vl": "lens_assets.capture.adapters.qwen_vl:QWEN_VL",
    "qwen2_5_vl": "lens_assets.capture.adapters.qwen2_5_vl:QWEN2_5_VL",
    "qwen3_vl": "lens_assets.capture.adapters.qwen_vl:QWEN_VL",
    "internvl": "lens_assets.capture.adapters.internvl_aya:DYNAMIC_TILES",
    "aya_vision": "lens_assets.capture.adapters.internvl_aya:DYNAMIC_TILES",
    "llava_next": "lens_assets.capture.adapters.llava_next:ANYRES",
    "llava_onevision": "lens_assets.capture.adapters.llava_next:ANYRES",
    "blip-2": "lens_assets.capture.adapters.blip2:BLIP",
    "instructblip": "lens_assets.capture.adapters.blip2:BLIP",
    "paligemma": "lens_assets.capture.adapters.paligemma:PALIGEMMA",
    "gemma3": "lens_assets.capture.adapters.gemma3:GEMMA3",
    "llava/pixtral": "lens_assets.capture.adapters.pixtral:PIXTRAL",
    "mistral3": "lens_assets.capture.adapters.pixtral:PIXTRAL",
    "minicpmv4_6": "lens_assets.capture.adapters.minicpm_v:MINICPM_V",
    "molmo2": "lens_assets.capture.adapters.molmo2:MOLMO2",
    "idefics3": "lens_assets.capture.adapters.idefics3:SUB_IMAGES",
    "smolvlm": "lens_assets.capture.adapters.idefics3:SUB_IMAGES",
    "perception_lm": "lens_assets.capture.adapters.perception_lm:PACKED_TILES",
    "clip": "lens_assets.capture.adapters.dual_encoder:DUAL_ENCODER",
    "siglip": "lens_assets.capture.adapters.siglip:SIGLIP",
    "siglip2": "lens_assets.capture.adapters.dual_encoder:DUAL_ENCODER",
    "dinov2": "lens_assets.capture.adapters.vision_encoder:VISION_ENCODER",
    # Remote-code families (what they share: lens_assets.capture.adapters.remote_code). Their
    # config classes decide model_type: "minicpmv", "minicpmo", "molmo" and "internlmxcomposer2"
    # are what their public config classes set; "cogvlm" and "glamm" are LensFlow's keys, reached
    # through the family (CogVLM's config class sets no model_type, GLaMM's checkpoints say
    # "llava").
    "cogvlm": "lens_assets.capture.adapters.cogvlm:COGVLM",
    "minicpmv": "lens_assets.capture.adapters.minicpm:MINICPM",
    "minicpmo": "lens_assets.capture.adapters.minicpm:MINICPM",
    "molmo": "lens_assets.capture.adapters.molmo:MOLMO",
    "internlmxcomposer2": "lens_assets.capture.adapters.internlm_xcomposer:XCOMPOSER",
    "glamm": "lens_assets.capture.adapters.glamm:GLAMM",
}


@dataclass(frozen=True)
class Architecture:
    """A loaded model's family and the adapter its checkpoint selected."""

    name: str
    adapter: Adapter
    hub_example: str
    family: Family | None = None


def adapter_for(model_type: str | None, vision_type: str | None = None) -> Adapter:
    """The adapter registered for this checkpoint type, else the generic path."""
    for key in (f"{model_type}/{vision_type}", model_type):
        if key in ADAPTERS:
            module, _, attribute = ADAPTERS[key].partition(":")
            return getattr(importlib.import_module(module), attribute)
    return GENERIC


def checkpoint_types(model_config: Any) -> tuple[str | None, str | None]:
    """(model_type, vision tower model_type) of a transformers config."""
    vision = getattr(model_config, "vision_config", None)
    return getattr(model_config, "model_type", None), getattr(vision, "model_type", None)


def get_architecture(name: str, model_config: Any = None) -> Architecture:
    """The family `name` names, with the adapter its checkpoint's config selects (the family's
    own checkpoint type when no config is given yet)."""
    family = get_family(name)
    if model_config is not None:
        model_type, vision_type = checkpoint_types(model_config)
        if family.remote_code and family.model_types and model_type not in family.model_types:
            # A remote-code checkpoint's own config class decides its model_type (none at all,
            # or a native one such as GLaMM's "llava"): the family the config names decides.
            model_type, vision_type = family.model_types[0], None
        adapter = adapter_for(model_type, vision_type)
    else:
        adapter = adapter_for(family.model_types[0] if family.model_types else None)
    return Architecture(family.name, adapter, family.hub_example, family)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "Architecture",
    "ModelLayout",
    "Sequences",
    "UnknownArchitectureError",
    "adapter_for",
    "checkpoint_types",
    "get_architecture",
]
