"""Typed, validated configuration for the ULMFiT recipe.

Every value a run depends on lives here, in nested dataclasses that validate themselves when
built (``__post_init__``) and raise :class:`ConfigError` naming the dotted key and the fix.
The search layer turns a flat Tune dict into these with :func:`recipe_from_dict`; the CLI does
the same from YAML plus ``--set key=value`` overrides.

Defaults follow fastai v2's ``awd_lstm_lm_config`` / ``awd_lstm_clas_config`` and the ULMFiT
paper (Howard & Ruder 2018); deviations are listed in docs/RECIPE.md.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .zoo_registry import is_zoo_name  # a leaf module: the zoo itself depends on the recipe's modules
from .zoo_registry import units_of as zoo_units


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the dotted key and how to fix it."""


def _fail(key: str, message: str) -> None:
    raise ConfigError(f"{key}: {message}")


def _check_prob(prefix: str, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        _fail(f"{prefix}.{name}", f"must be a probability in [0, 1), got {value!r}")


def _check_positive(prefix: str, name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        _fail(f"{prefix}.{name}", f"must be {bound}, got {value!r}")


# --- model ---------------------------------------------------------------------------------

#: Encoder sizes by preset name: (emb_sz, n_hid, n_layers).
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "paper": (400, 1152, 3),  # Howard & Ruder 2018 / Merity et al. 2017
    "small": (200, 512, 3),  # CPU-friendly, ~2.3x faster per token than paper on 2 cores
    "tiny": (64, 128, 2),  # for tests; the size of the fastai compatibility fixture
}


@dataclass
class ModelConfig:
    """AWD-LSTM encoder sizes. ``preset`` fills sizes left as ``None``."""

    preset: str = "small"  # paper (400/1152/3), small (200/512/3) or tiny (64/128/2): emb_sz/n_hid/n_layers
    emb_sz: int | None = None  # embedding size, also the last LSTM layer's size (tied decoder); null: the preset's
    n_hid: int | None = None  # units of every LSTM layer but the last; null: the preset's
    n_layers: int | None = None  # LSTM layers; null: the preset's

    def __post_init__(self) -> None:
        if self.preset not in MODEL_PRESETS:
            _fail("model.preset", f"unknown preset {self.preset!r}; choose one of {sorted(MODEL_PRESETS)}")
        emb, hid, layers = MODEL_PRESETS[self.preset]
        self.emb_sz = emb if self.emb_sz is None else self.emb_sz
        self.n_hid = hid if self.n_hid is None else self.n_hid
        self.n_layers = layers if self.n_layers is None else self.n_layers
        for name in ("emb_sz", "n_hid"):
            _check_positive("model", name, getattr(self, name))
        if self.n_layers < 1:
            _fail("model.n_layers", f"must be >= 1, got {self.n_layers}")


#: The highest a dropout gets after scaling by ``drop_mult``: a dropout of 1 would zero every activation.
DROPOUT_CAP = 0.95


@dataclass
class Dropouts:
    """The five AWD-LSTM dropouts, named as in fastai, before scaling by ``drop_mult``."""

    embed_p: float  # whole embedding rows (words) dropped
    input_p: float  # locked dropout on the embeddings
    weight_p: float  # DropConnect on the hidden-to-hidden matrices
    hidden_p: float  # locked dropout between LSTM layers
    #: locked dropout on the last layer's output (before the decoder, or the first dropout of the
    #: classifier head)
    output_p: float

    def validate(self, prefix: str) -> None:
        for f in fields(self):
            _check_prob(prefix, f.name, getattr(self, f.name))

    def scaled(self, drop_mult: float) -> Dropouts:
        """Each dropout times ``drop_mult``, capped at :data:`DROPOUT_CAP` so a large multiplier stays valid."""
        return Dropouts(**{f.name: min(getattr(self, f.name) * drop_mult, DROPOUT_CAP) for f in fields(self)})

    def capped_by(self, drop_mult: float) -> list[str]:
        """The dropouts that ``drop_mult`` would push past :data:`DROPOUT_CAP`, as ``name p x m = q``."""
        return [f"{f.name} {getattr(self, f.name):g} x {drop_mult:g} = {getattr(self, f.name) * drop_mult:.3g}"
                for f in fields(self) if getattr(self, f.name) * drop_mult > DROPOUT_CAP]


def _lm_dropouts() -> Dropouts:  # fastai v2 awd_lstm_lm_config
    return Dropouts(embed_p=0.02, input_p=0.25, weight_p=0.2, hidden_p=0.15, output_p=0.1)


def _clas_dropouts() -> Dropouts:  # fastai v2 awd_lstm_clas_config
    return Dropouts(embed_p=0.05, input_p=0.4, weight_p=0.5, hidden_p=0.3, output_p=0.4)


# --- training stages -----------------------------------------------------------------------


@dataclass
class StageConfig:
    """What both training stages share: optimiser, schedule, regularisation, batching."""

    epochs: int = 1  # epochs of this stage (the classifier's count its gradual-unfreezing phases)
    lr: float = 1e-3  # peak learning rate of the top layer group (STLR rises to it and falls back)
    lrm: float = 2.6  # discriminative rates: layer group k below the top gets lr / lrm**k
    use_clr: tuple[float, float] = (32.0, 10.0)  # STLR (ratio, cut): peak/min ratio, 1/cut of steps rising
    bs: int = 64  # batch size
    #: tokens per backpropagation-through-time step: the language model's mean (variable) sequence
    #: length; the classifier's chunk length over long documents
    bptt: int = 70
    wd: float = 0.01  # decoupled (AdamW) weight decay
    betas: tuple[float, float] = (0.8, 0.99)  # Adam's (beta1, beta2)
    clip: float | None = 0.4  # gradient norm clipping; None disables
    alpha: float = 2.0  # activation regularisation (AR)
    beta: float = 1.0  # temporal activation regularisation (TAR)
    drop_mult: float = 1.0  # multiplies all five dropouts (the section's dropouts.*)
    dropouts: Dropouts = field(default_factory=_lm_dropouts)
    backwards: bool = False  # train on reversed text: the backwards model of a forward + backward ensemble

    _prefix = "stage"

    def __post_init__(self) -> None:
        p = self._prefix
        if isinstance(self.dropouts, Mapping):
            self.dropouts = _build(Dropouts, self.dropouts, f"{p}.dropouts")
        self.use_clr = tuple(float(v) for v in self.use_clr)  # type: ignore[assignment]
        self.betas = tuple(float(v) for v in self.betas)  # type: ignore[assignment]
        if self.epochs < 1:
            _fail(f"{p}.epochs", f"must be >= 1, got {self.epochs}")
        _check_positive(p, "lr", self.lr)
        if self.lrm < 1:
            _fail(f"{p}.lrm", f"must be >= 1 (lower layers learn slower), got {self.lrm}")
        if len(self.use_clr) != 2 or self.use_clr[0] < 1 or self.use_clr[1] <= 1:
            _fail(f"{p}.use_clr", f"must be [ratio >= 1, cut > 1], e.g. [32, 10]; got {list(self.use_clr)}")
        for name in ("bs", "bptt"):
            if int(getattr(self, name)) < 1:
                _fail(f"{p}.{name}", f"must be a positive integer, got {getattr(self, name)}")
        if self.bptt < 8:
            _fail(f"{p}.bptt", f"must be >= 8 (variable BPTT draws at least 5 tokens), got {self.bptt}")
        _check_positive(p, "wd", self.wd, allow_zero=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail(f"{p}.betas", f"must be two values in [0, 1), got {list(self.betas)}")
        if self.clip is not None:
            _check_positive(p, "clip", self.clip)
        _check_positive(p, "alpha", self.alpha, allow_zero=True)
        _check_positive(p, "beta", self.beta, allow_zero=True)
        _check_positive(p, "drop_mult", self.drop_mult, allow_zero=True)
        self.dropouts.validate(f"{p}.dropouts")
        self._warn_capped_dropouts()

    def _warn_capped_dropouts(self) -> None:
        """A warning, not an error: a search space may sample a large ``drop_mult`` (the default goes to 2.0),
        and the capped model still trains; but the user should know the dropout is not the product."""
        capped = self.dropouts.capped_by(self.drop_mult)
        if capped:
            p = self._prefix
            warnings.warn(f"{p}.drop_mult: {self.drop_mult:g} pushes {p}.dropouts past {DROPOUT_CAP} "
                          f"({'; '.join(capped)}), so they are capped at {DROPOUT_CAP}; lower {p}.drop_mult "
                          f"or those dropouts to train with the values you mean", UserWarning, stacklevel=2)

    @property
    def scaled_dropouts(self) -> Dropouts:
        return self.dropouts.scaled(self.drop_mult)


@dataclass
class LMConfig(StageConfig):
    """Language-model fine-tuning (or pretraining when ``pretrained`` is None)."""

    #: A zoo name (``launch.py models list``; it stands for its forward/backward pair and the direction
    #: follows ``backwards``), a folder saved by this project, or a fastai .pth file.
    pretrained: str | None = None
    pretrained_vocab: str | None = None  # fastai's vocabulary pickle, when ``pretrained`` is a .pth
    pretrained_backwards: str | None = None  # a path: the backwards model, for lm.backwards (a zoo name finds its own)
    #: False: a zoo model in ``pretrained`` that is not fetched yet is left out (random weights), and
    #: the run says so and how to fetch it; the recorded config then holds ``pretrained: null``.
    pretrained_required: bool = True
    #: with a pretrained start, frozen epochs (embeddings and decoder only) trained before the lm.epochs ones:
    #: lm.epochs 4 trains 5 epochs in all, printed epoch 1/5 (frozen) to 5/5
    freeze_epochs: int = 1
    valid_pct: float = 0.1  # share of the LM text held out for perplexity

    _prefix = "lm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.freeze_epochs < 0:
            _fail("lm.freeze_epochs", f"must be >= 0, got {self.freeze_epochs}")
        if not 0 < self.valid_pct < 0.5:
            _fail("lm.valid_pct", f"must be in (0, 0.5), got {self.valid_pct}")
        if self.pretrained and self.pretrained.endswith(".pth") and not self.pretrained_vocab:
            _fail("lm.pretrained_vocab", "a fastai .pth model needs its vocabulary pickle; set lm.pretrained_vocab")
        if self.pretrained_vocab and is_zoo_name(self.pretrained):
            _fail("lm.pretrained_vocab", f"{self.pretrained!r} is a zoo model, which brings its own vocabulary; "
                  "remove lm.pretrained_vocab")


@dataclass
class ClassifierConfig(StageConfig):
    """Classifier training with gradual unfreezing."""

    epochs: int = 4
    lr: float = 2e-2  # fastai's ULMFiT notebooks start the classifier at 2e-2
    use_clr: tuple[float, float] = (8.0, 3.0)
    bs: int = 32
    dropouts: Dropouts = field(default_factory=_clas_dropouts)
    drop_mult: float = 0.5  # fastai's ULMFiT notebooks train the classifier at 0.5
    #: Epochs of each gradual-unfreezing phase before everything is unfrozen: [1, 1] trains the
    #: top group 1 epoch, then the top two groups 1 epoch, then all groups for the rest. Its sum
    #: may not exceed classifier.epochs (later phases would never run).
    unfreeze: list[int] = field(default_factory=lambda: [1, 1, 1])
    lin_ftrs: list[int] = field(default_factory=lambda: [50])  # hidden layer sizes of the head after concat pooling
    backwards: bool | None = None  # None: the same direction as the language model (lm.backwards)
    head_p: float = 0.1  # dropout before each hidden head layer after the first (fastai's ps)
    max_seq: int = 1400  # gradients and pooling cover the last max_seq tokens (fastai max_len=72*20)
    max_len: int = 3000  # longer documents are truncated to their first max_len tokens, with a warning
    from_scratch: bool = False  # True: no language-model stage, random encoder (ablation)

    _prefix = "classifier"

    def __post_init__(self) -> None:
        super().__post_init__()
        if any(int(e) < 0 for e in self.unfreeze):
            _fail("classifier.unfreeze", f"epochs per phase must be >= 0, got {self.unfreeze}")
        if not self.from_scratch and sum(int(e) for e in self.unfreeze) > self.epochs:
            _fail("classifier.unfreeze", f"{list(self.unfreeze)} takes {sum(int(e) for e in self.unfreeze)} epochs "
                                         f"but classifier.epochs is {self.epochs}: the later phases would never run; "
                                         "shorten it (e.g. [1]) or train more epochs")
        if any(int(n) < 1 for n in self.lin_ftrs):
            _fail("classifier.lin_ftrs", f"head layer sizes must be >= 1, got {self.lin_ftrs}")
        _check_prob("classifier", "head_p", self.head_p)
        if self.max_seq < self.bptt:
            _fail("classifier.max_seq", f"must be >= classifier.bptt ({self.bptt}), got {self.max_seq}")
        if self.max_len < 1:
            _fail("classifier.max_len", f"must be >= 1, got {self.max_len}")


# --- data and text -------------------------------------------------------------------------


TOKENIZERS = ("words", "subwords")
SUBWORD_MODELS = ("unigram", "bpe")
_SUBWORD_KEYS = ("tokenizer", "subword_model", "subword_vocab")


def text_settings(text: Mapping[str, Any]) -> dict[str, Any]:
    """The ``text:`` section as fingerprints and cache keys see it: with word tokens, without the subword keys
    (as before they existed, so earlier language models, caches and checkpoints are still found)."""
    d = dict(text)
    if d.get("tokenizer", "words") == "words":
        for k in _SUBWORD_KEYS:
            d.pop(k, None)
    return d


@dataclass
class TextConfig:
    """Tokenization and vocabulary."""

    #: words: fastai's rules, then spaCy's English word tokens. subwords: fastai's rules, then SentencePiece
    #: units learnt from the language model's own text (training and unlabeled documents, never validation or
    #: test), as fastai v2's SentencePieceTokenizer and MultiFiT do (docs/SUBWORDS.md)
    tokenizer: str = "words"
    max_vocab: int = 60000  # words: the most frequent tokens kept, special tokens included (then padded to a multiple of 8)
    min_freq: int = 2  # words: tokens seen fewer times become xxunk
    subword_model: str = "unigram"  # subwords: SentencePiece's unigram language model, or bpe
    subword_vocab: int = 15000  # subwords: the units learnt, special tokens included (MultiFiT: 15,000)

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            _fail("text.tokenizer", f"must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.max_vocab < 16:
            _fail("text.max_vocab", f"must be >= 16, got {self.max_vocab}")
        if self.min_freq < 1:
            _fail("text.min_freq", f"must be >= 1, got {self.min_freq}")
        if self.subword_model not in SUBWORD_MODELS:
            _fail("text.subword_model", f"must be one of {list(SUBWORD_MODELS)}, got {self.subword_model!r}")
        if self.subword_vocab < 32:
            _fail("text.subword_vocab", f"must be >= 32 (the special tokens and single characters), got "
                                        f"{self.subword_vocab}")


@dataclass
class DataConfig:
    """Where the labeled (and optionally unlabeled) text comes from.

    ``dataset`` names a folder under the data directory (``--data-dir`` / ``ULMFIT_DATA``) laid
    out as ``NAME/train.csv[.gz]``, ``NAME/test.csv[.gz]`` and optionally ``NAME/unsup.csv[.gz]``;
    or give ``train`` (and ``test``/``valid``/``unlabeled``) as paths. Paths may be CSV/TSV
    (optionally gzipped) or a folder laid out as ``label/*.txt``.
    """

    #: a named dataset: the folder NAME under the data directory (--data-dir, $ULMFIT_DATA or ./data)
    #: holding train.csv[.gz], test.csv[.gz] and optionally unsup.csv[.gz]
    dataset: str | None = None
    train: str | None = None  # labeled training data: a CSV/TSV file (gzip allowed) or a folder of LABEL/*.txt
    valid: str | None = None  # labeled validation data, as train; default: valid_pct of train, stratified
    test: str | None = None  # labeled test data, evaluated after training; no stage ever trains on it
    #: text without labels for the language model: a CSV/TSV file with a ``text`` column, a folder of
    #: .txt files (one document each), or a .txt file with one document per line
    unlabeled: str | None = None
    #: Held-out text for the language model's perplexity when pretraining (``launch.py pretrain``), in
    #: ``unlabeled``'s formats; default: ``lm.valid_pct`` of the documents, held out of training.
    unlabeled_valid: str | None = None
    #: text column(s); several are joined as xxfld fields; not the label column
    text_cols: list[str] = field(default_factory=lambda: ["text"])
    label_col: str = "label"  # the label column
    valid_pct: float = 0.1  # held out from train when no valid file is given
    max_train_rows: int | None = None  # a reproducible random slice of train, for quick runs
    max_unlabeled_rows: int | None = None  # a reproducible random slice of the unlabeled documents
    use_unlabeled: bool = True  # add the dataset's unlabeled text to the language-model stage

    def __post_init__(self) -> None:
        if isinstance(self.text_cols, str):
            self.text_cols = [self.text_cols]
        if not self.dataset and not self.train and not self.unlabeled:
            _fail("data", "give data.dataset (a name such as 'trec') or data.train (a CSV/TSV file or folder); "
                  "pretraining alone may give only data.unlabeled")
        if self.dataset and self.train:  # one would silently win over the other
            _fail("data.train", f"given together with data.dataset ({self.dataset!r}), whose folder has its own "
                  "training file; give one of them: remove data.dataset (--set data.dataset=null) to train on "
                  f"{self.train}, or remove data.train")
        if not self.text_cols:
            _fail("data.text_cols", "needs at least one column name")
        if self.label_col in self.text_cols:
            _fail("data.text_cols", f"holds the label column {self.label_col!r}: the classifier would read the "
                                    "answer in its input; list the text columns only")
        if not 0 < self.valid_pct < 0.5:
            _fail("data.valid_pct", f"must be in (0, 0.5), got {self.valid_pct}")
        for name in ("max_train_rows", "max_unlabeled_rows"):
            v = getattr(self, name)
            if v is not None and v < 2:
                _fail(f"data.{name}", f"must be >= 2 or null, got {v}")


#: ``precision`` values (see ulmfit_core/precision.py): auto = bf16 autocast where the hardware computes bf16
#: natively (CUDA with bf16, CPUs with AVX512_BF16 or AMX), float32 elsewhere.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class RecipeConfig:
    """The whole recipe: data -> LM fine-tune -> classifier."""

    data: DataConfig
    text: TextConfig = field(default_factory=TextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    seed: int = 0  # seeds Python, NumPy and torch: a run on the CPU repeats exactly
    device: str = "auto"  # auto: CUDA when present, else CPU; or cpu, cuda, cuda:N
    #: Mixed precision for training (both stages): auto, fp32 or bf16. Weights, optimizer state, the
    #: recurrent state and the losses stay float32 whatever is chosen (docs/RECIPE.md).
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            _fail("device", f"must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if self.precision not in PRECISIONS:
            _fail("precision", f"must be one of {', '.join(PRECISIONS)} (auto: bf16 where the hardware has it, "
                  f"else fp32); got {self.precision!r}")
        if self.classifier.backwards is None:
            self.classifier.backwards = self.lm.backwards
        if self.classifier.backwards != self.lm.backwards and not self.classifier.from_scratch:
            _fail("classifier.backwards", "must equal lm.backwards: a backwards classifier needs a backwards "
                  "language model (set lm.backwards alone; classifier.backwards follows it)")
        units = zoo_units(self.lm.pretrained) if is_zoo_name(self.lm.pretrained) else None
        if units == "words" and self.text.tokenizer == "subwords":
            _fail("text.tokenizer", f"subwords with lm.pretrained {self.lm.pretrained!r}, a word-level zoo model (its "
                  "vocabulary is words): give lm.pretrained a subword language model (a zoo name with -sp-, or a "
                  "folder `launch.py pretrain --set text.tokenizer=subwords` writes), null to train one on this "
                  "data, or set text.tokenizer: words")
        if units == "subwords" and self.text.tokenizer == "words":
            _fail("text.tokenizer", f"words with lm.pretrained {self.lm.pretrained!r}, a subword zoo model (its "
                  "vocabulary is subword units): set text.tokenizer: subwords, or give lm.pretrained a word model "
                  "(the same name without -sp-)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# --- building from dicts, YAML and overrides -----------------------------------------------


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys with a suggestion."""
    if not isinstance(values, Mapping):
        _fail(prefix or "config", f"must be a mapping of keys to values, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls) if not f.name.startswith("_")}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {_join(prefix, close[0])}?" if close else f"; known keys: {', '.join(known)}"
            _fail(_join(prefix, key), f"unknown key{hint}")
        sub = _NESTED.get((cls, key))
        if sub and value is not None:
            fill = _PARTIAL_DEFAULTS.get((cls, key))
            if fill is not None and isinstance(value, Mapping):
                # One dropout may be set alone (`classifier.dropouts.input_p=0.3`): the others keep
                # the stage's defaults, as if the whole section had been written out.
                value = {**dataclasses.asdict(fill()), **value}
            kwargs[key] = _build(sub, value, _join(prefix, key))
        else:
            kwargs[key] = _coerce(value, str(known[key].type), _join(prefix, key))
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a required field missing
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def coerce(value: Any, type_name: str, key: str) -> Any:
    """``value`` type-checked against the annotation ``type_name`` (``int``, ``float | None``, ``list[int]``,
    ...) and converted where that loses nothing; :class:`ConfigError` naming ``key`` otherwise. The search
    settings check their scalar fields with it too."""
    return _coerce(value, type_name, key)


def _coerce(value: Any, type_name: str, key: str) -> Any:
    """Check scalar types; accept numeric strings such as YAML 1.1's ``1e-3`` for floats."""
    optional = type_name.endswith("| None")
    base = type_name.removesuffix("| None").strip()
    if value is None:
        if optional:
            return None
        _fail(key, f"must not be null (expected {base})")
    if base == "float":
        if isinstance(value, bool):
            _fail(key, f"must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            _fail(key, f"must be a number, got {value!r}")
        if not math.isfinite(number):  # inf and nan pass every comparison a range check makes
            _fail(key, f"must be a finite number, got {value!r}")
        return number
    if base == "int":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            _fail(key, f"must be an integer, got {value!r}")
        return int(value)
    if base == "bool" and not isinstance(value, bool):
        _fail(key, f"must be true or false, got {value!r}")
    if base == "str" and not isinstance(value, str):
        _fail(key, f"must be a string, got {value!r}")
    if base.startswith(("list", "tuple")):
        if not isinstance(value, (list, tuple)):
            _fail(key, f"must be a list, got {value!r}")
        element = _ELEMENT_TYPE.match(base)
        if element:
            return [_coerce(v, element.group(1), f"{key}[{i}]") for i, v in enumerate(value)]
    return value


#: The element type of ``list[T]`` / ``tuple[T, ...]`` annotations, so list elements are checked too.
_ELEMENT_TYPE = re.compile(r"^(?:list|tuple)\[(int|float|str)\b")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


_NESTED: dict[tuple[type, str], type] = {
    (RecipeConfig, "data"): DataConfig,
    (RecipeConfig, "text"): TextConfig,
    (RecipeConfig, "model"): ModelConfig,
    (RecipeConfig, "lm"): LMConfig,
    (RecipeConfig, "classifier"): ClassifierConfig,
    (LMConfig, "dropouts"): Dropouts,
    (ClassifierConfig, "dropouts"): Dropouts,
}

_PARTIAL_DEFAULTS: dict[tuple[type, str], Any] = {
    (LMConfig, "dropouts"): _lm_dropouts,
    (ClassifierConfig, "dropouts"): _clas_dropouts,
}


def recipe_from_dict(values: Mapping[str, Any]) -> RecipeConfig:
    """Build and validate a :class:`RecipeConfig` from a nested dict (as read from YAML)."""
    values = dict(values)
    values.setdefault("data", {})
    return _build(RecipeConfig, values, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (lists, not tuples) that YAML and JSON round-trip."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


#: ``a.b[i]``: element ``i`` of the list at ``a.b``.
_INDEXED_KEY = re.compile(r"^(?P<path>[^\[\]]+)\[(?P<index>\d+)\]$")


def get_value(values: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted (optionally indexed: ``a.b[i]``) key of a nested dict; KeyError if absent."""
    m = _INDEXED_KEY.match(key)
    path, index = (m["path"], int(m["index"])) if m else (key, None)
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"{key}: no such key")
        node = node[part]
    if index is None:
        return node
    if not isinstance(node, (list, tuple)) or index >= len(node):
        raise KeyError(f"{key}: {path} is not a list with an element {index} (it is {node!r})")
    return node[index]


def set_value(values: dict[str, Any], key: str, value: Any, defaults: Mapping[str, Any] | None = None) -> None:
    """The one way a dotted key is set, for ``--set``, search trials, tracking and export. Mutates ``values``.

    ``a.b`` sets ``values["a"]["b"]``, creating sections on the way; ``a.b[i]`` sets element ``i`` of the
    list at ``a.b``, taking the list from ``defaults`` (a nested dict of the same shape, e.g.
    :func:`default_recipe`) when ``values`` does not hold it yet. A section given partly (one dropout)
    is completed with its defaults when the recipe is built (:func:`recipe_from_dict`).
    """
    m = _INDEXED_KEY.match(key)
    path = m["path"] if m else key
    parts = path.split(".")
    node = values
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {part!r} holds a value, not a section")
        node = nxt
    if m is None:
        node[parts[-1]] = value
        return
    index = int(m["index"])
    try:
        current = get_value(values, path)
    except KeyError:
        try:
            current = get_value(defaults or {}, path)
        except KeyError:
            raise ConfigError(f"{key}: no list {path} to set element {index} of") from None
    if not isinstance(current, (list, tuple)) or index >= len(current):
        raise ConfigError(f"{key}: {path} is not a list with an element {index} (it is {current!r})")
    items = list(current)
    items[index] = value
    node[parts[-1]] = items


def default_recipe() -> dict[str, Any]:
    """Every recipe value at its default, as a nested dict (the lists an indexed key changes one element of)."""
    return to_dict(RecipeConfig(data=DataConfig(dataset="default")))


def with_values(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of the nested ``base`` with each ``{dotted key: value}`` set. Pure."""
    out: dict[str, Any] = copy.deepcopy(dict(base))
    defaults = default_recipe()
    for key, value in values.items():
        set_value(out, key, value, defaults)
    return out


def build_recipe(base: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> RecipeConfig:
    """The validated :class:`RecipeConfig` of a nested base recipe with ``{dotted key: value}`` set."""
    return recipe_from_dict(with_values(base, values or {}))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (values parsed as YAML: ``lm.use_clr=[32,10]``) -> ``{key: value}``."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set classifier.lr=0.01")
        key, raw = item.split("=", 1)
        try:
            parsed[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
    return parsed


def apply_overrides(values: dict[str, Any], overrides: list[str],
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply ``key=value`` strings to ``values`` with :func:`set_value`; returns ``values``."""
    for key, value in parse_overrides(overrides).items():
        set_value(values, key, value, defaults)
    return values


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, lm, classifier, ...)")
    return values


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                base: Mapping[str, Any] | None = None) -> RecipeConfig:
    """YAML file (optional) + ``key=value`` overrides -> validated :class:`RecipeConfig`.

    Errors from a file name the file (and the key); the key's line is added when it can be found.
    """
    # A deep copy: overrides set nested keys, and a caller's ``base`` must serve the next call unchanged.
    values: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if path is not None:
        values = _deep_merge(values, read_yaml(path))
    apply_overrides(values, overrides or [], default_recipe())
    try:
        return recipe_from_dict(values)
    except ConfigError as e:
        if path is None:
            raise
        key = str(e).split(":", 1)[0]
        line = _line_of_key(Path(path), key)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {e}") from None


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _line_of_key(path: Path, dotted: str) -> int | None:
    """1-based line of a dotted key in a YAML file, or None."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == part:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line
