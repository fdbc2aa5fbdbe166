"""What a user sees of a search in the MLflow UI, checked in a real browser.

A tiny search (2 trials) runs through the command line into a local SQLite store; ``mlflow ui`` serves
that store on 127.0.0.1 and headless Chromium (Selenium + chromedriver) opens it as a user would: the
link the search printed, the parent run and its nested child runs, the ``valid_accuracy`` column, the
compare view of the trials, a trial's metric charts, and the plots logged as artifacts (decoded in
the page, the size of the logged PNG). The tests share one search, one server and one browser, and
run in file order. Skipped, with the reason, where Chromium, chromedriver or selenium is missing
(``.ci/run`` installs them).
"""
from __future__ import annotations

import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest_search import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import mlflow_browser  # noqa: E402

_MISSING = mlflow_browser.missing_browser_reason()
if _MISSING:
    pytest.skip(_MISSING, allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

METRIC_COLUMN = "metrics.`valid_accuracy`"


@pytest.fixture(scope="module")
def searched(cli_search) -> SimpleNamespace:
    """The search, and what MLflow's own client says it recorded (the truth the page is held against)."""
    from mlflow.tracking import MlflowClient

    tmp, out = cli_search.tmp, cli_search.out
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    parent, = client.search_runs([experiment_id], "tags.search_role = 'parent'")
    children = client.search_runs([experiment_id], "tags.search_role = 'trial'")
    assert len(children) == 2
    link = re.search(r"then open (http://\S+)", out)
    assert link, out[-3000:]
    return SimpleNamespace(tmp=tmp, uri=uri, client=client, experiment_id=experiment_id, parent=parent,
                           children=children, printed_link=link.group(1))


@pytest.fixture(scope="module")
def pages(searched) -> mlflow_browser.MlflowPages:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("no_proxy", "127.0.0.1,localhost")  # Selenium talks to chromedriver over loopback HTTP
        with mlflow_browser.mlflow_ui(searched.uri, searched.tmp / "mlflow_ui.log") as base_url, \
                mlflow_browser.headless_chromium() as driver:
            yield mlflow_browser.MlflowPages(driver, base_url)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (IHDR)."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_the_printed_link_opens_the_experiment_on_its_runs(searched, pages):
    # The search prints the UI address for `mlflow ui`'s default port; this server has its own.
    link = re.sub(r"^http://127\.0\.0\.1:5000", pages.base_url, searched.printed_link)
    pages.open(link)
    pages.wait_for_runs_table()
    assert pages.route == f"/experiments/{searched.experiment_id}/runs"  # not the GenAI overview or traces
    pages.wait_for_run(searched.parent.info.run_name)
    assert pages.run_names() == [searched.parent.info.run_name]  # the trials are folded under it


def test_after_choosing_model_training_the_experiment_opens_on_its_runs(searched, pages):
    """docs/RESULTS.md tells users to click "Model training" once; then the experiment's own address
    (what the experiment list links to) opens on the runs too."""
    pages.open("#/experiments")  # the experiment list, without the printed link's workflowType
    pages.choose_model_training()
    pages.open(f"#/experiments/{searched.experiment_id}")
    pages.wait_for_runs_table()
    assert pages.route == f"/experiments/{searched.experiment_id}/runs"


def test_the_parent_run_unfolds_into_one_child_run_per_trial(searched, pages):
    pages.close_assistant()
    pages.unfold(searched.parent.info.run_name)
    names = pages.run_names()
    assert names[0] == searched.parent.info.run_name
    assert sorted(names[1:]) == sorted(r.info.run_name for r in searched.children)
    for child in searched.children:  # named by the trial's number in the Optuna study, linked to Ray's id
        number = child.data.tags["optuna_trial"]
        assert child.info.run_name.startswith(f"trial {number}: lr=") and child.data.tags["ray_trial_id"]


def test_the_valid_accuracy_column_shows_each_trials_value(searched, pages):
    pages.show_columns(["valid_accuracy"])
    shown = pages.column_values(METRIC_COLUMN)
    for child in searched.children:
        assert float(shown[child.info.run_id]) == pytest.approx(child.data.metrics["valid_accuracy"], abs=1e-6)
    assert shown[searched.parent.info.run_id] == "-"  # the parent records best_valid_accuracy, not epoch metrics


def test_the_compare_view_shows_both_trials(searched, pages):
    pages.select_runs([r.info.run_id for r in searched.children])
    pages.compare_selected()
    assert pages.route == "/compare-runs"
    text = pages.find("//body").text
    assert "Comparing 2 Runs" in text
    for child in searched.children:
        assert child.info.run_name in text
    for key in ("classifier.lr", "classifier.drop_mult", "valid_accuracy"):
        assert key in text


def test_a_trials_metric_charts(searched, pages):
    child = searched.children[0]
    titles = pages.metric_charts(searched.experiment_id, child.info.run_id, "valid_accuracy")
    assert sorted(titles) == sorted(["lr", "train_loss", "valid_accuracy", "valid_loss", "valid_macro_f1"])


def test_trial_and_search_plots_show_as_images(searched, pages, tmp_path):
    child = searched.children[0]
    parent_plots = [a.path for a in searched.client.list_artifacts(searched.parent.info.run_id, "plots")]
    assert "plots/optimization_history.png" in parent_plots, parent_plots
    for run, path in ((child, "plots/learning_curves.png"), (searched.parent, "plots/optimization_history.png")):
        logged = Path(searched.client.download_artifacts(run.info.run_id, path, str(tmp_path)))
        shown = pages.artifact_image(searched.experiment_id, run.info.run_id, path)
        assert shown == png_size(logged), f"{path} of {run.info.run_name}"


def test_a_run_page_stays_in_the_model_training_view(searched, pages):
    """MLflow's own links to a run page do not carry the printed link's workflowType: once the user has chosen
    "Model training" (docs/RESULTS.md), a run opened from the table stays in that view."""
    pages.open(f"#/experiments/{searched.experiment_id}/runs")
    pages.wait_for_runs_table()
    pages.open_run_from_table(searched.parent.info.run_id)
    crumbs = pages.breadcrumb()
    assert "Runs" in crumbs and "Evaluations" not in crumbs, crumbs


def test_the_experiments_chart_view_starts_with_a_learning_metric(searched, pages):
    """Bookkeeping (counts, timings) is tags: the chart view opens on learning metrics, not 17 counters."""
    titles = pages.chart_view_titles(searched.experiment_id)
    assert titles and titles[0] in ("best_valid_accuracy", "valid_accuracy", "valid_loss"), titles
    assert not [t for t in titles if t.startswith("summary") or t.endswith("_seconds")], titles
