"""Every dataset kind yields rows: a row's own prompt, labels, answer and choices, one image or
several in order, or none (text only); the same image under two questions is two rows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from lens_assets.data.datasets import collect_images, parse_dataset_config
from lens_assets.data.images import content_id
from lens_assets.data.rows import row_key


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pictures(tmp_path: Path) -> Path:
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, colour in (("ref.png", (200, 0, 0)), ("target.png", (0, 0, 200)),
                         ("other.png", (0, 200, 0))):  # fmt: skip
        (folder / name).write_bytes(png(colour))
    return folder


def test_a_csv_manifest_row_holds_several_images_in_order(pictures: Path, tmp_path: Path) -> None:
    (pictures / "pairs.csv").write_text(
        "image_paths,prompt,answer,choices,item\n"
        "ref.png|target.png,Which point matches?,B,A|B|C|D,0\n"
        "target.png|ref.png,Which point matches?,C,A|B|C|D,1\n"
        ",What is 2 + 2?,4,,2\n"
    )
    config = parse_dataset_config({"kind": "manifest", "path": str(pictures / "pairs.csv")}, "t")
    out = collect_images("pairs", config, tmp_path)
    ref, target = (content_id((pictures / n).read_bytes()) for n in ("ref.png", "target.png"))
    assert [row.image_ids for row in out.items] == [(ref, target), (target, ref), ()]
    first = out.items[0]
    assert (first.prompt, first.answer, first.choices) == ("Which point matches?", "B",
                                                           ("A", "B", "C", "D"))  # fmt: skip
    assert first.labels == {"item": "0"}
    assert out.items[2].prompt == "What is 2 + 2?" and out.items[2].choices is None
    assert len(out.rows) == 2  # two distinct pictures, each stored once


def test_a_jsonl_manifest_lists_a_rows_images(pictures: Path, tmp_path: Path) -> None:
    lines = [{"image_paths": ["ref.png", "target.png", "other.png"], "prompt": "Odd one?",
              "answer": "C", "choices": ["A", "B", "C"]}]  # fmt: skip
    (pictures / "rows.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    config = parse_dataset_config({"kind": "manifest", "path": str(pictures / "rows.jsonl")}, "t")
    (row,) = collect_images("rows", config, tmp_path).items
    assert len(row.image_ids) == 3 and row.choices == ("A", "B", "C")


def test_one_image_under_two_questions_is_two_rows_with_their_own_labels(
    pictures: Path, tmp_path: Path
) -> None:
    (pictures / "asked.csv").write_text(
        "image_path,prompt,label\nref.png,Is it red?,yes\nref.png,Is it blue?,no\n"
    )
    config = parse_dataset_config({"kind": "manifest", "path": str(pictures / "asked.csv")}, "t")
    out = collect_images("asked", config, tmp_path)
    ref = content_id((pictures / "ref.png").read_bytes())
    assert [(r.prompt, r.answer, r.labels["label"]) for r in out.items] == [
        ("Is it red?", "yes", "yes"), ("Is it blue?", "no", "no"),
    ]  # fmt: skip
    assert [r.row_key for r in out.items] == [
        row_key([ref], "Is it red?"), row_key([ref], "Is it blue?"),
    ]  # fmt: skip


def test_a_row_missing_one_of_its_images_is_left_out_whole(pictures: Path, tmp_path: Path) -> None:
    (pictures / "broken.csv").write_text(
        "image_paths,prompt\nref.png|missing.png,Same?\nref.png|target.png,Same?\n"
    )
    config = parse_dataset_config({"kind": "manifest", "path": str(pictures / "broken.csv")}, "t")
    out = collect_images("broken", config, tmp_path)
    assert [len(row.image_ids) for row in out.items] == [2]  # not asked about one picture
    assert any("missing.png" in error["path"] for error in out.errors)


def test_a_hugging_face_dataset_with_numbered_image_columns(pictures: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {"image_1": [str(pictures / "ref.png")] * 2,
         "image_2": [str(pictures / "target.png"), str(pictures / "other.png")],
         "question": ["Same object?", "Same object?"], "answer": ["yes", "no"]}
    )  # fmt: skip
    for column in ("image_1", "image_2"):
        data = data.cast_column(column, datasets.Image())
    data.save_to_disk(str(tmp_path / "hf"))
    config = parse_dataset_config(
        {"kind": "hf_disk", "path": str(tmp_path / "hf"), "prompt_column": "question",
         "answer_column": "answer"}, "t",
    )  # fmt: skip
    out = collect_images("blink", config, tmp_path / "rendered")
    assert [len(row.image_ids) for row in out.items] == [2, 2]
    assert [(row.prompt, row.answer) for row in out.items] == [
        ("Same object?", "yes"), ("Same object?", "no"),
    ]  # fmt: skip
    assert out.items[0].image_ids[0] == out.items[1].image_ids[0]  # the shared reference
