"""Building blocks shared by the tiny remote-code test models (imported relatively, as a hub
checkpoint's own helper files are)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm self-attention and MLP: bidirectional for a vision tower, causal for a decoder."""

    def __init__(self, dim: int, heads: int, causal: bool) -> None:
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = (
            self.qkv(self.attn_norm(x))
            .view(batch, length, 3, self.heads, dim // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        allowed = torch.ones(length, length, dtype=torch.bool, device=x.device)
        if self.causal:
            allowed = allowed.tril()
        allowed = allowed.expand(batch, 1, length, length)
        if mask is not None:  # keys that are padding are never attended to
            allowed = allowed & mask.bool()[:, None, None, :]
        # A padding query still sees itself, so no row is empty.
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, dim))
        return x + self.mlp(self.mlp_norm(x))


class PatchEmbedding(nn.Module):
    """Square image -> patch sequence, with an optional class token in front."""

    def __init__(self, image_size: int, patch_size: int, dim: int, with_cls: bool) -> None:
        super().__init__()
        patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls else None
        self.position_embedding = nn.Parameter(torch.randn(1, patches + int(with_cls), dim) * 0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixel_values).flatten(2).transpose(1, 2)
        if self.cls_embedding is not None:
            x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embedding


class Decoder(nn.Module):
    """Token embeddings, causal blocks and a final norm."""

    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(Block(dim, heads, causal=True) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            embeds = layer(embeds, mask)
        return self.norm(embeds)
