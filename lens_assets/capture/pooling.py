"""Poolings, computed on the device for a whole batch at once (the names and token roles are
in `token_roles`). Pads never enter a pooling and are never stored, so a vector does not depend
on the batch it was computed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lens_assets.capture.token_roles import MAX, PER_IMAGE, UNPOOLED, TokenRole


@dataclass
class Pooled:
    """One pooling over a batch: `vectors[i]` is sample `samples[i]`'s vector."""

    pooling: str
    samples: torch.Tensor  # (n,) long, index into the batch
    vectors: torch.Tensor  # (n, dim)
    token_index: torch.Tensor | None = None  # (n,) position among non-pad tokens (`tokens`)
    token_role: torch.Tensor | None = None  # (n,) TokenRole values (`tokens`)
    tile: torch.Tensor | None = None  # (n,) which tile of its image a `tokens` row is from
    image_index: torch.Tensor | None = None  # (n,) which of the row's images (-1: none)

    def positions(self) -> torch.Tensor:
        """(5, n) long: sample, token index, token role, tile, image index; -1 where a row has
        none."""
        missing = torch.full_like(self.samples, -1)
        index = missing if self.token_index is None else self.token_index
        role = missing if self.token_role is None else self.token_role
        tile = missing if self.tile is None else self.tile
        image = missing if self.image_index is None else self.image_index
        return torch.stack([self.samples, index, role, tile, image]).long()


def _masked_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the selected positions; unselected ones are zeroed, not multiplied, so a
    non-finite value in a pad cannot leak in."""
    total = weights.sum(dim=1, keepdim=True).clamp_min(1).to(hidden.dtype)
    return hidden.masked_fill(~weights.unsqueeze(-1), 0).sum(dim=1) / total


def _means(hidden: torch.Tensor, masks: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """(batch, k, dim): the mean over each of `masks` (batch, k, positions) in one matrix
    product, a single pass over `hidden` for every mean pooling (masked_fill copies it once per
    pooling). A pad's non-finite value would leak in as 0 * inf, so a non-finite result is
    computed again the masked way."""
    if hidden.is_floating_point():
        means = torch.bmm(masks.to(hidden.dtype), hidden) / totals.to(hidden.dtype)
        if bool(torch.isfinite(means).all()):
            return means
    return torch.stack([_masked_mean(hidden, masks[:, k]) for k in range(masks.shape[1])], 1)


def _masked_max(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Elementwise max over the real positions; a pad is never the max, whatever it holds."""
    lowest = torch.finfo(hidden.dtype).min if hidden.is_floating_point() else 0
    return hidden.masked_fill(~real.unsqueeze(-1), lowest).amax(dim=1)


def _last_real_position(roles: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(roles.shape[1], device=roles.device).expand_as(roles)
    return torch.where(roles != TokenRole.PAD, positions, -1).amax(dim=1)


def _cls_position(roles: torch.Tensor) -> torch.Tensor:
    is_cls = roles == TokenRole.CLS
    return torch.where(is_cls.any(dim=1), is_cls.long().argmax(dim=1), -1)


MEAN_SELECTORS = {
    "mean": lambda roles: roles != TokenRole.PAD,
    "mean_image": lambda roles: roles == TokenRole.IMAGE,
    "mean_text": lambda roles: roles == TokenRole.TEXT,
}
POSITION_SELECTORS = {"last": _last_real_position, "cls": _cls_position}


@dataclass
class _Gather:
    """A pooling that reads positions: `hidden[samples, positions]`, with what a row records."""

    pooling: str
    samples: torch.Tensor
    positions: torch.Tensor
    token_index: torch.Tensor | None = None
    token_role: torch.Tensor | None = None
    tile: torch.Tensor | None = None
    image_index: torch.Tensor | None = None


@dataclass
class _Masked:
    """A pooling over a mask of positions (`max`, or one image's mean): per selected sample."""

    pooling: str
    samples: torch.Tensor
    weights: torch.Tensor  # (n, positions) bool
    image_index: torch.Tensor | None = None


@dataclass
class _Mean:
    """A mean pooling: column `column` of the plan's one matrix product, for `samples`."""

    pooling: str
    samples: torch.Tensor
    column: int


@dataclass
class PoolingPlan:
    """What a batch's token roles decide for every pooling: the means' masks, which samples
    get a vector, which position `last` and `cls` read. Every LLM layer of a batch has the same
    roles, and so has every block of its vision tower, so one plan serves them all and each
    module pays only for the arithmetic on its own output."""

    roles: torch.Tensor
    tiles: torch.Tensor | None
    image_index: torch.Tensor | None
    steps: list[_Gather | _Masked | _Mean]  # in the order of the poolings asked for
    mean_masks: torch.Tensor | None  # (batch, k, positions) bool
    mean_totals: torch.Tensor | None  # (batch, k, 1)

    def fits(
        self,
        roles: torch.Tensor,
        tiles: torch.Tensor | None,
        image_index: torch.Tensor | None,
    ) -> bool:
        """Whether this plan is the one `plan_pooling` would make for these positions."""
        return (
            _same(self.roles, roles)
            and _same(self.tiles, tiles)
            and _same(self.image_index, image_index)
        )

    def apply(self, hidden: torch.Tensor) -> list[Pooled]:
        """Each pooling of `hidden` (batch, positions, dim), whose positions this plan is for."""
        _check_shapes(hidden, self.roles)
        means = None
        if self.mean_masks is not None and self.mean_totals is not None:
            means = _means(hidden, self.mean_masks, self.mean_totals)
        results: list[Pooled] = []
        for step in self.steps:
            if isinstance(step, _Gather):
                vectors = hidden[step.samples, step.positions]
                results.append(
                    Pooled(step.pooling, step.samples, vectors, step.token_index,
                           step.token_role, step.tile, step.image_index)
                )  # fmt: skip
            elif isinstance(step, _Masked):
                reduce = _masked_max if step.pooling == MAX else _masked_mean
                vectors = reduce(hidden[step.samples], step.weights)
                results.append(
                    Pooled(
                        step.pooling,
                        step.samples,
                        vectors,
                        image_index=step.image_index,
                    )
                )
            else:
                assert means is not None
                results.append(Pooled(step.pooling, step.samples, means[step.samples, step.column]))
        return results


def _check_shapes(hidden: torch.Tensor, roles: torch.Tensor) -> None:
    if hidden.dim() != 3 or roles.shape != hidden.shape[:2]:
        raise ValueError(
            "expected (batch, positions, dim) with matching roles, got "
            f"{tuple(hidden.shape)} and {tuple(roles.shape)}"
        )


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a is b or (a.shape == b.shape and a.device == b.device and torch.equal(a, b))


def _per_image_steps(roles: torch.Tensor, image_index: torch.Tensor) -> list[_Masked]:
    """One mean per (sample, image) over the image's own positions, as `mean_image` is over
    all of the row's image positions."""
    found = []
    images = int(image_index.max().item()) + 1 if image_index.numel() else 0
    for image in range(images):
        weights = (image_index == image) & (roles == TokenRole.IMAGE)
        samples = weights.any(dim=1).nonzero(as_tuple=True)[0]
        if len(samples):
            index = torch.full_like(samples, image)
            found.append(_Masked(PER_IMAGE, samples, weights[samples], index))
    return found


def plan_pooling(
    roles: torch.Tensor,
    poolings: Sequence[str],
    tiles: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> PoolingPlan:
    """The plan for `poolings` over positions with `roles` (batch, positions); see `pool`."""
    given = image_index
    if image_index is None:
        shows_image = (roles == TokenRole.IMAGE) | (roles == TokenRole.CLS)  # a tower's CLS too
        image_index = torch.where(shows_image, 0, -1)
    masks = {p: MEAN_SELECTORS[p](roles) for p in dict.fromkeys(poolings) if p in MEAN_SELECTORS}
    means = {p: m for p, m in masks.items() if bool(m.any())}  # an empty mean pools nothing
    columns = {p: k for k, p in enumerate(means)}
    steps: list[_Gather | _Masked | _Mean] = []
    for pooling in poolings:
        if pooling == UNPOOLED:
            real = roles != TokenRole.PAD
            samples, positions = real.nonzero(as_tuple=True)
            token_index = real.long().cumsum(dim=1)[samples, positions] - 1
            tile = None if tiles is None else tiles[samples, positions]
            steps.append(_Gather(
                pooling, samples, positions, token_index, roles[samples, positions], tile,
                image_index[samples, positions],
            ))  # fmt: skip
        elif pooling == PER_IMAGE:
            steps.extend(_per_image_steps(roles, image_index))
        elif pooling in POSITION_SELECTORS:
            position = POSITION_SELECTORS[pooling](roles)
            samples = (position >= 0).nonzero(as_tuple=True)[0]
            if len(samples):
                steps.append(_Gather(pooling, samples, position[samples]))
        elif pooling == MAX:
            real = roles != TokenRole.PAD
            samples = real.any(dim=1).nonzero(as_tuple=True)[0]
            if len(samples):
                steps.append(_Masked(pooling, samples, real[samples]))
        elif pooling in MEAN_SELECTORS:
            if pooling in means:
                samples = means[pooling].any(dim=1).nonzero(as_tuple=True)[0]
                steps.append(_Mean(pooling, samples, columns[pooling]))
        else:
            raise ValueError(f"unknown pooling {pooling!r}")
    stacked = torch.stack(list(means.values()), 1) if means else None
    totals = None if stacked is None else stacked.sum(dim=-1, keepdim=True).clamp_min(1)
    return PoolingPlan(roles, tiles, given, steps, stacked, totals)


def pool(
    hidden: torch.Tensor,
    roles: torch.Tensor,
    poolings: Sequence[str],
    tiles: torch.Tensor | None = None,
    image_index: torch.Tensor | None = None,
) -> list[Pooled]:
    """Apply each pooling to `hidden` (batch, positions, dim) given `roles` (batch, positions).

    `tiles` (batch, positions) says which tile of its image each position came from, for
    families that cut an image into tiles; poolings run over all of an image's tiles.
    `image_index` (batch, positions) says which of the row's images an image position shows
    (-1 elsewhere; None: the row's only image), for `tokens` rows and `mean_per_image`.

    A pooling that has nothing to pool for a sample (no image tokens for `mean_image`, no class
    token for `cls`) yields no vector for that sample rather than a made-up one.
    """
    _check_shapes(hidden, roles)
    return plan_pooling(roles, poolings, tiles, image_index).apply(hidden)
