"""The search space and the search-config file: parsing, validation before any trial, application."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.errors import SearchConfigError, SpaceError
from search.settings import load_search_config, search_config_from_dict
from search.space import DEFAULT_SPACE, SearchSpace
from ulmfit_core.config import build_recipe, recipe_from_dict, to_dict, with_values
from ulmfit_core.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
BASE = {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}}


def config(space=None, **search):
    values = {"recipe": BASE, "search": search or None}
    if space is not None:
        values["space"] = space
    return search_config_from_dict(values)


def test_default_space_is_the_issue_4_space():
    cfg = config()
    assert cfg.space.to_dict() == DEFAULT_SPACE
    params = {p.key: p for p in cfg.space.params}
    assert (params["classifier.drop_mult"].type, params["classifier.drop_mult"].low,
            params["classifier.drop_mult"].high) == ("loguniform", 0.2, 2.0)
    assert (params["classifier.lrm"].low, params["classifier.lrm"].high) == (1.5, 4.0)
    assert params["classifier.use_clr[0]"].values == (8, 16, 32, 64)  # STLR ratio
    assert params["classifier.use_clr[1]"].values == (3, 5, 10, 20)  # STLR cut
    assert params["classifier.lr"].log and params["classifier.wd"].log


@pytest.mark.parametrize("space, message", [
    ({"classifier.lrr": {"type": "uniform", "low": 1, "high": 2}}, "did you mean classifier.lr"),
    ({"classifier.lr": {"type": "uniform", "low": 0.1, "high": 0.01}}, "low must be < high"),
    ({"classifier.lr": {"type": "uniform", "low": 0.1, "high": 0.1}}, "low must be < high"),
    ({"classifier.lr": {"type": "loguniform", "low": 0, "high": 0.1}}, "low > 0"),
    ({"classifier.bs": {"type": "choice", "values": []}}, "non-empty list"),
    ({"classifier.bs": []}, "non-empty list"),
    ({"classifier.bs": {"type": "normal", "low": 1, "high": 2}}, "type must be one of"),
    ({"classifier.lr": {"type": "uniform", "low": 0.1, "hgih": 0.2}}, "unknown field"),
    ({"classifier.lrm": {"type": "uniform", "low": 0.5, "high": 2}}, "classifier.lrm: must be >= 1"),
    ({"classifier.use_clr": {"type": "choice", "values": [[8, 3]]}}, "classifier.use_clr[0]"),
    ({"classifier.use_clr[2]": [3, 5]}, "not a list with an element 2"),
    ({"classifier.bs": {"type": "int", "low": 1.5, "high": 8}}, "integer low/high"),
    ({"lm.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, "search.search_lm is false"),
    ({"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "when": {"classifier.nope": 1}}},
     "neither a searched key nor a recipe key"),
    ({"classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2, "when": {"classifier.wd": 0.1}},
      "classifier.wd": [0.01, 0.1]}, "declare classifier.wd first"),
])
def test_invalid_spaces_fail_with_the_key_and_the_fix(space, message):
    with pytest.raises(SearchConfigError) as e:
        config(space)
    assert message in str(e.value)
    assert str(e.value).startswith("space")


def test_lm_keys_are_searchable_when_asked():
    cfg = config({"lm.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, search_lm=True)
    assert cfg.space.touches_lm_stage() == ["lm.lr"]
    # precision is part of the shared LM's key: searched with one shared LM, every trial would train its own
    with pytest.raises(SearchConfigError, match="precision change the language-model stage"):
        config({"precision": ["fp32", "bf16"]})
    # the tokenizer as a choice: one shared LM per value, trained before the trials; as a range it is refused
    shared = config({"text.tokenizer": ["words", "subwords"], "text.subword_vocab": [4000, 8000]})
    assert shared.space.lm_settings() == [
        {"text.tokenizer": t, "text.subword_vocab": v} for t in ("words", "subwords") for v in (4000, 8000)]
    with pytest.raises(SearchConfigError, match=r"text\.subword_vocab change the language-model stage.*only a "
                                                r"choice of text\.tokenizer"):
        config({"text.subword_vocab": {"type": "int", "low": 4000, "high": 8000}})


def test_apply_sets_list_elements_dropouts_and_presets_without_freezing_defaults():
    cfg = build_recipe(BASE, {"classifier.use_clr[1]": 5, "classifier.dropouts.output_p": 0.2,
                              "model.preset": "small"})
    assert cfg.classifier.use_clr == (8.0, 5.0)  # ratio kept from the default, cut sampled
    assert cfg.classifier.dropouts.output_p == 0.2 and cfg.classifier.dropouts.input_p == 0.4
    assert (cfg.model.emb_sz, cfg.model.n_hid) == (200, 512)  # the preset's sizes, not the base's tiny ones
    assert with_values(BASE, {}) == BASE and with_values(BASE, {}) is not BASE


def test_conditional_parameters_are_sampled_only_when_their_condition_holds():
    cfg = config({
        "classifier.from_scratch": [False, True],
        "lm.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2, "when": {"classifier.from_scratch": False}},
        "classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
    }, search_lm=True)
    base = to_dict(recipe_from_dict(BASE))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(12):
        values = cfg.space.sample(study.ask(), base)
        seen.add(values["classifier.from_scratch"])
        assert ("lm.lr" in values) == (values["classifier.from_scratch"] is False)
        build_recipe(BASE, values)  # every sample makes a valid recipe
    assert seen == {False, True}


def test_shipped_search_configs_load_and_validate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in sorted((ROOT / "configs").glob("search_*.yaml")):
        cfg = load_search_config(path)
        assert cfg.search.metric in METRICS
        assert cfg.search.resources.cpu >= 1
        assert cfg.max_t == recipe_from_dict(cfg.recipe).classifier.epochs
    demo = load_search_config(ROOT / "configs" / "search_trec_demo.yaml")
    assert demo.recipe["data"]["dataset"] == "trec" and demo.search.max_concurrent == 2
    smoke = load_search_config(ROOT / "configs" / "search_trec_demo.yaml", smoke_test=True)
    assert smoke.search.num_samples == 2 and smoke.recipe["model"]["preset"] == "tiny"
    # its own folder name and MLflow experiment: smoke trials never join the real search's
    assert smoke.search.name == "trec_demo_smoke" and smoke.experiment == "trec_demo_smoke"
    named = load_search_config(ROOT / "configs" / "search_trec_demo.yaml", ["search.name=mine"], smoke_test=True)
    assert named.search.name == "mine"  # an explicit --set wins


def test_search_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: {data: {dataset: trec}}\nsearch: {num_sample: 3}\n")
    with pytest.raises(SearchConfigError, match=r"search.num_sample: unknown key; did you mean search.num_samples"):
        load_search_config(bad)
    with pytest.raises(SearchConfigError, match="search.resources.cpu"):
        config(resources={"cpu": 0.5})
    with pytest.raises(SearchConfigError, match="search.metric"):
        config(metric="accuracy")
    assert config(metric="valid_loss").search.mode == "min"
    with pytest.raises(SearchConfigError, match="grace_period: 9 epochs is more than the 4"):
        config(scheduler={"grace_period": 9})


def test_searcher_and_scheduler_choices():
    """``algorithm: random`` + ``scheduler.type: fifo`` is a plain random search; both are seeded."""
    from ray.tune.schedulers import FIFOScheduler

    from search.schedulers import Asha
    from search.searcher import make_sampler
    from search.tuner import make_scheduler

    assert isinstance(make_scheduler(config()), Asha)
    assert type(make_scheduler(config(scheduler={"type": "fifo"}))) is FIFOScheduler
    with pytest.raises(SearchConfigError, match=r"search.scheduler.type: must be one of \['asha', 'fifo'\]"):
        config(scheduler={"type": "bohb"})
    with pytest.raises(SearchConfigError, match=r"search.algorithm: must be one of \['tpe', 'random'\]"):
        config(algorithm="grid")
    assert isinstance(make_sampler("tpe", 3, 8), optuna.samplers.TPESampler)

    def draws(seed):
        cfg = config(algorithm="random", seed=seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=make_sampler(cfg.search.algorithm, cfg.search.seed, 8))
        base = to_dict(recipe_from_dict(BASE))
        return [cfg.space.sample(study.ask(), base) for _ in range(3)]

    assert isinstance(make_sampler("random", 0, 8), optuna.samplers.RandomSampler)
    assert draws(0) == draws(0) and draws(0) != draws(1)


def test_default_metric_is_the_primary_one():
    from ulmfit_core.metrics import PRIMARY_METRIC, PRIMARY_MODE

    assert config().search.metric == PRIMARY_METRIC and config().search.mode == PRIMARY_MODE


def test_space_round_trips_through_its_dict():
    space = SearchSpace.from_dict({"classifier.bs": {"type": "int", "low": 16, "high": 64, "step": 16},
                                   "classifier.lr": {"type": "uniform", "low": 0.001, "high": 0.01},
                                   "classifier.use_clr[0]": [8, 16]})
    assert SearchSpace.from_dict(space.to_dict()) == space
    with pytest.raises(SpaceError):
        SearchSpace.from_dict({})


def test_launch_registers_the_search_commands():
    import launch

    parser = launch.build_parser()
    for argv in (["search", "--config", "c.yaml", "--set", "search.num_samples=2", "--smoke-test"],
                 ["search", "--resume", "runs/search/x"], ["export", "--search", "runs/search/x"],
                 ["retrain", "--config", "best.yaml"]):
        assert parser.parse_args(argv).func.__module__ == "search.cli"
