"""The model zoo's names: the registry of named pretrained language models, and looking names up.

A leaf module (it imports nothing of the project, does no I/O and needs no torch), so that
:mod:`ulmfit_core.config` can tell a zoo name from a path (``lm.pretrained``) without importing
:mod:`ulmfit_core.zoo`, which fetches and checks models and so depends on the rest of the recipe.
:mod:`ulmfit_core.zoo` re-exports every name here: ``from ulmfit_core.zoo import ZOO, is_zoo_name``
keeps working. See docs/MODELS.md.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class ZooError(ValueError):
    """A zoo model is unknown, not fetched, or not usable; the message names the problem and the fix."""


@dataclass(frozen=True)
class ZooEntry:
    """One named pretrained language model."""

    name: str
    direction: str  # "fwd" or "bwd": the text order it was trained on (lm.backwards)
    preset: str  # the model.preset its sizes are (config.MODEL_PRESETS)
    layout: str  # "fastai" or "ulmfit" (see ulmfit_core.zoo's docstring)
    url: str | None  # the public archive; None: only from a mirror
    description: str
    source: str
    units: str = "words"  # the text.tokenizer it was trained with: "words", or "subwords" (it holds subwords.model)

    @property
    def archive(self) -> str:
        """The archive's file name on a mirror."""
        return f"{self.name}.tgz"


# fastai v2, fastai/data/external.py: URLs.S3_MODEL = "https://s3.amazonaws.com/fast-ai-modelzoo/",
# WT103_FWD / WT103_BWD = S3_MODEL + "wt103-fwd.tgz" / "wt103-bwd.tgz".
_FASTAI_MODELZOO = "https://s3.amazonaws.com/fast-ai-modelzoo/"
_FASTAI_SOURCE = "fastai model zoo (URLs.WT103_FWD/WT103_BWD), Howard & Ruder 2018"
_GENERAL_EN_SOURCE = "this project's launch.py pretrain on the general-en corpus"


def _wt103(direction: str) -> ZooEntry:
    order = "forwards" if direction == "fwd" else "backwards"
    return ZooEntry(f"wt103-{direction}", direction, "paper", "fastai", f"{_FASTAI_MODELZOO}wt103-{direction}.tgz",
                    f"AWD-LSTM trained {order} on WikiText-103 (103M words): the ULMFiT paper's start",
                    _FASTAI_SOURCE)


def _general_en(preset: str, direction: str, units: str = "words") -> ZooEntry:
    order = "forwards" if direction == "fwd" else "backwards"
    if units == "subwords":  # configs/pretrain_general_<preset>_subwords.yaml
        return ZooEntry(f"general-en-{preset}-sp-{direction}", direction, preset, "ulmfit", None,
                        f"AWD-LSTM ({preset}) of 15k SentencePiece units trained {order} on 5.07M words of "
                        f"mixed-genre English", _GENERAL_EN_SOURCE, units)
    return ZooEntry(f"general-en-{preset}-{direction}", direction, preset, "ulmfit", None,
                    f"AWD-LSTM ({preset}) trained {order} on 5.07M words of mixed-genre English",
                    _GENERAL_EN_SOURCE)


ZOO: Mapping[str, ZooEntry] = MappingProxyType({e.name: e for e in (
    _wt103("fwd"), _wt103("bwd"),
    _general_en("small", "fwd"), _general_en("tiny", "fwd"),
    _general_en("small", "bwd"), _general_en("tiny", "bwd"),
    _general_en("tiny", "fwd", "subwords"), _general_en("tiny", "bwd", "subwords"),
    _general_en("small", "fwd", "subwords"), _general_en("small", "bwd", "subwords"),
)})


def is_zoo_name(value: str | None) -> bool:
    """Whether ``lm.pretrained`` names a zoo model rather than a path."""
    return value in ZOO


def units_of(name: str) -> str:
    """``words`` or ``subwords``: the units a zoo model was trained with."""
    return get(name).units


def get(name: str) -> ZooEntry:
    """The entry for ``name``; :class:`ZooError` listing the zoo when there is none."""
    if name not in ZOO:
        raise ZooError(f"unknown zoo model {name!r}; the zoo has {', '.join(ZOO)} "
                       "(`python launch.py models list`); for your own model give its path")
    return ZOO[name]


def for_direction(name: str, backwards: bool) -> str:
    """The entry of ``name``'s family that reads text in the asked direction: a zoo name stands for the
    forward/backward pair (``wt103-fwd`` asked backwards is ``wt103-bwd``)."""
    entry = get(name)
    wanted = "bwd" if backwards else "fwd"
    if entry.direction == wanted:
        return name
    return name[: -len(entry.direction)] + wanted


def of_preset(name: str, preset: str) -> str | None:
    """The model of ``name``'s family (same source and direction) at another size ``preset``, or None
    (``general-en-small-fwd`` at ``tiny`` is ``general-en-tiny-fwd``; fastai's WikiText-103 models come in
    one size only)."""
    entry = get(name)
    return next((e.name for e in ZOO.values() if e.source == entry.source and e.direction == entry.direction
                 and e.preset == preset and e.units == entry.units), None)


def of_units(name: str, units: str) -> str | None:
    """The model of ``name``'s family (same source, size and direction) trained with ``units`` (``words`` or
    ``subwords``), or None (``general-en-tiny-fwd`` in subwords is ``general-en-tiny-sp-fwd``)."""
    entry = get(name)
    return next((e.name for e in ZOO.values() if e.source == entry.source and e.direction == entry.direction
                 and e.preset == entry.preset and e.units == units), None)
