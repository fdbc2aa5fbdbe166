"""A user's own configs and models, checked before anything trains: a search config whose recipe is a file
takes overrides, the smoke test starts from a model of its own size, a pretrained model of the wrong size or
a missing direction fails in one line before Ray or training starts, and the folders `run`/`retrain` write
are what `predict`/`evaluate` take."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

import launch
from search.settings import load_search_config
from ulmfit_core import stages, zoo
from ulmfit_core.config import recipe_from_dict
from ulmfit_core.inference import classifier_dirs
from ulmfit_core.pretrained import PretrainedError

SHARED_PRETRAINED = Path(__file__).resolve().parents[2] / "shared" / "pretrained"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A models folder holding general-en-tiny-fwd only (copied from the shared mirror, checked as `models
    fetch` checks it)."""
    if not (SHARED_PRETRAINED / "general-en-tiny-fwd").is_dir():
        pytest.skip(f"no general-en-tiny-fwd in {SHARED_PRETRAINED}")
    dest = tmp_path_factory.mktemp("models")
    zoo.fetch("general-en-tiny-fwd", dest, mirror=SHARED_PRETRAINED, progress=False)
    return dest


def write_project(root: Path, recipe: dict, search: dict) -> Path:
    (root / "my_recipe.yaml").write_text(yaml.safe_dump(recipe))
    (root / "my_search.yaml").write_text(yaml.safe_dump({"recipe": "my_recipe.yaml", **search}))
    return root / "my_search.yaml"


RECIPE = {"data": {"train": "my_data/train.csv", "text_cols": ["review"], "label_col": "sentiment"},
          "model": {"preset": "small"}, "lm": {"pretrained": "general-en-small-fwd", "epochs": 4},
          "classifier": {"epochs": 8}}


def test_overrides_and_the_smoke_test_apply_to_a_recipe_given_as_a_file(tmp_path, monkeypatch, models):
    monkeypatch.chdir(tmp_path)
    path = write_project(tmp_path, RECIPE, {"search": {"name": "mine", "models_dir": str(models)}})
    cfg = load_search_config(path, ["recipe.classifier.epochs=4", "recipe.lm.lr=0.002"])
    assert cfg.recipe["classifier"]["epochs"] == 4 and cfg.recipe["lm"]["lr"] == 0.002
    assert cfg.recipe["model"]["preset"] == "small"
    assert cfg.recipe["data"]["train"] == str(tmp_path / "my_data" / "train.csv")  # relative to where you run
    # The smoke test trains the tiny model: a small pretrained model becomes its fetched tiny twin.
    smoke = load_search_config(path, ["recipe.classifier.epochs=3"], smoke_test=True)
    assert smoke.recipe["model"]["preset"] == "tiny" and smoke.recipe["classifier"]["epochs"] == 3
    assert smoke.recipe["lm"]["pretrained"] == "general-en-tiny-fwd"
    assert smoke.notes == ["smoke test: the tiny model starts from general-en-tiny-fwd, the tiny twin of "
                           "general-en-small-fwd"]


def test_the_smoke_test_starts_from_random_weights_without_a_tiny_twin_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_project(tmp_path, RECIPE, {"search": {"models_dir": str(tmp_path / "no-models")}})
    smoke = load_search_config(path, smoke_test=True)
    assert smoke.recipe["lm"]["pretrained"] is None
    assert "random weights, not from general-en-small-fwd" in smoke.notes[0]
    assert "models fetch general-en-tiny-fwd" in smoke.notes[0]


def test_a_pretrained_model_of_another_size_fails_before_ray_starts(tmp_path, monkeypatch, models, capsys):
    import ray

    from search.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = {**RECIPE, "lm": {"pretrained": "general-en-tiny-fwd"}}  # a tiny model for the small preset
    path = write_project(tmp_path, recipe, {"search": {"name": "mine", "models_dir": str(models)}})
    assert main(["search", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "general-en-tiny-fwd is 64/128/2 (emb/hid/layers) (preset tiny)" in err
    assert "the configured model is 200/512/3" in err and "set model.preset: tiny" in err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_every_direction_is_checked_before_anything_trains(tmp_path, models, datasets_dir, capsys):
    out = tmp_path / "both"
    args = ["run", "--set", "data.dataset=trec", "--set", "model.preset=tiny", "--set", "lm.pretrained=general-en-tiny-fwd",
            "--directions", "fwd", "bwd", "--models-dir", str(models), "--data-dir", str(datasets_dir),
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]
    assert launch.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'general-en-tiny-bwd' is not fetched yet" in err, err
    assert "python launch.py models fetch general-en-tiny-bwd" in err
    assert not out.exists() and not (tmp_path / "cache").exists()  # no direction trained, no data read

    # pretrained_required: false applies per direction: the forward model keeps its start
    cfg = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "tiny"},
                            "lm": {"pretrained": "general-en-tiny-fwd", "pretrained_required": False}})
    (fwd, fwd_cfg, fwd_line), (bwd, bwd_cfg, bwd_line) = stages.plan_directions(cfg, ["fwd", "bwd"], models)
    assert (fwd, bwd) == ("fwd", "bwd")
    assert fwd_cfg.lm.pretrained == "general-en-tiny-fwd" and "starting from general-en-tiny-fwd" in fwd_line
    assert bwd_cfg.lm.pretrained is None and bwd_cfg.lm.backwards
    assert "random weights, because general-en-tiny-bwd is not fetched" in bwd_line


def test_a_pretrained_folder_of_another_size_is_refused_by_its_weights(tmp_path, models):
    """A folder given by path has no registered preset: its weights say its size."""
    folder = tmp_path / "my-lm"
    shutil.copytree(models / "general-en-tiny-fwd", folder)
    cfg = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "small"}, "lm": {"pretrained": str(folder)}})
    with pytest.raises(PretrainedError, match=r"my-lm is 64/128/2 .* set model.preset: tiny"):
        stages.plan_directions(cfg)


def test_predict_and_evaluate_take_the_folder_run_and_retrain_print(tmp_path):
    run = tmp_path / "runs" / "best"
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "model.pt").write_bytes(b"")
    assert classifier_dirs(run) == [run / "classifier"]  # one direction: its classifier/ folder
    assert classifier_dirs(run / "classifier") == [run / "classifier"]
    assert classifier_dirs(tmp_path / "elsewhere") == [tmp_path / "elsewhere"]  # refused later, by name
