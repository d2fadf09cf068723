"""Poolings over token roles; pads never count."""

from __future__ import annotations

import pytest
import torch

from lens_assets.capture.pooling import plan_pooling, pool
from lens_assets.capture.token_roles import TokenRole

C, IMG, T, P = TokenRole.CLS, TokenRole.IMAGE, TokenRole.TEXT, TokenRole.PAD


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    hidden[1, 4] = float("inf")  # a pad holding garbage must not leak into any pooling
    roles = torch.tensor([[IMG, IMG, T, T, T], [IMG, T, T, T, P]])
    return hidden, roles


def pooled(name: str) -> dict[int, list[float]]:
    hidden, roles = batch()
    (result,) = pool(hidden, roles, [name])
    return {int(s): v.tolist() for s, v in zip(result.samples, result.vectors, strict=True)}


def test_mean_image_and_mean_text_average_their_own_positions() -> None:
    assert pooled("mean_image") == {0: [1.0, 2.0], 1: [10.0, 11.0]}
    assert pooled("mean_text") == {0: [6.0, 7.0], 1: [14.0, 15.0]}


def test_last_is_the_last_real_token_not_a_pad() -> None:
    assert pooled("last") == {0: [8.0, 9.0], 1: [16.0, 17.0]}


def test_mean_covers_every_real_position() -> None:
    assert pooled("mean") == {0: [4.0, 5.0], 1: [13.0, 14.0]}


def test_cls_only_where_there_is_a_class_token() -> None:
    hidden = torch.ones(2, 3, 2)
    roles = torch.tensor([[C, IMG, IMG], [IMG, IMG, P]])
    (result,) = pool(hidden, roles, ["cls"])
    assert result.samples.tolist() == [0]


def test_tokens_keeps_every_real_position_with_its_index_and_role() -> None:
    hidden, roles = batch()
    (result,) = pool(hidden, roles, ["tokens"])
    assert result.samples.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert result.token_index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert result.token_role.tolist() == [IMG, IMG, T, T, T, IMG, T, T, T]
    assert torch.isfinite(result.vectors).all()


def test_a_pooling_with_nothing_to_pool_yields_no_vector() -> None:
    hidden = torch.ones(1, 2, 2)
    roles = torch.tensor([[T, T]])
    assert pool(hidden, roles, ["mean_image"]) == []


def test_every_pooling_name_a_config_accepts_is_one_pooling_computes() -> None:
    from lens_assets.capture.pooling import MEAN_SELECTORS, POSITION_SELECTORS
    from lens_assets.capture.token_roles import (
        MAX,
        MEAN_POOLINGS,
        PER_IMAGE,
        POOLINGS,
        POSITION_POOLINGS,
        UNPOOLED,
    )

    assert set(MEAN_SELECTORS) == set(MEAN_POOLINGS)
    assert set(POSITION_SELECTORS) == set(POSITION_POOLINGS)
    assert {*MEAN_POOLINGS, *POSITION_POOLINGS, MAX, PER_IMAGE, UNPOOLED} == set(POOLINGS)


def test_one_plan_pools_every_module_with_the_same_roles_as_pooling_each_would() -> None:
    """A batch's LLM layers share their token roles: the plan made once from them gives each
    layer what pooling that layer alone gives, for every pooling at once."""
    _, roles = batch()
    names = ["mean_image", "mean_text", "mean", "last", "max", "tokens", "mean_per_image"]
    plan = plan_pooling(roles, names)
    for seed in range(3):  # three modules' outputs over the same positions
        hidden = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(seed))
        alone, planned = pool(hidden, roles, names), plan.apply(hidden)
        assert [p.pooling for p in planned] == [p.pooling for p in alone]
        for a, b in zip(alone, planned, strict=True):
            assert torch.equal(a.samples, b.samples) and torch.equal(a.vectors, b.vectors)
            assert torch.equal(a.positions(), b.positions())


def test_a_plan_fits_only_the_positions_it_was_made_for() -> None:
    _, roles = batch()
    plan = plan_pooling(roles, ["mean_image", "last"])
    assert plan.fits(roles.clone(), None, None)
    other = roles.clone()
    other[1, 4] = T  # one pad fewer: another `last` and another mean
    assert not plan.fits(other, None, None)
    assert not plan.fits(roles, torch.zeros_like(roles), None)  # tiled: another plan
    assert not plan.fits(roles, None, torch.zeros_like(roles))
    with pytest.raises(ValueError, match="matching roles"):
        plan.apply(torch.ones(2, 4, 3))  # a module whose positions are not these
