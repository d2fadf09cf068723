"""The Dagster UI in a real browser: `dagster dev` serves the code location, and the global
asset lineage draws the assets as nodes (not a spinner, not a code-location error).

Needs Debian's chromium and chromium-driver (`.ci/run` installs them); skipped without them.
A screenshot of the graph is left in tests/artifacts/ and in the test's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import dagster_dev, headless_chromium, missing_browser, save_screenshot

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "tests" / "artifacts" / "ui-asset-graph.png"
LINEAGE = "/asset-groups"  # "Lineage" in the side bar: the global asset graph
EXPECTED_ASSETS = {"images", "activations", "vision_vs_vlm"}
WINDOW = (1600, 1200)
ZOOM_STEPS = 3
ZOOM_AFTER_S = 20
LOADING = "Loading..."  # an asset node's status rows until its live data arrives

# In the graph's <svg>, every node is a <foreignObject>; group boxes carry class "group" (a
# group may share its asset's name: the group "activations" holds the asset "activations").
GRAPH_NODES = "svg foreignObject"
ASSET_NODE_TEXTS = """
return Array.from(document.querySelectorAll('svg foreignObject:not(.group) *'))
  .filter(element => element.children.length === 0)
  .map(element => element.textContent.trim());
"""

pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")


def asset_node_texts(driver: WebDriver) -> set[str]:
    """Every text that is a whole element of an asset node: its name, row labels, values."""
    return {text for text in driver.execute_script(ASSET_NODE_TEXTS) if text}


def show_asset_nodes(driver: WebDriver, names: set[str], patience: float = 600) -> set[str]:
    """Wait for the graph, expand its groups if all are collapsed, then wait until `names` are
    asset nodes whose status has loaded, zooming out a step (Ctrl + wheel, as a user would)
    while some are out of view: the graph draws only the nodes in view. Returns the texts of
    all asset nodes. A zoom step is taken after ZOOM_AFTER_S without the names (taking it
    early only shows more of the graph); `patience` only stops a hang."""
    wait = WebDriverWait(driver, patience, poll_frequency=0.25)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, GRAPH_NODES))
    if not asset_node_texts(driver):
        # Several groups start collapsed to one box each; ⌥E is the graph's "Expand all groups".
        ActionChains(driver).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()

    def shown(d: WebDriver) -> set[str] | None:
        texts = asset_node_texts(d)
        return texts if texts >= names and LOADING not in texts else None

    for _ in range(ZOOM_STEPS):
        try:
            return WebDriverWait(driver, ZOOM_AFTER_S, poll_frequency=0.25).until(shown)
        except TimeoutException:
            centre = ScrollOrigin.from_viewport(*(v // 2 for v in WINDOW))
            zoom_out = ActionChains(driver).key_down(Keys.CONTROL)
            zoom_out.scroll_from_origin(centre, 0, 150).key_up(Keys.CONTROL).perform()
    return wait.until(shown)


@pytest.mark.slow
def test_asset_graph_shows_the_assets(tmp_path: Path) -> None:
    env = {"LENS_WAREHOUSE": str(tmp_path / "warehouse")}
    with (
        dagster_dev(REPO, tmp_path / "dagster-home", tmp_path / "dagster-dev.log", env) as server,
        headless_chromium(tmp_path / "chromium-profile", WINDOW) as driver,
    ):
        try:
            driver.get(server.url + LINEAGE)
            found = show_asset_nodes(driver, EXPECTED_ASSETS)
        except TimeoutException:
            page = driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(
                f"no loaded asset nodes {sorted(EXPECTED_ASSETS)} at {driver.current_url}; "
                f"asset nodes show {sorted(asset_node_texts(driver))}\n"
                f"page text:\n{page}\n\ndagster dev log:\n{server.log_tail()}"
            ) from None
        finally:
            save_screenshot(driver, ARTIFACT, tmp_path / ARTIFACT.name)
    assert found >= EXPECTED_ASSETS
