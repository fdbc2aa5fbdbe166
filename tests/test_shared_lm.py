"""A search whose trials share one language model trains it once, before any trial starts, with a
trial's resources (here a fake GPU on a local Ray): no trial waits for it holding an accelerator."""
from __future__ import annotations

import json

import pytest
from conftest_search import child_runs, ray_environment, smoke_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_shared_lm_is_trained_before_the_trials_with_a_trials_gpu(tmp_path, datasets_dir):
    import ray
    from mlflow.tracking import MlflowClient

    from search import tuner

    with ray_environment() as ray_tmp:
        # One (fake) GPU: the LM task and each trial ask for half of it; everything computes on the CPU.
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024**2, _temp_dir=ray_tmp)
        cfg = smoke_config(tmp_path, ["search.num_samples=2", "search.max_concurrent=2", "search.name=shared",
                                      "search.resources={cpu: 1, gpu: 0.5}", "recipe.device=cpu"])
        outcome = tuner.run_search(cfg)
    meta = json.loads((outcome.search_dir / "search.json").read_text())
    (shared,) = meta["shared_lm"]
    assert shared["trained"] and shared["seconds"] > 0
    client = MlflowClient(cfg.mlflow.tracking_uri)
    runs = child_runs(cfg.mlflow.tracking_uri, "shared")
    assert len(runs) == 2
    for run in runs:
        # every trial found the LM done: it trained none, and started after the LM was finished
        assert run.data.tags["lm_trained"] == "false" and run.data.tags["lm_key"] == shared["lm_key"]
        assert run.info.start_time / 1000 >= shared["finished_at"]
        assert float(run.data.tags["lm_seconds"]) < shared["seconds"]  # loading, not training or waiting
        history = client.get_metric_history(run.info.run_id, "valid_accuracy")
        assert len(history) >= 1
    assert outcome.summary["lm_trainings"] == 1


def test_with_search_lm_a_trial_never_waits_for_another_trials_lm_holding_a_gpu(tmp_path, datasets_dir):
    """search_lm: true, one LM setting for all trials (the space samples classifier.* only), two trials at
    a time on one fake GPU: the first trial trains the LM; the others start only once it is there."""
    import ray

    from search import tuner

    with ray_environment() as ray_tmp:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024**2, _temp_dir=ray_tmp)
        cfg = smoke_config(tmp_path, ["search.num_samples=3", "search.max_concurrent=2", "search.name=gated",
                                      "search.search_lm=true", "search.scheduler.type=fifo",
                                      "search.resources={cpu: 1, gpu: 0.5}", "recipe.device=cpu"])
        outcome = tuner.run_search(cfg)
    runs = child_runs(cfg.mlflow.tracking_uri, "gated")
    assert len(runs) == 3 and outcome.summary["lm_trainings"] == 1
    trained = [r for r in runs if r.data.tags["lm_trained"] == "true"]
    assert len(trained) == 1
    lm_training = float(trained[0].data.tags["lm_seconds"])
    for run in runs:
        assert run.info.status == "FINISHED"
        if run is not trained[0]:
            # Ungated, the second trial starts beside the first and sits on the LM's lock for about the
            # whole training, holding half the GPU; gated, it only loads the finished LM.
            assert float(run.data.tags["lm_seconds"]) < 0.3 * lm_training


def test_a_shared_lm_already_in_the_cache_is_found_by_the_driver_without_a_task(tmp_path, datasets_dir, monkeypatch):
    """A later search over the same data and LM settings finds the shared LM on the driver: no Ray task
    (a worker process and its imports) is started for it."""
    import types
    from pathlib import Path

    from search import tuner
    from ulmfit_core import stages
    from ulmfit_core.config import build_recipe

    cfg = smoke_config(tmp_path, ["search.name=cached"])
    tuner.check_language_model_start(cfg)
    corpus = tuner.prepare_data_first(cfg)
    tasks = []

    def no_task(fn):  # stands in for ray.remote: records a task start instead of running one
        tasks.append(fn.__name__)
        raise RuntimeError("a Ray task was started")

    monkeypatch.setattr(tuner, "ray", types.SimpleNamespace(remote=no_task))
    with pytest.raises(RuntimeError, match="Ray task"):  # nothing in the cache yet: the task must train it
        tuner.train_shared_lm_first(cfg, corpus)
    run = tuner.param_space(cfg)[tuner.T.RUN]
    lm = stages.ensure_lm(build_recipe(cfg.recipe), corpus, Path(run["lm_root"]), models_dir=run["models_dir"])
    assert lm.trained
    (shared,) = tuner.train_shared_lm_first(cfg, corpus)
    assert tasks == ["train_shared_lm"]  # only the first call asked for a task
    assert shared["lm_key"] == lm.lm_dir.name and not shared["trained"]
    assert shared["seconds"] == pytest.approx(stages.lm_training_seconds(lm.lm_dir))
    # other LM settings are another key: not found, so a task would train them
    other = smoke_config(tmp_path, ["search.name=cached", "recipe.lm.drop_mult=0.9"])
    with pytest.raises(RuntimeError, match="Ray task"):
        tuner.train_shared_lm_first(other, corpus)
