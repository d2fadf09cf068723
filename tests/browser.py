"""Helpers for the browser test: `dagster dev` on a free loopback port, and a headless Chromium.

The browser is Debian's `chromium` with its `chromium-driver`, at fixed paths, so that nothing
(Selenium Manager included) ever tries to download a browser or a driver.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# A throwaway instance: no telemetry, and no "Join the Dagster community" dialog over the page.
DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        return f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    """A loopback port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(ANSI_COLOUR.sub("", text).splitlines()[-lines:])


@contextmanager
def dagster_dev(repo: Path, home: Path, log: Path, env: Mapping[str, str]) -> Iterator[Server]:
    """`dagster dev` in `repo` with a fresh DAGSTER_HOME, serving until the block ends.

    Output goes to `log`. On the way out the whole process group (webserver, daemon, code
    server, any run) is terminated, and killed if it is still there after a grace period.
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)],
            cwd=repo,
            env={**os.environ, **env, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that stopping it stops them all
            preexec_fn=_default_interrupt_handling,
        )
    server = Server(f"http://127.0.0.1:{port}", log)
    try:
        wait_for_server(server, process)
        yield server
    finally:
        stop_process_group(process)


def _default_interrupt_handling() -> None:
    # `dagster dev` maps SIGTERM onto its SIGINT handler. A shell that starts jobs in the
    # background hands them SIGINT ignored; reset it, or the server would ignore SIGTERM too.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def wait_for_server(server: Server, process: subprocess.Popen[bytes]) -> None:
    """Return once `/server_info` answers, however slow the machine; fail if the server
    exits first."""
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"dagster dev exited with code {process.returncode} before serving:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left of it after `grace` seconds."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def headless_chromium(
    profile: Path, size: tuple[int, int] = (1600, 1200)
) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile in `profile`; quit on the way out."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(300)
        yield driver
    finally:
        driver.quit()


def save_screenshot(driver: webdriver.Chrome, *paths: Path) -> None:
    png = driver.get_screenshot_as_png()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
