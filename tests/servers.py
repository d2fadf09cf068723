"""Real servers on loopback for the scale-out test and benchmark: PostgreSQL (Debian's binaries,
a data folder of its own), Redis (the Celery broker) and moto's S3 server, each on a free port
until its block ends (one that cannot start skips the test, saying why); then the cluster on
them: the environment every machine exports, Celery workers, runs of one partition each."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.browser import stop_process_group


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str) -> None:
    """Until the server listens (however slow the machine) or exits (then the test skips)."""
    while True:
        if process.poll() is not None:
            pytest.skip(f"{what} exited at start (code {process.returncode})")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


def postgres_bin(name: str) -> Path | None:
    """Debian keeps the server binaries off PATH, under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return versions[-1] if versions else None


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    password: str
    database: str

    @property
    def catalog(self) -> str:
        """The DuckLake catalog string: no password in it (libpq reads PGPASSWORD)."""
        return f"postgres:dbname={self.database} host=127.0.0.1 port={self.port} user={self.user}"


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server with password authentication, run as the `postgres` user when the
    test runs as root (the server refuses to run as root). Its folder is a fresh one under the
    system temp dir, which that user can reach (pytest's tmp_path is private to root)."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    with (
        tempfile.TemporaryDirectory(prefix="lens-postgres-") as temp,
        _postgres(Path(temp), initdb, pg_ctl) as server,
    ):
        yield server


@contextmanager
def _postgres(folder: Path, initdb: Path, pg_ctl: Path) -> Iterator[Postgres]:
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    server = Postgres(free_port(), "lens", "lens-secret", "lake")
    password_file = folder / "password"
    password_file.write_text(server.password)
    if as_user:
        shutil.chown(password_file, "postgres")
    data = folder / "data"
    init = subprocess.run(
        [*as_user, str(initdb), "-D", str(data), "-U", server.user, "-A", "scram-sha-256",
         f"--pwfile={password_file}", "--no-sync"],
        capture_output=True, text=True,
    )  # fmt: skip
    if init.returncode:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    options = (
        f"-p {server.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c max_connections=200"
    )
    start = subprocess.run(
        [*as_user, str(pg_ctl), "-D", str(data), "-o", options, "-l", str(folder / "log"),
         "-w", "-t", "60", "start"],
        capture_output=True, text=True,
    )  # fmt: skip
    if start.returncode:
        log = (folder / "log").read_text() if (folder / "log").exists() else ""
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()} {log[-300:]}")
    try:
        env = {**os.environ, "PGPASSWORD": server.password}
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user, "-d",
             "postgres", "-c", f"CREATE DATABASE {server.database}"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        yield server
    finally:
        subprocess.run([*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)  # fmt: skip


@contextmanager
def redis(folder: Path) -> Iterator[str]:
    """A Redis server without persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not found: apt-get install redis-server")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The standard AWS variables: what a worker on a real cluster would be given."""
        return {
            "AWS_ACCESS_KEY_ID": "lens-test-key",
            "AWS_SECRET_ACCESS_KEY": "lens-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }


@contextmanager
def s3(bucket: str = "lens") -> Iterator[ObjectStore]:
    """moto's S3 server in its own process, with one empty bucket."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, process, "moto's S3 server")
        store = ObjectStore(f"http://127.0.0.1:{port}", bucket)
        import boto3

        client = boto3.client("s3", **_boto_args(store))
        client.create_bucket(Bucket=bucket)
        yield store
    finally:
        process.terminate()
        process.wait(timeout=10)


def _boto_args(store: ObjectStore) -> dict[str, str]:
    env = store.env()
    return {
        "endpoint_url": store.endpoint,
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_REGION"],
    }


def object_keys(store: ObjectStore, prefix: str = "") -> list[str]:
    import boto3

    client = boto3.client("s3", **_boto_args(store))
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


# The cluster on those servers.


def cluster_configs(
    folder: Path,
    models: dict[str, tuple[str, list[str]]],
    poolings: list[str],
    images: int,
    batch_size: int,
) -> Path:
    """A configs folder for the cluster: one tiny model config per name (architecture, hook
    points), a `shapes` dataset of `images` images, and the repo's Celery executor file."""
    for part in ("models", "datasets", "executors"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    for name, (architecture, modules) in models.items():
        config = {"architecture": architecture, "model_path": f"tiny:{architecture}",
                  "modules": modules, "pooling": poolings, "prompt": "What colour is it?",
                  "batch_size": batch_size}  # fmt: skip
        (folder / "models" / f"{name}.yaml").write_text(yaml.safe_dump(config))
    dataset = {"kind": "shapes", "size": images}
    (folder / "datasets" / "shapes.yaml").write_text(yaml.safe_dump(dataset))
    celery = Path(__file__).resolve().parent.parent / "configs" / "executors" / "celery.yaml"
    (folder / "executors" / "celery.yaml").write_text(celery.read_text())
    return folder


def cluster_env(
    tmp: Path, configs: Path, pg: Postgres, broker: str, store: ObjectStore
) -> dict[str, str]:
    """What each machine of a real cluster would export; nothing of it is in a repo file."""
    return {
        **os.environ,
        **store.env(),
        "PGPASSWORD": pg.password,
        "LENS_CATALOG": pg.catalog,
        "LENS_DATA_PATH": f"s3://{store.bucket}/lensflow/data/",
        "LENS_WAREHOUSE": str(tmp / "local"),  # this machine's spool and tiny checkpoints
        "LENS_CONFIGS": str(configs),
        "DAGSTER_HOME": str(tmp / "dagster"),
        "LENS_EXECUTOR": "celery",
        "LENS_CELERY_BROKER": f"{broker}/0",
        "LENS_CELERY_BACKEND": f"{broker}/1",
        "LENS_DEVICE": "cpu",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


@contextmanager
def celery_workers(env: dict[str, str], count: int, logs: Path) -> Iterator[None]:
    """`dagster-celery worker start`, one process (one step at a time) per worker."""
    config = Path(env["LENS_CONFIGS"]) / "executors" / "celery.yaml"
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for index in range(count):
        command = [
            "dagster-celery", "worker", "start", "-A", "dagster_celery.app", "-y", str(config),
            "-n", f"worker{index}", "--", "--concurrency=1", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        log = (logs / f"worker{index}.log").open("wb")
        workers.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))  # fmt: skip
    try:
        while not all("ready." in (logs / f"worker{i}.log").read_text() for i in range(count)):
            if any(w.poll() is not None for w in workers):
                pytest.fail("the Celery workers did not start: see " + str(logs))
            time.sleep(0.2)
        yield
    finally:
        for worker in workers:
            stop_process_group(worker, grace=10)


def lens_sql(env: dict[str, str], query: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "lens_assets.cli", "sql", "--format", "json", query],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def materialize_partition(
    env: dict[str, str], partition: str, log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["dagster", "asset", "materialize", "-m", "lens_assets", "--select", "activations",
         "--partition", partition],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
