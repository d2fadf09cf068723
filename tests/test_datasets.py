"""Dataset kinds: the user's folders, manifests and Hugging Face datasets, blank images, and
every kind of unusable file, recorded and never fatal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lens_assets.config import ConfigError
from lens_assets.data.datasets import (
    BlankDataset,
    HfDataset,
    collect_all,
    collect_images,
    parse_dataset_config,
    vlm_lens_dataset,
)
from lens_assets.data.images import MAX_PIXELS, ImageReadError, decode


def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.png").write_bytes(png((200, 10, 10)))
    (folder / "blue.png").write_bytes(png((10, 10, 200)))
    return folder


def test_folder_with_a_labels_csv(photos: Path, tmp_path: Path) -> None:
    (photos / "blue-copy.png").write_bytes(png((10, 10, 200)))  # same bytes, same image id
    (photos / "labels.csv").write_text("image,label,brightness\nred.png,red,dark\nblue.png,blue,\n")
    config = parse_dataset_config(
        {"kind": "folder", "path": str(photos), "labels": "labels.csv", "prompt": "Colour?"}, "t"
    )
    out = collect_images("photos", config, tmp_path)
    assert len(out.rows) == 2  # the copy is the same picture, stored once
    labels = {(r["concept"], r["value"]) for r in out.labels}
    assert labels == {("label", "red"), ("brightness", "dark"), ("label", "blue")}
    assert {(p["prompt"], p["answer"]) for p in out.prompts} >= {("Colour?", "red")}


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_manifest_resolves_paths_against_its_folder(photos: Path, suffix: str) -> None:
    rows = [
        {"image_path": "red.png", "prompt": "What colour?", "label": "red", "shade": "dark"},
        {"image_path": "blue.png", "prompt": "What colour?", "label": "blue", "shade": "deep"},
    ]
    manifest = photos / f"manifest{suffix}"
    table = pa.Table.from_pylist(rows)
    if suffix == ".csv":
        pa_csv.write_csv(table, manifest)
    elif suffix == ".parquet":
        pq.write_table(table, manifest)
    else:
        manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = collect_images("m", parse_dataset_config({"kind": "manifest", "path": str(manifest)},
                                                   "t"), photos)  # fmt: skip
    assert [Path(r["path"]).name for r in out.rows] == ["red.png", "blue.png"]
    assert {(r["concept"], r["value"]) for r in out.labels} == {
        ("label", "red"), ("shade", "dark"), ("label", "blue"), ("shade", "deep"),
    }  # fmt: skip
    assert [(p["prompt"], p["answer"]) for p in out.prompts] == [
        ("What colour?", "red"), ("What colour?", "blue"),
    ]  # fmt: skip


def test_a_manifest_path_escaping_its_folder_is_refused(photos: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    manifest = photos / "manifest.csv"
    manifest.write_text("image_path,label\n../secret.png,x\nred.png,red\n/etc/hostname,y\n")
    out = collect_images("m", parse_dataset_config({"kind": "manifest", "path": str(manifest)},
                                                   "t"), tmp_path)  # fmt: skip
    assert [Path(r["path"]).name for r in out.rows] == ["red.png"]
    assert len(out.errors) == 2
    assert all("outside" in e["error"] and "manifest's folder" in e["error"] for e in out.errors)


def test_a_folder_symlink_pointing_outside_is_refused(photos: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    (photos / "innocent.png").symlink_to(secret)
    (photos / "inner.png").symlink_to(photos / "red.png")  # a link that stays inside is fine
    out = collect_images("f", parse_dataset_config({"kind": "folder", "path": str(photos)}, "t"),
                         tmp_path)  # fmt: skip
    assert len(out.rows) == 2  # blue and red (red read through the inner link)
    assert all(Path(r["path"]).parent == photos.resolve() for r in out.rows)
    assert [Path(e["path"]).name for e in out.errors] == ["innocent.png"]
    assert "outside" in out.errors[0]["error"] and str(secret) in out.errors[0]["error"]


def test_a_folder_labels_file_outside_the_folder_is_a_config_error(
    photos: Path, tmp_path: Path
) -> None:
    (tmp_path / "labels.csv").write_text("image,label\nred.png,red\n")
    config = parse_dataset_config(
        {"kind": "folder", "path": str(photos), "labels": "../labels.csv"}, "t"
    )
    with pytest.raises(ConfigError, match=r"labels: refused.*outside"):
        collect_images("f", config, tmp_path)


def test_hf_image_names_escaping_the_image_root_are_refused(photos: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png((1, 2, 3)))
    names = ["red.png", "../secret.png", str(secret), "blue.png"]
    pq.write_table(pa.table({"image": names, "label": ["a", "b", "c", "d"]}),
                   tmp_path / "names.parquet")  # fmt: skip
    config = parse_dataset_config(
        {"kind": "hf_disk", "path": str(tmp_path / "names.parquet"), "images_root": str(photos)},
        "t",
    )
    out = collect_images("hf", config, tmp_path / "rendered")
    assert sorted(r["value"] for r in out.labels) == ["a", "d"]
    assert [e["path"] for e in out.errors] == [str(photos / "../secret.png"), str(secret)]
    assert all("outside" in e["error"] and "image root" in e["error"] for e in out.errors)


def test_hf_disk_folder_written_by_save_to_disk(photos: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict(
        {
            "image": [str(photos / "red.png"), str(photos / "blue.png")],
            "prompt": ["Colour?", "Colour?"],
            "label": ["red", "blue"],
            "size": ["small", "large"],
        }
    ).cast_column("image", datasets.Image())
    datasets.DatasetDict({"test": data}).save_to_disk(str(tmp_path / "hf"))
    config = parse_dataset_config(
        {"kind": "hf_disk", "path": str(tmp_path / "hf"), "split": "test"}, "t"
    )
    out = collect_images("hf", config, tmp_path / "rendered")
    assert len(out.rows) == 2
    assert {(r["concept"], r["value"]) for r in out.labels} == {
        ("label", "red"), ("size", "small"), ("label", "blue"), ("size", "large"),
    }  # fmt: skip
    assert [p["answer"] for p in out.prompts] == ["red", "blue"]
    assert all(Path(r["path"]).is_file() for r in out.rows)


def test_hf_disk_local_parquet_with_an_image_column(photos: Path, tmp_path: Path) -> None:
    table = pa.table(
        {
            "image": [{"bytes": (photos / "red.png").read_bytes(), "path": "red.png"}],
            "label": ["red"],
        }
    )
    pq.write_table(table, tmp_path / "train.parquet")
    config = parse_dataset_config({"kind": "hf_disk", "path": str(tmp_path / "train.parquet")}, "t")
    out = collect_images("pq", config, tmp_path / "rendered")
    assert len(out.rows) == 1 and out.labels[0]["value"] == "red"


def test_vlm_lens_dataset_block_maps_onto_kinds() -> None:
    local = vlm_lens_dataset(
        {"local_dataset_path": "/data/clevr", "dataset_split": "color",
         "image_dataset_path": "/data/images"}
    )  # fmt: skip
    assert isinstance(local, HfDataset)
    assert (local.kind, local.path, local.split, local.images_root) == (
        "hf_disk", "/data/clevr", "color", "/data/images",
    )  # fmt: skip
    hub = vlm_lens_dataset({"dataset_path": "compling/CLEVR_categories", "dataset_split": "shape"})
    assert (hub.kind, hub.path, hub.split) == ("hf_hub", "compling/CLEVR_categories", "shape")


def test_blank_images_are_asked_another_datasets_questions(tmp_path: Path) -> None:
    configs = {
        "shapes": parse_dataset_config({"kind": "shapes", "size": 4}, "t"),
        "blind": BlankDataset(
            kind="blank", of="shapes", colours=["white", "black", "noise"], image_size=32
        ),
    }
    shapes, blind = collect_all(configs, tmp_path)[::-1]
    assert {r["split"] for r in blind.rows} == {"white", "black", "noise"}
    # a blank input asked one question is one row, however many real rows asked it; a blank
    # image has no right answer of its own (the blind test scores it per real row)
    questions = {row.prompt for row in shapes.items if row.prompt}
    assert len(blind.items) == 3 * len(questions)
    assert {row.answer for row in blind.items} == {None}
    white = next(r for r in blind.rows if r["split"] == "white")
    assert Image.open(white["path"]).getextrema() == ((255, 255),) * 3


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown kind 'foldr' \(did you mean 'folder'\?\)"):
        parse_dataset_config({"kind": "foldr", "path": "x"}, "t")


def test_generator_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="colour_count"):
        parse_dataset_config({"kind": "shapes", "colour_count": 3}, "t")


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


CONVERTED = {
    "greyscale": Image.new("L", (8, 8), 128),
    "palette": Image.new("RGB", (8, 8), (10, 200, 30)).convert("P"),
    "alpha": Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
    "sixteen_bit": Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
    "wide": Image.new("RGB", (1000, 10), (5, 5, 5)),  # 100:1, the widest still accepted
}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_unusual_modes_become_rgb(name: str) -> None:
    image = decode(_encoded(CONVERTED[name], "PNG"), name)
    assert image.mode == "RGB"
    if name == "alpha":  # fully transparent red composites to white
        assert image.getpixel((0, 0)) == (255, 255, 255)
    if name == "sixteen_bit":
        assert image.getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    assert decode(_encoded(cmyk, "JPEG"), "cmyk").mode == "RGB"


BAD = {
    "empty": b"",
    "truncated": png((1, 1, 1), (64, 64))[:60],
    "not an image": b"this is text with a .png name",
    "extreme aspect ratio": png((1, 1, 1), (2020, 20)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_unusable_files_raise_a_readable_error(name: str) -> None:
    with pytest.raises(ImageReadError, match=f"cannot read image {name}"):
        decode(BAD[name], name)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 1
    bomb = _encoded(Image.new("1", (side, side)), "PNG")  # small file, huge canvas
    with pytest.raises(ImageReadError, match="over the pixel limit"):
        decode(bomb, "bomb.png")


def test_a_folder_of_bad_files_records_each_and_keeps_the_good_ones(
    photos: Path, tmp_path: Path
) -> None:
    for name, data in BAD.items():
        (photos / f"{name.replace(' ', '-')}.png").write_bytes(data)
    (photos / "actually-png.jpg").write_bytes(png((0, 255, 0)))  # wrong extension, fine
    out = collect_images("photos", parse_dataset_config({"kind": "folder", "path": str(photos)},
                                                        "t"), tmp_path)  # fmt: skip
    assert len(out.rows) == 3
    assert sorted(Path(e["path"]).name for e in out.errors) == [
        "empty.png", "extreme-aspect-ratio.png", "not-an-image.png", "truncated.png",
    ]  # fmt: skip


def test_images_asset_stores_rows_labels_prompts_and_errors(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg
    from lens_assets.resources.warehouse import Warehouse

    from lens_assets.orchestration.materialize import materialize_missing

    (photos / "empty.png").write_bytes(b"")
    configs = tmp_path / "configs"
    (configs / "datasets").mkdir(parents=True)
    (configs / "datasets" / "photos.yaml").write_text(f"kind: folder\npath: {photos}\n")
    (configs / "datasets" / "shapes.yaml").write_text("kind: shapes\nsize: 3\n")
    monkeypatch.setenv("LENS_CONFIGS", str(configs))
    warehouse = Warehouse.at(tmp_path / "wh")
    _, results = materialize_missing(
        warehouse.root, {"images"}, instance=dg.DagsterInstance.ephemeral()
    )
    assert [name for name, r in results if r.success] == ["images"]

    def rows(sql: str) -> list[dict]:
        return warehouse.fetch_arrow(sql).to_pylist()

    assert rows("SELECT dataset, count(*) AS n FROM images GROUP BY 1 ORDER BY 1") == [
        {"dataset": "photos", "n": 2},
        {"dataset": "shapes", "n": 3},
    ]
    (error,) = rows("SELECT * FROM image_errors")
    assert error["dataset"] == "photos" and error["path"].endswith("empty.png")
    assert "empty" in error["error"]
    assert rows("SELECT count(*) AS n FROM prompts WHERE dataset = 'shapes'") == [{"n": 3}]
    assert rows("SELECT count(*) AS n FROM image_labels WHERE dataset = 'shapes'") == [{"n": 6}]


def test_a_dataset_name_that_is_not_a_plain_name_is_refused(tmp_path: Path) -> None:
    """A dataset's name becomes a folder under the warehouse: `../../x` must not escape it."""
    config = parse_dataset_config({"kind": "shapes", "size": 1}, "x.yaml")
    for name in ("../../x", "/tmp/x", ".hidden", "a/b", ""):
        with pytest.raises(ConfigError, match="not a plain name"):
            collect_images(name, config, tmp_path / "rendered")
    assert not (tmp_path.parent / "x").exists() and not list(tmp_path.rglob("*.png"))


def test_a_folder_dataset_whose_folder_is_missing_names_its_path(tmp_path: Path) -> None:
    config = parse_dataset_config({"kind": "folder", "path": str(tmp_path / "gone")}, "x.yaml")
    with pytest.raises(ConfigError, match=r"path: .*gone is not a folder"):
        collect_images("photos", config, tmp_path / "rendered")
