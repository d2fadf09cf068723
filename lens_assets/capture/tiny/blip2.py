"""BLIP-2 layout: ViT (with a class token) -> Q-Former -> linear projection -> OPT decoder.

The Q-Former's learned queries cross-attend to the ViT's patches and come out as a fixed
``num_query_tokens`` vectors per image, whatever the image size; ``language_projection`` maps
them onto the LLM width, and the LLM sees them in place of ``num_query_tokens`` ``<image>``
tokens that the processor puts before the text (even before BOS). The tokenizer must not carry
``image_token`` itself: ``Blip2Processor`` adds ``<image>`` as an ``AddedToken`` and reads its
``.content``, which a plain string on the tokenizer lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    OPTConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
)

from .blocks import TextSizes, VisionSizes, text_config, vision_config
from .tokenizer import build_tokenizer

C = TypeVar("C", bound=PreTrainedConfig)

IMAGE_TOKEN = "<image>"  # added by the processor; config.image_token_index is its id


@dataclass(frozen=True)
class Blip2Sizes:
    vision: VisionSizes
    qformer: TextSizes  # a BERT-style encoder; its width is also the queries' width
    query_tokens: int
    text: TextSizes  # the LLM; its intermediate size is OPT's ffn_dim


# Parameters (vocab ~310): tiny 0.21 M (0.9 MB on disk), small 10 M, base 1.14 B: the real
# EVA ViT-g/14 tower (986 M, 39 layers of 1408) and Q-Former (105 M, 32 queries) of
# Salesforce/blip2-opt-2.7b, with a 4-layer, 1024-wide OPT (51 M) in place of OPT-2.7B.
PRESETS: dict[str, Blip2Sizes] = {
    "tiny": Blip2Sizes(
        VisionSizes(32, 64, 2, 2, 32, 8), TextSizes(32, 128, 2, 2), 4, TextSizes(64, 256, 2, 4)
    ),
    "small": Blip2Sizes(
        VisionSizes(256, 1024, 6, 4, 112, 14),
        TextSizes(256, 1024, 4, 4),
        16,
        TextSizes(256, 1024, 2, 4),
    ),
    "base": Blip2Sizes(
        VisionSizes(1408, 6144, 39, 16, 224, 14),
        TextSizes(768, 3072, 12, 12),
        32,
        TextSizes(1024, 4096, 4, 16),
    ),
}


def model_config(
    config_class: type[C],
    s: Blip2Sizes,
    text: PreTrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    vision_class: type[PreTrainedConfig] = Blip2VisionConfig,
    qformer_class: type[PreTrainedConfig] = Blip2QFormerConfig,
    **qformer_fields: int,
) -> C:
    """The whole model's config, which BLIP-2 and InstructBLIP spell alike in their own classes:
    the ViT, a Q-Former whose cross-attention width follows the ViT's, and the LLM ``text``."""
    qformer = qformer_class(
        hidden_size=s.qformer.hidden,
        intermediate_size=s.qformer.intermediate,
        num_hidden_layers=s.qformer.layers,
        num_attention_heads=s.qformer.heads,
        encoder_hidden_size=s.vision.hidden,
        **qformer_fields,
    )
    return config_class(
        vision_config=vision_config(vision_class, s.vision).to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=s.query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )


def image_processor(s: Blip2Sizes) -> BlipImageProcessor:
    """BLIP squashes every image onto a square (no crop), normalised with CLIP's statistics."""
    side = s.vision.image_size
    return BlipImageProcessor(size={"height": side, "width": side})


def build(
    preset: str,
) -> tuple[type[Blip2ForConditionalGeneration], Blip2Config, Blip2Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # OPT's tokenizer starts every text with "</s>", its BOS and EOS at once.
    tokenizer = build_tokenizer(bos="</s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=True)
    processor = Blip2Processor(
        image_processor=image_processor(s),
        tokenizer=tokenizer,
        num_query_tokens=s.query_tokens,
    )
    # OPT names its MLP width ffn_dim and projects embeddings by word_embed_proj_dim.
    text = text_config(
        OPTConfig,
        tokenizer,
        replace(s.text, intermediate=None),
        max_positions=512,
        ffn_dim=s.text.intermediate,
        word_embed_proj_dim=s.text.hidden,
    )
    config = model_config(Blip2Config, s, text, tokenizer)
    return Blip2ForConditionalGeneration, config, processor
