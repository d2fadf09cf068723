"""The hooking engine: what each context manager does, and that no hook outlives its block.

The second half makes every analysis that hooks a model fail in the middle of a forward pass
(a module whose forward raises after some hooks have fired and before others) and checks that
no hook of ours is left on any module afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn.modules import module as torch_module
from transformers.modeling_outputs import BaseModelOutput

from lens_assets.analyses.attention import answer_attention
from lens_assets.analyses.attribution import AttributionError, attribute
from lens_assets.analyses.interventions import (
    PatchPair,
    Sample,
    activation_patching,
    head_ablation,
)
from lens_assets.analyses.logit_lens import layer_logits
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.hooks import (
    HookOutputError,
    HookPointError,
    StopForward,
    capture,
    input_hooks,
    keep_outputs,
    output_tensor,
    replace_outputs,
    watch_outputs,
)
from lens_assets.capture.loading import LoadedModel
from tests.conftest import HOOK_POINTS

Loader = Callable[[str], LoadedModel]
PROMPT = "What colour is the shape?"
LAYER_0 = "model.language_model.layers.0"
LAYER_1 = "model.language_model.layers.1"
VISION_0 = "model.vision_tower.encoder.layers.0"
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


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


def _ours(hook: Any) -> bool:
    """transformers installs its own output recorders on a model's first forward pass and keeps
    them for the model's life, so hook dicts are not empty after a clean run either: every
    other hook is one a pass left behind."""
    return not getattr(hook, "__module__", "").startswith("transformers.")


def leaked_hooks(model: nn.Module) -> list[str]:
    """Every forward, pre-forward or backward hook on the model's modules (and every global
    one) that is not transformers' own output recorder."""
    found = []
    for name, module in model.named_modules():
        for kind in HOOK_DICTS:
            for hook in getattr(module, kind).values():
                if _ours(hook):
                    found.append(f"{name or type(model).__name__}.{kind}: {hook!r}")
    found += [kind for kind in GLOBAL_HOOKS if getattr(torch_module, kind)]
    return found


def remove_leaks(model: nn.Module) -> None:
    """Take a leaked hook off, so one failing test does not fail the ones after it."""
    for module in model.modules():
        for kind in HOOK_DICTS:
            hooks = getattr(module, kind)
            for key in [key for key, hook in hooks.items() if _ours(hook)]:
                del hooks[key]


@contextmanager
def failing(model: nn.Module, name: str, after: int = 0) -> Iterator[None]:
    """Module `name` runs normally for its first `after` calls, then its forward raises Boom;
    its own forward is put back after the block."""
    module = dict(model.named_modules())[name]
    original = module.forward
    calls = [0]

    def forward(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > after:
            raise Boom(f"{name} failed on call {calls[0]}")
        return original(*args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@pytest.fixture
def llava(load_tiny: Loader) -> Iterator[LoadedModel]:
    """The tiny LLaVA (shared by the session), free of our hooks before the test and after it,
    whatever the test found."""
    loaded = load_tiny("llava")
    assert leaked_hooks(loaded.model) == []
    yield loaded
    remove_leaks(loaded.model)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.new("RGB", (32, 32), (200, 30, 30))


# -- the engine on a plain module ---------------------------------------------------------------


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


class SharedLayer(nn.Module):
    """One module called twice per pass (shared weights), then another."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(self.shared(x)))


def test_a_reduced_capture_frees_each_output_at_its_last_call() -> None:
    """Extraction pools in the hook: once `first` has run its last call, the store no longer
    holds its output while `second` runs, and what remains is the reduction."""
    model = TwoLayers()
    held_while_second_ran: list[set[str]] = []
    with capture(
        model, ["first", "second"], reduce=lambda _, t: t.sum(1), last_calls={"first": 1}
    ) as store, torch.inference_mode():  # fmt: skip
        model.second.register_forward_pre_hook(
            lambda *_: held_while_second_ran.append(set(store.outputs))
        )
        result = model(torch.ones(2, 3))
        reduced = store.finish()
    assert held_while_second_ran == [set()]
    assert torch.equal(reduced["second"], result.sum(1))  # not learnt: reduced after the pass
    assert set(reduced) == {"first", "second"} and not store.outputs


@pytest.mark.parametrize("last_calls", [{"shared": 2}, {}])
def test_a_module_called_twice_is_reduced_once_at_its_last_call(last_calls) -> None:
    """In the hook where the calls per pass are known, after the pass where they are not:
    either way the last call's output, reduced once."""
    model = SharedLayer()
    seen: list[torch.Tensor] = []

    def reduce(_: str, output: torch.Tensor) -> torch.Tensor:
        seen.append(output)
        return output.sum(1)

    x = torch.ones(2, 3)
    with capture(model, ["shared"], reduce=reduce, last_calls=last_calls) as store:
        with torch.inference_mode():
            model(x)
        reduced = store.finish()
    with torch.inference_mode():
        last = model.shared(model.shared(x))
    assert len(seen) == 1 and torch.equal(seen[0], last)
    assert torch.equal(reduced["shared"], last.sum(1))
    assert store.calls == {"shared": 2}


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


def test_every_context_manager_removes_its_hooks_when_the_pass_raises() -> None:
    managers: list[Callable[[nn.Module], Any]] = [
        lambda m: capture(m, ["first", "second"]),
        lambda m: keep_outputs(m, ["first", "second"]),
        lambda m: watch_outputs(m, {"first": lambda _: None, "second": lambda _: None}),
        lambda m: replace_outputs(m, {"first": lambda out: out, "second": lambda out: out}),
        lambda m: input_hooks(m, [("first", lambda _: None), ("second", lambda _: None)]),
    ]
    for manager in managers:
        model = TwoLayers(fail=True)
        with pytest.raises(Boom), manager(model):
            model(torch.ones(1, 3))
        assert leaked_hooks(model) == []


def test_a_missing_module_is_a_hook_point_error_and_nothing_stays_hooked() -> None:
    model = TwoLayers()
    managers: list[Callable[[nn.Module], Any]] = [
        lambda m: capture(m, ["first", "secnd"]),
        lambda m: watch_outputs(m, {"first": lambda _: None, "secnd": lambda _: None}),
        lambda m: replace_outputs(m, {"first": lambda out: out, "secnd": lambda out: out}),
        lambda m: input_hooks(m, [("first", lambda _: None), ("secnd", lambda _: None)]),
    ]
    for manager in managers:
        with pytest.raises(HookPointError, match=r"no module named 'secnd'.*'second'\?"):  # noqa: SIM117
            with manager(model):
                pass
        assert leaked_hooks(model) == []
    assert issubclass(HookPointError, ValueError) and issubclass(HookPointError, LookupError)


def test_a_module_that_did_not_run_is_a_hook_point_error() -> None:
    model = TwoLayers()
    with capture(model, ["first", "second"]) as store, torch.inference_mode():
        model.first(torch.ones(1, 3))
    with pytest.raises(HookPointError, match=r"module 'second' did not run in the forward pass"):
        store.require(["first", "second"])
    with watch_outputs(model, {"second": lambda _: None}) as watch:
        model.first(torch.ones(1, 3))
    with pytest.raises(HookPointError, match="'second' did not run in the forward pass; run it"):
        watch.require("run it")


def test_capture_refuses_an_output_with_no_tensor() -> None:
    model = nn.Sequential(nn.Identity())
    with pytest.raises(HookOutputError, match="holds no tensor"), capture(model, ["0"]):
        model("text")
    assert leaked_hooks(model) == []


def test_keep_outputs_keeps_the_graph_and_capture_detaches() -> None:
    model = TwoLayers()
    x = torch.ones(1, 3)
    with keep_outputs(model, ["first"]) as kept, capture(model, ["second"]) as store:
        model(x)
    assert kept.outputs["first"].requires_grad
    assert not store.outputs["second"].requires_grad
    (gradient,) = torch.autograd.grad(kept.outputs["first"].sum(), [kept.outputs["first"]])
    assert torch.equal(gradient, torch.ones(1, 3))


def test_replace_outputs_goes_before_observers() -> None:
    model = TwoLayers()
    with (
        capture(model, ["first"]) as store,
        replace_outputs(model, {"first": torch.zeros_like}),
        torch.inference_mode(),
    ):
        result = model(torch.ones(1, 3))
    assert torch.equal(store.outputs["first"], torch.zeros(1, 3))
    assert torch.equal(result, model.second.bias.detach().expand(1, 3))


def test_input_hooks_read_or_replace_the_inputs() -> None:
    model = TwoLayers()
    seen: list[torch.Tensor] = []
    hooks = [
        ("second", lambda args: (torch.zeros_like(args[0]),)),
        ("second", lambda args: seen.append(args[0])),  # reads what the first hook left
    ]
    with input_hooks(model, hooks), torch.inference_mode():
        result = model(torch.ones(1, 3))
    assert torch.equal(seen[0], torch.zeros(1, 3))
    assert torch.equal(result, model.second.bias.detach().expand(1, 3))
    with input_hooks(model, hooks, first=True), torch.inference_mode():
        model(torch.ones(1, 3))  # `first`: later pairs go first, so the reader runs first
    assert not torch.equal(seen[1], torch.zeros(1, 3))


def test_watch_outputs_stops_once_every_watched_module_ran() -> None:
    model = TwoLayers()
    seen: list[str] = []
    readers = {"first": lambda _: seen.append("first")}
    with (
        watch_outputs(model, readers, stop_when_all_ran=True) as watch,
        pytest.raises(StopForward),
        torch.inference_mode(),
    ):
        model(torch.ones(1, 3))
    assert seen == ["first"] and watch.calls == {"first": 1}
    watch.require()


def test_the_leak_check_sees_a_hook_left_behind() -> None:
    model = TwoLayers()
    handle = model.second.register_forward_pre_hook(lambda *_: None)
    try:
        assert len(leaked_hooks(model)) == 1
    finally:
        handle.remove()
    assert leaked_hooks(model) == []


# -- every analysis, failing in the middle of its forward pass ---------------------------------


def test_attention_leaves_no_hook_and_its_attention_kernel_when_the_pass_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    text_config = llava.model.config.text_config
    before = text_config._attn_implementation
    # Layer 0's attention hook has fired, layer 1's has not.
    with failing(llava.model, f"{LAYER_1}.input_layernorm"), pytest.raises(Boom):
        answer_attention(llava, [image], [PROMPT], ["model.language_model.layers.*"])
    assert leaked_hooks(llava.model) == []
    assert text_config._attn_implementation == before


def test_logit_lens_leaves_no_hook_when_the_pass_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    with failing(llava.model, f"{LAYER_1}.mlp"), pytest.raises(Boom):
        layer_logits(llava, [image], [PROMPT])
    assert leaked_hooks(llava.model) == []


def test_attribution_leaves_no_hook_and_no_gradient_state_when_the_pass_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    flags = [p.requires_grad for p in llava.model.parameters()]
    # The vision layer's kept output is taken; the projector after it fails.
    with failing(llava.model, "model.multi_modal_projector"), pytest.raises(Boom):
        attribute(llava, image, PROMPT, [VISION_0], pixels=True)
    assert leaked_hooks(llava.model) == []
    assert [p.requires_grad for p in llava.model.parameters()] == flags
    assert not llava.model.training


def test_attribution_leaves_no_hook_when_it_fails_after_the_pass(
    llava: LoadedModel, image: Image.Image
) -> None:
    """The pass ran with the kept-output hooks in place; the error comes before the backward."""
    with pytest.raises(AttributionError, match="outside the vocabulary"):
        attribute(llava, image, PROMPT, [VISION_0], pixels=True, target_token=10**9)
    assert leaked_hooks(llava.model) == []
    assert all(parameter.grad is None for parameter in llava.model.parameters())


@pytest.mark.parametrize(
    "after",
    [0, 2],
    ids=["during-the-clean-cache", "during-the-patched-run"],
)
def test_patching_leaves_no_hook_when_a_pass_raises(
    llava: LoadedModel, image: Image.Image, after: int
) -> None:
    """Runs per pair: clean (cached with capture hooks), corrupted, patched (replace hooks)."""
    pair = PatchPair("p", image, Image.new("RGB", (32, 32), (30, 30, 200)), PROMPT)
    with failing(llava.model, f"{LAYER_1}.mlp", after=after), pytest.raises(Boom):
        activation_patching(llava, [pair], [LAYER_0], positions=["all"])
    assert leaked_hooks(llava.model) == []


def test_ablation_leaves_no_hook_when_the_ablated_run_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    """Run 1 is the base run; run 2 has layer 0's ablation pre-hook in place."""
    with failing(llava.model, f"{LAYER_1}.mlp", after=1), pytest.raises(Boom):
        head_ablation(llava, [Sample("s", image, PROMPT)], {LAYER_0: [0]}, modes=("zero",))
    assert leaked_hooks(llava.model) == []


def test_head_means_leave_no_hook_when_the_reference_run_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    """Mean ablation first runs the reference samples with recording pre-hooks."""
    with failing(llava.model, f"{LAYER_1}.mlp"), pytest.raises(Boom):
        head_ablation(llava, [Sample("s", image, PROMPT)], {LAYER_0: [0]}, modes=("mean",))
    assert leaked_hooks(llava.model) == []


def test_extraction_leaves_no_hook_when_the_pass_raises(
    llava: LoadedModel, image: Image.Image
) -> None:
    """The vision block and projector hooks have fired; the LLM fails before its layer 1."""
    with failing(llava.model, f"{LAYER_0}.mlp"), pytest.raises(Boom):
        capture_batch(llava, [image], [PROMPT], HOOK_POINTS["llava"], ["mean"], stop_early=False)
    assert leaked_hooks(llava.model) == []


def test_the_failing_module_really_fails_partway_and_is_restored(
    llava: LoadedModel, image: Image.Image
) -> None:
    """The checks above are not vacuous: the hooks before the failing module do fire, the ones
    after it do not, and the module works again afterwards."""
    seen: dict[str, Any] = {}
    readers = {
        name: (lambda out, name=name: seen.setdefault(name, out)) for name in (LAYER_0, LAYER_1)
    }
    inputs = llava.architecture.adapter.prepare_on(
        llava.processor, [image], [PROMPT], llava.device, llava.dtype
    )
    with (
        failing(llava.model, f"{LAYER_1}.mlp"),
        watch_outputs(llava.model, readers) as watch,
        pytest.raises(Boom),
        torch.inference_mode(),
    ):
        llava.model(**inputs)
    assert list(seen) == [LAYER_0] and watch.calls == {LAYER_0: 1}
    with pytest.raises(HookPointError, match=f"'{LAYER_1}' did not run"):
        watch.require()
    assert "forward" not in vars(dict(llava.model.named_modules())[f"{LAYER_1}.mlp"])
    with torch.inference_mode():
        assert llava.model(**inputs).logits.shape[0] == 1
