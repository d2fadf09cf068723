"""Scale-out settings without servers: what the environment selects, and the errors that name
the fix. The servers themselves are exercised in tests/test_scale_out.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from lens_assets.resources.warehouse import WarehouseError, WarehouseLocation, s3_secret

from lens_assets.config import ConfigError
from lens_assets.data import files

AWS = {"AWS_ACCESS_KEY_ID": "key", "AWS_SECRET_ACCESS_KEY": "se'cret", "AWS_REGION": "eu-west-1"}


def test_the_environment_moves_catalog_and_data_and_the_images_follow_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LENS_CATALOG", "postgres:dbname=lake host=db user=lens")
    monkeypatch.setenv("LENS_DATA_PATH", "s3://bucket/lensflow/data/")
    location = WarehouseLocation.resolve(tmp_path)
    assert location.catalog == "postgres:dbname=lake host=db user=lens"
    assert location.extensions == ["ducklake", "postgres_scanner", "httpfs"]
    assert location.files_root == "s3://bucket/lensflow"
    assert location.staging_dir == tmp_path / "staging"  # each machine spools locally


def test_the_embedded_default_keeps_everything_under_the_root(tmp_path: Path) -> None:
    location = WarehouseLocation.resolve(tmp_path)
    assert location.catalog == f"sqlite:{tmp_path / 'catalog.sqlite'}"
    assert location.files_root == str(tmp_path)
    assert files.join(location.files_root, "datasets", "a.png") == str(tmp_path / "datasets/a.png")


def test_the_s3_secret_comes_from_the_aws_variables() -> None:
    sql = s3_secret({**AWS, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert "KEY_ID 'key'" in sql and "SECRET 'se''cret'" in sql  # quoted, not injected
    assert "REGION 'eu-west-1'" in sql
    assert "ENDPOINT '127.0.0.1:9000'" in sql and "URL_STYLE 'path'" in sql
    assert "USE_SSL false" in sql
    on_aws = s3_secret(AWS)
    assert "ENDPOINT" not in on_aws and "USE_SSL" not in on_aws


def test_missing_s3_credentials_name_the_variables() -> None:
    with pytest.raises(WarehouseError, match="AWS_SECRET_ACCESS_KEY is not set"):
        s3_secret({"AWS_ACCESS_KEY_ID": "key"})


def test_object_store_locations_join_and_climb_like_paths() -> None:
    assert files.join("s3://b/p/", "datasets", "x.png") == "s3://b/p/datasets/x.png"
    assert files.parent("s3://b/p/data/") == "s3://b/p"
    assert files.is_uri("s3://b/k") and not files.is_uri("/tmp/k")


def test_local_writes_skip_identical_bytes(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "a.bin"
    files.write_bytes(target, b"one")
    before = target.stat().st_mtime_ns
    files.write_bytes(target, b"one")
    assert target.stat().st_mtime_ns == before and files.read_bytes(target) == b"one"
    files.write_bytes(target, b"two")
    assert files.read_bytes(str(target)) == b"two"


def test_the_executor_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_assets.orchestration.executors import executor_from_env

    monkeypatch.delenv("LENS_EXECUTOR", raising=False)
    assert executor_from_env().name == "multiprocess"
    monkeypatch.setenv("LENS_EXECUTOR", "celery")
    celery = executor_from_env()
    assert celery.name == "celery"
    monkeypatch.setenv("LENS_EXECUTOR", "dask")
    with pytest.raises(ConfigError, match="choose from multiprocess, celery"):
        executor_from_env()
