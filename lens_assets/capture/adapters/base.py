"""The generic path: any image-text-to-text model transformers supports natively.

A family gets its own adapter only where it truly differs: where its image tokens are, how its
vision outputs are split per image, how its prompt is built.
"""

from __future__ import annotations

import math
import weakref
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


class ImageCountError(ValueError):
    """A row with more images than the family takes in one prompt, or none where it needs one."""


# A batch's rows as the adapters receive them: each sample's images, in order (0..n).
RowImages = Sequence[Sequence[Image.Image]]


def per_sample(images: Sequence[Any]) -> list[list[Image.Image]]:
    """Each sample's images as a list: a bare image (the one-image call) becomes a list of one,
    None a list of none."""
    return [
        list(item) if isinstance(item, list | tuple) else ([] if item is None else [item])
        for item in images
    ]


def image_counts(inputs: BatchFeature, batch_size: int) -> list[int]:
    """How many images each sample of a prepared batch holds (set by `prepare_on`; one each
    for inputs prepared elsewhere)."""
    counts = getattr(inputs, "lens_image_counts", None)
    return list(counts) if counts is not None else [1] * batch_size


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
    family: str = ""  # for messages


@dataclass
class Sequences:
    """A hooked output mapped back to the batch: per-sample positions, or one vector each."""

    hidden: torch.Tensor  # (batch, positions, dim), or (batch, dim) when there is no position axis
    roles: torch.Tensor | None = None  # (batch, positions) TokenRole values; None for vectors
    tiles: torch.Tensor | None = None  # (batch, positions) tile of the image, for tiled towers
    # (batch, positions): which of the sample's images a position belongs to, -1 elsewhere;
    # None: every image position is the sample's only image (index 0)
    image_index: torch.Tensor | None = None


@dataclass
class Adapter:
    """How to load, prompt and read back one family; the defaults are the generic path."""

    model_class: str = "AutoModelForImageTextToText"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS)
    _text_memo: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)
    # The most images one prompt may hold (None: no limit); 1 for a family whose processor
    # or adapter takes a single image per prompt.
    max_images: int | None = None
    text_only: bool = True  # whether a row without images can be run
    # whether `generate` answers a row without images (BLIP-2's needs pixels even when its
    # forward pass runs text alone)
    generates_text_only: bool = True

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
    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        """The prompt as the model sees it: its chat template around the row's images, in
        order, then the text."""
        if getattr(processor, "chat_template", None):
            content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": prompt}]}]
            return processor.apply_chat_template(messages, add_generation_prompt=True)
        image_token = getattr(processor, "image_token", None) or ""
        return f"{image_token * n_images}{prompt}"

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """The generic path: every sample's images in one flat list, each sample's text with
        as many image placeholders as it has images (LLaVA's processor and its kin)."""
        rows = per_sample(images)
        texts = [self.prompt_text(processor, p, len(r)) for p, r in zip(prompts, rows, strict=True)]
        flat = [image for row in rows for image in row]
        return processor(
            images=flat or None,
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )

    def check_image_counts(self, counts: Sequence[int], family: str = "") -> None:
        name = family or type(self).__name__
        if self.max_images is not None and (most := max(counts, default=0)) > self.max_images:
            raise ImageCountError(
                f"{name} takes at most {self.max_images} image(s) per prompt and a row has "
                f"{most}: give this model one-image rows (or split the row's images into rows)"
            )
        if not self.text_only and min(counts, default=1) == 0:
            raise ImageCountError(
                f"{name} needs an image in every prompt and a row has none: give this model "
                "rows with an image"
            )

    def prepare_on(
        self,
        processor: Any,
        images: Sequence[Any],
        prompts: Sequence[str],
        device: torch.device,
        dtype: torch.dtype,
        token_limit: tuple[int, str] | None = None,
    ) -> BatchFeature:
        """`prepare`, then the inputs on the model's device with pixels in its dtype: the one
        way a forward pass gets its inputs. `images` holds each sample's image, or its list of
        images (a row's, in order; empty for a text-only row). With `token_limit`
        (extraction), a batch longer than the model's positions is refused before anything
        moves to the device."""
        rows = per_sample(images)
        counts = [len(row) for row in rows]
        self.check_image_counts(counts)
        if self.max_images == 1 and all(count == 1 for count in counts):
            inputs = self.prepare(processor, [row[0] for row in rows], prompts)  # one each
        else:
            inputs = self.prepare(processor, rows, prompts)
        check_sequence_length(inputs, token_limit, prompts)
        inputs = to_device(inputs, device, dtype)
        inputs.lens_image_counts = counts
        return inputs

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
        roles, image_index = self.text_positions(inputs, layout)
        if output.dim() == 3 and output.shape[0] == 1 and output.shape[1] == roles.shape[1]:
            # One value for every sample, broadcast over the batch (a rotary embedding's
            # cos): each sample's rows are that value, as a batch of one would store.
            output = output.expand(roles.shape[0], -1, -1)
        if output.dim() != 3 or tuple(output.shape[:2]) != tuple(roles.shape):
            raise ActivationShapeError(
                f"module {name!r} produced shape {tuple(output.shape)}, which does not line up "
                f"with the token sequence {tuple(roles.shape)}; hook a module that outputs "
                "(batch, tokens, dim) or (batch, dim)"
            )
        return Sequences(output, roles, image_index=image_index)

    def text_positions(
        self, inputs: BatchFeature, layout: ModelLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The roles and image index of a batch's token sequence. Every LLM module of a batch
        has the same ones, so they are computed once per batch: the last batch's are kept,
        its inputs held by weak reference."""
        memo = self._text_memo
        if memo is not None and memo[0]() is inputs and memo[1] is layout:
            return memo[2], memo[3]
        roles = self.text_roles(inputs, layout)
        image_index = self.text_image_index(inputs, roles)
        self._text_memo = (weakref.ref(inputs), layout, roles, image_index)
        return roles, image_index

    def text_image_index(self, inputs: BatchFeature, roles: torch.Tensor) -> torch.Tensor:
        """Which of its sample's images each image position of the token sequence shows."""
        counts = image_counts(inputs, roles.shape[0])
        index = torch.full(roles.shape, -1, dtype=torch.long, device=roles.device)
        for sample, count in enumerate(counts):
            positions = (roles[sample] == TokenRole.IMAGE).nonzero(as_tuple=True)[0]
            if count == 0 or len(positions) == 0:
                continue
            sizes = self.image_token_sizes(inputs, sample, positions, count)
            index[sample, positions] = torch.repeat_interleave(
                torch.arange(count, device=roles.device),
                torch.as_tensor(sizes, device=roles.device),
            )
        return index

    def image_token_sizes(
        self, inputs: BatchFeature, sample: int, positions: torch.Tensor, count: int
    ) -> list[int]:
        """How many of a sample's image positions (`positions`, in order) each of its `count`
        images has: as the adapter's `prepare` recorded them from the processor
        (`lens_image_tokens`, per sample), else the generic rule: images separated by text
        (runs of image tokens, one run per image), else images of equal size (one run of
        `count` equal parts). A family whose images give unequal, adjacent runs records them or
        overrides this."""
        tokens = getattr(inputs, "lens_image_tokens", None)
        if tokens is None:
            return split_runs(positions, count)
        sizes = list(tokens[sample])
        if len(sizes) != count or sum(sizes) != len(positions):
            raise ActivationShapeError(
                f"sample {sample} holds {count} image(s) and {len(positions)} image positions, "
                f"but the processor gave its images {sizes} image tokens"
            )
        return sizes

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
        counts = image_counts(inputs, batch_size)
        if output.shape[0] == sum(counts) and any(count != 1 for count in counts):
            return join_images(output, counts, [1] * sum(counts), has_cls)  # one row per image
        if output.shape[0] != batch_size:
            tiles = self.tile_counts(name, output.shape[0], inputs, layout, batch_size)
            if any(count != 1 for count in counts):
                return join_images(output, counts, self.tiles_per_image(tiles, counts), has_cls)
            return join_tiles(output, tiles, has_cls)
        if output.dim() == 2:
            return Sequences(output)
        roles = torch.full(output.shape[:2], TokenRole.IMAGE, device=output.device)
        if has_cls:
            roles[:, 0] = TokenRole.CLS
        return Sequences(output, roles)

    def tiles_per_image(self, tiles: Sequence[int], counts: Sequence[int]) -> list[int]:
        """A sample's tiles shared among its images: equally, unless a family knows better."""
        per_image = []
        for total, count in zip(tiles, counts, strict=True):
            if count and total % count:
                raise ActivationShapeError(
                    f"{total} tiles do not split evenly among a sample's {count} images; this "
                    "family needs an adapter that maps its tiles to images"
                )
            per_image.extend([total // count] * count if count else [])
        return per_image

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


def split_runs(positions: torch.Tensor, count: int) -> list[int]:
    """Sizes of `count` images from their image positions: one run of consecutive positions
    per image where text separates them, else equal parts."""
    if count == 1:
        return [len(positions)]
    breaks = (positions[1:] - positions[:-1] != 1).nonzero(as_tuple=True)[0]
    if len(breaks) == count - 1:
        edges = [0, *(int(b) + 1 for b in breaks), len(positions)]
        return [edges[i + 1] - edges[i] for i in range(count)]
    if len(positions) % count:
        raise ActivationShapeError(
            f"{len(positions)} image positions in {len(breaks) + 1} runs cannot be split among "
            f"{count} images; this family needs an adapter that says where each image's tokens are"
        )
    return [len(positions) // count] * count


def join_images(
    output: torch.Tensor, counts: Sequence[int], tiles_per_image: Sequence[int], has_cls: bool
) -> Sequences:
    """One sequence per sample from its images' tiles laid end to end (vision batch rows in
    sample order, each image's tiles together), each position marked with its image and tile."""
    per_sample_tiles: list[int] = []
    start = 0
    for count in counts:
        per_sample_tiles.append(sum(tiles_per_image[start : start + count]))
        start += count
    sequences = join_tiles(output, per_sample_tiles, has_cls)
    assert sequences.tiles is not None
    per_tile = sequences.hidden.shape[1] // max(max(per_sample_tiles, default=1), 1)
    index = torch.full_like(sequences.tiles, -1)
    tile = torch.full_like(sequences.tiles, -1)
    start = 0
    for sample, count in enumerate(counts):
        sizes = torch.as_tensor(tiles_per_image[start : start + count], device=index.device)
        start += count
        if count == 0:
            continue
        length = int(sizes.sum()) * per_tile
        images = torch.repeat_interleave(torch.arange(count, device=index.device), sizes)
        index[sample, :length] = images.repeat_interleave(per_tile)
        first = torch.cumsum(sizes, 0) - sizes
        within = torch.arange(int(sizes.sum()), device=index.device) - first[images]
        tile[sample, :length] = within.repeat_interleave(per_tile)
    single_tiles = all(size == 1 for size in tiles_per_image)
    return Sequences(sequences.hidden, sequences.roles, None if single_tiles else tile, index)


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
        if count == 0:  # a row without images: nothing but pads in the vision tower
            continue
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
