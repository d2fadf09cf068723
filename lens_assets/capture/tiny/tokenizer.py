"""Offline tokenizer for tiny checkpoints: a byte-level BPE trained in milliseconds.

Byte-level means every prompt tokenizes (no unknown characters), so a ~300-token vocab is
enough for any chat-templated text a test throws at it.  Training is deterministic for a fixed
corpus and special-token list, so the saved ``tokenizer.json`` is byte-stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# A few sentences in the domain of the prompts the toolkit sends (captions, questions).
CORPUS: tuple[str, ...] = (
    "Describe the image in one sentence.",
    "What is shown in this picture? A small red cat sits on a wooden table.",
    "The photo shows two dogs playing in the park on a sunny day.",
    "How many people are in the image? There are three people near the car.",
    "A close-up of a green leaf with drops of water, seen from above.",
)

# Trained BPE tokens (bytes + merges); special tokens come on top.
BASE_VOCAB_SIZE = 300


def build_tokenizer(
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    unk: str | None = None,
    named_tokens: Mapping[str, str] | None = None,
    other_special_tokens: Sequence[str] = (),
    add_bos: bool = False,
    add_eos: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE and wrap it as the ``PreTrainedTokenizerFast`` processors expect.

    Special ids are assigned in the order pad, unk, bos, eos, ``named_tokens``,
    ``other_special_tokens`` (so e.g. with all four roles eos is 3; CLIP treats eos id 2 as a
    legacy marker and pools at ``argmax(input_ids)`` instead).  ``named_tokens`` such as
    ``{"image_token": "<image>"}`` become ``tokenizer.image_token`` / ``image_token_id``, which
    processors read.  ``add_bos``/``add_eos`` install a post-processor that survives saving.
    """
    named = dict(named_tokens or {})
    specials = [t for t in (pad, unk, bos, eos) if t is not None]
    specials += [t for t in (*named.values(), *other_special_tokens) if t not in specials]

    backend = Tokenizer(models.BPE(unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BASE_VOCAB_SIZE + len(specials),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)

    kwargs: dict[str, object] = {"extra_special_tokens": named} if named else {}
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        **kwargs,
    )
