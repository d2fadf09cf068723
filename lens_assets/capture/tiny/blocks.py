"""The text and vision config blocks every tiny builder shares, with per-family overrides.

Each family's preset names its towers' sizes as a :class:`TextSizes` and a :class:`VisionSizes`;
:func:`text_config` and :func:`vision_config` turn them into the family's own config classes.
The sizes' optional fields (``None``) are left out of the config, so the class's own default
(e.g. an ``mlp_ratio`` instead of ``intermediate_size``) applies exactly as if the builder had
never named them; keyword overrides are passed last and win, ``None`` included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import PreTrainedConfig, PreTrainedTokenizerFast

C = TypeVar("C", bound=PreTrainedConfig)

SIGLIP_NORM = [0.5, 0.5, 0.5]  # SigLIP's pixel mean and std

# Special-token roles (``build_tokenizer`` keywords) of the tokenizer lines several families use.
LLAMA_SPECIALS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
GEMMA_SPECIALS = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"}
CHATML_SPECIALS = {"eos": "<|im_end|>", "pad": "<|endoftext|>"}  # "<|im_start|>" comes on top


@dataclass(frozen=True)
class TextSizes:
    """A language model (or a dual encoder's text tower)."""

    hidden: int
    intermediate: int | None
    layers: int
    heads: int
    kv_heads: int | None = None
    head_dim: int | None = None


@dataclass(frozen=True)
class VisionSizes:
    """A ViT-style vision tower; ``image_size`` is its nominal input side in pixels."""

    hidden: int
    intermediate: int | None
    layers: int
    heads: int
    image_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        """Patches per side of one nominal input."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TowerSizes:
    """A preset that is nothing but a vision tower and a text model."""

    vision: VisionSizes
    text: TextSizes


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def text_config(
    config_class: type[C],
    tokenizer: PreTrainedTokenizerFast,
    sizes: TextSizes,
    *,
    max_positions: int,
    **overrides: Any,
) -> C:
    """``config_class`` for ``sizes``, its vocabulary and special ids read off ``tokenizer``
    (some processors add tokens, so the vocabulary is taken after the processor is built)."""
    fields = _present(
        {
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.hidden,
            "intermediate_size": sizes.intermediate,
            "num_hidden_layers": sizes.layers,
            "num_attention_heads": sizes.heads,
            "num_key_value_heads": sizes.kv_heads,
            "head_dim": sizes.head_dim,
            "max_position_embeddings": max_positions,
        }
    )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return config_class(**{**fields, **ids, **overrides})


def vision_config(config_class: type[C], sizes: VisionSizes, **overrides: Any) -> C:
    """``config_class`` for a vision tower of ``sizes``."""
    fields = _present(
        {
            "hidden_size": sizes.hidden,
            "intermediate_size": sizes.intermediate,
            "num_hidden_layers": sizes.layers,
            "num_attention_heads": sizes.heads,
            "image_size": sizes.image_size,
            "patch_size": sizes.patch_size,
        }
    )
    return config_class(**{**fields, **overrides})


def sliding_then_full(layers: int) -> list[str]:
    """Layer types of a decoder that interleaves sliding-window layers with a final global one."""
    return ["sliding_attention"] * (layers - 1) + ["full_attention"]


def center_crop(side: int) -> dict[str, dict[str, int]]:
    """CLIP-style image processor sizing: shortest edge to ``side``, then a centred square."""
    return {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}


def chatml_template(image: str, video: str | None = None) -> str:
    """ChatML turns (``<|im_start|>role\\n...<|im_end|>\\n``) as the Qwen-style families write
    them; an image item becomes ``image`` and a video item ``video`` (when the family has one)."""
    videos = "" if video is None else f"{{% elif item['type'] == 'video' %}}{video}"
    return (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        f"{{% if item['type'] == 'image' %}}{image}{videos}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
