"""Config of a tiny LLaVA-like remote-code VLM, written for LensFlow's tests.

The builder in `tests/remote_code.py` copies this file next to the weights and points
`auto_map` at it, so transformers imports it only when the loader grants trust_remote_code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig

# The builder sets a folder here; importing this file leaves a trace in it, which is how a
# test proves that a refused load ran none of the checkpoint's code.
RUN_MARKER_DIR = ""
if RUN_MARKER_DIR:
    (Path(RUN_MARKER_DIR) / "configuration_lens_tiny.ran").touch()


class LensTinyRemoteConfig(PreTrainedConfig):
    model_type = "lens_tiny_remote"

    def __init__(
        self,
        vocab_size: int = 320,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        vision_hidden_size: int = 24,
        vision_layers: int = 2,
        vision_heads: int = 2,
        image_size: int = 32,
        patch_size: int = 8,
        image_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.vision_hidden_size = vision_hidden_size
        self.vision_layers = vision_layers
        self.vision_heads = vision_heads
        self.image_size = image_size
        self.patch_size = patch_size
        self.image_token_id = image_token_id
        super().__init__(**kwargs)
