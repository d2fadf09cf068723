"""Interventions on real tiny checkpoints: planted truths of activation patching and head
ablation that hold whatever the random weights are.

- Patching every position of the last decoder layer from the clean run into the corrupted one
  gives the clean logits (the layer's output is all the head sees).
- Patching nothing, or the corrupted run into itself, gives the corrupted logits.
- Ablating every head of a layer changes the logits; ablating none leaves them bit-exact.
- Patching image positions replaces exactly the image positions of the hooked output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch
from lens_assets.resources.warehouse import Warehouse
from PIL import Image

from lens_assets.analyses.answer_tokens import AnswerTokenError
from lens_assets.analyses.interpretability import AblationSettings, PatchingSettings
from lens_assets.analyses.interventions import (
    ABLATION_EFFECTS,
    PATCHING_EFFECTS,
    InterventionError,
    PatchPair,
    Sample,
    ablate_heads,
    ablation_effects,
    activation_patching,
    answer_token_id,
    attention_heads,
    cache_outputs,
    head_ablation,
    image_position_mask,
    patch_outputs,
    patching_effects,
    prepare_input,
    prepare_pair,
    recovery,
    rows_table,
    run_logits,
)
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.generators.stroop import Params, render

GENERATORS = ("llava", "qwen2-vl")
PROMPT = "Describe the color in this image in one word."
# Same size for both images: Qwen2-VL's image-token count follows the image size.
STROOP = Params(width=64, height=48)
Loader = Callable[[str], LoadedModel]


def _decoder_layers(loaded: LoadedModel) -> list[str]:
    prefix = "model.language_model.layers."
    return [n for n in loaded.module_names if n.startswith(prefix) and n.count(".") == 3]


def _stroop_pair(pair_id: str = "red-on-blue/green") -> PatchPair:
    """The same word in the same ink on two backgrounds."""
    return PatchPair(
        pair_id,
        clean=render("red", "red", "blue", STROOP),
        corrupted=render("red", "red", "green", STROOP),
        prompt=PROMPT,
    )


def _inputs(loaded: LoadedModel, pair: PatchPair):
    return prepare_pair(loaded, pair.clean, pair.corrupted, pair.prompt)


@pytest.mark.parametrize("architecture", GENERATORS)
def test_patching_last_layer_everywhere_gives_clean_logits(
    load_tiny: Loader, architecture: str
) -> None:
    loaded = load_tiny(architecture)
    last = _decoder_layers(loaded)[-1]
    clean_inputs, corrupted_inputs = _inputs(loaded, _stroop_pair())
    clean_logits, cache = cache_outputs(loaded, clean_inputs, [last])
    corrupted_logits = run_logits(loaded, corrupted_inputs)
    assert not torch.allclose(clean_logits, corrupted_logits, atol=1e-4)  # the images matter

    with patch_outputs(loaded.model, {last: cache[last]}):
        patched = run_logits(loaded, corrupted_inputs)
    assert torch.equal(patched, clean_logits)  # bit-exact: same values, same kernels

    # The same through the row-level API: recovery 1 at the last layer, 'all' positions.
    pair = _stroop_pair()
    rows = activation_patching(loaded, [pair], [last], positions=["all"], dataset="stroop")
    (row,) = rows
    assert row["layer"] == last and row["positions"] == "all"
    assert row["answer_token"] == int(clean_logits[0, -1].argmax())
    assert row["patched_logit"] == pytest.approx(row["clean_logit"], abs=1e-5)
    assert row["recovery"] == pytest.approx(1.0, abs=1e-4)
    assert row["patched_positions"] == clean_inputs["input_ids"].shape[1]
    assert rows_table(rows, PATCHING_EFFECTS).num_rows == 1


@pytest.mark.parametrize("architecture", GENERATORS)
def test_patching_nothing_leaves_corrupted_logits(load_tiny: Loader, architecture: str) -> None:
    loaded = load_tiny(architecture)
    first = _decoder_layers(loaded)[0]
    clean_inputs, corrupted_inputs = _inputs(loaded, _stroop_pair())
    corrupted_logits, own = cache_outputs(loaded, corrupted_inputs, [first])

    with patch_outputs(loaded.model, {}):
        assert torch.equal(run_logits(loaded, corrupted_inputs), corrupted_logits)
    with patch_outputs(loaded.model, {first: own[first]}):  # the corrupted run into itself
        assert torch.equal(run_logits(loaded, corrupted_inputs), corrupted_logits)
    # ... while the clean output at the same layer does move the logits: the patch is live.
    _, clean = cache_outputs(loaded, clean_inputs, [first])
    with patch_outputs(loaded.model, {first: clean[first]}):
        assert not torch.equal(run_logits(loaded, corrupted_inputs), corrupted_logits)
    assert activation_patching(loaded, [_stroop_pair()], []) == []
    # No hook is left behind: a plain run after all this is the corrupted run again.
    assert torch.equal(run_logits(loaded, corrupted_inputs), corrupted_logits)


@pytest.mark.parametrize("architecture", GENERATORS)
def test_ablating_all_heads_changes_output_and_none_does_not(
    load_tiny: Loader, architecture: str
) -> None:
    loaded = load_tiny(architecture)
    layer = _decoder_layers(loaded)[0]
    site = attention_heads(loaded.model, layer)
    config = loaded.model.config.get_text_config()
    assert site.projection == f"{layer}.self_attn.o_proj"
    assert site.n_heads == config.num_attention_heads
    assert site.n_heads * site.head_dim == config.hidden_size

    clean_inputs, _ = _inputs(loaded, _stroop_pair())
    base = run_logits(loaded, clean_inputs)
    with ablate_heads(loaded.model, {layer: []}):
        assert torch.equal(run_logits(loaded, clean_inputs), base)
    with ablate_heads(loaded.model, {layer: range(site.n_heads)}):
        ablated = run_logits(loaded, clean_inputs)
    assert (ablated - base).abs().max() > 1e-3
    # Zeroing every head is zeroing the projection's whole input: only its bias is left.
    projection = dict(loaded.model.named_modules())[site.projection]
    everything = {layer: range(site.n_heads)}
    with capture(loaded.model, [site.projection]) as store, ablate_heads(loaded.model, everything):
        run_logits(loaded, clean_inputs)
    out = store.outputs[site.projection]
    bias = projection.bias if projection.bias is not None else torch.zeros(1)
    assert torch.equal(out, bias.expand_as(out))
    assert torch.equal(run_logits(loaded, clean_inputs), base)  # hooks removed

    sample = Sample("red-on-blue", _stroop_pair().clean, PROMPT)
    n = site.n_heads
    rows = head_ablation(loaded, [sample], {layer: list(range(n))}, modes=("zero", "mean"))
    assert [r["mode"] for r in rows] == ["zero", "mean"]
    zero = rows[0]
    assert zero["logit_change"] == pytest.approx(zero["ablated_logit"] - zero["base_logit"])
    assert zero["kl"] > 0 and zero["max_abs_diff"] > 1e-3
    by_glob = head_ablation(loaded, [sample], {"*language_model.layers.0": list(range(n))})
    assert [(r["layer"], r["kl"]) for r in by_glob] == [(layer, zero["kl"])]
    none = head_ablation(loaded, [sample], {layer: []}, modes=("zero", "mean"))
    assert all(r["logit_change"] == 0 and r["kl"] == 0 and r["max_abs_diff"] == 0 for r in none)
    assert rows_table(rows, ABLATION_EFFECTS).num_rows == 2


def test_mean_ablation_differs_from_zero_ablation(load_tiny: Loader) -> None:
    """A head's mean over the reference batch is not zero, and not its value at every
    position, so mean ablation moves the logits, and not as zero ablation does."""
    loaded = load_tiny("llava")
    layer = _decoder_layers(loaded)[0]
    sample = Sample("s", _stroop_pair().clean, PROMPT)
    zero, mean = head_ablation(loaded, [sample], {layer: [0]}, modes=("zero", "mean"))
    assert mean["max_abs_diff"] > 0
    assert zero["ablated_logit"] != mean["ablated_logit"]


@pytest.mark.parametrize("architecture", GENERATORS)
def test_image_position_patching_touches_only_image_positions(
    load_tiny: Loader, architecture: str
) -> None:
    loaded = load_tiny(architecture)
    layer = _decoder_layers(loaded)[0]
    clean_inputs, corrupted_inputs = _inputs(loaded, _stroop_pair())
    _, clean = cache_outputs(loaded, clean_inputs, [layer])
    _, corrupted = cache_outputs(loaded, corrupted_inputs, [layer])
    mask = image_position_mask(loaded, layer, clean[layer], corrupted_inputs)
    ids = corrupted_inputs["input_ids"]
    assert mask is not None
    assert torch.equal(mask, ids == loaded.model.config.image_token_id)
    image, text = mask[0], ~mask[0]
    # Text after the image attends to it, so there clean and corrupted differ: a patch of all
    # positions would be caught below.
    after = text & (torch.arange(ids.shape[1]) > image.nonzero().max())
    assert not torch.equal(clean[layer][0, after], corrupted[layer][0, after])

    patch = patch_outputs(loaded.model, {layer: clean[layer]}, {layer: mask})
    with capture(loaded.model, [layer]) as store, patch:
        run_logits(loaded, corrupted_inputs)
    patched = store.outputs[layer][0]
    assert torch.equal(patched[image], clean[layer][0, image])
    assert torch.equal(patched[text], corrupted[layer][0, text])

    (row,) = activation_patching(loaded, [_stroop_pair()], [layer], positions=["image"])
    assert row["patched_positions"] == int(mask.sum()) > 0
    # After the last layer no position reads another, so image positions patched there cannot
    # reach the answer at the last (text) position.
    last = _decoder_layers(loaded)[-1]
    (row,) = activation_patching(loaded, [_stroop_pair()], [last], positions=["image"])
    assert row["patched_logit"] == row["corrupted_logit"] != row["clean_logit"]
    assert row["recovery"] == 0.0


def test_vision_block_image_positions_skip_the_class_token(load_tiny: Loader) -> None:
    loaded = load_tiny("llava")
    block = "model.vision_tower.encoder.layers.1"
    clean_inputs, corrupted_inputs = _inputs(loaded, _stroop_pair())
    _, clean = cache_outputs(loaded, clean_inputs, [block])
    mask = image_position_mask(loaded, block, clean[block], corrupted_inputs)
    assert mask is not None and not mask[0, 0] and mask[0, 1:].all()
    rows = activation_patching(loaded, [_stroop_pair()], [block], positions=["all", "image"])
    assert [r["patched_positions"] for r in rows] == [mask.numel(), mask.numel() - 1]


def test_mismatched_sequences_are_refused(load_tiny: Loader) -> None:
    loaded = load_tiny("qwen2-vl")
    small, large = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (96, 64), "blue")
    with pytest.raises(InterventionError, match="positions do not line up"):
        prepare_pair(loaded, small, large, PROMPT)
    pair = PatchPair("mismatch", small, large, PROMPT)
    with pytest.raises(InterventionError, match="same size"):
        activation_patching(loaded, [pair], ["model.language_model.layers.0"])


@pytest.mark.parametrize("architecture", GENERATORS)
def test_answer_token_is_the_answer_words_first_token(load_tiny: Loader, architecture: str) -> None:
    loaded = load_tiny(architecture)
    tokenizer = loaded.processor.tokenizer
    text = loaded.architecture.adapter.prompt_text(loaded.processor, PROMPT)
    # LLaVA's template ends in "ASSISTANT:" (answers follow a space), Qwen's in a newline.
    separator = "" if text[-1].isspace() else " "
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    full = tokenizer(text + separator + "red", add_special_tokens=False)["input_ids"]
    written = [t for t in full[len(prompt_ids) :] if tokenizer.decode([t]).strip()]
    red = answer_token_id(loaded, PROMPT, "red")
    assert red == written[0] and tokenizer.decode([red]).strip()  # never a bare space
    assert answer_token_id(loaded, PROMPT, separator + "red") == red  # as written, same token
    assert answer_token_id(loaded, PROMPT, "blue") != red
    assert answer_token_id(loaded, PROMPT, 7) == 7
    with pytest.raises(AnswerTokenError):
        answer_token_id(loaded, PROMPT, " ")


def test_bare_answer_word_follows_a_space_unless_the_prompt_ends_in_one() -> None:
    """On a vocabulary that has both "red" and " red" (as real ones do), the separator decides
    the token: " red" after "ASSISTANT:", "red" after a newline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from lens_assets.capture.adapters.base import Adapter

    vocab = {"[UNK]": 0, "ASSISTANT": 1, ":": 2, "red": 3, "\u0120red": 4, "\u010a": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    processor = SimpleNamespace(tokenizer=tokenizer, chat_template=None, image_token="")
    loaded = SimpleNamespace(processor=processor, architecture=SimpleNamespace(adapter=Adapter()))
    assert answer_token_id(loaded, "ASSISTANT:", "red") == 4  # type: ignore[arg-type]
    assert answer_token_id(loaded, "ASSISTANT:\n", "red") == 3  # type: ignore[arg-type]
    assert answer_token_id(loaded, "ASSISTANT:", " red") == 4  # type: ignore[arg-type]


def test_recovery_is_nan_safe() -> None:
    assert recovery(3.0, 1.0, 2.0) == 0.5
    assert recovery(1.0, 3.0, 3.0) == 0.0
    assert math.isnan(recovery(2.0, 2.0, 5.0))


def test_bad_heads_and_modes_are_refused(load_tiny: Loader) -> None:
    loaded = load_tiny("llava")
    layer = _decoder_layers(loaded)[0]
    n = attention_heads(loaded.model, layer).n_heads
    refused = {layer: [0], f"{layer}.self_attn": [n]}  # the second names a missing head
    with pytest.raises(InterventionError, match="does not exist"):  # noqa: SIM117
        with ablate_heads(loaded.model, refused):
            pass
    with pytest.raises(InterventionError, match="head means"):  # noqa: SIM117
        with ablate_heads(loaded.model, {layer: [0]}, mode="mean"):
            pass
    # The first layer's hook was in place when the second was refused: it is gone again.
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())


def test_configured_patching_study_reads_pairs_from_the_warehouse(
    load_tiny: Loader, warehouse: Warehouse, tmp_path: Path
) -> None:
    """Two Stroop pairs (same word and ink, other background) stored as a dataset; the study
    patches the last layer everywhere, so each pair recovers fully, on the clean image's
    expected background answer."""
    loaded = load_tiny("llava")
    combos = {"a": ("red", "red", "blue"), "b": ("red", "red", "green"),
              "c": ("blue", "blue", "red"), "d": ("blue", "blue", "yellow")}  # fmt: skip
    question = "What is the background colour?"
    images, labels, prompts = [], [], []
    for image_id, (word, font, background) in combos.items():
        path = tmp_path / f"{image_id}.png"
        render(word, font, background, STROOP).save(path)
        images.append({"image_id": image_id, "dataset": "stroop", "path": str(path)})
        for concept, value in zip(("word", "font", "background"), combos[image_id], strict=True):
            labels.append({"image_id": image_id, "dataset": "stroop", "concept": concept,
                           "value": value})  # fmt: skip
        prompts.append({"dataset": "stroop", "row_key": f"row-{image_id}",
                        "position": len(prompts), "image_ids": [image_id], "prompt": question,
                        "answer": background, "choices": None, "split": None,
                        "kind": "attribute", "concept": "background"})  # fmt: skip
    warehouse.replace_dataset_rows(
        ["stroop"],
        {name: pa.Table.from_pylist(rows) for name, rows in
         (("images", images), ("image_labels", labels), ("dataset_rows", prompts))},
    )  # fmt: skip
    last = _decoder_layers(loaded)[-1]
    settings = PatchingSettings(layers=[last], positions=["all"], max_pairs=4)
    rows = patching_effects(loaded, warehouse, settings).to_pylist()
    assert [r["pair_id"] for r in rows] == ["a>b", "c>d"]
    assert [r["answer_token"] for r in rows] == [
        answer_token_id(loaded, question, "blue"),
        answer_token_id(loaded, question, "red"),
    ]
    assert all(r["dataset"] == "stroop" and r["layer"] == last for r in rows)
    assert all(r["recovery"] == pytest.approx(1.0, abs=1e-4) for r in rows)


def test_configured_ablation_fills_the_dataset_and_sample_columns(load_tiny: Loader) -> None:
    loaded = load_tiny("qwen2-vl")
    pair = _stroop_pair()
    settings = AblationSettings(mode="mean", heads={"**language_model.layers.0": [0]})
    table = ablation_effects(
        loaded, [pair.clean, pair.corrupted], [PROMPT] * 2, ["x", "y"], settings,
        datasets=["stroop", "stroop"],
    )  # fmt: skip
    assert table.schema == ABLATION_EFFECTS
    rows = table.to_pylist()
    assert [(r["sample_id"], r["dataset"], r["mode"], r["heads"]) for r in rows] == [
        ("x", "stroop", "mean", [0]),
        ("y", "stroop", "mean", [0]),
    ]
    assert all(r["layer"] == _decoder_layers(loaded)[0] and r["max_abs_diff"] > 0 for r in rows)


def test_head_ablation_reads_a_row_of_two_images_in_one_prompt(load_tiny: Loader) -> None:
    """A two-image row is ablated as it is asked: its run sees both images' tokens, and the
    ablation changes its answer logit as it does for a one-image row."""
    loaded = load_tiny("llava")
    pair = _stroop_pair()
    settings = AblationSettings(mode="zero", heads={"**language_model.layers.0": [0, 1]})
    table = ablation_effects(
        loaded, [[pair.clean, pair.corrupted], pair.clean], [PROMPT] * 2, ["row", "one"],
        settings,
    )  # fmt: skip
    rows = {r["sample_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"row", "one"}
    assert all(r["max_abs_diff"] > 0 for r in rows.values())
    assert rows["row"]["base_logit"] != pytest.approx(rows["one"]["base_logit"])


def test_configured_patching_pairs_two_image_rows(
    load_tiny: Loader, warehouse: Warehouse, tmp_path: Path
) -> None:
    """Rows of two images each (a reference and a candidate) are patched as they are asked:
    the pair is two rows with as many images, labelled on the row, and patching the last layer
    everywhere recovers the clean row's logit on its expected answer."""
    loaded = load_tiny("llava")
    question = "Which background does the second picture have?"
    combos = {"p": ("red", "blue"), "q": ("red", "green")}  # row -> (word, second background)
    images, rows, labels = [], [], []
    for key, (word, background) in combos.items():
        ids = [f"{key}1", f"{key}2"]
        for image_id, ground in zip(ids, ("white", background), strict=True):
            path = tmp_path / f"{image_id}.png"
            render(word, word, ground, STROOP).save(path)
            images.append({"image_id": image_id, "dataset": "pairs", "path": str(path)})
        rows.append({"dataset": "pairs", "row_key": f"row-{key}", "position": len(rows),
                     "image_ids": ids, "prompt": question, "answer": background,
                     "choices": None, "split": None, "kind": "attribute",
                     "concept": "background"})  # fmt: skip
        labels += [{"dataset": "pairs", "row_key": f"row-{key}", "concept": concept,
                    "value": value} for concept, value in (("word", word),
                                                          ("background", background))]  # fmt: skip
    warehouse.replace_dataset_rows(
        ["pairs"],
        {name: pa.Table.from_pylist(table) for name, table in
         (("images", images), ("dataset_rows", rows), ("row_labels", labels))},
    )  # fmt: skip
    last = _decoder_layers(loaded)[-1]
    settings = PatchingSettings(dataset="pairs", layers=[last], positions=["all", "image"])
    found = patching_effects(loaded, warehouse, settings).to_pylist()
    assert [(r["pair_id"], r["positions"]) for r in found] == [
        ("p1+p2>q1+q2", "all"),
        ("p1+p2>q1+q2", "image"),
    ]
    assert found[0]["answer_token"] == answer_token_id(loaded, question, "blue")
    assert found[0]["recovery"] == pytest.approx(1.0, abs=1e-4)
    # Image positions of both pictures are patched: twice one picture's image tokens.
    one = prepare_input(loaded, render("red", "red", "blue", STROOP), question)
    tokens = int((one["input_ids"] == loaded.layout.image_token_id).sum())
    assert found[1]["patched_positions"] == 2 * tokens
