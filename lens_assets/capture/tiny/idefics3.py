"""Idefics3 layout: SigLIP-style vision tower on sub-images -> pixel-shuffle connector -> Llama.

The image processor resizes an image (longest edge to ``size``), rounds it up to whole
``max_image_size`` squares, cuts it into that grid of sub-images and appends the whole image
shrunk to one square (the "global" image). Every sub-image runs through the tower on its batch
axis; samples with fewer sub-images are padded with all-zero images, which the model drops
(the pixel mask marks them). The connector folds ``scale_factor**2`` neighbouring patches into
one token, so each sub-image becomes ``image_seq_len`` ``<image>`` tokens in the LLM, framed by
``<fake_token_around_image>`` and a ``<row_i_col_j>`` (or ``<global-img>``) text marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from .blocks import SIGLIP_NORM, TextSizes, VisionSizes, text_config, vision_config
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
END_OF_UTTERANCE = "<end_of_utterance>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
C = TypeVar("C", bound=PreTrainedConfig)

GRID_SIDE = 6  # the processor knows <row_i_col_j> markers for i, j in 1..6

# "User:<image>text<end_of_utterance>\nAssistant:" turns, the layout Idefics3 and SmolVLM use;
# the template (not the tokenizer) emits the BOS token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def grid_tokens() -> list[str]:
    """The ``<row_i_col_j>`` markers that name a sub-image's place in its image's grid."""
    sides = range(1, GRID_SIDE + 1)
    return [f"<row_{row}_col_{col}>" for row in sides for col in sides]


@dataclass(frozen=True)
class Idefics3Sizes:
    vision: VisionSizes  # image_size: one sub-image's side (the processor's max_image_size)
    scale_factor: int
    longest_edge: int  # the whole image's longest edge before it is cut into sub-images
    text: TextSizes


# Parameters: tiny 0.15 M (0.6 MB on disk), small 6.8 M, base 463 M (the real SigLIP
# so400m/14-364 tower of Idefics3-8B-Llama3, 413 M in 27 layers, with a 4-layer, 1024-wide Llama).
PRESETS: dict[str, Idefics3Sizes] = {
    "tiny": Idefics3Sizes(VisionSizes(32, 64, 2, 2, 32, 8), 2, 96, TextSizes(64, 128, 2, 4, 2)),
    "small": Idefics3Sizes(
        VisionSizes(256, 1024, 6, 4, 112, 14), 2, 224, TextSizes(256, 688, 2, 4, 2)
    ),
    "base": Idefics3Sizes(
        VisionSizes(1152, 4304, 27, 16, 364, 14), 2, 4 * 364, TextSizes(1024, 2816, 4, 8, 2)
    ),
}


def idefics_tokenizer(
    *, bos: str, eos: str, pad: str, extra: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """A tokenizer holding every marker the Idefics3-style processors write as one token, so
    each `<row_i_col_j>` is one text position rather than a run of bytes."""
    return build_tokenizer(
        bos=bos,
        eos=eos,
        pad=pad,
        named_tokens={
            "image_token": IMAGE_TOKEN,
            "fake_image_token": FAKE_IMAGE_TOKEN,
            "end_of_utterance_token": END_OF_UTTERANCE,
            "global_image_token": GLOBAL_IMAGE_TOKEN,
        },
        other_special_tokens=[*extra, *grid_tokens()],
    )


def image_processor_kwargs(s: Idefics3Sizes) -> dict[str, object]:
    """Sub-image splitting as the real checkpoints do it, scaled to the preset."""
    return {
        "size": {"longest_edge": s.longest_edge},
        "max_image_size": {"longest_edge": s.vision.image_size},
        "do_image_splitting": True,
        "image_mean": SIGLIP_NORM,
        "image_std": SIGLIP_NORM,
    }


def image_seq_len(s: Idefics3Sizes) -> int:
    """``<image>`` tokens per sub-image: the tower's patches after the pixel shuffle."""
    return s.vision.grid**2 // s.scale_factor**2


def model_config(
    config_class: type[C],
    vision_class: type[PreTrainedConfig],
    s: Idefics3Sizes,
    processor: ProcessorMixin,
) -> C:
    """The whole model's config, which Idefics3 and SmolVLM spell alike in their own classes:
    the preset's tower, a Llama decoder and the connector's pixel shuffle."""
    tokenizer = processor.tokenizer
    return config_class(
        vision_config=vision_config(vision_class, s.vision),
        text_config=text_config(
            LlamaConfig, tokenizer, s.text, max_positions=8192, rms_norm_eps=1e-5
        ),
        scale_factor=s.scale_factor,
        image_token_id=processor.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build(
    preset: str,
) -> tuple[type[Idefics3ForConditionalGeneration], Idefics3Config, Idefics3Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = idefics_tokenizer(
        bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|finetune_right_pad_id|>"
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(**image_processor_kwargs(s)),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len(s),
        chat_template=CHAT_TEMPLATE,
    )
    config = model_config(Idefics3Config, Idefics3VisionConfig, s, processor)
    return Idefics3ForConditionalGeneration, config, processor
