"""The LM gate of a ``search_lm: true`` search (search/lm_gate.py): a configuration whose language model
another trial is training is held back from Tune (no actor, no GPU) and handed out once the LM is there."""
from __future__ import annotations

import pytest
from conftest_search import smoke_config

from search.lm_gate import LMGate, LMSettingsOf
from search.searcher import make_searcher


def gate(num_samples: int = 10, max_held: int = 2) -> LMGate:
    return LMGate(lambda config: config["lm.drop_mult"], num_samples=num_samples, max_held=max_held)


def test_a_second_trial_of_an_lm_in_training_is_held_until_the_owner_reports():
    g = gate()
    assert g.admit("a", {"lm.drop_mult": 1.0})  # first of its LM: runs, and trains the LM
    assert not g.admit("b", {"lm.drop_mult": 1.0})  # same LM, still training: held
    assert g.release() is None
    assert g.admit("c", {"lm.drop_mult": 0.5})  # another LM setting runs meanwhile
    g.on_result("a")
    assert g.release() == ("b", {"lm.drop_mult": 1.0})
    assert g.admit("d", {"lm.drop_mult": 1.0})  # the LM is there now: no wait
    assert g.handed_out == 3 and not g.held


def test_an_owner_that_ends_without_a_report_frees_its_lm_for_the_next_trial():
    g = gate()
    g.admit("a", {"lm.drop_mult": 1.0})
    g.admit("b", {"lm.drop_mult": 1.0})
    g.on_end("a")  # errored before its first epoch: its LM may not exist
    assert g.release() == ("b", {"lm.drop_mult": 1.0})
    assert g.admit("b2", {"lm.drop_mult": 1.0})
    assert g.owners == {1.0: "b2"}  # the released trial now trains the LM


def test_the_gate_never_asks_beyond_the_budget_or_holds_more_than_allowed():
    g = gate(num_samples=3, max_held=1)
    g.admit("a", {"lm.drop_mult": 1.0})
    assert g.may_ask()
    g.admit("b", {"lm.drop_mult": 1.0})  # held
    assert not g.may_ask()  # one held already
    g.on_result("a")
    g.admit("b2", g.release()[1])
    assert g.may_ask()  # 2 handed out, none held, budget 3
    g.admit("c", {"lm.drop_mult": 2.0})
    assert not g.may_ask()  # the budget is spent: no configuration asked and left unrun


def test_lm_groups_follow_the_language_model_settings_not_the_classifiers():
    base = {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}}  # as a search config holds it
    group = LMSettingsOf(base)
    assert group({"classifier.lr": 0.01}) == group({"classifier.lr": 0.02, "classifier.drop_mult": 0.5})
    assert group({"lm.drop_mult": 0.5}) != group({"lm.drop_mult": 0.7})
    assert group({"lm.backwards": True}) != group({})
    assert group({"lm.pretrained": "general-en-tiny-fwd"}) != group({})


@pytest.fixture
def gated_searcher(tmp_path):
    cfg = smoke_config(tmp_path, ["search.search_lm=true", "search.num_samples=3"])
    (tmp_path / "gated").mkdir()
    searcher = make_searcher(cfg, tmp_path / "gated")  # the space samples classifier.* only: every trial shares one LM
    assert searcher.lm_gate is not None
    return searcher


def test_the_searcher_hands_held_configurations_to_later_trial_ids(gated_searcher):
    s = gated_searcher
    first = s.suggest("t1")
    assert isinstance(first, dict)
    assert s.suggest("t2") is None  # same LM, which t1 is training: held, no trial for Tune
    assert s.suggest("t3") is None  # held too (max_held = max_concurrent = 2)
    assert s.suggest("t4") is None  # nothing more asked: two are held
    assert len(s.study.trials) == 3
    s.on_trial_result("t1", {"valid_accuracy": 0.5, "training_iteration": 1, "epoch": 1, "epochs_total": 3})
    second, third = s.suggest("t5"), s.suggest("t6")
    assert isinstance(second, dict) and isinstance(third, dict) and len({str(c) for c in (first, second, third)}) == 3
    assert s.suggest("t7") is None  # the budget of 3 is handed out: Optuna is not asked again
    assert len(s.study.trials) == 3
    assert set(s.live) == {"t1", "t5", "t6"}  # each Optuna trial follows the id Tune knows it by
    assert {t.user_attrs["ray_trial_id"] for t in s.study.trials} == {"t1", "t5", "t6"}
    s.on_trial_complete("t5", {"valid_accuracy": 0.7, "training_iteration": 3, "epoch": 3, "epochs_total": 3})
    done = [t for t in s.study.trials if t.value is not None]
    assert len(done) == 1 and done[0].value == pytest.approx(0.7)
    assert done[0].params == pytest.approx({k: v for k, v in second.items() if k != "optuna_trial"})


def test_a_search_sharing_one_lm_has_no_gate(tmp_path):
    (tmp_path / "plain").mkdir()
    assert make_searcher(smoke_config(tmp_path, ["search.search_lm=false"]), tmp_path / "plain").lm_gate is None
