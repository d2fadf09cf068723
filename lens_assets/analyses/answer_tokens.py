"""The answer token: the first token a model would write to give an answer word, shared by the
logit lens, patching and ablation so that their tables join on it."""

from __future__ import annotations

from lens_assets.capture.loading import LoadedModel


class AnswerTokenError(ValueError):
    """An answer that gives no token to read (empty, or whitespace only)."""


def answer_token_id(loaded: LoadedModel, prompt: str, answer: str | int) -> int:
    """The first token the model would emit to write `answer` as its reply to `prompt`.

    How a word is split depends on what precedes it, so it is tokenized in context:
    1. A bare word (no leading whitespace) is written the way a chat model answers: after a
       space where the templated prompt ends in none (" red" after LLaVA's "ASSISTANT:"),
       directly where it ends in whitespace ("red" after Qwen's "assistant\\n"). An answer
       that starts with whitespace is taken as written.
    2. The templated prompt and the prompt plus the answer are tokenized; the answer's tokens
       are those past the prompt's own (SentencePiece's word-start marks and byte-level BPE's
       space tokens come out as the model would see them). Where the answer merges into the
       prompt's last token, the answer is tokenized on its own instead.
    3. Leading tokens that are only whitespace are skipped: a vocabulary with no token for
       " red" writes the space alone, and that token would be every answer's first token.
    An int is taken as a token id as it is.
    """
    if isinstance(answer, int):
        return answer
    if not answer.strip():
        raise AnswerTokenError("the answer is empty; give the expected answer word")
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    text = loaded.architecture.adapter.prompt_text(loaded.processor, prompt)
    if not answer[0].isspace() and text and not text[-1].isspace():
        answer = " " + answer
    before = tokenizer(text, add_special_tokens=False)["input_ids"]
    after = tokenizer(text + answer, add_special_tokens=False)["input_ids"]
    if len(after) > len(before) and after[: len(before)] == before:
        ids = after[len(before) :]
    else:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    words = [token for token in ids if tokenizer.decode([token]).strip()]
    if not words:
        raise AnswerTokenError(f"the answer {answer!r} tokenizes to whitespace only")
    return int(words[0])
