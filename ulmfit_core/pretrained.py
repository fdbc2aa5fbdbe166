"""Importing language models: our own saved directories and fastai's ``.pth`` files, and mapping
their weights onto a new vocabulary (ULMFiT section 3.2 starts from a WikiText-103 model).

A saved language model is a directory holding

* ``lm.pt``: ``{"state_dict": LanguageModel state, "config": dict}``, never a pickled module;
* ``encoder.pt``: ``{"state_dict": AWDLSTMEncoder state, "config": dict}``, what the classifier loads;
* ``vocab.json``: the vocabulary as ``{"itos": [...]}``, as ``text.Vocab.save`` writes it.

Everything loads with ``torch.load(weights_only=True)``; fastai's vocabulary pickle is read with
an unpickler that refuses every class, so a plain ``list[str]`` is all it can yield.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ulmfit_core.awd_lstm import AWDLSTMEncoder, LanguageModel, TextClassifier

StateDict = dict[str, Tensor]

LM_FILE, ENCODER_FILE, VOCAB_FILE = "lm.pt", "encoder.pt", "vocab.json"

# Keys (suffixes) whose rows are indexed by the vocabulary; they share one tensor in a tied model.
_EMBED_KEYS = ("embedding.weight", "embedding_dp.emb.weight", "decoder.weight")
_BIAS_KEYS = ("decoder.bias",)

# fastai v2 key -> ours; {i} is the layer. fastai v1 has the same plus `module.weight_hh_l0`.
_FASTAI_KEYS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"0\.encoder\.weight"), "encoder.embedding.weight"),
    (re.compile(r"0\.encoder_dp\.emb\.weight"), "encoder.embedding_dp.emb.weight"),
    (re.compile(r"0\.rnns\.(\d+)\.weight_hh_l0_raw"), "encoder.rnns.{}.weight_hh_raw"),
    (re.compile(r"0\.rnns\.(\d+)\.module\.weight_ih_l0"), "encoder.rnns.{}.weight_ih"),
    (re.compile(r"0\.rnns\.(\d+)\.module\.bias_ih_l0"), "encoder.rnns.{}.bias_ih"),
    (re.compile(r"0\.rnns\.(\d+)\.module\.bias_hh_l0"), "encoder.rnns.{}.bias_hh"),
    (re.compile(r"1\.decoder\.weight"), "decoder.weight"),
    (re.compile(r"1\.decoder\.bias"), "decoder.bias"),
]
# The weight-dropped copy fastai keeps inside the wrapped LSTM: a by-product of the last forward
# pass, not a parameter. Used only when a file has no `_raw` weight for that layer.
_FASTAI_DROPPED_HH = re.compile(r"0\.rnns\.(\d+)\.module\.weight_hh_l0")


class PretrainedError(ValueError):
    """A pretrained model or vocabulary file cannot be used; the message names the file and why."""


# --- fastai --------------------------------------------------------------------------------


def fastai_to_ours(state_dict: Mapping[str, Tensor]) -> StateDict:
    """A fastai v1 or v2 AWD-LSTM language-model state dict renamed to :class:`LanguageModel`'s keys.

    Accepts ``Learner.save`` output with or without the optimiser (``{"model": ..., "opt": ...}``).
    ``0.rnns.{i}.module.weight_hh_l0`` (v1) is dropped where ``weight_hh_l0_raw`` exists.
    Raises :class:`PretrainedError` on keys it does not know.
    """
    if not isinstance(state_dict, Mapping):
        raise PretrainedError(f"not a state dict: it holds a {type(state_dict).__name__}, not a mapping of tensors")
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    out: StateDict = {}
    dropped_hh: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        for pattern, target in _FASTAI_KEYS:
            m = pattern.fullmatch(key)
            if m:
                out[target.format(*m.groups())] = value
                break
        else:
            m = _FASTAI_DROPPED_HH.fullmatch(key)
            if m:
                dropped_hh[f"encoder.rnns.{m.group(1)}.weight_hh_raw"] = value
            else:
                unknown.append(key)
    if unknown:
        raise PretrainedError(f"not an AWD-LSTM language model in fastai's layout: unknown keys {unknown[:5]}")
    for key, value in dropped_hh.items():
        out.setdefault(key, value)
    if "encoder.embedding.weight" not in out:
        raise PretrainedError("not an AWD-LSTM language model in fastai's layout: no 0.encoder.weight")
    emb = out["encoder.embedding.weight"]
    out.setdefault("encoder.embedding_dp.emb.weight", emb)
    out.setdefault("decoder.weight", emb)
    return out


class _NoClassesUnpickler(pickle.Unpickler):
    """Reads pickles made only of builtin containers and strings; refuses any class or function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a vocabulary pickle")


def read_fastai_vocab(path: str | Path) -> list[str]:
    """fastai's vocabulary pickle (a ``list[str]``, e.g. ``itos_wt103.pkl``), read without running code."""
    path = Path(path)
    try:
        itos = _NoClassesUnpickler(io.BytesIO(path.read_bytes())).load()
    except OSError as e:
        raise PretrainedError(f"cannot read vocabulary {path}: {e.strerror}") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise PretrainedError(f"{path}: not a pickled list of strings: {e}") from None
    if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
        raise PretrainedError(f"{path}: expected a pickled list of strings, got {type(itos).__name__}")
    return itos


def infer_sizes(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """``{"emb_sz", "n_hid", "n_layers"}`` (``ModelConfig(**sizes)`` works) from a language model's
    or an encoder's state dict in our layout."""
    prefix = "encoder." if "encoder.embedding.weight" in state_dict else ""
    emb_sz = state_dict[f"{prefix}embedding.weight"].shape[1]
    n_layers = 0
    while f"{prefix}rnns.{n_layers}.weight_hh_raw" in state_dict:
        n_layers += 1
    if n_layers == 0:
        raise PretrainedError("no LSTM layers (rnns.0.weight_hh_raw) in the state dict")
    n_hid = state_dict[f"{prefix}rnns.0.weight_hh_raw"].shape[1] if n_layers > 1 else emb_sz
    return {"emb_sz": int(emb_sz), "n_hid": int(n_hid), "n_layers": n_layers}


def load_fastai_lm(weights_path: str | Path, vocab_pkl_path: str | Path) -> tuple[StateDict, list[str], dict[str, int]]:
    """A fastai ``.pth`` language model and its vocabulary pickle.

    Returns ``(state_dict in our layout, itos, sizes)``; ``sizes`` as :func:`infer_sizes`.
    """
    weights_path = Path(weights_path)
    try:
        raw = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise PretrainedError(f"cannot load {weights_path} as a state dict: {e}") from None
    try:
        state = fastai_to_ours(raw)
    except PretrainedError as e:  # name the file: the caller may be reading several
        raise PretrainedError(f"{weights_path}: {e}") from None
    itos = read_fastai_vocab(vocab_pkl_path)
    n_rows = state["encoder.embedding.weight"].shape[0]
    if n_rows != len(itos):
        raise PretrainedError(f"{weights_path} has {n_rows} embedding rows but {vocab_pkl_path} holds {len(itos)} "
                              "words: the weights and the vocabulary do not belong together")
    return state, itos, infer_sizes(state)


# --- a new vocabulary ----------------------------------------------------------------------


def _old_index(old_itos: Sequence[str], new_itos: Sequence[str]) -> Tensor:
    """For each new word, its row in the old vocabulary or -1 (a repeated old word: its last row)."""
    stoi = {w: i for i, w in enumerate(old_itos)}  # later positions overwrite earlier, as fastai's
    return torch.tensor([stoi.get(w, -1) for w in new_itos], dtype=torch.long)


def _match_rows(t: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``t`` (V_old, ...) picked by ``idx`` (V_new,); -1 gets the mean of all old rows."""
    picked = t[idx.clamp(min=0)]
    known = (idx >= 0).view(-1, *([1] * (t.dim() - 1)))
    return torch.where(known, picked, t.mean(dim=0, keepdim=True))


def map_to_vocab(state_dict: Mapping[str, Tensor], old_itos: Sequence[str], new_itos: Sequence[str]) -> StateDict:
    """The state dict with its vocabulary-indexed tensors re-indexed from ``old_itos`` to ``new_itos``.

    fastai's ``match_embeds``: a word in both vocabularies keeps its embedding row and decoder bias;
    a new word gets the mean of all old embedding rows (and the mean old bias). Works on a language
    model's or an encoder's state dict in our layout; tied tensors stay one tensor in the result
    (and in any model it is loaded into). The input is not modified.
    """
    idx = _old_index(old_itos, new_itos)
    out = dict(state_dict)
    new_rows: dict[tuple, Tensor] = {}  # tied entries (one storage) are mapped once and stay shared
    for key, value in state_dict.items():
        if key.endswith(_EMBED_KEYS) or key.endswith(_BIAS_KEYS):
            if value.shape[0] != len(old_itos):
                raise PretrainedError(f"{key} has {value.shape[0]} rows but the old vocabulary has "
                                      f"{len(old_itos)} words")
            ptr = (value.data_ptr(), tuple(value.shape))
            if ptr not in new_rows:
                new_rows[ptr] = _match_rows(value, idx)
            out[key] = new_rows[ptr]
    return out


# --- our own format ------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    """Write then rename, so that a concurrent reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_vocab(path: str | Path, itos: Sequence[str]) -> None:
    """The vocabulary as JSON ``{"itos": [...]}``: the format of ``text.Vocab.save``, so that
    ``Vocab.load`` opens a saved language model's directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"itos": list(itos)}, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_vocab(path: str | Path) -> list[str]:
    """``itos`` from a ``vocab.json``: ``{"itos": [...]}`` (:func:`write_vocab`) or a bare list."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PretrainedError(f"cannot read vocabulary {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: invalid JSON: {e}") from None
    itos = data.get("itos") if isinstance(data, dict) else data
    if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
        raise PretrainedError(f"{path}: expected a list of strings, or {{\"itos\": [...]}}")
    return itos


def save_language_model(directory: str | Path, lm: LanguageModel, itos: Sequence[str],
                        config: Mapping[str, Any]) -> Path:
    """Write ``lm.pt``, ``encoder.pt`` and ``vocab.json`` into ``directory`` (created); returns it.

    ``config`` must be plain data (dicts, lists, strings, numbers), e.g. ``RecipeConfig.to_dict()``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    cpu = torch.device("cpu")
    _atomic_save({"state_dict": {k: v.to(cpu) for k, v in lm.state_dict().items()}, "config": config},
                 directory / LM_FILE)
    _atomic_save({"state_dict": {k: v.to(cpu) for k, v in lm.encoder.state_dict().items()}, "config": config},
                 directory / ENCODER_FILE)
    write_vocab(directory / VOCAB_FILE, itos)
    return directory


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise PretrainedError(f"cannot load {path}: {e}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise PretrainedError(f"{path}: not saved by save_language_model (no 'state_dict')")
    return ckpt


def load_language_model(directory: str | Path) -> tuple[StateDict, list[str], dict[str, Any]]:
    """``(state_dict, itos, config)`` from a directory written by :func:`save_language_model`.

    Build the model with :func:`ulmfit_core.awd_lstm.build_language_model` (sizes from
    :func:`infer_sizes` or ``config``) and ``load_state_dict`` it, after :func:`map_to_vocab` when
    the vocabulary changes.
    """
    directory = Path(directory)
    ckpt = _load_checkpoint(directory / LM_FILE)
    return ckpt["state_dict"], read_vocab(directory / VOCAB_FILE), ckpt.get("config", {})


def load_pretrained_lm(path: str | Path,
                       vocab_path: str | Path | None = None) -> tuple[StateDict, list[str], dict[str, int]]:
    """Either kind of pretrained language model (``LMConfig.pretrained``): a directory of ours, or a
    fastai ``.pth`` with its vocabulary pickle. Returns ``(state_dict, itos, sizes)``."""
    path = Path(path)
    if path.is_dir():
        state, itos, _ = load_language_model(path)
    elif vocab_path is None:
        raise PretrainedError(f"{path} is not a directory saved by this project; "
                              "a fastai .pth needs its vocabulary pickle")
    else:
        state, itos, _ = load_fastai_lm(path, vocab_path)
    return state, itos, infer_sizes(state)


def load_encoder_into(classifier: TextClassifier | AWDLSTMEncoder, dir_or_path: str | Path, itos: Sequence[str]) -> int:
    """Load a saved language model's encoder into ``classifier`` (whose vocabulary is ``itos``).

    ``dir_or_path``: a directory from :func:`save_language_model`, or its ``encoder.pt`` (with
    ``vocab.json`` beside it). Rows are re-indexed with :func:`map_to_vocab` when the vocabularies
    differ. Returns how many words of ``itos`` the saved vocabulary knows.
    """
    path = Path(dir_or_path)
    if path.is_dir():
        path = path / ENCODER_FILE
    state = _load_checkpoint(path)["state_dict"]
    saved_itos = read_vocab(path.parent / VOCAB_FILE)
    if list(saved_itos) != list(itos):
        state = map_to_vocab(state, saved_itos, itos)
    encoder = classifier.encoder if isinstance(classifier, TextClassifier) else classifier
    try:
        encoder.load_state_dict(state)
    except RuntimeError as e:
        raise PretrainedError(f"{path} does not fit this classifier's encoder (model sizes differ?): {e}") from None
    return int((_old_index(saved_itos, itos) >= 0).sum())
