"""The hooking engine: what it captures, and that it always cleans up."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from lens_assets.capture.hooks import capture, output_tensor


class Boom(RuntimeError):
    pass


class TwoLayers(nn.Module):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(3, 3)
        self.second = nn.Linear(3, 3)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        if self.fail:
            raise Boom("forward failed")
        return self.second(hidden)


def test_output_tensor_unwraps_tuples_and_model_outputs() -> None:
    tensor = torch.ones(2, 3)
    assert output_tensor(tensor) is tensor
    assert output_tensor((None, tensor)) is tensor
    hidden = torch.zeros(1, 4, 3)
    assert output_tensor(BaseModelOutput(last_hidden_state=hidden)) is hidden
    assert output_tensor("no tensor here") is None


def test_capture_records_each_hooked_module_once() -> None:
    model = TwoLayers()
    with capture(model, ["first", "second"]) as store, torch.inference_mode():
        result = model(torch.ones(2, 3))
    assert set(store.outputs) == {"first", "second"}
    assert store.calls == {"first": 1, "second": 1}
    assert torch.equal(store.outputs["second"], result)


def test_hooks_are_removed_after_the_block() -> None:
    model = TwoLayers()
    with capture(model, ["first"]):
        pass
    assert not model.first._forward_hooks


def test_hooks_are_removed_even_when_the_forward_pass_raises() -> None:
    model = TwoLayers(fail=True)
    with pytest.raises(Boom), capture(model, ["first", "second"]):
        model(torch.ones(1, 3))
    assert not model.first._forward_hooks
    assert not model.second._forward_hooks
