"""InstructBLIP layout: BLIP-2's ViT -> Q-Former -> projection, with a Vicuna (Llama) decoder.

The difference from BLIP-2: the Q-Former also reads the instruction. The processor tokenizes
the prompt twice, with the LLM's tokenizer (after ``num_query_tokens`` ``<image>`` tokens) and
with the Q-Former's own BERT-style tokenizer (``qformer_input_ids``), and the Q-Former runs its
queries and the instruction as one sequence: its layers output ``(batch, queries +
instruction tokens, dim)``, of which only the queries go on to ``language_projection``.
"""

from __future__ import annotations

from dataclasses import replace

from transformers import (
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
)

from .blip2 import PRESETS, image_processor, model_config
from .blocks import LLAMA_SPECIALS, text_config
from .tokenizer import build_tokenizer

QFORMER_MAX_POSITIONS = 512  # BERT's, as in every Salesforce/instructblip-* Q-Former

# Parameters (vocab ~310 each): tiny 0.27 M (1.1 MB on disk), small 13 M, base 1.22 B: the
# real EVA ViT-g/14 tower (986 M) and instruction-aware Q-Former (162 M; its vocabulary here is
# the tiny one) of Salesforce/instructblip-vicuna-7b, with a 4-layer, 1024-wide Llama (68 M) in
# place of Vicuna-7B. The ViT, Q-Former and query sizes are BLIP-2's presets.


def build(
    preset: str,
) -> tuple[type[InstructBlipForConditionalGeneration], InstructBlipConfig, InstructBlipProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # Vicuna's Llama tokenizer starts every text with <s>; <image> is added by the processor.
    tokenizer = build_tokenizer(**LLAMA_SPECIALS, add_bos=True)
    # The Q-Former reads the instruction BERT-style: [CLS] text [SEP].
    qformer_tokenizer = build_tokenizer(
        bos="[CLS]",
        eos="[SEP]",
        pad="[PAD]",
        unk="[UNK]",
        add_bos=True,
        add_eos=True,
        model_max_length=QFORMER_MAX_POSITIONS,
    )
    processor = InstructBlipProcessor(
        image_processor=image_processor(s),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=s.query_tokens,
    )
    # Vicuna keeps one key-value head per query head.
    llm = replace(s.text, kv_heads=s.text.heads)
    text = text_config(LlamaConfig, tokenizer, llm, max_positions=2048)
    config = model_config(
        InstructBlipConfig,
        s,
        text,
        tokenizer,
        InstructBlipVisionConfig,
        InstructBlipQFormerConfig,
        vocab_size=len(qformer_tokenizer),
        pad_token_id=qformer_tokenizer.pad_token_id,
        max_position_embeddings=QFORMER_MAX_POSITIONS,
    )
    return InstructBlipForConditionalGeneration, config, processor
