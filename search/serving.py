"""Registered models that serve: a saved ULMFiT classifier (or a forward + backward ensemble) as an
MLflow ``pyfunc`` model, loadable with ``mlflow.pyfunc.load_model`` and servable with
``mlflow models serve``.

What a logged model holds (at ``ModelInfo.model_uri``, or ``models:/NAME/VERSION`` once registered)::

    MLmodel, python_env.yaml, requirements.txt, input_example.json, serving_input_example.json
    artifacts/classifier_0/    model.pt, vocab.json, labels.json, config.yaml  (weights only)
    artifacts/classifier_1/    ... one folder per ensemble member
    code/ulmfit_core/          the recipe package (the model, tokenizer, vocabulary)
    code/search/               only ``__init__.py`` and this module (the PythonModel class)

Input: a list of strings, a pandas Series, or a DataFrame with a ``text`` column (a DataFrame of one
column of any name is read as the texts). An empty, blank or null text is the empty document and gets
the model's prediction for it (fastai's ``predict`` on an empty text gives the same), so one blank row
never fails a batch.
Output: a DataFrame, one row per text, with ``label`` (the most probable class) and one float column
``prob_<class>`` per class, in the classifier's class order; the probabilities of a row sum to 1 and
are the mean over the ensemble's members.

The model is logged *from code* (``served_model.py`` names the class, MLflow's models-from-code): nothing of
it is pickled, so loading it runs only the logged code, never a deserialized object.

REST (``mlflow models serve``)::

    POST /invocations  {"dataframe_split": {"columns": ["text"], "data": [["Who wrote Hamlet ?"]]}}
    -> {"predictions": [{"label": "HUM", "prob_ABBR": 0.01, ..., "prob_NUM": 0.02}]}

The model loads its classifiers once (``load_context``: an ``ulmfit_core.inference.Predictor``) and
every request reuses them.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from ulmfit_core import artifacts as files
from ulmfit_core.inference import Predictor

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
PROB_PREFIX = "prob_"
ARTIFACT_PREFIX = "classifier_"
#: The files of a classifier folder a served model needs (``artifacts.save_classifier`` writes them).
#: ``checkpoint/`` (optimizer and RNG state for resuming) and ``metrics.json`` are left out.
MODEL_FILES = (files.MODEL_FILE, files.VOCAB_FILE, files.LABELS_FILE, files.CONFIG_FILE)
#: What ``model.pt`` may hold: weights and the metadata to rebuild the model, never optimizer state.
WEIGHT_FILE_KEYS = frozenset({"state_dict", "config", "labels", "tokenizer", "format", "vocab_sha256",
                              "subwords_sha256"})
#: Distributions the model's code imports when it is loaded and run (ulmfit_core, this module and
#: MLflow's pyfunc loader); pinned to the installed versions in the model's requirements.
RUNTIME_DISTRIBUTIONS = ("mlflow", "cloudpickle", "torch", "numpy", "pandas", "pyyaml", "spacy", "sentencepiece",
                         "filelock", "tqdm")
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXAMPLE_TEXTS = ("Who wrote Hamlet ?", "How many feet are in a mile ?")


def probabilities_frame(labels: Sequence[str], probs: np.ndarray) -> pd.DataFrame:
    """The model's output: ``label`` (argmax class) and ``prob_<class>`` per class, one row per text."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities of shape {probs.shape} do not match {len(labels)} classes")
    out = pd.DataFrame({LABEL_COLUMN: [labels[i] for i in probs.argmax(axis=1)]})
    for j, name in enumerate(labels):
        out[f"{PROB_PREFIX}{name}"] = probs[:, j]
    return out


def texts_from_input(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame's ``text`` column (or its only column), a Series, or a
    list of strings. A null (None, NaN) is the empty text."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            values = model_input[TEXT_COLUMN].tolist()
        elif len(model_input.columns) == 1:  # a list through MLflow's schema check arrives as column 0
            values = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(f"the input DataFrame has columns {list(model_input.columns)}; put the documents "
                             f"in a column named {TEXT_COLUMN!r}")
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, (list, tuple, np.ndarray)):
        values = list(model_input)
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        raise TypeError(f"cannot read texts from a {type(model_input).__name__}; pass a DataFrame with a "
                        f"{TEXT_COLUMN!r} column, a Series or a list of strings")
    values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"rows {bad[:5]} are not strings (e.g. {values[bad[0]]!r}); every row needs a text")
    return values


class ULMFiTClassifierModel(mlflow.pyfunc.PythonModel):
    """A ULMFiT classifier, or the mean of several (forward + backward), as an MLflow pyfunc model.

    Logged from code (``served_model.py``): its members are the logged artifacts ``classifier_0``,
    ``classifier_1``, ... in ensemble order, its class names the model config's ``labels``. See the module
    docstring for the input and output format.
    """

    def __init__(self) -> None:
        self.labels: list[str] = []
        self._predictor: Predictor | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load each member once, so a broken or inconsistent model fails when it is loaded, not on its
        first request; every request then reuses the weights and the tokenizer (CUDA when present)."""
        keys = member_keys(context.artifacts)
        if not keys:
            raise FileNotFoundError(f"the logged model has no {ARTIFACT_PREFIX}<i> artifacts; log it again with "
                                    "search.serving.log_classifier_model")
        self.labels = list((context.model_config or {}).get("labels") or [])
        self._predictor = Predictor.from_dirs([Path(context.artifacts[k]) for k in keys])
        if self.labels and self._predictor.labels != self.labels:
            raise ValueError(f"the loaded classifiers know {self._predictor.labels}, the logged model {self.labels}")
        self.labels = self._predictor.labels

    def predict(self, context: mlflow.pyfunc.PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``label`` and ``prob_<class>`` columns for each input text (see the module docstring).

        Through ``mlflow.pyfunc`` MLflow checks the input against the logged signature (one string column,
        nulls allowed) and hands over a DataFrame; a list of strings, a Series or a DataFrame with a
        ``text`` column all pass it.
        """
        # The hint is pd.DataFrame because MLflow 3 reads it: a DataFrame hint keeps the explicit
        # signature, no hint or a Union hint only adds warnings at import.
        texts = texts_from_input(model_input)
        if self._predictor is None:
            raise RuntimeError("the model is not loaded; load it with mlflow.pyfunc.load_model")
        if not texts:
            return probabilities_frame(self.labels, np.zeros((0, len(self.labels)), dtype=np.float32))
        return probabilities_frame(self._predictor.labels, self._predictor.predict_proba(texts))


def member_keys(artifacts: dict[str, str]) -> list[str]:
    """The ensemble members among a logged model's artifacts, in their order (``classifier_0``, ``_1``, ...)."""
    keys = [k for k in artifacts if k.startswith(ARTIFACT_PREFIX) and k[len(ARTIFACT_PREFIX):].isdigit()]
    return sorted(keys, key=lambda k: int(k[len(ARTIFACT_PREFIX):]))


# -- logging -----------------------------------------------------------------------------------------


def check_classifier_dir(directory: str | Path) -> list[str]:
    """Check a folder written by ``artifacts.save_classifier``; returns its class names.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when ``model.pt`` holds more
    than weights (a training checkpoint has optimizer state and must not be served).
    """
    directory = Path(directory)
    missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: no {', '.join(missing)}; pass the folder artifacts.save_classifier "
                                "wrote (the classifier/ folder of `launch.py run`), not its checkpoint/")
    payload = files.load_tensors(directory / files.MODEL_FILE)
    extra = sorted(set(payload) - WEIGHT_FILE_KEYS)
    if extra:
        raise ValueError(f"{directory / files.MODEL_FILE} holds {extra} besides the weights; a served "
                         "model must be saved with artifacts.save_classifier (weights only)")
    return list(files.read_json(directory / files.LABELS_FILE))


def pinned_requirements(distributions: Sequence[str] = RUNTIME_DISTRIBUTIONS) -> list[str]:
    """``name==version`` for each installed distribution. A local version label (``2.13.0+cpu``) is
    dropped: the public index does not have it, and the CPU and CUDA builds share the public version."""
    pins = []
    for name in distributions:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise RuntimeError(f"{name} is not installed; the served model needs it (pip install {name})") from None
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _stage_members(model_dirs: Sequence[Path], root: Path) -> dict[str, str]:
    """Copy the weight files of each member to ``root/classifier_<i>``; returns the artifacts map."""
    artifacts = {}
    for i, directory in enumerate(model_dirs):
        target = root / f"{ARTIFACT_PREFIX}{i}"
        target.mkdir(parents=True)
        for name in MODEL_FILES:
            shutil.copy2(directory / name, target / name)
        if (directory / files.SUBWORD_FILE).is_file():  # a subword member tokenizes with its own model
            shutil.copy2(directory / files.SUBWORD_FILE, target / files.SUBWORD_FILE)
        artifacts[target.name] = str(target)
    return artifacts


#: The models-from-code file: it names the model class (``mlflow.models.set_model``).
MODEL_CODE = Path(__file__).resolve().parent / "served_model.py"


def _stage_code(root: Path) -> list[str]:
    """The packages the model imports when loaded: all of ``ulmfit_core``, and of ``search`` only its
    ``__init__`` and this module (the rest imports Ray, which serving does not need)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    core = Path(files.__file__).resolve().parent
    shutil.copytree(core, root / core.name, ignore=ignore)
    here = Path(__file__).resolve()
    package = root / here.parent.name
    package.mkdir()
    for source in (here.parent / "__init__.py", here):
        shutil.copy2(source, package / source.name)
    return [str(root / core.name), str(package)]


def signature_for(labels: Sequence[str]) -> mlflow.models.ModelSignature:
    """One string column in, unnamed and optional: a list of strings, a Series or a ``text`` column all
    match it, and a null row reaches the model (as the empty text) instead of failing the batch's check."""
    from mlflow.types import ColSpec, Schema

    outputs = Schema([ColSpec("string", LABEL_COLUMN)] + [ColSpec("float", f"{PROB_PREFIX}{c}") for c in labels])
    return mlflow.models.ModelSignature(inputs=Schema([ColSpec("string")]), outputs=outputs)


def log_classifier_model(run_id: str, model_dirs: Sequence[str | Path], *, tracking_uri: str | None = None,
                         name: str = "model", registered_model_name: str | None = None,
                         example_texts: Sequence[str] = EXAMPLE_TEXTS) -> mlflow.models.model.ModelInfo:
    """Log classifier folder(s) as one pyfunc model into the existing run ``run_id``.

    Args:
        run_id: an existing run; its status (FINISHED, RUNNING, ...) is the same afterwards.
        model_dirs: folders written by ``artifacts.save_classifier``; several = an ensemble whose
            probabilities are the members' mean (e.g. forward and backward).
        tracking_uri: the store holding the run (default: MLflow's current tracking URI).
        name: the model's name within the run.
        registered_model_name: also register it (a new version of that registered model).
        example_texts: the input example; the signature is inferred from it and its predictions.

    Returns the ``mlflow.models.model.ModelInfo``: ``model_uri`` for ``mlflow.pyfunc.load_model``,
    ``registered_model_version`` when registered.
    """
    dirs = [Path(d).expanduser().resolve() for d in model_dirs]
    if not dirs:
        raise ValueError("model_dirs is empty; give the classifier folder(s) to log")
    labels = [check_classifier_dir(d) for d in dirs]
    if any(lab != labels[0] for lab in labels[1:]):
        raise ValueError(f"the classifiers' classes differ ({labels}); an ensemble needs one set of classes")
    with tempfile.TemporaryDirectory(prefix="ulmfit-pyfunc-") as tmp:
        artifacts = _stage_members(dirs, Path(tmp) / "artifacts")
        code_paths = _stage_code(Path(tmp) / "code")
        example = pd.DataFrame({TEXT_COLUMN: list(example_texts)})
        with _tracking(tracking_uri), _in_run(run_id):
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                code_paths=code_paths,
                model_config={"labels": labels[0]},
                signature=signature_for(labels[0]),
                input_example=example,
                pip_requirements=pinned_requirements(),
                registered_model_name=registered_model_name,
                metadata={"ulmfit_labels": labels[0], "ulmfit_members": len(dirs)},
            )


class _tracking:
    """Point MLflow's fluent API at ``uri`` for a block, then restore exactly what was there: the
    global URI (or none) and the ``MLFLOW_TRACKING_URI`` variable, which ``set_tracking_uri`` also writes."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self.was_set, self.previous, self.env = False, None, None

    def __enter__(self) -> None:
        if self.uri:
            self.was_set, self.previous = mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri()
            self.env = os.environ.get(TRACKING_URI_ENV)
            mlflow.set_tracking_uri(self.uri)

    def __exit__(self, *exc) -> None:
        if not self.uri:
            return
        # None unsets the global URI (what MLflow's own _use_tracking_uri does). A URI that came from
        # the environment variable goes back there only, so a later change of the variable still counts.
        from_env = self.previous == self.env
        mlflow.set_tracking_uri(self.previous if self.was_set and not from_env else None)
        if self.env is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = self.env


class _in_run:
    """Make ``run_id`` the active run for a block (``log_model`` logs into the active run) and leave
    its status as it was: resuming a finished run would otherwise end it FINISHED again, and a
    running one (still being logged to by its owner) would be ended."""

    def __init__(self, run_id: str):
        self.run_id, self.status, self.started = run_id, None, False

    def __enter__(self) -> None:
        active = mlflow.active_run()
        if active is not None:
            if active.info.run_id != self.run_id:
                raise RuntimeError(f"run {active.info.run_id} is active in this process; end it (mlflow.end_run()) "
                                   f"or pass its id to log into run {self.run_id}")
            return
        self.status = mlflow.MlflowClient().get_run(self.run_id).info.status
        mlflow.start_run(run_id=self.run_id)
        self.started = True

    def __exit__(self, exc_type, *exc) -> None:
        if not self.started:
            return
        mlflow.end_run()
        client = mlflow.MlflowClient()
        if self.status == "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
        elif self.status != "FINISHED":
            client.set_terminated(self.run_id, self.status)
