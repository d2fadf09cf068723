"""A dataset's data version covers the files it reads, not only its YAML: adding an image to a
folder, editing its labels or a manifest makes `images` stale, and `lens materialize` collects
it again. Real runs of the `images` asset into a real warehouse, no model."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.data_version import StaleStatus
from PIL import Image

from lens_assets.orchestration.assets import IMAGES
from lens_assets.orchestration.materialize import (
    EVERY_ASSET,
    plan,
    resources_for,
    stale_resolver,
)
from lens_assets.orchestration.sensors import sync_configs
from lens_assets.orchestration.sources import changed_config_observations
from tests.test_dagster import Project, new_project

warnings.filterwarnings("ignore", category=dg.BetaWarning)


def picture(path: Path, shade: int) -> Path:
    """A small PNG whose bytes (so image id) differ with `shade`."""
    Image.new("RGB", (24, 16), (shade, 255 - shade, 90)).save(path)
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    return new_project(tmp_path, monkeypatch)


@pytest.fixture
def photos(project: Project, tmp_path: Path) -> Path:
    """A folder dataset `photos` of two images, materialized once."""
    folder = tmp_path / "photos"
    folder.mkdir()
    picture(folder / "a.png", 10)
    picture(folder / "b.png", 60)
    (project.configs / "datasets" / "photos.yaml").write_text(
        f"kind: folder\npath: {folder}\nlabels: labels.csv\n"
    )
    (folder / "labels.csv").write_text("image,label\na.png,cat\nb.png,dog\n")
    project.materialize(assets={"images"})
    return folder


@pytest.fixture
def manifest(project: Project, tmp_path: Path) -> Path:
    """A manifest dataset `listed` naming two of three images, materialized once."""
    folder = tmp_path / "listed"
    folder.mkdir()
    for index, name in enumerate(("x.png", "y.png", "z.png")):
        picture(folder / name, 100 + 40 * index)
    path = folder / "manifest.csv"
    path.write_text("image_path,prompt,label\nx.png,Animal?,cat\ny.png,Animal?,dog\n")
    (project.configs / "datasets" / "listed.yaml").write_text(f"kind: manifest\npath: {path}\n")
    project.materialize(assets={"images"})
    return path


def images_status(project: Project) -> StaleStatus:
    """What `lens materialize` and the UI's badge say of `images`, after the sensor's sync."""
    sync_configs(project.instance)
    return stale_resolver(project.instance).get_status(IMAGES)


def test_an_unchanged_folder_dataset_stays_up_to_date(project: Project, photos: Path) -> None:
    assert images_status(project) == StaleStatus.FRESH
    todo, results = project.materialize(assets={"images"})
    assert not todo.images and results == []


def test_adding_an_image_to_a_folder_makes_images_stale_and_collects_it(
    project: Project, photos: Path
) -> None:
    picture(photos / "c.png", 200)
    assert images_status(project) == StaleStatus.STALE
    todo, _ = project.materialize(assets={"images"})
    assert todo.images
    assert project.images_of("photos") == ["a.png", "b.png", "c.png"]
    assert not plan(project.instance, {"images"}).images


def test_editing_a_folders_labels_file_makes_images_stale(project: Project, photos: Path) -> None:
    (photos / "labels.csv").write_text("image,label\na.png,cow\nb.png,dog\n")  # same size
    assert images_status(project) == StaleStatus.STALE
    project.materialize(assets={"images"})
    labels = project.warehouse.fetch_arrow(
        "SELECT value FROM image_labels WHERE dataset = 'photos' ORDER BY value"
    )
    assert labels.column(0).to_pylist() == ["cow", "dog"]


def test_editing_a_manifest_makes_images_stale_and_collects_its_rows(
    project: Project, manifest: Path
) -> None:
    assert project.images_of("listed") == ["x.png", "y.png"]
    with manifest.open("a") as file:
        file.write("z.png,Animal?,owl\n")
    assert images_status(project) == StaleStatus.STALE
    todo, _ = project.materialize(assets={"images"})
    assert todo.images
    assert project.images_of("listed") == ["x.png", "y.png", "z.png"]


def test_replacing_an_image_a_manifest_names_makes_images_stale(
    project: Project, manifest: Path
) -> None:
    replaced = manifest.parent / "x.png"
    before = replaced.stat().st_mtime_ns
    picture(replaced, 0)
    os.utime(replaced, ns=(before + 10**9, before + 10**9))  # a later edit, however fast
    assert images_status(project) == StaleStatus.STALE


def test_a_local_hf_disk_parquet_file_is_part_of_the_version(
    project: Project, tmp_path: Path
) -> None:
    source = tmp_path / "train.parquet"
    pq.write_table(pa.table({"image": ["x.png"], "label": ["cat"]}), source)
    (project.configs / "datasets" / "hub.yaml").write_text(f"kind: hf_disk\npath: {source}\n")
    sync_configs(project.instance)
    stamp = source.stat().st_mtime_ns + 10**9
    pq.write_table(pa.table({"image": ["x.png", "y.png"], "label": ["cat", "dog"]}), source)
    os.utime(source, ns=(stamp, stamp))  # a later edit, however fast
    assert len(changed_config_observations(project.instance)) == 1


def test_a_missing_folder_is_a_version_and_creating_it_changes_it(
    project: Project, tmp_path: Path
) -> None:
    folder = tmp_path / "later"
    (project.configs / "datasets" / "later.yaml").write_text(f"kind: folder\npath: {folder}\n")
    (missing,) = changed_config_observations(project.instance)  # no crash: a version
    project.instance.report_runless_asset_event(missing)
    assert changed_config_observations(project.instance) == []
    folder.mkdir()
    picture(folder / "a.png", 30)
    assert len(changed_config_observations(project.instance)) == 1


def test_observing_dataset_configs_in_the_ui_sees_an_added_image(
    project: Project, photos: Path
) -> None:
    """The source's own observation (the UI's "Observe") agrees with the sensor's version."""
    source = dg.AssetSelection.assets("dataset_configs")

    def observed() -> str:
        resources = resources_for(project.warehouse.root)
        dg.materialize(
            EVERY_ASSET, selection=source, instance=project.instance, resources=resources
        )
        (record,) = project.instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("dataset_configs")), limit=1
        ).records
        return record.asset_observation.data_version

    first = observed()
    assert changed_config_observations(project.instance) == []  # the sensor agrees
    picture(photos / "c.png", 200)
    assert observed() != first
    assert stale_resolver(project.instance).get_status(IMAGES) == StaleStatus.STALE


def test_touching_an_image_recollects_it_but_keeps_the_images_data_version(
    project: Project, photos: Path
) -> None:
    """Stats make a version cheap; the content hash keeps every model's activations from
    going stale when a file is only touched."""

    def images_version() -> str | None:
        event = project.instance.get_latest_materialization_event(IMAGES)
        return event.asset_materialization.tags.get("dagster/data_version")

    before = images_version()
    stamp = (photos / "a.png").stat().st_mtime_ns + 10**9
    os.utime(photos / "a.png", ns=(stamp, stamp))
    assert images_status(project) == StaleStatus.STALE
    todo, _ = project.materialize(assets={"images"})
    assert todo.images and images_version() == before
