"""The ULMFiT recipe: data → language-model fine-tuning → classifier, usable without Ray.

Each stage takes a ``report`` callback so the caller (the CLI, or a Ray Tune trial) decides what
happens after every epoch. Nothing here imports Ray, Optuna or MLflow.

No stage sees test text: the language model reads the classifier's training texts plus any
unlabeled corpus, never the validation or test documents.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import filelock
import numpy as np
import torch
import yaml

from . import datasets, pretrained, zoo
from .awd_lstm import build_classifier, build_language_model, classifier_layer_groups, lm_layer_groups
from .config import RecipeConfig, recipe_from_dict, to_dict
from .data import ClassifierBatches, DataError, check_classes, read_labeled, read_unlabeled, split_validation
from .metrics import confusion_matrix
from .schedule import unfreeze_phases
from .tasks import ClassifierTask, LanguageModelTask, classification_metrics, predict_logits
from .text import Tokenizer, Vocab, tokenize_cached
from .train import Trainer, resolve_device, seed_everything

#: Metric names reported after every classifier epoch (defined once; the search layer uses them).
METRICS = ("valid_accuracy", "valid_loss", "valid_macro_f1", "train_loss")
PRIMARY_METRIC, PRIMARY_MODE = "valid_accuracy", "max"

ReportFn = Callable[[dict[str, float], "Path | None"], None]

MODEL_FILE, VOCAB_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE = (
    "model.pt", "vocab.json", "labels.json", "config.yaml", "metrics.json")
CHECKPOINT_SUBDIR = "checkpoint"
_LM_DONE = "DONE"


# --- corpus ----------------------------------------------------------------------------------


@dataclass
class Split:
    ids: list[np.ndarray]  # one int64 array of token ids per document
    labels: np.ndarray | None  # int64 class indices, or None for unlabeled text


@dataclass
class Corpus:
    """Everything the stages read, numericalized with one vocabulary."""

    vocab: Vocab
    label_names: list[str]
    train: Split
    valid: Split
    test: Split | None
    lm_train: list[np.ndarray]
    lm_valid: list[np.ndarray]
    fingerprint: str  # content hash of the texts and labels that went in
    stats: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("ULMFIT_CACHE", ".cache/ulmfit")).resolve()


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def _subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    """Reproducible random subset of ``range(n)`` of size ``k`` (all when ``k`` is None)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _label_codes(labels: Sequence[str], names: list[str], source: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({lab for lab in labels if lab not in index})
    if unseen:
        raise DataError(
            f"{source}: labels {unseen[:5]} never occur in the training data (known: {names[:10]}); "
            "a classifier cannot predict classes it never saw: fix the labels or add training examples")
    return np.array([index[lab] for lab in labels], dtype=np.int64)


def prepare_corpus(cfg: RecipeConfig, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   progress: bool = False) -> Corpus:
    """Read, split, tokenize (disk-cached, locked) and numericalize the data ``cfg.data`` names."""
    d = cfg.data
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if not d.dataset and not d.train:
        raise DataError("data: the classifier needs labeled text; set data.dataset or data.train "
                        "(only `launch.py pretrain` works from data.unlabeled alone)")
    paths = datasets.resolve(d.dataset, d, data_dir)
    tok = Tokenizer()

    train_all = read_labeled(paths.train, d.text_cols, d.label_col)
    keep = _subsample(len(train_all.texts), d.max_train_rows, cfg.seed)
    train_texts = [train_all.texts[i] for i in keep]
    train_labels = [train_all.labels[i] for i in keep]
    check_classes(train_labels)
    if paths.valid:
        valid = read_labeled(paths.valid, d.text_cols, d.label_col)
        valid_texts, valid_labels = valid.texts, valid.labels
    else:
        tr_idx, va_idx = split_validation(train_labels, d.valid_pct, cfg.seed)
        valid_texts = [train_texts[i] for i in va_idx]
        valid_labels = [train_labels[i] for i in va_idx]
        train_texts = [train_texts[i] for i in tr_idx]
        train_labels = [train_labels[i] for i in tr_idx]
    names = sorted(set(train_labels))
    check_classes(train_labels)
    y_train = _label_codes(train_labels, names, str(paths.train))
    y_valid = _label_codes(valid_labels, names, str(paths.valid or paths.train))
    test = read_labeled(paths.test, d.text_cols, d.label_col) if paths.test else None
    y_test = _label_codes(test.labels, names, str(paths.test)) if test else None

    unlabeled: list[str] = []
    if paths.unlabeled and d.use_unlabeled:
        unlabeled = read_unlabeled(paths.unlabeled)
        unlabeled = [unlabeled[i] for i in _subsample(len(unlabeled), d.max_unlabeled_rows, cfg.seed)]

    def toks(texts: list[str]) -> list[list[str]]:
        return tokenize_cached(texts, tok, cache, progress=progress) if texts else []

    t_train, t_valid, t_unlab = toks(train_texts), toks(valid_texts), toks(unlabeled)
    t_test = toks(test.texts) if test else None

    # The language model reads training and unlabeled text only (never validation or test).
    lm_docs = t_train + t_unlab
    lm_tr_idx, lm_va_idx = split_validation([0] * len(lm_docs), cfg.lm.valid_pct, cfg.seed)
    vocab = Vocab.build([lm_docs[i] for i in lm_tr_idx], max_vocab=cfg.text.max_vocab, min_freq=cfg.text.min_freq)
    num = vocab.numericalize
    lm_ids = [num(t) for t in lm_docs]
    fingerprint = _hash(train_texts, train_labels, valid_texts, valid_labels, unlabeled,
                        test.texts if test else None, tok.settings_key(), to_dict(cfg.text))
    return Corpus(
        vocab=vocab,
        label_names=names,
        train=Split([num(t) for t in t_train], y_train),
        valid=Split([num(t) for t in t_valid], y_valid),
        test=Split([num(t) for t in t_test], y_test) if t_test is not None else None,
        lm_train=[lm_ids[i] for i in lm_tr_idx],
        lm_valid=[lm_ids[i] for i in lm_va_idx],
        fingerprint=fingerprint,
        stats={"n_train": len(t_train), "n_valid": len(t_valid), "n_test": len(t_test or []),
               "n_unlabeled": len(t_unlab), "vocab_size": len(vocab),
               "lm_tokens": int(sum(len(x) for x in lm_ids))},
    )


def prepare_lm_corpus(cfg: RecipeConfig, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                      progress: bool = False) -> Corpus:
    """Text for language-model pretraining alone: ``data.unlabeled`` plus any labeled texts' text.

    Labels are ignored; the returned corpus has empty classifier splits.
    """
    d = cfg.data
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    texts: list[str] = []
    if d.dataset or d.train:
        paths = datasets.resolve(d.dataset, d, data_dir)
        texts += read_labeled(paths.train, d.text_cols, d.label_col).texts
        unlabeled_path = paths.unlabeled
    else:
        unlabeled_path = Path(d.unlabeled) if d.unlabeled else None
    if unlabeled_path is not None:
        unlabeled = read_unlabeled(unlabeled_path)
        texts += [unlabeled[i] for i in _subsample(len(unlabeled), d.max_unlabeled_rows, cfg.seed)]
    if len(texts) < 2:
        raise DataError("data: language-model pretraining needs text; set data.unlabeled to a corpus "
                        "(a .txt file with one document per line, a folder of .txt files, or a CSV column)")
    tokens = tokenize_cached(texts, Tokenizer(), cache, progress=progress)
    tr_idx, va_idx = split_validation([0] * len(tokens), cfg.lm.valid_pct, cfg.seed)
    vocab = Vocab.build([tokens[i] for i in tr_idx], max_vocab=cfg.text.max_vocab, min_freq=cfg.text.min_freq)
    ids = [vocab.numericalize(t) for t in tokens]
    empty = Split([], np.zeros(0, dtype=np.int64))
    return Corpus(vocab=vocab, label_names=[], train=empty, valid=empty, test=None,
                  lm_train=[ids[i] for i in tr_idx], lm_valid=[ids[i] for i in va_idx],
                  fingerprint=_hash(texts, Tokenizer().settings_key(), to_dict(cfg.text)),
                  stats={"n_documents": len(texts), "vocab_size": len(vocab),
                         "lm_tokens": int(sum(len(x) for x in ids))})


# --- language model --------------------------------------------------------------------------


@dataclass
class LMResult:
    lm_dir: Path
    trained: bool  # False when an existing fine-tuned model was reused
    seconds: float  # wall time of the training that produced it (0 when it was only loaded)
    metrics: dict[str, float]


def lm_key(cfg: RecipeConfig, fingerprint: str = "") -> str:
    """Hash of everything the language-model stage depends on (not the classifier's settings)."""
    return _hash("lm-v1", to_dict(cfg.data), to_dict(cfg.text), to_dict(cfg.model), to_dict(cfg.lm),
                 cfg.seed, fingerprint)[:16]


def _initial_lm_state(cfg: RecipeConfig, vocab: Vocab) -> dict[str, torch.Tensor] | None:
    src = cfg.lm.pretrained
    if not src:
        return None
    # --- model zoo: a zoo name (e.g. wt103-fwd) stands for its fetched files, a path for itself;
    # an unfetched name raises here, before any training, with the command that fetches it.
    local = zoo.resolve(src)
    if local.layout == "fastai":
        state, old_itos, _sizes = pretrained.load_fastai_lm(local.path, local.vocab or cfg.lm.pretrained_vocab)
    else:
        state, old_itos, _cfg = pretrained.load_language_model(local.path)
    # --- end model zoo
    return pretrained.map_to_vocab(state, old_itos, vocab.itos)


def finetune_lm(cfg: RecipeConfig, corpus: Corpus, out_dir: str | Path, report: ReportFn | None = None,
                progress: bool = False, resume: bool = True) -> LMResult:
    """Train (or fine-tune from ``cfg.lm.pretrained``) the language model into ``out_dir``.

    Writes ``lm.pt`` + ``encoder.pt`` + ``vocab.json`` (see ``pretrained.save_language_model``),
    ``metrics.json`` and a resumable ``checkpoint/``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    lmc = cfg.lm
    model = build_language_model(len(corpus.vocab), cfg.model, lmc.scaled_dropouts, pad_idx=corpus.vocab.pad_idx)
    init = _initial_lm_state(cfg, corpus.vocab)
    if init is not None:
        _load_matching(model, init, "lm.pretrained")
    model.to(device)
    groups = lm_layer_groups(model)
    # A pretrained model first trains only its top group (embeddings/decoder, fastai's order) so
    # rows for new words catch up before the LSTMs move (fastai's fine_tune(freeze_epochs=1)).
    freeze = [lmc.freeze_epochs] if init is not None and lmc.freeze_epochs else []
    phases = unfreeze_phases(len(groups), freeze, lmc.epochs + sum(freeze))
    generator = torch.Generator().manual_seed(cfg.seed)
    task = LanguageModelTask(corpus.lm_train, corpus.lm_valid, lmc, device, generator)
    trainer = Trainer(model, groups, lmc, phases, task, device=device, checkpoint_dir=out / CHECKPOINT_SUBDIR,
                      checkpoint_meta={"config": to_dict(cfg), "stage": "lm"}, progress=progress, desc="lm")
    if resume:
        trainer.resume_from(out / CHECKPOINT_SUBDIR)

    def on_epoch(m: dict[str, float]) -> None:
        if report:
            report(m, None)

    fit = trainer.fit(on_epoch)
    pretrained.save_language_model(out, model, corpus.vocab.itos, to_dict(cfg))
    seconds = time.perf_counter() - t0
    final = dict(fit.history[-1]) if fit.history else {}
    _write_json(out / METRICS_FILE, {"final": final, "history": fit.history, "seconds": seconds,
                                     "corpus": corpus.stats, "lm_key": lm_key(cfg, corpus.fingerprint)})
    return LMResult(lm_dir=out, trained=True, seconds=seconds, metrics=final)


def ensure_lm(cfg: RecipeConfig, corpus: Corpus, lm_root: str | Path, report: ReportFn | None = None,
              progress: bool = False) -> LMResult:
    """The fine-tuned LM for ``cfg``, trained once under ``lm_root/<lm_key>/`` and shared.

    Concurrent callers with the same key block on a file lock; the first trains, the rest reuse
    its result (``trained=False``). Works across nodes when ``lm_root`` is shared storage.
    """
    key = lm_key(cfg, corpus.fingerprint)
    lm_dir = Path(lm_root) / key
    lm_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lm_dir) + ".lock"):
        done = lm_dir / _LM_DONE
        if done.exists():
            info = json.loads((lm_dir / METRICS_FILE).read_text())
            return LMResult(lm_dir=lm_dir, trained=False, seconds=0.0, metrics=info["final"])
        result = finetune_lm(cfg, corpus, lm_dir, report=report, progress=progress, resume=True)
        done.write_text(json.dumps({"seconds": result.seconds}))
        return result


def lm_training_seconds(lm_dir: str | Path) -> float:
    """Wall time the LM in ``lm_dir`` took to train (what a trial saves by reusing it)."""
    return float(json.loads((Path(lm_dir) / METRICS_FILE).read_text())["seconds"])


def _load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{what}: the pretrained weights do not fit the configured model ({'; '.join(bad[:3])}); "
                         "set model.preset / model.emb_sz / model.n_hid / model.n_layers to the pretrained model's sizes")
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"{what}: the pretrained weights lack {missing[:5]}")


# --- classifier ------------------------------------------------------------------------------


@dataclass
class ClassifierResult:
    out_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]


def train_classifier(cfg: RecipeConfig, corpus: Corpus, lm_dir: str | Path | None, out_dir: str | Path,
                     report: ReportFn | None = None, resume_from: str | Path | None = None,
                     progress: bool = False, resume: bool = True) -> ClassifierResult:
    """Gradual unfreezing + discriminative rates + STLR on top of the LM encoder in ``lm_dir``.

    ``report(metrics, checkpoint_dir)`` runs after every epoch; ``checkpoint_dir`` is a
    self-contained directory (checkpoint, vocabulary, labels) that ``resume_from`` accepts.
    """
    cc = cfg.classifier
    out = Path(out_dir)
    ckpt_dir = out / CHECKPOINT_SUBDIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    n_classes = len(corpus.label_names)
    model = build_classifier(len(corpus.vocab), cfg.model, cc.scaled_dropouts, n_classes=n_classes,
                             lin_ftrs=cc.lin_ftrs, head_p=cc.head_p, bptt=cc.bptt, max_seq=cc.max_seq,
                             pad_idx=corpus.vocab.pad_idx)
    if lm_dir is not None and not cc.from_scratch:
        pretrained.load_encoder_into(model, lm_dir, corpus.vocab.itos)
    model.to(device)
    groups = classifier_layer_groups(model)
    phases = unfreeze_phases(len(groups), cc.unfreeze if not cc.from_scratch else [], cc.epochs)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    train_ids, valid_ids = corpus.train.ids, corpus.valid.ids
    if cc.backwards:
        train_ids, valid_ids = _reverse(train_ids), _reverse(valid_ids)
    task = ClassifierTask(train_ids, corpus.train.labels, valid_ids, corpus.valid.labels, n_classes, cc,
                          corpus.vocab.pad_idx, device, generator)
    trainer = Trainer(model, groups, cc, phases, task, device=device, checkpoint_dir=ckpt_dir,
                      checkpoint_meta={"config": to_dict(cfg), "stage": "classifier"}, progress=progress, desc="classifier")
    _write_model_metadata(ckpt_dir, cfg, corpus)
    if resume_from is not None:
        if not trainer.resume_from(Path(resume_from)):
            raise FileNotFoundError(f"resume_from={resume_from}: no checkpoint.pt there")
    elif resume:
        trainer.resume_from(ckpt_dir)

    def on_epoch(m: dict[str, float]) -> None:
        if report:
            report(m, ckpt_dir)

    fit = trainer.fit(on_epoch)
    save_classifier(out, model, cfg, corpus)
    final = dict(fit.history[-1])
    _write_json(out / METRICS_FILE, {"final": final, "history": fit.history})
    return ClassifierResult(out_dir=out, metrics=final, history=fit.history)


def _reverse(docs: list[np.ndarray]) -> list[np.ndarray]:
    return [d[::-1].copy() for d in docs]


def _write_model_metadata(directory: Path, cfg: RecipeConfig, corpus: Corpus) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    corpus.vocab.save(directory / VOCAB_FILE)
    _write_json(directory / LABELS_FILE, corpus.label_names)
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def save_classifier(directory: str | Path, model: torch.nn.Module, cfg: RecipeConfig, corpus: Corpus) -> None:
    """A self-contained classifier: weights, vocabulary, label names, tokenizer settings, config."""
    directory = Path(directory)
    _write_model_metadata(directory, cfg, corpus)
    torch.save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "config": to_dict(cfg),
                "labels": corpus.label_names, "tokenizer": Tokenizer().settings_key(), "format": 1},
               directory / MODEL_FILE)


@dataclass
class LoadedClassifier:
    model: torch.nn.Module
    vocab: Vocab
    labels: list[str]
    cfg: RecipeConfig
    device: torch.device


def load_classifier(directory: str | Path, device: str = "auto") -> LoadedClassifier:
    """Load what :func:`save_classifier` wrote; needs no training data."""
    directory = Path(directory)
    path = directory / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory}: no {MODEL_FILE}; pass the --out directory of train-classifier or run")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    cfg = recipe_from_dict(payload["config"])
    vocab = Vocab.load(directory / VOCAB_FILE)
    labels = list(payload["labels"])
    cc = cfg.classifier
    model = build_classifier(len(vocab), cfg.model, cc.scaled_dropouts, n_classes=len(labels), lin_ftrs=cc.lin_ftrs,
                             head_p=cc.head_p, bptt=cc.bptt, max_seq=cc.max_seq, pad_idx=vocab.pad_idx)
    model.load_state_dict(payload["state_dict"])
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedClassifier(model=model, vocab=vocab, labels=labels, cfg=cfg, device=dev)


# --- evaluation and prediction ---------------------------------------------------------------


def _probabilities(clf: LoadedClassifier, texts: Sequence[str], cache_dir: Path | None) -> np.ndarray:
    tok = Tokenizer()
    tokens = tokenize_cached(list(texts), tok, cache_dir) if cache_dir else tok.tokenize(list(texts))
    ids = [clf.vocab.numericalize(t) for t in tokens]
    if clf.cfg.classifier.backwards:
        ids = _reverse(ids)
    batches = ClassifierBatches(ids, None, clf.cfg.classifier.bs * 2, pad_idx=clf.vocab.pad_idx,
                                bptt=clf.cfg.classifier.bptt, shuffle=False, generator=None,
                                max_len=clf.cfg.classifier.max_len)
    with torch.no_grad():
        logits = predict_logits(clf.model, batches, clf.device)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def predict_proba(model_dirs: Sequence[str | Path], texts: Sequence[str], device: str = "auto",
                  cache_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Class names and (N, C) probabilities, averaged over ``model_dirs`` (forward + backward ensemble)."""
    if not texts:
        raise ValueError("no texts to predict")
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise ValueError(f"texts {empty[:5]} are empty; give each document some text")
    probs, labels = None, None
    for d in model_dirs:
        clf = load_classifier(d, device)
        if labels is not None and clf.labels != labels:
            raise ValueError(f"{d}: its labels {clf.labels} differ from the first model's {labels}; "
                             "an ensemble needs models trained on the same classes")
        labels = clf.labels
        p = _probabilities(clf, texts, Path(cache_dir) if cache_dir else None)
        probs = p if probs is None else probs + p
    assert probs is not None and labels is not None
    return labels, probs / len(model_dirs)


def evaluate(model_dirs: str | Path | Sequence[str | Path], path: str | Path, device: str = "auto",
             cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Accuracy, loss, macro-F1 and confusion matrix of the model(s) on a labeled file."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    first = load_classifier(dirs[0], device="cpu")
    d = first.cfg.data
    data = read_labeled(path, d.text_cols, d.label_col)
    y = _label_codes(data.labels, first.labels, str(path))
    labels, probs = predict_proba(dirs, data.texts, device, cache_dir)
    logp = np.log(np.clip(probs, 1e-12, 1.0)).astype(np.float32)
    m = classification_metrics(logp, y, len(labels), prefix="")
    m["confusion_matrix"] = confusion_matrix(y, probs.argmax(1), len(labels)).tolist()
    m["labels"] = labels
    m["n"] = len(y)
    return m


def evaluate_split(result_dir: str | Path, corpus: Corpus, split: Split, device: str = "auto") -> dict[str, float]:
    """Metrics of a saved classifier on an already-numericalized split (e.g. ``corpus.test``)."""
    clf = load_classifier(result_dir, device)
    ids = _reverse(split.ids) if clf.cfg.classifier.backwards else split.ids
    batches = ClassifierBatches(ids, split.labels, clf.cfg.classifier.bs * 2, pad_idx=clf.vocab.pad_idx,
                                bptt=clf.cfg.classifier.bptt, shuffle=False, generator=None,
                                max_len=clf.cfg.classifier.max_len)
    with torch.no_grad():
        logits = predict_logits(clf.model, batches, clf.device)
    return classification_metrics(logits, split.labels, len(clf.labels), prefix="")


# --- the whole recipe ------------------------------------------------------------------------


def run_recipe(cfg: RecipeConfig, out_dir: str | Path, report: ReportFn | None = None,
               data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               progress: bool = False, lm_report: ReportFn | None = None) -> dict[str, Any]:
    """Fine-tune the LM, train the classifier, evaluate on the test set; writes ``metrics.json``.

    ``report`` runs after each classifier epoch, ``lm_report`` after each language-model epoch.
    """
    out = Path(out_dir)
    times: dict[str, float] = {}
    t = time.perf_counter()
    corpus = prepare_corpus(cfg, data_dir, cache_dir, progress=progress)
    times["data_seconds"] = time.perf_counter() - t
    lm_dir = None
    lm_metrics: dict[str, float] = {}
    if not cfg.classifier.from_scratch:
        t = time.perf_counter()
        lm = finetune_lm(cfg, corpus, out / "lm", report=lm_report, progress=progress)
        lm_dir, lm_metrics = lm.lm_dir, lm.metrics
        times["lm_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    clf = train_classifier(cfg, corpus, lm_dir, out / "classifier", report=report, progress=progress)
    times["classifier_seconds"] = time.perf_counter() - t
    result: dict[str, Any] = {f"lm_{k}": v for k, v in lm_metrics.items() if k.startswith("valid_")}
    result.update(clf.metrics)
    if corpus.test is not None:
        test = evaluate_split(out / "classifier", corpus, corpus.test, cfg.device)
        result.update({f"test_{k}": v for k, v in test.items()})
    result.update(times)
    _write_json(out / METRICS_FILE, {"final": result, "corpus": corpus.stats, "config": to_dict(cfg)})
    return result


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))
