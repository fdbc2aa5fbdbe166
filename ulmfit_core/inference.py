"""Using trained classifiers: load, predict, evaluate, and average a forward + backward ensemble.

A classifier folder (:func:`ulmfit_core.artifacts.save_classifier`) is self-contained: weights,
vocabulary, labels and the config that made it, so nothing here needs the training data.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import MODEL_FILE, ArtifactError, load_classifier_files, read_json, write_json
from .awd_lstm import TextClassifier, build_classifier
from .config import RecipeConfig, recipe_from_dict
from .corpus import Split, label_codes
from .data import classifier_batches, read_labeled
from .metrics import confusion_matrix
from .tasks import classification_metrics, predict_logits
from .text import SubwordTokenizer, Tokenizer, Vocab, tokenize_cached
from .train import resolve_device

ENSEMBLE_FILE = "ensemble.json"


def write_ensemble(directory: str | Path, members: Sequence[str | Path]) -> Path:
    """Mark ``directory`` as an ensemble of the classifier folders ``members`` (stored relative to it
    when inside it, so the folder can move): ``predict``/``evaluate`` on ``directory`` average them."""
    directory = Path(directory)
    names = []
    for m in members:
        m = Path(m)
        try:
            names.append(str(m.resolve().relative_to(directory.resolve())))
        except ValueError:
            names.append(str(m.resolve()))
    return write_json(directory / ENSEMBLE_FILE, {"members": names})


#: The classifier folder inside a folder that ``run``/``retrain`` wrote for one direction.
RUN_CLASSIFIER_SUBDIR = "classifier"


def classifier_dirs(directory: str | Path) -> list[Path]:
    """The classifier folders ``directory`` stands for: its ensemble's members; the one classifier of a
    ``run``/``retrain`` folder (``directory/classifier``); or itself."""
    directory = Path(directory)
    path = directory / ENSEMBLE_FILE
    if not path.is_file():
        inner = directory / RUN_CLASSIFIER_SUBDIR
        if not (directory / MODEL_FILE).is_file() and (inner / MODEL_FILE).is_file():
            return [inner]
        return [directory]
    members = read_json(path).get("members") if isinstance(read_json(path), dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ArtifactError(f"{path}: expected {{\"members\": [classifier folders]}}")
    return [directory / m for m in members]


def expand(model_dirs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Every classifier folder behind ``model_dirs`` (ensemble folders expanded)."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    return [m for d in dirs for m in classifier_dirs(d)]


@dataclass
class LoadedClassifier:
    model: TextClassifier
    vocab: Vocab
    labels: list[str]
    cfg: RecipeConfig
    device: torch.device
    tokenizer: Tokenizer  # the one it was trained with: word tokens, or its subword model


def load_classifier(directory: str | Path, device: str = "auto") -> LoadedClassifier:
    """The classifier saved in ``directory``, in eval mode on ``device``."""
    saved = load_classifier_files(directory)
    cfg = recipe_from_dict(saved.config)
    vocab = Vocab(saved.itos)
    cc = cfg.classifier
    model = build_classifier(len(vocab), cfg.model, cc.scaled_dropouts, n_classes=len(saved.labels),
                             lin_ftrs=cc.lin_ftrs, head_p=cc.head_p, bptt=cc.bptt, max_seq=cc.max_seq,
                             pad_idx=vocab.pad_idx)
    try:
        model.load_state_dict(saved.state_dict)
    except RuntimeError as e:  # weights of another shape: the folder mixes files of different runs
        first = str(e).split("\n\t")[1].strip() if "\n\t" in str(e) else str(e)
        raise ArtifactError(f"{Path(directory) / MODEL_FILE}: its weights do not fit the model its vocabulary and "
                            f"labels describe ({first}); copy the classifier folder whole from one run") from None
    dev = resolve_device(device)
    model.to(dev).eval()
    tokenizer = Tokenizer() if saved.subwords is None else SubwordTokenizer(saved.subwords)
    return LoadedClassifier(model=model, vocab=vocab, labels=saved.labels, cfg=cfg, device=dev, tokenizer=tokenizer)


def _logits(clf: LoadedClassifier, ids: list[np.ndarray], labels: np.ndarray | None = None) -> np.ndarray:
    """(N, C) float32 logits of numericalized documents, in their order."""
    batches = classifier_batches(ids, labels, clf.cfg.classifier, clf.vocab.pad_idx, train=False)
    with torch.no_grad():
        return predict_logits(clf.model, batches, clf.device)


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


class Predictor:
    """Classifiers loaded once (one, or a forward + backward ensemble) and the tokenizer, for many calls.

    :meth:`predict_proba` averages the members' probabilities; every member must know the same classes.
    """

    def __init__(self, classifiers: Sequence[LoadedClassifier]) -> None:
        if not classifiers:
            raise ValueError("a predictor needs at least one classifier")
        labels = classifiers[0].labels
        for clf in classifiers[1:]:
            if clf.labels != labels:
                raise ValueError(f"classifiers know different classes ({clf.labels} vs {labels}); "
                                 "an ensemble needs models trained on the same classes")
        self.classifiers, self.labels = list(classifiers), list(labels)

    @classmethod
    def from_dirs(cls, model_dirs: str | Path | Sequence[str | Path], device: str = "auto") -> Predictor:
        """Load classifier folders (an ensemble folder stands for its members)."""
        return cls([load_classifier(d, device) for d in expand(model_dirs)])

    def predict_proba(self, texts: Sequence[str], cache_dir: str | Path | None = None) -> np.ndarray:
        """(N, C) probabilities of ``texts``, the mean over the members. ``ValueError`` for no texts.

        An empty or whitespace-only text is the empty document (``xxbos`` alone) and gets the model's
        prediction for it, as fastai's ``predict`` gives: one blank row never fails a batch."""
        if not texts:
            raise ValueError("no texts to predict")
        texts = [str(t) for t in texts]
        tokenized: dict[str, list[list[str]]] = {}  # each member's own tokens (words, or its subword units)
        probs = []
        for clf in self.classifiers:
            tok = clf.tokenizer
            key = tok.settings_key()
            if key not in tokenized:
                tokenized[key] = tokenize_cached(texts, tok, cache_dir) if cache_dir else tok.tokenize(texts)
            probs.append(_softmax(_logits(clf, [clf.vocab.numericalize(t) for t in tokenized[key]])))
        return sum(probs[1:], probs[0]) / len(probs)


def predict_proba(model_dirs: str | Path | Sequence[str | Path], texts: Sequence[str], device: str = "auto",
                  cache_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Class names and (N, C) probabilities, averaged over ``model_dirs`` (forward + backward ensemble)."""
    predictor = Predictor.from_dirs(model_dirs, device)
    return predictor.labels, predictor.predict_proba(texts, cache_dir)


def evaluate(model_dirs: str | Path | Sequence[str | Path], path: str | Path, device: str = "auto",
             cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Accuracy, loss, macro-F1 and confusion matrix of the model(s) on a labeled file."""
    dirs = expand(model_dirs)
    first = load_classifier(dirs[0], device="cpu")
    d = first.cfg.data
    data = read_labeled(path, d.text_cols, d.label_col)
    y = label_codes(data.labels, first.labels, str(path))
    labels, probs = predict_proba(dirs, data.texts, device, cache_dir)
    logp = np.log(np.clip(probs, 1e-12, 1.0)).astype(np.float32)
    m: dict[str, Any] = classification_metrics(logp, y, len(labels), prefix="")
    m["confusion_matrix"] = confusion_matrix(y, probs.argmax(1), len(labels)).tolist()
    m["labels"] = labels
    m["n"] = len(y)
    return m


def report_split(model_dirs: str | Path | Sequence[str | Path], split: Split | Sequence[Split],
                 device: str = "auto") -> dict[str, Any]:
    """Accuracy, loss, macro-F1, ``labels`` and ``confusion_matrix`` of saved classifier(s) on an
    already-numericalized split (e.g. ``corpus.test``); several folders (or an ensemble folder) are
    averaged as :class:`Predictor` does. One split serves members that share its vocabulary (the directions
    of one tokenizer); members of different tokenizers each get the same documents in their own units
    (a list of splits, one per member)."""
    return split_report_and_proba(model_dirs, split, device)[0]


def split_report_and_proba(model_dirs: str | Path | Sequence[str | Path], split: Split | Sequence[Split],
                           device: str = "auto") -> tuple[dict[str, Any], np.ndarray]:
    """:func:`report_split` and the (N, C) class probabilities it graded, from one pass over the split: what a
    benchmark keeps to average members trained in separate runs afterwards."""
    classifiers = [load_classifier(d, device) for d in expand(model_dirs)]
    splits = list(split) if isinstance(split, (list, tuple)) else [split] * len(classifiers)
    if len(splits) != len(classifiers) or any(not np.array_equal(s.labels, splits[0].labels) for s in splits):
        raise ValueError("report_split: one split per member, all of the same documents")
    split, labels = splits[0], classifiers[0].labels
    if len(classifiers) == 1:
        scores = _logits(classifiers[0], split.ids, split.labels)
    else:
        probs = sum(_softmax(_logits(c, s.ids, s.labels)) for c, s in zip(classifiers, splits)) / len(classifiers)
        scores = np.log(np.clip(probs, 1e-12, 1.0)).astype(np.float32)
    report: dict[str, Any] = classification_metrics(scores, split.labels, len(labels), prefix="")
    report["labels"] = labels
    report["confusion_matrix"] = confusion_matrix(split.labels, scores.argmax(1), len(labels)).tolist()
    return report, _softmax(scores)


def evaluate_split(model_dirs: str | Path | Sequence[str | Path], split: Split, device: str = "auto") -> dict[str, float]:
    """The scores of :func:`report_split` alone (accuracy, loss, macro-F1)."""
    return {k: v for k, v in report_split(model_dirs, split, device).items() if isinstance(v, float)}
