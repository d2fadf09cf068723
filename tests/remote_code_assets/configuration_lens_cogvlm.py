"""Config of a tiny model with CogVLM's public interface, written for LensFlow's tests.

Like CogVLM's own config, it keeps the vision tower's settings as a plain dict and names the
prompt template (`template_version`) the conversation builder uses by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig

RUN_MARKER_DIR = ""
if RUN_MARKER_DIR:
    (Path(RUN_MARKER_DIR) / "configuration_lens_cogvlm.ran").touch()


class LensCogVLMConfig(PreTrainedConfig):
    model_type = "lens_tiny_cogvlm"

    def __init__(
        self,
        vocab_size: int = 320,
        hidden_size: int = 32,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        vision_config: dict[str, Any] | None = None,
        template_version: str = "chat",
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.vision_config = dict(vision_config or {})
        self.template_version = template_version
        super().__init__(**kwargs)
