#!/usr/bin/env python
"""Screenshots of the MLflow UI for docs/RESULTS.md, from a real search.

    python tools/ui_screenshots.py --data-dir ../shared/datasets      # or: make screenshots

Runs a small search (the demo's, ``configs/search_trec_demo.yaml``, with 6 trials: a few minutes on 2 CPU
cores) in a temporary folder, serves its SQLite store with ``mlflow ui`` on 127.0.0.1, opens it in headless
Chromium and writes into ``docs/images/`` (``--out``):

- ``mlflow_runs_table.png``: the experiment's runs, the search's parent run unfolded into its trials,
  with the valid_accuracy, sampled-value and trial_status columns;
- ``mlflow_compare.png``: the compare view of every trial (parallel coordinates);
- ``mlflow_trial_metrics.png``: the best trial's metric charts (one point per epoch);
- ``mlflow_trial_plots.png``: the best trial's ``plots/learning_curves.png`` artifact.

Needs Chromium, chromedriver and selenium (``apt-get install chromium chromium-driver``,
``pip install selenium``). Nothing it starts outlives it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python tools/ui_screenshots.py` from anywhere
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import mlflow_browser  # noqa: E402

#: On configs/search_trec_demo.yaml (the demo: TREC-6, tiny model, default space, TPE + ASHA), 6 trials.
SEARCH = ["search.num_samples=6", "search.name=trec_screenshots", "mlflow.experiment=trec_screenshots"]
TABLE_COLUMNS = ["valid_accuracy", "classifier.lr", "classifier.drop_mult", "classifier.wd", "trial_status"]
#: Columns the table shows by default that say nothing about a search (no datasets or models are logged).
UNUSED_COLUMNS = ["Dataset", "Source", "Models"]
#: Plotly's toolbar appears over every chart in a headless browser; it is not part of what a user sees.
HIDE_CHART_TOOLBARS = "const s = document.createElement('style'); s.textContent = '.modebar{display:none!important}'; " \
                      "document.head.appendChild(s);"


def run_search(work: Path, data_dir: Path) -> tuple[str, object]:
    """The search, in this process; returns its tracking URI and outcome."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    import search  # noqa: F401  (Ray's environment defaults, before ray is imported)
    from search.settings import load_search_config
    from search.tuner import run_search as run

    uri = f"sqlite:///{work / 'mlflow.db'}"
    overrides = [f"search.storage={work / 'runs'}", f"search.data_dir={data_dir}", f"mlflow.tracking_uri={uri}",
                 f"mlflow.artifact_location={work / 'mlartifacts'}", *SEARCH]
    cfg = load_search_config(ROOT / "configs" / "search_trec_demo.yaml", overrides)
    try:
        return uri, run(cfg)
    finally:
        import ray

        ray.shutdown()  # before the browser: the search's Ray instance is not needed any more


def take_screenshots(pages: mlflow_browser.MlflowPages, outcome, out: Path) -> list[Path]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(outcome.tracking_uri)
    exp = outcome.experiment_id
    parent = client.get_run(outcome.parent_run_id)
    trials = [row for row in outcome.leaderboard if row.get("mlflow_run_id")]
    best = trials[0]["mlflow_run_id"]

    pages.open(f"#/experiments/{exp}/runs")
    pages.wait_for_runs_table()
    pages.choose_model_training()
    pages.close_assistant()
    pages.unfold(parent.info.run_name)
    pages.toggle_columns(UNUSED_COLUMNS, shown=False)
    pages.toggle_columns(TABLE_COLUMNS)
    pages.widen_column("attributes.`Run Name`", 200)
    pages.widen_column("tags.`trial_status`", 40)  # room for "stopped_by_asha"
    made = [pages.screenshot(out / "mlflow_runs_table.png")]

    pages.select_runs([row["mlflow_run_id"] for row in trials])
    pages.compare_selected()
    pages.find("//*[contains(@class,'js-plotly-plot')]")
    made.append(pages.screenshot(out / "mlflow_compare.png"))

    pages.metric_charts(exp, best, "valid_accuracy")
    pages.driver.execute_script(HIDE_CHART_TOOLBARS)
    made.append(pages.screenshot(out / "mlflow_trial_metrics.png"))

    pages.artifact_image(exp, best, "plots/learning_curves.png")
    made.append(pages.screenshot(out / "mlflow_trial_plots.png"))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("ULMFIT_DATA", "data"),
                        help="where the trec dataset is (default: $ULMFIT_DATA or ./data)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="folder for the PNG files")
    args = parser.parse_args(argv)
    missing = mlflow_browser.missing_browser_reason()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    os.environ["no_proxy"] = "127.0.0.1,localhost"  # Selenium and the health check talk over loopback
    with tempfile.TemporaryDirectory(prefix="ulmfit-screens-") as tmp:
        work = Path(tmp)
        uri, outcome = run_search(work, Path(args.data_dir).resolve())
        with mlflow_browser.mlflow_ui(uri, work / "mlflow_ui.log") as base_url, \
                mlflow_browser.headless_chromium(1680, 960) as driver:
            made = take_screenshots(mlflow_browser.MlflowPages(driver, base_url), outcome, out)
    for path in made:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
