"""Importing pretrained language models (fastai's ``.pth`` files and this project's own folders,
see :mod:`ulmfit_core.artifacts`) and mapping their weights onto a new vocabulary (ULMFiT section 3.2
starts from a WikiText-103 model).

Everything loads with ``torch.load(weights_only=True)``; fastai's vocabulary pickle is read with
an unpickler that refuses every class, so a plain ``list[str]`` is all it can yield. Reading fastai's
files and a state dict's sizes is :mod:`ulmfit_core.lm_weights` (the zoo's checks use it too), whose
names are re-exported here.
"""
from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ulmfit_core import fetching, zoo
from ulmfit_core.artifacts import LM_FILE, VOCAB_FILE, load_encoder, load_language_model
from ulmfit_core.awd_lstm import AWDLSTMEncoder, TextClassifier
from ulmfit_core.config import LMConfig, RecipeConfig, recipe_from_dict, to_dict
from ulmfit_core.corpus import pretrained_units

# fastai's files and a state dict's sizes: a module of their own, which the zoo's checks use too (re-exported here).
from ulmfit_core.lm_weights import PretrainedError, StateDict, infer_sizes, load_fastai_lm
from ulmfit_core.lm_weights import fastai_to_ours as fastai_to_ours
from ulmfit_core.lm_weights import read_fastai_vocab as read_fastai_vocab
from ulmfit_core.zoo import LocalModel

# Keys (suffixes) whose rows are indexed by the vocabulary; they share one tensor in a tied model.
_EMBED_KEYS = ("embedding.weight", "embedding_dp.emb.weight", "decoder.weight")
_BIAS_KEYS = ("decoder.bias",)


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


# --- loading either kind ----------------------------------------------------------------


def resolve_source(lm: LMConfig, models_dir: str | Path | None = None) -> LocalModel | None:
    """What ``lm.pretrained`` names, for the direction ``lm.backwards`` asks: the one place that decides.

    * a zoo name stands for its family: the entry of the requested direction is used
      (``general-en-small-fwd`` with ``lm.backwards: true`` is ``general-en-small-bwd``), and it must be
      fetched into ``models_dir`` (the error says how);
    * a folder saved by this project (``launch.py pretrain``/``finetune-lm``), or a fastai ``.pth``
      with ``lm.pretrained_vocab``; for a backwards LM, ``lm.pretrained_backwards`` when it is set.

    None without ``lm.pretrained``.
    """
    if not lm.pretrained:
        return None
    if zoo.is_zoo_name(lm.pretrained):
        return zoo.resolve(zoo.for_direction(lm.pretrained, lm.backwards), models_dir)
    value = lm.pretrained_backwards if lm.backwards and lm.pretrained_backwards else lm.pretrained
    path = Path(value).expanduser()
    if path.is_dir():
        return LocalModel(path=path, vocab=None, layout="ulmfit")
    if not path.is_file():
        close = difflib.get_close_matches(str(value), list(zoo.ZOO), n=1)
        if close:  # a misspelt zoo name reads as a path
            raise PretrainedError(f"lm.pretrained: {value!r} is neither a file nor a zoo model; did you mean "
                                  f"{close[0]}? (`python launch.py models list`)")
        raise PretrainedError(f"lm.pretrained: {path} does not exist; give a zoo name ({', '.join(zoo.ZOO)}; "
                              "`python launch.py models list`), a folder written by `launch.py pretrain`, or a "
                              "fastai .pth with lm.pretrained_vocab")
    if not lm.pretrained_vocab:
        raise PretrainedError(f"lm.pretrained: {path} is not a folder saved by this project; a fastai .pth "
                              "needs its vocabulary pickle in lm.pretrained_vocab")
    return LocalModel(path=path, vocab=Path(lm.pretrained_vocab).expanduser(), layout="fastai")


def load_source(source: LocalModel, backwards: bool | None = None) -> tuple[StateDict, list[str]]:
    """``(state_dict in our layout, itos)`` of a resolved pretrained model. With ``backwards`` given, a
    folder of ours that recorded its direction must have been trained that way (fastai's files do not say)."""
    if source.layout == "fastai":
        assert source.vocab is not None
        state, itos, _ = load_fastai_lm(source.path, source.vocab)
        return state, itos
    state, itos, config = load_language_model(source.path)
    recorded = (config.get("lm") or {}).get("backwards") if isinstance(config, dict) else None
    if backwards is not None and recorded is not None and bool(recorded) != backwards:
        trained, asked = ("backwards" if recorded else "forwards"), ("backwards" if backwards else "forwards")
        raise PretrainedError(f"lm.pretrained: {source.path} was trained {trained} but this language model reads "
                              f"text {asked} (lm.backwards: {backwards}); use a model of the same direction "
                              "(lm.pretrained_backwards for the backwards one)")
    return state, itos


def describe_start(cfg: RecipeConfig, models_dir: str | Path | None = None) -> tuple[RecipeConfig, str]:
    """The recipe to run and one line saying which language model it starts from.

    The pretrained model is resolved and checked against the configured model's sizes, so a start that
    would fail at its first load fails here, in one line, before any training. With
    ``lm.pretrained_required: false`` a zoo model that is not fetched yet is left out: the returned recipe
    has ``lm.pretrained: null`` (so every record shows what really ran) and the line says how to fetch the
    model. Any other problem raises.
    """
    lm = cfg.lm
    if cfg.classifier.from_scratch:
        return cfg, "language model: none (classifier.from_scratch: the encoder starts from random weights)"
    if not lm.pretrained:
        return cfg, ("language model: trained from random weights on this data (no lm.pretrained; a "
                     "general-domain start transfers better: `python launch.py models list`)")
    try:
        source = resolve_source(lm, models_dir)
    except zoo.ZooError as e:
        if lm.pretrained_required or not zoo.is_zoo_name(lm.pretrained):
            raise
        name = zoo.for_direction(lm.pretrained, lm.backwards)
        values = to_dict(cfg)
        values["lm"]["pretrained"] = None
        return recipe_from_dict(values), (f"language model: random weights, because {name} is not fetched "
                                          f"({e}); lm.pretrained_required is false, so the run goes on without it")
    assert source is not None
    pretrained_units(cfg, models_dir)  # a word model for subwords, or the other way round: refused before the sizes
    check_fits(source, cfg)
    what = source.name or str(source.path)
    return cfg, f"language model: starting from {what} ({source.path})"


_SIZE_KEYS = ("emb_sz", "n_hid", "n_layers")


def source_sizes(source: LocalModel) -> dict[str, int]:
    """``{"emb_sz", "n_hid", "n_layers"}`` of a pretrained model: a zoo model of this project's layout has
    its registered preset's (fetch checked its files against it); any other is read from its weights,
    which also checks that the files load and belong together."""
    if source.name is not None and source.layout == "ulmfit":
        from .config import MODEL_PRESETS

        return dict(zip(_SIZE_KEYS, MODEL_PRESETS[zoo.get(source.name).preset]))
    state, _ = load_source(source)
    return infer_sizes(state)


def check_fits(source: LocalModel, cfg: RecipeConfig) -> None:
    """:class:`PretrainedError` naming both sizes when the pretrained model is not the configured model's size."""
    from .config import MODEL_PRESETS

    sizes = source_sizes(source)
    configured = {k: getattr(cfg.model, k) for k in _SIZE_KEYS}
    if sizes == configured:
        return
    what = source.name or str(source.path)
    preset = next((name for name, s in MODEL_PRESETS.items() if dict(zip(_SIZE_KEYS, s)) == sizes), None)
    fix = f"set model.preset: {preset}" if preset else \
        f"set model.emb_sz/n_hid/n_layers to {sizes['emb_sz']}/{sizes['n_hid']}/{sizes['n_layers']}"
    same_size = [e.name for e in zoo.ZOO.values() if e.preset == cfg.model.preset and e.direction == (
        "bwd" if cfg.lm.backwards else "fwd") and e.units == cfg.text.tokenizer]
    other = f", or use a {cfg.model.preset} model ({', '.join(same_size)})" if same_size else ""
    raise PretrainedError(
        f"lm.pretrained: {what} is {_sizes_text(sizes)}{f' (preset {preset})' if preset else ''} but the configured "
        f"model is {_sizes_text(configured)} (model.preset: {cfg.model.preset}); {fix}{other}")


def _sizes_text(sizes: Mapping[str, int]) -> str:
    return f"{sizes['emb_sz']}/{sizes['n_hid']}/{sizes['n_layers']} (emb/hid/layers)"


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def source_fingerprint(source: LocalModel) -> str:
    """sha256 over the content of a pretrained model's files (not their path): what the LM cache key
    and a checkpoint's fingerprint record. Memoized per (file, size, mtime) within the process."""
    files = [source.path, source.vocab] if source.layout == "fastai" else \
        [source.path / LM_FILE, source.path / VOCAB_FILE]
    h = hashlib.sha256(f"pretrained-v1|{source.layout}|".encode())
    for f in files:
        assert f is not None
        st = f.stat()
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _FINGERPRINTS:
            _FINGERPRINTS[key] = fetching.sha256(f)
        h.update(_FINGERPRINTS[key].encode())
    return h.hexdigest()


def load_encoder_into(classifier: TextClassifier | AWDLSTMEncoder, dir_or_path: str | Path, itos: Sequence[str]) -> int:
    """Load a saved language model's encoder into ``classifier`` (whose vocabulary is ``itos``).

    ``dir_or_path``: a language-model folder (:func:`ulmfit_core.artifacts.save_language_model`), or
    its ``encoder.pt``. Rows are re-indexed with :func:`map_to_vocab` when the vocabularies differ.
    Returns how many words of ``itos`` the saved vocabulary knows.
    """
    state, saved_itos = load_encoder(dir_or_path)
    if list(saved_itos) != list(itos):
        state = map_to_vocab(state, saved_itos, itos)
    encoder = classifier.encoder if isinstance(classifier, TextClassifier) else classifier
    try:
        encoder.load_state_dict(state)
    except RuntimeError as e:
        raise PretrainedError(f"{dir_or_path} does not fit this classifier's encoder (model sizes differ?): {e}") from None
    return int((_old_index(saved_itos, itos) >= 0).sum())
