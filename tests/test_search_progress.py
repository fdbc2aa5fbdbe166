"""The live display of a search: one table of trials (short names, rounded values, epoch, the search
metric, ASHA stops named as such) and a "k of N done, best so far" line; never Ray's per-trial config
boxes or the internal recipe/run entries; silent at verbose 0."""
from __future__ import annotations

import pickle
import re
from types import SimpleNamespace

import pytest
from conftest_search import ray_env  # noqa: F401 (a fixture)

from search import progress
from search.progress import SearchProgress

PARAMS = ["classifier.lr", "classifier.drop_mult", "classifier.use_clr[0]"]
INTERNAL = {"recipe": {"classifier": {"epochs": 3}}, "run": {"cache_dir": "/tmp/c", "threads": 1}}


def trial(trial_id: str, status: str, epoch: int | None = None, acc: float | None = None, lr: float = 0.0085588912,
          total: int = 3, number: int | None = None) -> SimpleNamespace:
    """What the reporter reads of a Ray ``Trial`` (``number``: its Optuna trial number, in its config)."""
    result = {} if epoch is None else {"epoch": epoch, "epochs_total": total, "valid_accuracy": acc}
    config = {**INTERNAL, "classifier.lr": lr, "classifier.drop_mult": 1.0380512, "classifier.use_clr[0]": 64}
    if number is not None:
        config["optuna_trial"] = number
    return SimpleNamespace(trial_id=trial_id, status=status, config=config, last_result=result)


def search_of_four() -> list[SimpleNamespace]:
    return [trial("aaaa0001", "TERMINATED", 3, 0.8621, number=0),            # ran all 3 epochs
            trial("aaaa0002", "TERMINATED", 1, 0.6207, lr=2e-6, number=1),   # ended at epoch 1 of 3: ASHA
            trial("aaaa0003", "RUNNING", 2, 0.8276, number=2),
            trial("aaaa0004", "PENDING", number=3)]


def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())

HEADER = ["trial", "ray id", "status", "lr", "drop_mult", "use_clr[0]", "epoch", "valid_accuracy"]


def test_table_shows_sampled_values_epoch_metric_and_asha_stops():
    text = SearchProgress(PARAMS, "valid_accuracy", "max", total=8).render(search_of_four())
    lines = text.strip().splitlines()
    assert columns(lines[1]) == HEADER
    rows = {columns(line)[1]: line for line in lines[3:7]}  # by Ray's id; the Optuna number comes first
    assert re.search(r"^0\s+aaaa0001\s+completed\s+0\.00856\s+1\.04\s+64\s+3/3\s+0\.8621$", rows["aaaa0001"])
    assert re.search(r"^1\s+aaaa0002\s+stopped by ASHA\s+2e-06\s+1\.04\s+64\s+1/3\s+0\.6207$", rows["aaaa0002"])
    assert re.search(r"^2\s+aaaa0003\s+running\s.*2/3\s+0\.8276$", rows["aaaa0003"])
    assert re.search(r"^3\s+aaaa0004\s+pending\s", rows["aaaa0004"])
    assert lines[-1] == ("2 of 8 done (1 completed, 1 stopped by ASHA), 1 running; "
                         "best so far valid_accuracy 0.8621 (trial 0, epoch 3)")
    assert "recipe" not in text and "run" not in text.replace("running", "")  # internal entries stay hidden
    assert "0.0085588912" not in text  # rounded


def test_best_so_far_follows_the_search_mode():
    trials = [trial("low", "TERMINATED", 3, 0.40), trial("high", "TERMINATED", 3, 0.90)]
    for t, loss in zip(trials, (0.40, 0.90)):
        t.last_result["valid_loss"] = loss
    line = SearchProgress(PARAMS, "valid_loss", "min", total=2).render(trials).splitlines()[-1]
    assert line.endswith("best so far valid_loss 0.4000 (trial low, epoch 3)")
    assert SearchProgress(PARAMS, "valid_loss", "min").render([trial("x", "PENDING")]).endswith(
        "0 of 1 done; no valid_loss yet")


def test_short_names_keep_the_whole_key_where_two_would_collide():
    assert progress.short_names(["lm.lr", "classifier.lr", "classifier.use_clr[1]", "classifier.wd"]) == {
        "lm.lr": "lm.lr", "classifier.lr": "classifier.lr", "classifier.use_clr[1]": "use_clr[1]",
        "classifier.wd": "wd"}


def test_prints_when_something_changed_not_at_every_step(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    reporter = SearchProgress(PARAMS, "valid_accuracy", "max", total=4, min_interval_s=10, heartbeat_s=300)
    trials = search_of_four()
    assert reporter.should_report(trials)
    reporter.report(trials, done=False)  # t = 1000
    trials[2].last_result = {**trials[2].last_result, "epoch": 3}
    clock[0] += 5
    assert not reporter.should_report(trials)  # new epoch, but within min_interval_s of the last table
    clock[0] += 5
    assert reporter.should_report(trials)
    reporter.report(trials, done=False)  # t = 1010
    clock[0] += 60
    assert not reporter.should_report(trials)  # nothing new: no repeated table
    clock[0] += 240
    assert reporter.should_report(trials)  # heartbeat while a long epoch runs
    assert reporter.should_report(trials, done=True)


def test_many_trials_show_the_unfinished_and_the_best_finished(capsys):
    trials = [trial(f"t{i:02d}", "TERMINATED", 3, i / 100, number=i) for i in range(30)] + \
        [trial("run1", "RUNNING", 1, 0.1, number=30)]
    SearchProgress(PARAMS, "valid_accuracy", "max", total=40, max_rows=5).report(trials, done=False)
    out = capsys.readouterr().out
    shown = [columns(line)[1] for line in out.strip().splitlines()[3:8]]
    assert shown == ["t26", "t27", "t28", "t29", "run1"]  # in trial order
    assert "(26 finished trials not shown" in out
    assert "30 of 40 done (30 completed), 1 running; best so far valid_accuracy 0.2900 (trial 29" in out


def test_reporter_survives_pickling():
    """Tune saves the run config (and so the reporter) with the experiment; a resume loads it."""
    reporter = pickle.loads(pickle.dumps(SearchProgress(PARAMS, "valid_accuracy", "max", total=4)))
    assert "aaaa0001" in reporter.render(search_of_four())


def test_classic_output_is_a_default_the_user_can_override(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.setenv(progress.NEW_OUTPUT_VAR, "x")  # recorded, so teardown restores the real state
    monkeypatch.delenv(progress.NEW_OUTPUT_VAR)
    progress.use_classic_progress_output()
    assert get_air_verbosity(1) is None  # Tune takes the reporter path, not Ray's config boxes
    monkeypatch.setenv(progress.NEW_OUTPUT_VAR, "1")
    progress.use_classic_progress_output()
    assert get_air_verbosity(1) is not None  # the user's choice stays


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_prints_the_table_at_verbose_1_and_nothing_at_verbose_0(tmp_path, ray_env, capfd, monkeypatch):
    """The reporter in a real Tune run (trivial trials, no model): ``search.verbose`` goes to
    ``RunConfig(verbose=...)`` as ``build_tuner`` passes it."""
    from ray import tune

    from search.local_ray import start_local_ray

    monkeypatch.setenv(progress.NEW_OUTPUT_VAR, "x")
    monkeypatch.delenv(progress.NEW_OUTPUT_VAR)
    progress.use_classic_progress_output()
    start_local_ray(1, 100 * 1024 * 1024)

    def one_epoch(config):
        tune.report({"epoch": 1, "epochs_total": 1, "valid_accuracy": config["classifier.lr"] * 10})

    out = {}
    for verbose in (0, 1):
        space = {**INTERNAL, "classifier.lr": tune.grid_search([0.01, 0.02])}
        reporter = SearchProgress(["classifier.lr"], "valid_accuracy", "max")
        tuner = tune.Tuner(one_epoch, param_space=space, run_config=tune.RunConfig(
            name=f"verbose{verbose}", storage_path=str(tmp_path), verbose=verbose, progress_reporter=reporter))
        capfd.readouterr()
        tuner.fit()
        out[verbose] = capfd.readouterr().out
    assert "search " not in out[0] and " done" not in out[0], out[0]
    assert "2 of 2 done (2 completed); best so far valid_accuracy 0.2000" in out[1], out[1]
    assert "recipe" not in out[1] and "cache_dir" not in out[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_search_command_prints_the_trial_table(cli_search):
    out = cli_search.out
    tables = re.findall(r"^search (?:progress|finished), .*?^\d+ of 2 done.*?$", out, flags=re.M | re.S)
    assert tables, out[-4000:]
    assert columns(tables[-1].splitlines()[1]) == HEADER
    assert tables[-1].startswith("search finished")
    assert re.search(r"^2 of 2 done \(.+\); best so far valid_accuracy 0\.\d{4} \(trial \d+, epoch \d\)$",
                     tables[-1], flags=re.M)
    assert not re.search(r"\b(recipe|run)/\w", out), "an internal config key reached the console"
    assert "config" not in "\n".join(tables) and not re.search(r"Trial \S+ (config|result)", out)
