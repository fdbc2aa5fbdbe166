"""Warm start without Ray's runtime: earlier studies (search folders) seed a new study before its first
trial; values outside the new space are dropped with a note; nothing is added twice; points go first."""
from __future__ import annotations

import logging

import pytest
from optuna.trial import TrialState

import search  # noqa: F401  (Ray's environment defaults before ray is imported)
from search import store
from search import trainable as T
from search import warm_start as W
from search.errors import SearchConfigError
from search.searcher import make_searcher
from search.settings import search_config_from_dict

SPACE = {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
         "classifier.use_clr[0]": [8, 16, 32]}
RECIPE = {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "classifier": {"epochs": 3}}


def _config(space=SPACE, **search):
    return search_config_from_dict({"recipe": RECIPE, "space": space, "search": {"seed": 0, **search}})


def _result(step, value):
    return {"valid_accuracy": value, "training_iteration": step, T.EPOCH: step, T.EPOCHS_TOTAL: 3}


def _earlier_search(tmp_path, name, trials):
    """A search folder whose stored study holds ``trials``: (lr, ratio, last epoch, accuracy) each."""
    cfg = _config()
    search_dir = tmp_path / name
    search_dir.mkdir()
    store.write_search_json(search_dir, {"config": cfg.to_dict()})
    searcher = make_searcher(cfg, search_dir)
    searcher.study.enqueue_trial({"classifier.lr": trials[0][0], "classifier.use_clr[0]": trials[0][1]})
    for i, (lr, ratio, last, acc) in enumerate(trials):
        if i:
            searcher.study.enqueue_trial({"classifier.lr": lr, "classifier.use_clr[0]": ratio})
        searcher.suggest(f"t{i}")
        for step in range(1, last + 1):
            searcher.on_trial_result(f"t{i}", _result(step, acc * step / last))
        searcher.on_trial_complete(f"t{i}", _result(last, acc))
    return search_dir


def _new(tmp_path, name):
    (tmp_path / name).mkdir()  # run_search creates the search folder before the searcher
    return tmp_path / name


EARLIER = [(0.01, 8, 3, 0.8), (0.002, 16, 1, 0.3), (0.05, 32, 3, 0.7)]


def test_a_warm_started_study_holds_the_earlier_trials_before_its_first_new_one(tmp_path):
    earlier = _earlier_search(tmp_path, "old-1", EARLIER)
    cfg = _config(warm_start=[str(earlier)], points_to_evaluate=[{"classifier.lr": 0.003}])
    searcher = make_searcher(cfg, _new(tmp_path, "new-1"))
    W.start_study(searcher.study, cfg, W.read_earlier_searches(cfg))
    seeded = searcher.study.get_trials(deepcopy=False)
    assert [(t.params["classifier.lr"], t.params["classifier.use_clr[0]"], t.state, t.value) for t in seeded[:3]] == [
        (0.01, 8, TrialState.COMPLETE, pytest.approx(0.8)), (0.002, 16, TrialState.PRUNED, pytest.approx(0.3)),
        (0.05, 32, TrialState.COMPLETE, pytest.approx(0.7))]
    assert seeded[1].intermediate_values == {1: pytest.approx(0.3)}  # TPE ranks a pruned trial by these
    assert {t.user_attrs[W.SOURCE_ATTR] for t in seeded[:3]} == {str(earlier.resolve())}
    first_new = searcher.suggest("n0")  # the point to evaluate comes first, after the earlier trials
    assert first_new["classifier.lr"] == pytest.approx(0.003)
    assert searcher.number["n0"] == 3


def test_values_outside_the_new_space_are_dropped_with_a_note(tmp_path, caplog):
    earlier = _earlier_search(tmp_path, "old-2", EARLIER)
    narrower = {"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 2e-2},  # 0.05 is out of range
                "classifier.use_clr[0]": [8, 32]}  # 16 is not offered
    cfg = _config(narrower, warm_start=[str(earlier)])
    searcher = make_searcher(cfg, _new(tmp_path, "new-2"))
    with caplog.at_level(logging.WARNING, logger="search.warm_start"):
        added = W.seed_study(searcher.study, cfg.space, W.read_earlier_searches(cfg))
    assert added == {str(earlier.resolve()): 1}
    assert [t.params for t in searcher.study.trials] == [{"classifier.lr": 0.01, "classifier.use_clr[0]": 8}]
    notes = [r.getMessage() for r in caplog.records]
    assert any("trial 1 left out: classifier.use_clr[0]=16 is outside the space" in n for n in notes), notes
    assert any("trial 2 left out: classifier.lr=0.05 is outside the space" in n for n in notes), notes

    fewer_keys = _config({"classifier.lr": SPACE["classifier.lr"]}, warm_start=[str(earlier)])
    kept, notes = W.fit_to_space(W.read_earlier_searches(fewer_keys)[0], fewer_keys.space)
    assert kept == [] and all("classifier.use_clr[0] is not searched" in n for n in notes)


def test_seeding_twice_adds_nothing_twice(tmp_path):
    earlier = _earlier_search(tmp_path, "old-3", EARLIER)
    cfg = _config(warm_start=[str(earlier)])
    searcher = make_searcher(cfg, _new(tmp_path, "new-3"))
    searches = W.read_earlier_searches(cfg)
    W.seed_study(searcher.study, cfg.space, searches)
    assert W.seed_study(searcher.study, cfg.space, searches) == {str(earlier.resolve()): 0}
    assert len(searcher.study.trials) == 3
    # A search warm-started from this one takes only its own trials (none yet), not the copies.
    store.write_search_json(tmp_path / "new-3", {"config": cfg.to_dict()})
    assert W.from_search_dir(tmp_path / "new-3").trials == ()


def test_warm_start_refuses_another_metric_and_unknown_sources(tmp_path):
    earlier = _earlier_search(tmp_path, "old-4", EARLIER)
    with pytest.raises(SearchConfigError, match=r"search.warm_start\[0\]: .* optimised valid_accuracy \(max\)"):
        W.read_earlier_searches(_config(warm_start=[str(earlier)], metric="valid_loss"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(SearchConfigError, match=r"search.warm_start\[0\]: .* not a search folder"):
        W.read_earlier_searches(_config(warm_start=[str(tmp_path / "plain")]))
    # Another dataset or another base recipe: its scores mean nothing here (a key the space searches may differ).
    other_data = search_config_from_dict({"recipe": {**RECIPE, "data": {"dataset": "imdb"}}, "space": SPACE,
                                          "search": {"seed": 0, "warm_start": [str(earlier)]}})
    with pytest.raises(SearchConfigError, match=r"ran another base recipe \(data.dataset 'trec' vs 'imdb'\)"):
        W.read_earlier_searches(other_data)
    longer = search_config_from_dict({"recipe": {**RECIPE, "classifier": {"epochs": 4}}, "space": SPACE,
                                      "search": {"seed": 0, "warm_start": [str(earlier)]}})
    with pytest.raises(SearchConfigError, match=r"classifier.epochs 3 vs 4"):
        W.read_earlier_searches(longer)
    assert W.read_earlier_searches(_config(warm_start=[str(earlier)]))[0].trials  # the same recipe: accepted
    cfg = search_config_from_dict({"recipe": RECIPE, "space": SPACE, "search": {"warm_start": ["no_such_experiment"]},
                                   "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    with pytest.raises(SearchConfigError, match="neither a search folder nor an MLflow experiment"):
        W.read_earlier_searches(cfg)


def test_points_to_evaluate_are_validated_against_the_space():
    with pytest.raises(SearchConfigError, match=r"points_to_evaluate\[1\]: classifier.use_clr\[0\]=64 is outside"):
        _config(points_to_evaluate=[{"classifier.lr": 0.01}, {"classifier.use_clr[0]": 64}])
    with pytest.raises(SearchConfigError, match=r"points_to_evaluate\[0\]: classifier.wd is not searched"):
        _config(points_to_evaluate=[{"classifier.wd": 0.01}])


def test_mlflow_params_map_back_to_space_keys_and_values():
    assert W.space_key("classifier.use_clr.0") == "classifier.use_clr[0]"
    assert W.space_key("classifier.lr") == "classifier.lr"
    assert [W.parse_param(v) for v in ("0.0123", "16", "True", "None", "adam")] == [0.0123, 16, True, None, "adam"]


def test_the_paper_point_is_reachable_by_name():
    from search.space import PAPER_POINT

    cfg = search_config_from_dict({"recipe": RECIPE, "search": {"points_to_evaluate": ["paper"]}})  # default space
    assert cfg.search.points_to_evaluate == [PAPER_POINT]
    narrow = _config(points_to_evaluate=["paper"])  # searches lr and the STLR ratio only
    assert narrow.search.points_to_evaluate == [{"classifier.lr": 0.01, "classifier.use_clr[0]": 32}]
