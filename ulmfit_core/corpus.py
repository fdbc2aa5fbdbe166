"""Preparing the text a recipe reads: read, split, tokenize (cached), numericalize with one vocabulary.

No stage sees test text: the language model reads the classifier's training texts plus any unlabeled
corpus, never the validation or test documents; the vocabulary is built from the LM's training part.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import datasets
from .artifacts import SUBWORD_FILE
from .config import ConfigError, RecipeConfig, text_settings, to_dict
from .data import DataError, check_classes, read_labeled, read_unlabeled, split_validation
from .text import SubwordTokenizer, Tokenizer, Vocab, subword_tokenizer, tokenize_cached
from .zoo_registry import is_zoo_name

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
    fingerprint: str  # content hash of every text and label that went in (what a classifier depends on)
    lm_fingerprint: str  # content hash of the language model's text only (never validation or test text)
    stats: dict[str, Any] = field(default_factory=dict)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)  # what made the tokens: saved with every model

    @property
    def subwords(self) -> bytes | None:
        """The SentencePiece model (``text.tokenizer: subwords``), or None for word tokens."""
        return self.tokenizer.model if isinstance(self.tokenizer, SubwordTokenizer) else None


def pretrained_units(cfg: RecipeConfig, models_dir: str | Path | None = None) -> Path | None:
    """The SentencePiece file a subword recipe fine-tunes with: its pretrained language model's (None without
    one). A word model for a subword recipe, or a subword model for a word recipe, is a ConfigError naming both:
    the vocabulary of a language model is its tokenizer's. A zoo name is its fetched folder in ``models_dir``
    (config.py has already matched its units to the tokenizer)."""
    lm = cfg.lm
    pretrained = lm.pretrained_backwards if lm.backwards and lm.pretrained_backwards else lm.pretrained
    if not pretrained or cfg.text.tokenizer == "words" and is_zoo_name(pretrained):
        return None
    if is_zoo_name(pretrained):  # a subword zoo model: its own units, from where it was fetched
        from . import zoo

        name = zoo.for_direction(pretrained, lm.backwards)
        found = zoo.fetched(name, models_dir)
        if found is None:
            raise ConfigError(f"lm.pretrained: {name} is not fetched; {zoo.fetch_command(name, models_dir)}")
        pretrained = str(found)
    folder = Path(pretrained).expanduser()
    units = folder / SUBWORD_FILE
    if cfg.text.tokenizer == "words" and units.is_file():
        raise ConfigError(f"lm.pretrained: {folder} is a subword language model (it holds {SUBWORD_FILE}) but "
                          "text.tokenizer is words: its vocabulary is subword units, not words; set "
                          "text.tokenizer: subwords to fine-tune it, or give a word-level model")
    if cfg.text.tokenizer == "subwords" and not units.is_file():
        raise ConfigError(f"lm.pretrained: {folder} is not a subword language model (no {SUBWORD_FILE} in it) but "
                          "text.tokenizer is subwords; give a folder that `launch.py pretrain --set "
                          "text.tokenizer=subwords` wrote, null to train one on this data, or set text.tokenizer: words")
    return units if cfg.text.tokenizer == "subwords" else None


def make_tokenizer(cfg: RecipeConfig, lm_texts: list[str], cache_dir: Path,
                   models_dir: str | Path | None = None) -> Tokenizer:
    """Word tokens, or subword units: a pretrained subword model's own (fine-tuning keeps its vocabulary, as
    MultiFiT and fastai do), else learnt from ``lm_texts``, the language model's own training text (never
    validation or test text)."""
    t = cfg.text
    units = pretrained_units(cfg, models_dir)
    if t.tokenizer == "words":
        return Tokenizer()
    if units is not None:
        return SubwordTokenizer.read(units)
    if not lm_texts:
        raise DataError("text.tokenizer: subwords are learnt from the language model's training text, and there is "
                        "none; give data.train or data.unlabeled")
    return subword_tokenizer(lm_texts, t.subword_model, t.subword_vocab, cache_dir)


def build_vocab(cfg: RecipeConfig, tok: Tokenizer, lm_train_tokens: list[list[str]]) -> Vocab:
    """fastai's vocabulary of the most frequent words, or a subword model's fixed set of units."""
    if isinstance(tok, SubwordTokenizer):
        return Vocab.of_pieces(tok.pieces())
    return Vocab.build(lm_train_tokens, max_vocab=cfg.text.max_vocab, min_freq=cfg.text.min_freq)


def default_cache_dir() -> Path:
    """The token cache: ``$ULMFIT_CACHE``, else ``./.cache/ulmfit``."""
    return Path(os.environ.get("ULMFIT_CACHE", ".cache/ulmfit")).resolve()


def content_hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    """Reproducible random subset of ``range(n)`` of size ``k`` (all when ``k`` is None)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def label_codes(labels: Sequence[str], names: list[str], source: str) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted({lab for lab in labels if lab not in index})
    if unseen:
        raise DataError(
            f"{source}: labels {unseen[:5]} never occur in the training data (known: {names[:10]}); "
            "a classifier cannot predict classes it never saw: fix the labels or add training examples")
    return np.array([index[lab] for lab in labels], dtype=np.int64)


#: Below this share of the labeled documents a validation set is too small to choose between trials well.
SMALL_VALID_SHARE = 0.01


def check_validation_size(n_valid: int, n_classes: int, n_labeled: int, where: str) -> None:
    """A validation set smaller than the number of classes cannot score every class: refused. One under 1 %
    of the labeled documents is allowed with a warning (its accuracy moves in large steps)."""
    if n_valid < n_classes:
        raise DataError(f"{where}: the validation set holds {n_valid} document(s) for {n_classes} classes, too few "
                        "to score every class; give more rows per class, a larger data.valid_pct, or data.valid")
    if n_valid < SMALL_VALID_SHARE * n_labeled:
        warnings.warn(f"{where}: the validation set is {n_valid} of {n_labeled} labeled documents (under "
                      f"{SMALL_VALID_SHARE:.0%}): each document moves its accuracy by {1 / n_valid:.1%}", UserWarning,
                      stacklevel=2)


def prepare_corpus(cfg: RecipeConfig, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                   progress: bool = False, models_dir: str | Path | None = None) -> Corpus:
    """Read, split, tokenize (disk-cached, locked) and numericalize the data ``cfg.data`` names."""
    d = cfg.data
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if not d.dataset and not d.train:
        raise DataError("data: the classifier needs labeled text; set data.dataset or data.train "
                        "(only `launch.py pretrain` works from data.unlabeled alone)")
    paths = datasets.resolve(d.dataset, d, data_dir)

    train_all = read_labeled(paths.train, d.text_cols, d.label_col)
    keep = subsample(len(train_all.texts), d.max_train_rows, cfg.seed)
    train_texts = [train_all.texts[i] for i in keep]
    train_labels = [train_all.labels[i] for i in keep]
    check_classes(train_labels, str(paths.train))
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
    check_classes(train_labels, f"{paths.train} (after holding out validation rows)")
    check_validation_size(len(valid_labels), len(names), len(valid_labels) + len(train_labels),
                          str(paths.valid or f"{d.valid_pct:g} of {paths.train}"))
    y_train = label_codes(train_labels, names, str(paths.train))
    y_valid = label_codes(valid_labels, names, str(paths.valid or paths.train))
    test = read_labeled(paths.test, d.text_cols, d.label_col) if paths.test else None
    y_test = label_codes(test.labels, names, str(paths.test)) if test else None

    unlabeled: list[str] = []
    if paths.unlabeled and d.use_unlabeled:
        unlabeled = read_unlabeled(paths.unlabeled)
        unlabeled = [unlabeled[i] for i in subsample(len(unlabeled), d.max_unlabeled_rows, cfg.seed)]

    # The language model reads training and unlabeled text only (never validation or test); its own held-out
    # documents (for perplexity) are not learnt from either: neither its vocabulary nor its subword units.
    lm_texts = train_texts + unlabeled
    lm_tr_idx, lm_va_idx = split_validation([0] * len(lm_texts), cfg.lm.valid_pct, cfg.seed)
    tok = make_tokenizer(cfg, [lm_texts[i] for i in lm_tr_idx], cache, models_dir)

    def toks(texts: list[str]) -> list[list[str]]:
        return tokenize_cached(texts, tok, cache, progress=progress) if texts else []

    t_train, t_valid, t_unlab = toks(train_texts), toks(valid_texts), toks(unlabeled)
    t_test = toks(test.texts) if test else None

    lm_docs = t_train + t_unlab
    vocab = build_vocab(cfg, tok, [lm_docs[i] for i in lm_tr_idx])
    num = vocab.numericalize
    lm_ids = [num(t) for t in lm_docs]
    fingerprint = content_hash(train_texts, train_labels, valid_texts, valid_labels, unlabeled,
                               test.texts if test else None, tok.settings_key(), text_settings(to_dict(cfg.text)))
    lm_fingerprint = content_hash(train_texts, unlabeled, tok.settings_key(), text_settings(to_dict(cfg.text)), cfg.lm.valid_pct)
    return Corpus(
        vocab=vocab,
        label_names=names,
        train=Split([num(t) for t in t_train], y_train),
        valid=Split([num(t) for t in t_valid], y_valid),
        test=Split([num(t) for t in t_test], y_test) if t_test is not None else None,
        lm_train=[lm_ids[i] for i in lm_tr_idx],
        lm_valid=[lm_ids[i] for i in lm_va_idx],
        fingerprint=fingerprint,
        lm_fingerprint=lm_fingerprint,
        stats={"n_train": len(t_train), "n_valid": len(t_valid), "n_test": len(t_test or []),
               "n_unlabeled": len(t_unlab), "vocab_size": len(vocab),
               "lm_tokens": int(sum(len(x) for x in lm_ids))},
        tokenizer=tok,
    )


def prepare_lm_corpus(cfg: RecipeConfig, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                      progress: bool = False, models_dir: str | Path | None = None) -> Corpus:
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
        texts += [unlabeled[i] for i in subsample(len(unlabeled), d.max_unlabeled_rows, cfg.seed)]
    if len(texts) < 2:
        raise DataError("data: language-model pretraining needs text; set data.unlabeled to a corpus "
                        "(a .txt file with one document per line, a folder of .txt files, or a CSV column)")
    valid_texts = read_unlabeled(d.unlabeled_valid) if d.unlabeled_valid else []
    # held out: a file (e.g. the corpus's valid.txt.gz, and every training document trains), else a share
    tr_idx, va_idx = (list(range(len(texts))), []) if valid_texts else \
        split_validation([0] * len(texts), cfg.lm.valid_pct, cfg.seed)
    tok = make_tokenizer(cfg, [texts[i] for i in tr_idx], cache, models_dir)
    tokens = tokenize_cached(texts, tok, cache, progress=progress)
    lm_fingerprint = content_hash(texts, valid_texts, tok.settings_key(), text_settings(to_dict(cfg.text)), cfg.lm.valid_pct)
    if valid_texts:
        train_tokens, valid_tokens = tokens, tokenize_cached(valid_texts, tok, cache, progress=progress)
    else:
        train_tokens, valid_tokens = [tokens[i] for i in tr_idx], [tokens[i] for i in va_idx]
    vocab = build_vocab(cfg, tok, train_tokens)
    empty = Split([], np.zeros(0, dtype=np.int64))
    lm_train = [vocab.numericalize(t) for t in train_tokens]
    lm_valid = [vocab.numericalize(t) for t in valid_tokens]
    return Corpus(vocab=vocab, label_names=[], train=empty, valid=empty, test=None,
                  lm_train=lm_train, lm_valid=lm_valid, fingerprint=lm_fingerprint, lm_fingerprint=lm_fingerprint,
                  stats={"n_documents": len(texts), "n_valid_documents": len(valid_tokens), "vocab_size": len(vocab),
                         "lm_tokens": int(sum(len(x) for x in lm_train)),
                         "lm_valid_tokens": int(sum(len(x) for x in lm_valid))}, tokenizer=tok)
