"""MiniCPM-V 4.6: every view of every image packed into one sequence, merged twice.

An image becomes a source view and, when large, slices; the processor packs all views of the
batch into one patch sequence and `target_sizes` holds each view's patch grid (h, w) in order.
The vision tower runs that sequence with batch axis 1; after encoder layer `insert_layer_id`
its `vit_merger` folds each 2x2 window into one position (raster order over the h/2 x w/2
grid), and the `merger` folds 2x2 again, returning one (h/4 * w/4, dim) tensor per view (the
hooks pack that list along the first axis). Each view's tokens are its image tokens in the
LLM, so views are assigned to samples by each sample's image-token count; a sample's views
are laid end to end with the view index as the tile (0: the source view, then its slices).

The processor pads on the left by default, which shifts every position of a shorter prompt;
`prepare` asks for right padding so a sample's tokens do not depend on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
    raster_cells,
)
from lens_assets.capture.token_roles import TokenRole

# How far a view's patch grid is folded: none (encoder before the window merger), 2x2 (after
# it, or the merger in "4x" mode), 4x4 (the merger in "16x" mode).
FOLDS = (1, 2, 4)


@dataclass
class PackedViewsAdapter(Adapter):
    """Splits MiniCPM-V's packed view sequences back into images, views as tiles."""

    def view_grids(self, inputs: BatchFeature) -> list[tuple[int, int]] | None:
        sizes = inputs.get("target_sizes")
        if sizes is None:
            return None
        return [(int(h), int(w)) for h, w in sizes.tolist()]

    def views_per_sample(
        self, grids: list[tuple[int, int]], inputs: BatchFeature, layout: ModelLayout
    ) -> list[int]:
        """How many consecutive views belong to each sample: views are taken in order until
        their tokens add up to the sample's image tokens."""
        ids = inputs.get("input_ids")
        if ids is None or layout.image_token_id is None:
            raise ActivationShapeError("MiniCPM-V views are assigned by image tokens: none given")
        wanted = (ids == layout.image_token_id).sum(dim=1).tolist()
        tokens = _tokens_per_view(grids, sum(wanted))
        counts, view = [], 0
        for sample, need in enumerate(wanted):
            start = view
            while need > 0 and view < len(tokens):
                need -= tokens[view]
                view += 1
            if need != 0:
                raise ActivationShapeError(
                    f"sample {sample}'s {wanted[sample]} image tokens do not match whole views "
                    f"of target_sizes {grids}"
                )
            counts.append(view - start)
        if view != len(tokens):
            raise ActivationShapeError(
                f"{len(tokens) - view} views left over after the last sample"
            )
        return counts

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        grids = self.view_grids(inputs)
        packed = output
        if output.dim() == 4 and output.shape[0] == 1:  # the patch convolution: (1, dim, 1, L)
            packed = output.flatten(2).transpose(1, 2)
        if packed.dim() == 3 and packed.shape[0] == 1:
            packed = packed[0]
        if grids is None or packed.dim() != 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        lengths = _view_lengths(name, grids, packed.shape[0])
        views = self.views_per_sample(grids, inputs, layout)
        if len(views) != batch_size:
            raise ActivationShapeError(f"{len(views)} samples of views in a batch of {batch_size}")
        pieces = list(torch.split(packed, lengths))
        longest = max(
            sum(lengths[start : start + n]) for start, n in zip(_starts(views), views, strict=True)
        )
        hidden = packed.new_zeros((batch_size, longest, packed.shape[-1]))
        roles = torch.full((batch_size, longest), TokenRole.PAD, device=packed.device)
        tiles = torch.full((batch_size, longest), -1, device=packed.device, dtype=torch.long)
        for sample, (start, n) in enumerate(zip(_starts(views), views, strict=True)):
            position = 0
            for tile, piece in enumerate(pieces[start : start + n]):
                end = position + piece.shape[0]
                hidden[sample, position:end] = piece
                roles[sample, position:end] = TokenRole.IMAGE
                tiles[sample, position:end] = tile
                position = end
        return Sequences(hidden, roles, tiles)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """A single-view image's positions run in raster order over its patch grid, folded 1,
        2 or 4 times; an image with slices has several grids and is not placed."""
        grids = self.view_grids(inputs)
        if grids is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        views = self.views_per_sample(grids, inputs, layout)
        if views[sample] != 1:
            raise PatchGridError(
                f"sample {sample} has {views[sample]} views (source and slices) at different "
                "scales, which do not lie on one patch grid"
            )
        rows, cols = grids[_starts(views)[sample]]
        for fold in FOLDS:
            if count == (rows // fold) * (cols // fold):
                return raster_cells(rows // fold, cols // fold)
        raise PatchGridError(
            f"module {name!r} has {count} image positions for a {rows}x{cols} patch grid"
        )


def _tokens_per_view(grids: list[tuple[int, int]], image_tokens: int) -> list[int]:
    """Image tokens each view becomes: its grid folded so the views add up to the prompt's."""
    for fold in reversed(FOLDS):
        tokens = [(h // fold) * (w // fold) for h, w in grids]
        if sum(tokens) == image_tokens:
            return tokens
    raise ActivationShapeError(
        f"{image_tokens} image tokens match no fold of the view grids {grids}"
    )


def _view_lengths(name: str, grids: list[tuple[int, int]], rows: int) -> list[int]:
    """Positions of each view in a packed output of `rows` positions."""
    for fold in FOLDS:
        lengths = [(h // fold) * (w // fold) for h, w in grids]
        if sum(lengths) == rows:
            return lengths
    raise ActivationShapeError(
        f"vision module {name!r} produced {rows} rows, which matches no fold of the views' "
        f"patch grids {grids}"
    )


def _starts(counts: list[int]) -> list[int]:
    starts, total = [], 0
    for count in counts:
        starts.append(total)
        total += count
    return starts


# `merger` (outside the tower) is the projector: its outputs are views, not tokens.
MINICPM_V = PackedViewsAdapter(
    vision_segments=VISION_SEGMENTS | {"merger"}, max_images=1, text_only=False
)
