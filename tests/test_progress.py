"""Steps announce themselves to whoever listens, and only for as long as they listen."""

from __future__ import annotations

import pytest

from lens_assets.orchestration import progress


def test_a_step_is_heard_when_it_starts_and_when_it_ends() -> None:
    heard: list[str] = []
    with progress.listening(heard.append), progress.step("probe_results", "tiny-llava"):
        assert heard == ["    tiny-llava: probe_results ..."]
    assert heard[1].startswith("    tiny-llava: probe_results done in ")


def test_a_failing_step_says_it_failed_and_the_error_goes_on() -> None:
    heard: list[str] = []
    with progress.listening(heard.append), pytest.raises(RuntimeError, match="boom"):  # noqa: SIM117
        with progress.step("answers", "tiny-llava"):
            raise RuntimeError("boom")
    assert heard[-1].startswith("    tiny-llava: answers failed after ")


def test_nobody_hears_a_step_after_listening_ends() -> None:
    heard: list[str] = []
    with progress.listening(heard.append):
        pass
    with progress.step("answers", "tiny-llava"):
        pass
    assert heard == []
