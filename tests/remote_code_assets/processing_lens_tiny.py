"""The tiny remote VLM's processor: each `<image>` in the text becomes one token per patch.

Shipped beside the checkpoint and named by `auto_map` in processor_config.json, so
AutoProcessor loads it only when the loader grants trust_remote_code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import BatchFeature, ProcessorMixin

RUN_MARKER_DIR = ""
if RUN_MARKER_DIR:
    (Path(RUN_MARKER_DIR) / "processing_lens_tiny.ran").touch()


class LensTinyRemoteProcessor(ProcessorMixin):
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        image_seq_length: int = 16,
        **kwargs: Any,
    ) -> None:
        self.image_seq_length = image_seq_length
        self.image_token = "<image>"
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        padding: bool | str = False,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        expanded = [
            t.replace(self.image_token, self.image_token * self.image_seq_length) for t in texts
        ]
        side = {"padding_side": kwargs["padding_side"]} if kwargs.get("padding_side") else {}
        data = dict(
            self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **side)
        )
        if images is not None:
            data.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)
