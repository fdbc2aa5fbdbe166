"""Reading a pretrained language model's weights and vocabulary: fastai's ``.pth`` files (renamed to
this project's layout) and vocabulary pickles, and the encoder sizes of a state dict.

The lowest layer of :mod:`ulmfit_core.pretrained`, which re-exports every name here; apart from it,
:mod:`ulmfit_core.zoo` uses it to check a fetched model, so that the zoo and :mod:`ulmfit_core.pretrained`
(which resolves zoo names) do not import each other. Weights load with ``torch.load(weights_only=True)``
(:func:`ulmfit_core.artifacts.load_tensors`); fastai's vocabulary pickle is read with an unpickler that
refuses every class, so a plain ``list[str]`` is all it can yield.
"""
from __future__ import annotations

import io
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .artifacts import ArtifactError, load_tensors

StateDict = dict[str, Tensor]

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


class PretrainedError(ArtifactError):
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
        raise PretrainedError(f"{path}: not a pickled list of strings: {e}; lm.pretrained_vocab must be fastai's "
                              "vocabulary pickle (a plain list of words, e.g. itos_wt103.pkl) from a source you "
                              "trust") from None
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
    raw = load_tensors(weights_path)
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
