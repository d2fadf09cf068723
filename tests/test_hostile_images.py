"""Hostile files among a dataset's images: each is recorded with a readable reason and the run
goes on. Named pipes and other special files are never opened for reading, symlink loops are
refused, oversized files are refused before a byte is read, 16-bit images decode in bounded
memory, and a second copy of an image is one image, recorded as a duplicate."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner, Result
from PIL import Image

from lens_assets.capture import extraction
from lens_assets.config import ConfigError
from lens_assets.data import images
from lens_assets.data.datasets import collect_images, parse_dataset_config

T = TypeVar("T")
HANG_GUARD_S = 120  # only so a regression fails instead of hanging the suite; never reached


def png(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def finishes(work: Callable[[], T], fifo: Path) -> T:
    """Run `work` in a thread; if a regression blocks it on the pipe, open the pipe's other
    end so the thread ends, and fail."""
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    if thread.is_alive():
        with open(fifo, "wb"):  # lets the blocked reader see end of file
            pass
        thread.join(HANG_GUARD_S)
        pytest.fail(f"reading the folder blocked on the named pipe {fifo}")
    assert result, "the work raised (see the thread's traceback above)"
    return result[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "red.png").write_bytes(png((200, 10, 10)))
    return folder


def folder_dataset(folder: Path, **extra: str) -> object:
    return parse_dataset_config({"kind": "folder", "path": str(folder), **extra}, "t")


# 1. Named pipes and other special files


def test_a_named_pipe_in_a_folder_dataset_is_recorded_not_read(
    folder: Path, tmp_path: Path
) -> None:
    os.mkfifo(fifo := folder / "stuck.png")
    out = finishes(lambda: collect_images("f", folder_dataset(folder), tmp_path), fifo)
    assert [Path(r["path"]).name for r in out.rows] == ["red.png"]
    (error,) = out.errors
    assert Path(error["path"]).name == "stuck.png"
    assert "not a regular file (a named pipe)" in error["error"]


def test_a_named_pipe_named_by_a_manifest_is_recorded_not_read(
    folder: Path, tmp_path: Path
) -> None:
    os.mkfifo(folder / "stuck.png")
    manifest = folder / "manifest.csv"
    manifest.write_text("image_path,label\nstuck.png,x\nred.png,red\n")
    config = parse_dataset_config({"kind": "manifest", "path": str(manifest)}, "t")
    out = finishes(lambda: collect_images("m", config, tmp_path), folder / "stuck.png")
    assert len(out.rows) == 1
    (error,) = out.errors
    assert error["path"].endswith("stuck.png") and "not a regular file" in error["error"]


def test_a_named_pipe_named_by_a_hugging_face_dataset_is_recorded_not_read(
    folder: Path, tmp_path: Path
) -> None:
    os.mkfifo(folder / "stuck.png")
    pq.write_table(pa.table({"image": ["stuck.png", "red.png"], "label": ["x", "red"]}),
                   tmp_path / "names.parquet")  # fmt: skip
    config = parse_dataset_config(
        {"kind": "hf_disk", "path": str(tmp_path / "names.parquet"), "images_root": str(folder)},
        "t",
    )
    out = finishes(lambda: collect_images("hf", config, tmp_path / "r"), folder / "stuck.png")
    assert len(out.rows) == 1
    (error,) = out.errors
    assert error["path"].endswith("stuck.png") and "not a regular file" in error["error"]


def test_a_labels_file_that_is_a_named_pipe_is_a_config_error(folder: Path, tmp_path: Path) -> None:
    os.mkfifo(fifo := folder / "labels.csv")
    config = folder_dataset(folder, labels="labels.csv")

    def collect() -> None:
        with pytest.raises(ConfigError, match=f"labels: {fifo} is not a file"):
            collect_images("f", config, tmp_path)

    finishes(collect, fifo)


def test_extraction_skips_a_named_pipe_it_is_given(folder: Path) -> None:
    os.mkfifo(folder / "stuck.png")
    skipped: list[extraction.Skipped] = []
    paths = [folder / "stuck.png", folder / "red.png"]
    loaded = finishes(lambda: extraction._readable(paths, skipped), folder / "stuck.png")
    assert [Path(r.images[0].path).name for r in loaded] == ["red.png"]
    ((path, reason),) = skipped
    assert path == str(folder / "stuck.png")
    assert "stuck.png" in reason and "not a regular file (a named pipe)" in reason


def _make_fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a named pipe"


def _make_directory(path: Path) -> str:
    path.mkdir()
    return "a directory"


def _make_socket(path: Path) -> str:
    with socket.socket(socket.AF_UNIX) as server:  # the socket file outlives the socket
        server.bind(path.name)  # relative (the test runs in its folder): AF_UNIX paths are short
    return "a socket"


@pytest.mark.parametrize("make", [_make_fifo, _make_directory, _make_socket])
def test_input_dir_refuses_anything_but_a_regular_file(
    folder: Path, monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], str]
) -> None:
    monkeypatch.chdir(folder)
    kind = make(folder / "odd.png")
    inside, refused = images.folder_images_within(folder)
    assert [p.name for p in inside] == ["red.png"]
    assert refused == [
        (
            folder / "odd.png",
            f"refused: {folder / 'odd.png'} is not a regular file ({kind}); only image files "
            "are read, move it out of the folder",
        )
    ]


# 2. Symlink loops


def test_a_symlink_loop_in_a_folder_dataset_is_recorded_not_raised(
    folder: Path, tmp_path: Path
) -> None:
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    out = collect_images("f", folder_dataset(folder), tmp_path)
    assert [Path(r["path"]).name for r in out.rows] == ["red.png"]
    assert [Path(e["path"]).name for e in out.errors] == ["a.png", "b.png"]
    assert all("is a symbolic link loop" in e["error"] for e in out.errors)


def test_a_symlink_loop_named_by_a_manifest_is_recorded_not_raised(
    folder: Path, tmp_path: Path
) -> None:
    (folder / "loop.png").symlink_to(folder / "loop.png")
    manifest = folder / "manifest.csv"
    manifest.write_text("image_path,label\nloop.png,x\nred.png,red\n")
    config = parse_dataset_config({"kind": "manifest", "path": str(manifest)}, "t")
    out = collect_images("m", config, tmp_path)
    assert len(out.rows) == 1
    (error,) = out.errors
    assert error["path"].endswith("loop.png") and "symbolic link loop" in error["error"]


def test_input_dir_refuses_a_symlink_loop(folder: Path) -> None:
    (folder / "loop.png").symlink_to(folder / "loop.png")
    inside, refused = images.folder_images_within(folder)
    assert [p.name for p in inside] == ["red.png"]
    assert refused == [
        (
            folder / "loop.png",
            f"refused: {folder / 'loop.png'} is a symbolic link loop; point the link at a file "
            "or remove it",
        )
    ]


# 3. Files too large to read


@pytest.fixture
def sparse(folder: Path) -> Path:
    """A 3 GiB file that takes no disk: the size a PNG can claim."""
    path = folder / "huge.png"
    with path.open("wb") as stream:
        stream.truncate(3 * 2**30)
    return path


def test_a_file_over_the_size_cap_is_refused_before_it_is_read(sparse: Path) -> None:
    with pytest.raises(images.ImageReadError) as raised:
        images.load_image(sparse)
    assert str(raised.value) == (
        f"cannot read image {sparse}: the file is 3,221,225,472 bytes (3,072 MiB), over the "
        f"{images.MAX_FILE_BYTES // 2**20} MiB limit on an image file; downscale or re-encode it"
    )


def test_a_folder_records_a_file_over_the_size_cap_and_goes_on(
    sparse: Path, folder: Path, tmp_path: Path
) -> None:
    out = collect_images("f", folder_dataset(folder), tmp_path)
    assert [Path(r["path"]).name for r in out.rows] == ["red.png"]
    (error,) = out.errors
    assert Path(error["path"]).name == "huge.png" and "over the" in error["error"]


# 4. 16-bit images


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_16_bit_8000x8000_image_decodes_without_a_float_copy() -> None:
    side = 8000  # 64 M pixels, the pixel limit: a 124 KB file when uniform
    data = _png_bytes(Image.fromarray(np.zeros((side, side), dtype=np.uint16)))
    tracemalloc.start()  # numpy's arrays are traced; Pillow's own image buffers are not
    try:
        decoded = images.decode(data, "deep.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.size == (side, side)
    # through float64 this was 8 bytes a pixel plus copies (1.4 GiB); now a strip at a time
    assert peak < side * side, f"decoding held {peak / 2**20:.0f} MiB of arrays"


def _eight_bit(values: np.ndarray, top: int) -> np.ndarray:
    """round(v x 255 / top), halves up, in exact integers: (2 x 255 v + top) // (2 top)."""
    clipped = np.clip(values.astype(np.int64), 0, top)
    return ((510 * clipped + top) // (2 * top)).astype(np.uint8)


def test_every_16_bit_value_keeps_its_8_bit_level() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    decoded = images.decode(_png_bytes(Image.fromarray(values)), "ramp.png")
    expected = _eight_bit(values, 65535)
    assert np.array_equal(np.asarray(decoded), np.stack([expected] * 3, axis=-1))


def test_a_big_endian_16_bit_image_keeps_its_8_bit_levels() -> None:
    values = np.arange(65536, dtype=">u2").reshape(256, 256)
    converted = images.to_rgb(Image.fromarray(values))
    assert np.array_equal(np.asarray(converted)[..., 0], _eight_bit(values, 65535))


@pytest.mark.parametrize(
    ("low", "high", "top"), [(-300, 70_000, 65535), (-5, 255, 255), (0, 256, 65535)]
)
def test_a_32_bit_image_scales_by_its_range(low: int, high: int, top: int) -> None:
    values = np.linspace(low, high, 40 * 50).astype(np.int32).reshape(40, 50)
    converted = images.to_rgb(Image.fromarray(values))
    assert np.array_equal(np.asarray(converted)[..., 1], _eight_bit(values, top))


# 5. Files that are not images


def test_a_non_image_file_is_named_without_pillows_buffer() -> None:
    with pytest.raises(images.ImageReadError) as raised:
        images.decode(b"these are notes, not pixels", "notes.png")
    message = str(raised.value)
    assert message.startswith("cannot read image notes.png: it is not an image file")
    assert "BytesIO" not in message and "0x" not in message


# 6. Byte-identical copies


@pytest.fixture
def copied(folder: Path) -> Path:
    """red.png, its copy red-again.png, and a different blue.png."""
    (folder / "red-again.png").write_bytes((folder / "red.png").read_bytes())
    (folder / "blue.png").write_bytes(png((10, 10, 200)))
    return folder


def test_a_copy_in_a_folder_dataset_is_one_image_asked_once(copied: Path, tmp_path: Path) -> None:
    out = collect_images("f", folder_dataset(copied, prompt="Colour?"), tmp_path)
    assert sorted(Path(r["path"]).name for r in out.rows) == ["blue.png", "red-again.png"]
    assert len(out.prompts) == 2 and len({p["image_id"] for p in out.prompts}) == 2
    (error,) = out.errors
    red = next(r for r in out.rows if r["path"].endswith("red-again.png"))
    assert error == {
        "dataset": "f",
        "path": str((copied / "red.png").resolve()),
        "error": f"duplicate of {red['path']} (same bytes, image id {red['image_id']}); used once",
    }


def test_a_copy_keeps_the_labels_its_first_file_lacks(copied: Path, tmp_path: Path) -> None:
    (copied / "labels.csv").write_text("image,label,shade\nred-again.png,red,\nred.png,,dark\n")
    out = collect_images("f", folder_dataset(copied, labels="labels.csv"), tmp_path)
    assert sorted((r["concept"], r["value"]) for r in out.labels) == [
        ("label", "red"), ("shade", "dark"),
    ]  # fmt: skip


def test_a_copy_named_by_a_manifest_is_one_image_asked_once(copied: Path, tmp_path: Path) -> None:
    manifest = copied / "manifest.csv"
    manifest.write_text(
        "image_path,prompt,label\nred.png,Colour?,red\nred-again.png,Colour?,red\n"
        "red.png,Shape?,square\n"
    )
    config = parse_dataset_config({"kind": "manifest", "path": str(manifest)}, "t")
    out = collect_images("m", config, tmp_path)
    assert len(out.rows) == 1
    assert [(p["prompt"], p["answer"]) for p in out.prompts] == [
        ("Colour?", "red"), ("Shape?", "square"),
    ]  # fmt: skip
    (error,) = out.errors
    assert error["path"].endswith("red-again.png")
    assert error["error"].startswith(f"duplicate of {(copied / 'red.png').resolve()} ")


def test_a_copy_named_by_a_hugging_face_dataset_is_one_image(copied: Path, tmp_path: Path) -> None:
    names = ["red.png", "red-again.png", "blue.png"]
    pq.write_table(pa.table({"image": names, "prompt": ["Colour?"] * 3}),
                   tmp_path / "names.parquet")  # fmt: skip
    config = parse_dataset_config(
        {"kind": "hf_disk", "path": str(tmp_path / "names.parquet"), "images_root": str(copied)},
        "t",
    )
    out = collect_images("hf", config, tmp_path / "rendered")
    assert len(out.rows) == 2 and len(out.prompts) == 2
    (error,) = out.errors
    assert error["path"].endswith("red-again.png") and "duplicate of" in error["error"]


def test_hugging_face_rows_sharing_an_image_share_one_file(folder: Path, tmp_path: Path) -> None:
    red = {"bytes": (folder / "red.png").read_bytes(), "path": "red.png"}
    table = pa.table({"image": [red, red], "prompt": ["Colour?", "Shape?"]})
    pq.write_table(table, tmp_path / "rows.parquet")
    config = parse_dataset_config({"kind": "hf_disk", "path": str(tmp_path / "rows.parquet")}, "t")
    out = collect_images("hf", config, tmp_path / "rendered")
    assert len(out.rows) == 1 and not out.errors
    assert [p["prompt"] for p in out.prompts] == ["Colour?", "Shape?"]
    assert len(list((tmp_path / "rendered" / "hf").iterdir())) == 1


def test_input_dir_lists_a_copy_once(copied: Path) -> None:
    inside, refused = images.folder_images_within(copied)
    assert [p.name for p in inside] == ["blue.png", "red-again.png"]
    ((path, reason),) = refused
    image_id = images.content_id((copied / "red.png").read_bytes())
    assert path == copied / "red.png"
    assert reason == (
        f"{path}: duplicate of {copied / 'red-again.png'} (same bytes, image id {image_id}); "
        "used once"
    )


def test_extraction_stages_each_image_id_once_across_batches(copied: Path) -> None:
    skipped: list[extraction.Skipped] = []
    seen: dict[str, str] = {}
    first = extraction._readable([copied / "red.png", copied / "blue.png"], skipped, seen)
    second = extraction._readable([copied / "red-again.png"], skipped, seen)
    assert [Path(r.images[0].path).name for r in first] == ["red.png", "blue.png"]
    assert second == []
    ((path, reason),) = skipped
    assert path == str(copied / "red-again.png")
    assert reason.startswith(f"{copied / 'red-again.png'}: duplicate of {copied / 'red.png'} ")


def test_lens_extract_input_dir_extracts_a_copy_once(
    copied: Path, tmp_path: Path, tiny_dir: Path
) -> None:
    from lens_assets.cli import main

    config = tmp_path / "tiny-llava.yaml"
    config.write_text(
        yaml.safe_dump(
            {"architecture": "llava", "model_path": str(tiny_dir / "llava"),
             "prompt": "What colour?", "modules": ["model.language_model.norm"],
             "pooling": ["mean_image"]}
        )
    )  # fmt: skip
    warehouse = ["--warehouse", str(tmp_path / "wh")]

    def lens(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, *warehouse], catch_exceptions=False)

    # batch size 1: the copy and its first file land in different batches
    result = lens("extract", str(config), "--input-dir", str(copied), "--batch-size", "1",
                  "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 rows x 1 modules" in result.stdout
    duplicate = f"skipped: {copied / 'red.png'}: duplicate of {copied / 'red-again.png'} "
    assert duplicate in result.stderr
    per_image = lens("sql", "SELECT count(*) AS n FROM activations GROUP BY image_id",
                     "--format", "json")  # fmt: skip
    assert [r["n"] for r in json.loads(per_image.stdout)] == [1, 1]
