"""Registered ULMFiT models that load and serve: ``search.serving`` against a real MLflow store.

Two tiny classifiers (forward and backward, from scratch, 300 TREC-6 rows) are logged into a run of a
SQLite store under tmp_path and registered; the registered models must predict what
``inference.predict_proba`` predicts, in process and through a real ``mlflow models serve`` on 127.0.0.1.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest_search import ask_served_model, free_port

from search import serving
from ulmfit_core import artifacts, inference, stages
from ulmfit_core.config import recipe_from_dict
from ulmfit_core.corpus import prepare_corpus

TEXTS = ["Who invented the telephone ?", "Where is Timbuktu ?", "How many feet are in a mile ?"]
RECIPE = {
    "data": {"dataset": "trec", "max_train_rows": 300},
    "model": {"preset": "tiny"},
    "lm": {"epochs": 1, "bs": 16, "bptt": 20},
    "classifier": {"epochs": 2, "lr": 0.01, "bs": 32, "bptt": 20, "max_seq": 200, "from_scratch": True},
}
BACKWARDS = {**RECIPE, "lm": {**RECIPE["lm"], "backwards": True},
             "classifier": {**RECIPE["classifier"], "backwards": True}}


@pytest.fixture(scope="module")
def classifiers(datasets_dir, tmp_path_factory) -> tuple[Path, Path]:
    """Folders of a forward and a backward tiny classifier (~10 s together on 2 cores)."""
    root = tmp_path_factory.mktemp("classifiers")
    cfg = recipe_from_dict(RECIPE)
    corpus = prepare_corpus(cfg, datasets_dir, root / "cache")
    fwd = stages.train_classifier(cfg, corpus, None, root / "fwd").out_dir
    bwd = stages.train_classifier(recipe_from_dict(BACKWARDS), corpus, None, root / "bwd").out_dir
    return fwd, bwd


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking store with one experiment; MLFLOW_TRACKING_URI points at it for the module."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(serving.TRACKING_URI_ENV, uri)
        client = mlflow.MlflowClient(uri)
        experiment_id = client.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
        yield {"uri": uri, "client": client, "experiment_id": experiment_id, "root": root}


@pytest.fixture(scope="module")
def registered(classifiers, store):
    """The forward classifier as ``ulmfit-fwd`` and the forward + backward ensemble as
    ``ulmfit-ensemble``, both logged into one finished run."""
    client = store["client"]
    run_id = client.create_run(store["experiment_id"], run_name="retrain").info.run_id
    client.set_terminated(run_id, "FINISHED")
    fwd, bwd = classifiers
    single = serving.log_classifier_model(run_id, [fwd], tracking_uri=store["uri"],
                                          registered_model_name="ulmfit-fwd")
    ensemble = serving.log_classifier_model(run_id, [fwd, bwd], tracking_uri=store["uri"], name="ensemble",
                                            registered_model_name="ulmfit-ensemble")
    return {"run_id": run_id, "single": single, "ensemble": ensemble}


def _probs(frame: pd.DataFrame, labels: list[str]) -> np.ndarray:
    return frame[[f"{serving.PROB_PREFIX}{c}" for c in labels]].to_numpy()


def test_registered_model_predicts_what_inference_predicts(classifiers, registered):
    fwd, _ = classifiers
    assert registered["single"].registered_model_version == 1
    model = mlflow.pyfunc.load_model("models:/ulmfit-fwd/1")
    labels, expected = inference.predict_proba([fwd], TEXTS)
    out = model.predict(pd.DataFrame({serving.TEXT_COLUMN: TEXTS}))
    assert list(out.columns) == ["label"] + [f"prob_{c}" for c in labels]
    assert out["label"].tolist() == [labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(_probs(out, labels), expected, rtol=0, atol=1e-6)
    # The other accepted inputs give the same rows through pyfunc's signature check: a Series, a plain list.
    pd.testing.assert_frame_equal(model.predict(pd.Series(TEXTS, name=serving.TEXT_COLUMN)), out)
    pd.testing.assert_frame_equal(model.predict(list(TEXTS)), out)


def test_a_blank_or_missing_text_gets_the_empty_documents_prediction(classifiers, registered):
    """As fastai's predict on an empty text: the prediction for xxbos alone; the rest of the batch is unchanged."""
    fwd, _ = classifiers
    model = mlflow.pyfunc.load_model("models:/ulmfit-fwd/1")
    labels, expected = inference.predict_proba([fwd], [TEXTS[0], ""])
    out = model.predict(pd.DataFrame({serving.TEXT_COLUMN: [TEXTS[0], "", "   ", None]}))
    probs = _probs(out, labels)
    np.testing.assert_allclose(probs[0], expected[0], rtol=0, atol=1e-6)
    for row in probs[1:]:
        np.testing.assert_allclose(row, expected[1], rtol=0, atol=1e-6)
    assert not np.allclose(expected[0], expected[1], atol=1e-4)  # the blank rows are not copies of a real one


def test_ensemble_predicts_the_mean_of_its_members(classifiers, registered):
    fwd, bwd = classifiers
    model = mlflow.pyfunc.load_model("models:/ulmfit-ensemble/1")
    labels, p_fwd = inference.predict_proba([fwd], TEXTS)
    _, p_bwd = inference.predict_proba([bwd], TEXTS)
    assert not np.allclose(p_fwd, p_bwd, atol=1e-4)  # otherwise the mean proves nothing
    out = model.predict(pd.DataFrame({serving.TEXT_COLUMN: TEXTS}))
    np.testing.assert_allclose(_probs(out, labels), (p_fwd + p_bwd) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_probs(out, labels).sum(1), 1.0, atol=1e-5)


def test_logged_model_holds_weights_code_signature_and_pins(registered, tmp_path):
    local = Path(mlflow.artifacts.download_artifacts("models:/ulmfit-ensemble/1", dst_path=str(tmp_path)))
    for member in ("classifier_0", "classifier_1"):
        files = sorted(p.name for p in (local / "artifacts" / member).iterdir())
        assert files == sorted(serving.MODEL_FILES)  # no checkpoint/ (optimizer state), no metrics.json
        payload = torch.load(local / "artifacts" / member / "model.pt", weights_only=True)
        assert set(payload) <= serving.WEIGHT_FILE_KEYS and "optimizer" not in payload
    assert (local / "code" / "ulmfit_core" / "inference.py").is_file()
    assert sorted(p.name for p in (local / "code" / "search").iterdir()) == ["__init__.py", "serving.py"]
    assert not list((local / "code").rglob("__pycache__"))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert inputs == [{"type": "string", "required": True}]  # one column: a list, a Series or a text column
    assert [o["name"] for o in outputs] == ["label"] + [f"prob_{c}" for c in json.loads(
        (local / "artifacts" / "classifier_0" / "labels.json").read_text())]
    assert mlmodel["metadata"]["ulmfit_members"] == 2
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={metadata.version('torch').split('+')[0]}" in requirements
    assert {r.split("==")[0] for r in requirements} >= set(serving.RUNTIME_DISTRIBUTIONS)


def test_pinned_requirements_cover_every_import_of_the_model_code():
    """Static: each third-party module ulmfit_core and search/serving.py import is pinned."""
    sources = list(Path(artifacts.__file__).parent.glob("*.py")) + [Path(serving.__file__)]
    modules: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"ulmfit_core", "search", "__future__"}
    assert not third_party & {"ray", "optuna"}
    pinned = {d.lower() for d in serving.RUNTIME_DISTRIBUTIONS}
    providers = metadata.packages_distributions()  # e.g. yaml -> [PyYAML]; mlflow -> [mlflow, mlflow-tracing, ...]
    unpinned = {m for m in third_party if not {p.lower() for p in providers.get(m, [])} & pinned}
    assert not unpinned, f"imported by the model's code but not pinned: {unpinned}"


def test_logging_keeps_the_run_status_and_the_tracking_uri(classifiers, store, monkeypatch):
    client = store["client"]
    run_id = client.create_run(store["experiment_id"], run_name="still-running").info.run_id
    elsewhere = f"sqlite:///{store['root'] / 'other.db'}"
    monkeypatch.setenv(serving.TRACKING_URI_ENV, elsewhere)  # the caller's setting, restored afterwards
    info = serving.log_classifier_model(run_id, [classifiers[0]], tracking_uri=store["uri"])
    assert info.registered_model_version is None
    assert client.get_run(run_id).info.status == "RUNNING"
    assert os.environ[serving.TRACKING_URI_ENV] == elsewhere and mlflow.get_tracking_uri() == elsewhere
    monkeypatch.setenv(serving.TRACKING_URI_ENV, store["uri"])
    assert mlflow.get_tracking_uri() == store["uri"]  # no global URI was left behind


def test_bad_folders_and_runs_are_refused_with_the_fix(classifiers, store, tmp_path):
    fwd, _ = classifiers
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        serving.check_classifier_dir(fwd / artifacts.CHECKPOINT_SUBDIR)  # a training checkpoint, no model.pt
    with_optimizer = tmp_path / "with_optimizer"
    with_optimizer.mkdir()
    for name in serving.MODEL_FILES:
        (with_optimizer / name).write_bytes((fwd / name).read_bytes())
    payload = torch.load(fwd / artifacts.MODEL_FILE, weights_only=True)
    torch.save({**payload, "optimizer": {"state": {}}}, with_optimizer / artifacts.MODEL_FILE)
    with pytest.raises(ValueError, match="optimizer"):
        serving.check_classifier_dir(with_optimizer)
    relabeled = tmp_path / "relabeled"
    relabeled.mkdir()
    for name in serving.MODEL_FILES:
        (relabeled / name).write_bytes((fwd / name).read_bytes())
    (relabeled / artifacts.LABELS_FILE).write_text(json.dumps(["neg", "pos"]))
    with pytest.raises(ValueError, match="classes differ"):
        serving.log_classifier_model("unused", [fwd, relabeled], tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="empty"):
        serving.log_classifier_model("unused", [], tracking_uri=store["uri"])
    with pytest.raises(ValueError, match="column named 'text'"):
        serving.texts_from_input(pd.DataFrame({"sentence": TEXTS, "title": TEXTS}))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mlflow_models_serve_answers_with_the_same_labels_as_inference(classifiers, registered, store, tmp_path):
    fwd, _ = classifiers
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the model's own code/ must suffice
    env.update({serving.TRACKING_URI_ENV: store["uri"], "PATH": bin_dir + os.pathsep + env.get("PATH", "")})
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", "models:/ulmfit-fwd/1", "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    predictions = ask_served_model(proc, f"http://127.0.0.1:{port}", log_path, [TEXTS[0], TEXTS[1], ""],
                                   "mlflow models serve")
    labels, expected = inference.predict_proba([fwd], [*TEXTS[:2], ""])  # a blank row answers too
    assert [row["label"] for row in predictions] == [labels[i] for i in expected.argmax(1)]
    served = np.array([[row[f"prob_{c}"] for c in labels] for row in predictions])
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_the_champion_alias_follows_the_best_test_accuracy(store, tmp_path):
    from search import tracking

    client = store["client"]
    client.create_registered_model("champ")
    source = tmp_path / "model"
    source.mkdir()
    versions = [client.create_model_version("champ", str(source)).version for _ in range(4)]
    for version, accuracy in zip(versions, ("0.80", "0.75", "0.85")):
        client.set_model_version_tag("champ", version, tracking.TEST_ACCURACY_TAG, accuracy)
    assert tracking.crown_if_best(client, "champ", versions[0], 0.80)  # the first is champion
    assert not tracking.crown_if_best(client, "champ", versions[1], 0.75)  # a worse one is not
    assert client.get_model_version_by_alias("champ", tracking.CHAMPION).version == versions[0]
    assert tracking.crown_if_best(client, "champ", versions[2], 0.85)
    assert not tracking.crown_if_best(client, "champ", versions[3], None)  # no test set: never champion
    assert client.get_model_version_by_alias("champ", tracking.CHAMPION).version == versions[2]
