"""The generic path: any image-text-to-text model transformers supports natively.

A family gets its own adapter only where it truly differs: where its image tokens are, how its
vision outputs are split per image, how its prompt is built.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import AutoProcessor, BatchFeature

from lens_assets.capture.adapters.forward import check_sequence_length
from lens_assets.capture.modules import PROJECTORS, VISION_TOWERS
from lens_assets.capture.token_roles import TokenRole

VISION_SEGMENTS = VISION_TOWERS | PROJECTORS
CLS_PARAMETERS = ("class_embedding", "cls_token")


class ActivationShapeError(ValueError):
    """A captured output whose shape cannot be mapped back to the samples of the batch."""


class PatchGridError(ValueError):
    """Image positions that cannot be laid out on the image's patch grid."""


@dataclass(frozen=True)
class PatchCells:
    """Where each image position of one sample sits on its patch grid, in sequence order."""

    rows: int
    cols: int
    cells: np.ndarray  # (positions, 2) int: row, col


def raster_cells(rows: int, cols: int) -> PatchCells:
    row, col = np.divmod(np.arange(rows * cols), cols)
    return PatchCells(rows, cols, np.stack([row, col], axis=1))


@dataclass
class ModelLayout:
    """Facts about a loaded model that tell where each hooked output belongs."""

    cls_towers: tuple[str, ...] = ()  # vision towers whose sequences start with a class token
    image_token_id: int | None = None


@dataclass
class Sequences:
    """A hooked output mapped back to the batch: per-sample positions, or one vector each."""

    hidden: torch.Tensor  # (batch, positions, dim), or (batch, dim) when there is no position axis
    roles: torch.Tensor | None = None  # (batch, positions) TokenRole values; None for vectors
    tiles: torch.Tensor | None = None  # (batch, positions) tile of the image, for tiled towers


@dataclass
class Adapter:
    """How to load, prompt and read back one family; the defaults are the generic path."""

    model_class: str = "AutoModelForImageTextToText"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS)

    # -- loading ---------------------------------------------------------------------------
    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        import transformers

        auto = getattr(transformers, self.model_class)
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            # Right padding keeps every real token's position and context as in batch size 1.
            tokenizer.padding_side = "right"
        return model.eval(), processor

    def layout(self, model: nn.Module) -> ModelLayout:
        names = dict(model.named_parameters())
        towers = sorted(
            {
                tower
                for name in names
                if name.endswith(CLS_PARAMETERS)
                if (tower := self._tower_of(name)) is not None
            }
        )
        config = getattr(model, "config", None)
        token = getattr(config, "image_token_id", None)
        if token is None:
            token = getattr(config, "image_token_index", None)
        return ModelLayout(cls_towers=tuple(towers), image_token_id=token)

    def _tower_of(self, name: str) -> str | None:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part in VISION_TOWERS:
                return ".".join(parts[: i + 1])
        return None

    # -- inputs ----------------------------------------------------------------------------
    def prompt_text(self, processor: Any, prompt: str) -> str:
        """The prompt as the model sees it: its chat template around one image and the text."""
        if getattr(processor, "chat_template", None):
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": prompt}],
                }
            ]
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        image_token = getattr(processor, "image_token", None) or ""
        return f"{image_token}{prompt}"

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        texts = [self.prompt_text(processor, prompt) for prompt in prompts]
        return processor(
            images=list(images),
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )

    def prepare_on(
        self,
        processor: Any,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        device: torch.device,
        dtype: torch.dtype,
        token_limit: tuple[int, str] | None = None,
    ) -> BatchFeature:
        """`prepare`, then the inputs on the model's device with pixels in its dtype: the one
        way a forward pass gets its inputs. With `token_limit` (extraction), a batch longer
        than the model's positions is refused before anything moves to the device."""
        inputs = self.prepare(processor, images, prompts)
        check_sequence_length(inputs, token_limit, prompts)
        return to_device(inputs, device, dtype)

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        return model(**inputs, **extra)

    # -- reading outputs back --------------------------------------------------------------
    def is_vision(self, module_name: str) -> bool:
        return any(part in self.vision_segments for part in module_name.split("."))

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        if layout.image_token_id is None:
            return token_roles(
                inputs.get("attention_mask"), torch.zeros_like(ids, dtype=torch.bool)
            )
        return token_roles(inputs.get("attention_mask"), ids == layout.image_token_id)

    def sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if self.is_vision(name):
            return self.vision_sequences(name, output, inputs, layout, batch_size)
        return self.text_sequences(name, output, inputs, layout, batch_size)

    def text_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if output.dim() == 2 and output.shape[0] == batch_size:
            return Sequences(output)
        roles = self.text_roles(inputs, layout)
        if output.dim() != 3 or tuple(output.shape[:2]) != tuple(roles.shape):
            raise ActivationShapeError(
                f"module {name!r} produced shape {tuple(output.shape)}, which does not line up "
                f"with the token sequence {tuple(roles.shape)}; hook a module that outputs "
                "(batch, tokens, dim) or (batch, dim)"
            )
        return Sequences(output, roles)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if output.dim() == 4:  # convolutional patch embeddings: (batch, channels, h, w)
            output = output.flatten(2).transpose(1, 2)
            has_cls = False
        else:
            has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        if output.shape[0] != batch_size:
            counts = self.tile_counts(name, output.shape[0], inputs, layout, batch_size)
            return join_tiles(output, counts, has_cls)
        if output.dim() == 2:
            return Sequences(output)
        roles = torch.full(output.shape[:2], TokenRole.IMAGE, device=output.device)
        if has_cls:
            roles[:, 0] = TokenRole.CLS
        return Sequences(output, roles)

    def tile_counts(
        self, name: str, rows: int, inputs: BatchFeature, layout: ModelLayout, batch_size: int
    ) -> list[int]:
        """How many of a vision module's `rows` belong to each sample, for families that put
        an image's tiles on the vision batch axis.

        The generic rule: every tile becomes the same number of image tokens in the LLM, so a
        sample's share of the rows is its share of the image tokens (InternVL, Aya-Vision,
        Idefics3, SmolVLM, PerceptionLM). Families whose tiles give unequal token counts
        override this.
        """
        ids = inputs.get("input_ids")
        if ids is None or layout.image_token_id is None:
            raise ActivationShapeError(
                f"vision module {name!r} produced {rows} rows for {batch_size} images and the "
                "inputs say nothing of how they split; this family needs an adapter that maps "
                "its tiles back to images"
            )
        tokens = (ids == layout.image_token_id).sum(dim=1).tolist()
        total = sum(tokens)
        counts = [rows * count // total if total else 0 for count in tokens]
        if total == 0 or sum(counts) != rows or any(rows * t % total for t in tokens):
            raise ActivationShapeError(
                f"vision module {name!r} produced {rows} rows for {batch_size} images holding "
                f"{tokens} image tokens, which do not split into whole tiles per image"
            )
        return counts

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """The grid cell of each of a sample's `count` image positions at module `name`.

        The generic path: a ViT's patches (class token excluded), and the LLM's image tokens
        that a projector made from them one to one, in raster order on a square grid.
        """
        side = math.isqrt(count)
        if side * side != count:
            raise PatchGridError(
                f"module {name!r} has {count} image positions for sample {sample}, not a square "
                "grid; this family tiles images or adds separator tokens, which needs an "
                "adapter with its own patch_cells"
            )
        return raster_cells(side, side)


def to_device(inputs: BatchFeature, device: torch.device, dtype: torch.dtype) -> BatchFeature:
    """The prepared inputs on `device`: floating tensors (pixels) cast to the model's dtype,
    the rest (token ids, masks, grid sizes) keep their own, which the model indexes with."""
    inputs = inputs.to(device)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            inputs[key] = value.to(dtype)
    return inputs


def token_roles(attention_mask: torch.Tensor | None, image: torch.Tensor) -> torch.Tensor:
    """Roles from a boolean map of image positions: image there, pad where the mask is 0,
    text elsewhere."""
    roles = torch.full(image.shape, TokenRole.TEXT, device=image.device)
    roles[image.bool()] = TokenRole.IMAGE
    if attention_mask is not None:
        roles[attention_mask.to(image.device) == 0] = TokenRole.PAD
    return roles


def padding_side_of(processor: Any) -> str:
    """The side the tokenizer pads on now: right for extraction (set at load), left inside
    generation's scoped switch. Passed to the processor explicitly, because some processors
    (InternVL's, Aya's) default to left padding whatever the tokenizer says."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return str(getattr(tokenizer, "padding_side", None) or "right")


def join_tiles(output: torch.Tensor, counts: Sequence[int], has_cls: bool) -> Sequences:
    """One sequence per image from its tiles' sequences laid end to end, each position marked
    with its tile; a per-tile vector (no position axis) becomes one position per tile."""
    if output.dim() == 2:
        output = output.unsqueeze(1)
    elif output.dim() > 3:  # e.g. (tiles, h, w, dim) after a spatial projector
        output = output.flatten(1, -2)
    per_tile = output.shape[1]
    longest = max(counts) * per_tile
    hidden = output.new_zeros((len(counts), longest, output.shape[-1]))
    roles = torch.full((len(counts), longest), TokenRole.PAD, device=output.device)
    tiles = torch.full((len(counts), longest), -1, device=output.device, dtype=torch.long)
    start = 0
    for sample, count in enumerate(counts):
        length = count * per_tile
        hidden[sample, :length] = output[start : start + count].reshape(length, -1)
        roles[sample, :length] = TokenRole.IMAGE
        tiles[sample, :length] = torch.arange(count, device=output.device).repeat_interleave(
            per_tile
        )
        if has_cls:
            roles[sample, 0:length:per_tile] = TokenRole.CLS
        start += count
    return Sequences(hidden, roles, tiles)


# -- forward kwargs ----------------------------------------------------------------------------
