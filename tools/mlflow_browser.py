"""The MLflow 3.17 UI in a real browser: ``mlflow ui`` on 127.0.0.1 and headless Chromium driven by
Selenium. Used by ``tests/test_mlflow_ui.py`` (what a user sees after a search) and
``tools/ui_screenshots.py`` (the screenshots in docs/RESULTS.md).

The UI is a React app: nothing is on the page when ``driver.get`` returns, so every step waits
explicitly for the element it needs (:data:`TIMEOUT_S`; a loaded 2-core machine takes 10-20 s to
render a page).

Facts about the 3.17.2 UI these helpers rely on (found by driving it):

- A global "GenAI | Model training" switch at the top of the sidebar decides how an experiment opens.
  It starts on GenAI, where ``#/experiments/ID`` lands on the traces overview; the experiment tag
  ``mlflow.experimentKind`` is not consulted while that switch exists. ``#/experiments/ID/runs``
  opens the runs table in either mode; ``?workflowType=machine_learning`` selects Model training for
  one page; clicking "Model training" is remembered by the browser (local storage).
- Child runs are folded under their parent: the "+" button in the parent's name cell unfolds them.
- Metric and parameter columns are hidden until picked in "Columns"; cells carry ``col-id`` values
  such as ``metrics.`valid_accuracy```.
- A run's artifact deep link ``#/experiments/ID/runs/RUN/artifacts/PATH`` opens the artifact tree at
  PATH and previews an image as an ``<img>`` whose ``src`` is a ``blob:`` URL of the fetched file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # missing_browser_reason() says so; nothing that needs it runs then
    webdriver = None

TIMEOUT_S = 90.0
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get install chromium chromium-driver, and pip install selenium (.ci/run does both)"


# -- what is installed ---------------------------------------------------------------------------------


def find_chromium() -> tuple[str, str] | None:
    """``(browser, chromedriver)`` paths, or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing_browser_reason() -> str | None:
    """Why the browser checks cannot run here (None: they can)."""
    if webdriver is None:
        return f"selenium is not installed ({INSTALL_HINT})"
    if find_chromium() is None:
        return f"Chromium or chromedriver not found on PATH ({INSTALL_HINT})"
    return None


# -- the mlflow ui process -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_ui(backend_store_uri: str, log_path: Path, port: int | None = None,
              timeout_s: float = 240.0) -> Iterator[str]:
    """``mlflow ui --backend-store-uri URI --host 127.0.0.1 --port P`` in its own process group; yields
    ``http://127.0.0.1:P`` once ``/health`` answers; stops that group (and only it) afterwards."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "no_proxy": "127.0.0.1,localhost"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(url, proc, log_path, timeout_s)
        yield url
    finally:
        stop_process_group(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    # A proxy named in the environment must not see loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError):
            with opener.open(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow ui did not answer on {url}:\n{log_path.read_text()[-3000:]}")
        time.sleep(1.0)


def stop_process_group(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, the process group ``proc`` leads (started with ``start_new_session``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left (uvicorn workers)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# -- the browser ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def headless_chromium(width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A Selenium ``WebDriver`` for headless Chromium with a fresh profile and a ``width`` x ``height`` page;
    quit afterwards."""
    found = find_chromium()
    if found is None:
        raise RuntimeError(f"Chromium or chromedriver not found ({INSTALL_HINT})")
    browser, chromedriver = found
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-proxy-server", "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    # --window-size includes the (invisible) browser frame: fix the page's own size, so screenshots are exact.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        yield driver
    finally:
        driver.quit()


class MlflowPages:
    """The pages of the MLflow UI a search's user works with, each step waiting for what it needs."""

    RUN_NAME_CELL = "div[contains(@col-id,'Run Name')]"

    def __init__(self, driver: Any, base_url: str, timeout_s: float = TIMEOUT_S):
        self.driver, self.base_url = driver, base_url.rstrip("/")
        self.wait = WebDriverWait(driver, timeout_s)

    # -- waiting and finding ---------------------------------------------------------------------------
    def find(self, xpath: str) -> Any:
        """The first element at ``xpath`` once it is visible."""
        return self.wait.until(EC.visibility_of_element_located((By.XPATH, xpath)))

    def click(self, xpath: str) -> None:
        self.wait.until(EC.element_to_be_clickable((By.XPATH, xpath))).click()

    def texts(self, xpath: str) -> list[str]:
        return [e.text.strip() for e in self.driver.find_elements(By.XPATH, xpath)]

    def open(self, route: str) -> None:
        """``route``: a UI address (``#/experiments/1/runs``) or a whole URL."""
        self.driver.get(route if route.startswith("http") else f"{self.base_url}/{route.lstrip('/')}")

    @property
    def route(self) -> str:
        """The part of the current URL after ``#``, without the query."""
        return self.driver.current_url.split("#", 1)[-1].split("?", 1)[0]

    # -- the runs table ------------------------------------------------------------------------------------
    def wait_for_runs_table(self) -> None:
        self.find("//div[@role='columnheader'][.//*[normalize-space(.)='Run Name']]")

    def run_names(self) -> list[str]:
        """The run names in the table, top to bottom."""
        return [t for t in self.texts(f"//div[@role='row']//{self.RUN_NAME_CELL}//a") if t]

    def wait_for_run(self, name_start: str) -> None:
        self.find(f"//div[@role='row']//{self.RUN_NAME_CELL}//a[starts-with(normalize-space(.), '{name_start}')]")

    def unfold(self, parent_name_start: str, child_name_start: str = "trial ") -> None:
        """Click the "+" beside a parent run and wait for its child runs."""
        self.click(f"//div[@role='row'][.//a[starts-with(normalize-space(.), '{parent_name_start}')]]"
                   f"//{self.RUN_NAME_CELL}//button")
        self.wait_for_run(child_name_start)

    def show_columns(self, names: Sequence[str]) -> None:
        """Tick metric, parameter or tag columns in the "Columns" menu; wait until the table shows them."""
        self.toggle_columns(names, shown=True)

    def toggle_columns(self, names: Sequence[str], shown: bool = True) -> None:
        """Click columns in the "Columns" menu (searching for each), close it, and wait until each column
        is in the table (``shown``) or gone from it."""

        self.click("//button[normalize-space(.)='Columns']")
        search = self.find("//input[@placeholder='Search columns']")
        for name in names:
            search.send_keys(Keys.CONTROL, "a")  # clear() would not reach React's copy of the value
            search.send_keys(Keys.BACKSPACE, name)
            self.click(f"//div[contains(@class,'tree-treenode')][.//span[contains(@class,'tree-title')]"
                       f"[normalize-space(.)='{name}']]//span[contains(@class,'tree-checkbox')]")
        search.send_keys(Keys.ESCAPE)
        for name in names:
            header = (By.XPATH, f"//div[@role='columnheader'][.//*[normalize-space(.)='{name}']]")
            self.wait.until(EC.visibility_of_element_located(header) if shown
                            else EC.invisibility_of_element_located(header))

    def widen_column(self, col_id: str, by_px: int) -> None:
        """Drag the right edge of a column header (``attributes.`Run Name```) ``by_px`` to the right."""
        handle = self.find(f"//div[@role='columnheader'][@col-id=\"{col_id}\"]/div[contains(@class,'ag-header-cell-resize')]")
        ActionChains(self.driver).click_and_hold(handle).move_by_offset(by_px, 0).release().perform()

    def column_values(self, col_id: str) -> dict[str, str]:
        """``{run id: cell text}`` of one column of the runs table (``col_id``: ``metrics.`valid_accuracy```)."""
        values = {}
        for cell in self.driver.find_elements(By.XPATH, f"//div[@role='row'][@row-id]//div[@col-id=\"{col_id}\"]"):
            row = cell.find_element(By.XPATH, "./ancestor::div[@role='row'][1]")
            values[row.get_attribute("row-id")] = cell.text.strip()
        return values

    def select_runs(self, run_ids: Sequence[str]) -> None:
        """Tick the rows of these runs (ag-grid hides the checkbox input itself: click its wrapper)."""
        for run_id in run_ids:
            self.click(f"//div[@role='row'][@row-id='{run_id}']//div[contains(@class,'ag-checkbox-input-wrapper')]")

    def compare_selected(self) -> None:
        """The "Compare" button of the selected runs; waits for the comparison page."""
        self.click("//button[normalize-space(.)='Compare']")
        self.find("//*[starts-with(normalize-space(.), 'Comparing ') and contains(., ' Runs')]")

    # -- one run ---------------------------------------------------------------------------------------------
    def artifact_image(self, experiment_id: str, run_id: str, path: str) -> tuple[int, int]:
        """Open a run's image artifact and return the previewed image's decoded size (width, height)."""
        self.open(f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}")
        name = path.rsplit("/", 1)[-1]
        self.find(f"//*[normalize-space(.)='{name}']")
        image = self.find("//img[starts-with(@src, 'blob:')]")
        self.wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
        return tuple(self.driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image))

    def metric_charts(self, experiment_id: str, run_id: str, metric: str) -> list[str]:
        """Open a run's "Model metrics" tab; wait until ``metric``'s chart is drawn; return every chart's title."""
        card = "//div[@data-testid='experiment-view-compare-runs-card']"
        self.open(f"#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
        self.find(f"{card}[.//h4[normalize-space(.)='{metric}']]//*[contains(@class,'js-plotly-plot')]")
        return self.texts(f"{card}//h4")

    def chart_view_titles(self, experiment_id: str) -> list[str]:
        """The experiment's chart view (the runs page's "Chart" mode): its charts' titles, first to last."""
        card = "//div[@data-testid='experiment-view-compare-runs-card']"
        self.open(f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART")
        self.find(f"{card}//h4")
        return self.texts(f"{card}//h4")

    def open_run_from_table(self, run_id: str) -> None:
        """Click a run's name in the runs table (MLflow's own link, as a user follows it); wait for its page."""
        self.click(f"//div[@role='row'][@row-id='{run_id}']//{self.RUN_NAME_CELL}//a")
        self.wait.until(lambda d: f"/runs/{run_id}" in d.current_url)
        self.find("//*[normalize-space(.)='About this run']")

    def breadcrumb(self) -> list[str]:
        """The links of the page itself, outside the sidebar, above its title: for a run page its experiment,
        then "Runs" in the model-training view or "Evaluations" in the GenAI one."""
        return [t for t in self.texts("//a[not(ancestor::aside)][following::*[normalize-space(.)='About this run']]")
                if t]

    # -- the page around -------------------------------------------------------------------------------------
    def choose_model_training(self) -> None:
        """The sidebar's "Model training" switch (the browser remembers it)."""
        self.click("//*[@role='button' or self::button][normalize-space(.)='Model training']")

    def close_assistant(self) -> None:
        """Close the "MLflow Assistant" side panel when it is open (it covers a third of the page)."""
        for button in self.driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
            if button.is_displayed():
                button.click()
                return

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
