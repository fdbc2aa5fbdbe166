"""The search space, declared in YAML: parsed and validated; it declares and computes nothing.

A trial's recipe is the base recipe with the sampled values set by ``ulmfit_core.config.build_recipe``
(the same dotted setter as ``--set``).

A space maps a recipe key to a distribution::

    classifier.drop_mult: {type: loguniform, low: 0.2, high: 2.0}
    classifier.lrm:       {type: uniform, low: 1.5, high: 4.0}
    classifier.use_clr[0]: {type: choice, values: [8, 16, 32, 64]}   # element 0 of a list value
    classifier.unfreeze[0]: {type: int, low: 0, high: 2}
    lm.lr: {type: loguniform, low: 1e-4, high: 1e-2, when: {classifier.from_scratch: false}}

Keys are the dotted keys of :class:`ulmfit_core.config.RecipeConfig` (the same as ``--set``); a
``[i]`` suffix addresses one element of a list value (STLR's ``use_clr: [ratio, cut]``, ``betas``,
``unfreeze``, ``lin_ftrs``). Types:

======================  ==========================================================
``loguniform``          float, ``low`` > 0, sampled uniformly in log space
``uniform``             float in [``low``, ``high``]; optional ``step``
``int``                 integer in [``low``, ``high``]; optional ``step``, ``log``
``choice``              one of ``values`` (alias ``categorical``; a bare list is shorthand);
                        values are scalars: null, bool, int, float or str
======================  ==========================================================

``when: {KEY: VALUE}`` (or ``{KEY: [V1, V2]}``, any of) makes a parameter conditional: it is sampled
only when ``KEY`` -- a parameter declared *earlier* in the space, or else the base recipe's value --
equals one of the values; otherwise the base recipe's value stays. Sampling is Optuna's
define-by-run (:meth:`SearchSpace.sample`), so TPE sees the conditional structure.

:meth:`SearchSpace.validate` checks everything before any trial runs: structure, bounds, and that a
recipe built with every parameter at each of its extremes (each choice) is a valid ``RecipeConfig``
-- which catches unknown keys (with ``did you mean``) and values the recipe refuses.
"""
from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from search.errors import SpaceError, fail
from ulmfit_core.config import ConfigError, build_recipe, get_value, to_dict

#: The space searched when a search config declares none (issue 4): dropout multiplier, discriminative
#: rate factor, STLR (ratio, cut), classifier learning rate and weight decay.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "classifier.drop_mult": {"type": "loguniform", "low": 0.2, "high": 2.0},
    "classifier.lrm": {"type": "uniform", "low": 1.5, "high": 4.0},
    "classifier.use_clr[0]": {"type": "choice", "values": [8, 16, 32, 64]},  # STLR ratio
    "classifier.use_clr[1]": {"type": "choice", "values": [3, 5, 10, 20]},  # STLR cut
    "classifier.lr": {"type": "loguniform", "low": 1e-3, "high": 5e-2},
    "classifier.wd": {"type": "loguniform", "low": 1e-4, "high": 0.3},
}

#: The paper's values for the default space's keys (ULMFiT sections 3-4): the classifier's dropouts as
#: in the paper (fastai's base classifier dropouts x 1.0), lr 0.01, discriminative factor 2.6, STLR ratio 32
#: and cut_frac 0.1; weight decay 0.01 is fastai's (the paper does not give one). ``search.points_to_evaluate:
#: [paper]`` tries them first (restricted to the keys a space searches and can draw).
PAPER_POINT: dict[str, Any] = {
    "classifier.drop_mult": 1.0, "classifier.lrm": 2.6, "classifier.use_clr[0]": 32, "classifier.use_clr[1]": 10,
    "classifier.lr": 0.01, "classifier.wd": 0.01,
}
PAPER = "paper"  # the name of PAPER_POINT in search.points_to_evaluate

#: Keys the language-model stage depends on (what its sharing key ``stages.lm_key`` hashes: an explicit
#: ``precision`` included). Searching them gives each trial its own LM, so it needs ``search.search_lm: true``.
LM_STAGE_PREFIXES = ("data.", "text.", "model.", "lm.", "seed", "precision")
#: LM-stage keys a ``search_lm: false`` search may still search as a choice: one language model per value (per
#: combination) is trained before the trials, and each trial loads the one of its values.
UP_FRONT_KEYS = ("text.tokenizer", "text.subword_vocab", "text.subword_model")

_TYPES = {"loguniform", "uniform", "int", "choice", "categorical"}
_FIELDS = {
    "loguniform": {"type", "low", "high", "when"},
    "uniform": {"type", "low", "high", "step", "when"},
    "int": {"type", "low", "high", "step", "log", "when"},
    "choice": {"type", "values", "when"},
}
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(\[\d+\])?$")


def _fail(key: str, message: str) -> NoReturn:
    fail(f"space.{key}", message, SpaceError)


@dataclass(frozen=True)
class Param:
    """One searched recipe value."""

    key: str
    type: str  # loguniform | uniform | int | choice
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # ((key, allowed values), ...): all must hold

    @classmethod
    def parse(cls, key: Any, spec: Any) -> Param:
        if not isinstance(key, str) or not _KEY.match(key):
            _fail(str(key), "keys are dotted recipe keys such as classifier.lr, optionally with [i] "
                            "for a list element (classifier.use_clr[0])")
        if isinstance(spec, list):  # shorthand for a choice
            spec = {"type": "choice", "values": spec}
        if not isinstance(spec, Mapping):
            _fail(key, f"must be a mapping such as {{type: loguniform, low: 1e-3, high: 1e-1}} or a list of "
                       f"choices; got {spec!r} (fixed values belong in the recipe: section)")
        kind = spec.get("type")
        if kind not in _TYPES:
            _fail(key, f"type must be one of {sorted(_TYPES)}; got {kind!r}")
        kind = "choice" if kind == "categorical" else kind
        unknown = set(spec) - _FIELDS[kind]
        if unknown:
            _fail(key, f"unknown field(s) {sorted(unknown)} for type {kind}; allowed: {sorted(_FIELDS[kind])}")
        when = _parse_when(key, spec.get("when"))
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                _fail(key, "a choice needs a non-empty list: values: [a, b, ...]")
            for v in values:
                if v is not None and not isinstance(v, (bool, int, float, str)):
                    _fail(key, f"choice values must be null, bool, int, float or str (Optuna's categorical); "
                               f"got {v!r}. For a list value search its elements: {key}[0], {key}[1]")
            if len(set(map(repr, values))) != len(values):
                _fail(key, f"duplicate choice values in {values}")
            return cls(key, "choice", values=tuple(values), when=when)
        for bound in ("low", "high"):
            v = spec.get(bound)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                _fail(key, f"{bound} must be a finite number; got {v!r}")
        low, high = spec["low"], spec["high"]
        if low >= high:
            _fail(key, f"low must be < high; got low={low!r}, high={high!r}")
        log = kind == "loguniform" or bool(spec.get("log", False))
        if log and low <= 0:
            _fail(key, f"a log-scaled range needs low > 0; got low={low!r}")
        step = spec.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            _fail(key, f"step must be a positive number; got {step!r}")
        if kind == "int":
            if int(low) != low or int(high) != high or (step is not None and int(step) != step):
                _fail(key, f"an int range needs integer low/high/step; got low={low!r}, high={high!r}, step={step!r}")
            if log and step not in (None, 1):
                _fail(key, "Optuna cannot combine log: true with a step other than 1")
            return cls(key, "int", low=int(low), high=int(high), step=int(step) if step else None, log=log, when=when)
        return cls(key, kind, low=float(low), high=float(high), step=float(step) if step else None,
                   log=log, when=when)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "choice":
            out["values"] = list(self.values)
        else:
            out.update(low=self.low, high=self.high)
            if self.step is not None:
                out["step"] = self.step
            if self.type == "int" and self.log:
                out["log"] = True
        if self.when:
            out["when"] = {k: list(v) if len(v) > 1 else v[0] for k, v in self.when}
        return out

    def suggest(self, trial: Any) -> Any:
        """Draw a value from an Optuna trial (define-by-run)."""
        if self.type == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (a choice offered; a number in range, on its step)."""
        if self.type == "choice":
            return any(_same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.type == "int" and int(value) != value:
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-9

    def distribution(self) -> Any:
        """The Optuna distribution :meth:`suggest` draws from (to add trials that ran elsewhere)."""
        import optuna

        if self.type == "choice":
            return optuna.distributions.CategoricalDistribution(list(self.values))
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def extremes(self) -> list[Any]:
        """The values validation builds a recipe with: both bounds, or every choice."""
        return list(self.values) if self.type == "choice" else [self.low, self.high]

    def active(self, values: Mapping[str, Any], base: Mapping[str, Any]) -> bool:
        """Whether this parameter is sampled, given the values drawn so far and the base recipe."""
        for key, allowed in self.when:
            current = values[key] if key in values else get_value(base, key)
            if not any(_same(current, a) for a in allowed):
                return False
        return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _parse_when(key: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        _fail(key, f"when must be a mapping {{KEY: VALUE or [VALUES]}}; got {when!r}")
    out = []
    for k, v in when.items():
        if not isinstance(k, str) or not _KEY.match(k):
            _fail(key, f"when: {k!r} is not a dotted recipe key")
        allowed = tuple(v) if isinstance(v, list) else (v,)
        if not allowed:
            _fail(key, f"when: {k} lists no values")
        out.append((k, allowed))
    return tuple(out)


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of :class:`Param`; the order is the sampling order (conditions look back)."""

    params: tuple[Param, ...] = field(default_factory=tuple)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> SearchSpace:
        """Parse a ``space:`` mapping; ``None`` gives :data:`DEFAULT_SPACE`."""
        if spec is None:
            spec = DEFAULT_SPACE
        if not isinstance(spec, Mapping) or not spec:
            raise SpaceError("space: must be a non-empty mapping of recipe keys to distributions "
                             "(omit it for the default space)")
        params = tuple(Param.parse(k, v) for k, v in spec.items())
        seen: set[str] = set()
        for p in params:
            for k, _ in p.when:
                if k == p.key:
                    _fail(p.key, "a parameter cannot be conditional on itself")
                if k not in seen and any(q.key == k for q in params):
                    _fail(p.key, f"when: {k} is searched too but declared later; declare {k} first")
            seen.add(p.key)
        return cls(params)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.key: p.to_dict() for p in self.params}

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def param(self, key: str) -> Param | None:
        return next((p for p in self.params if p.key == key), None)

    def outside(self, values: Mapping[str, Any]) -> str | None:
        """Why ``values`` ({key: value}) is not a point of this space (a key it does not search, a choice it
        does not offer, a number out of range), or None when every value is one the space can draw."""
        for key, value in values.items():
            p = self.param(key)
            if p is None:
                return f"{key} is not searched (the space has {', '.join(self.keys)})"
            if not p.contains(value):
                allowed = list(p.values) if p.type == "choice" else f"[{p.low}, {p.high}]"
                return f"{key}={value!r} is outside the space ({p.type} {allowed})"
        return None

    def paper_point(self) -> dict[str, Any]:
        """:data:`PAPER_POINT` restricted to what this space searches and can draw (the rest is sampled)."""
        return {k: v for k, v in PAPER_POINT.items() if self.param(k) is not None and self.param(k).contains(v)}

    def touches_lm_stage(self) -> list[str]:
        """Searched keys that change the language-model stage (and so its sharing key)."""
        return [k for k in self.keys if k.startswith(LM_STAGE_PREFIXES)]

    def up_front(self) -> list[Param]:
        """The LM-stage parameters whose every value gets a language model before the trials
        (:data:`UP_FRONT_KEYS`, unconditional choices)."""
        return [p for p in self.params if p.key in UP_FRONT_KEYS and p.type == "choice" and not p.when]

    def lm_settings(self) -> list[dict[str, Any]]:
        """Every combination of the :meth:`up_front` parameters' values (``[{}]`` without any)."""
        import itertools

        params = self.up_front()
        return [dict(zip((p.key for p in params), values)) for values in itertools.product(*(p.values for p in params))]

    def sample(self, trial: Any, base: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna define-by-run: draw the active parameters in order; returns ``{key: value}``."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values, base):
                values[p.key] = p.suggest(trial)
        return values

    def validate(self, base: Mapping[str, Any], search_lm: bool) -> None:
        """Raise :class:`SpaceError` unless every parameter at each extreme builds a valid recipe.

        ``base`` is the nested base recipe. With ``search_lm`` false, parameters of the LM stage are
        refused: every trial would train its own LM and the sharing the config asked for would not happen.
        """
        try:
            base_values = to_dict(build_recipe(base))
        except ConfigError as e:
            raise ConfigError(f"recipe: {e}") from None
        up_front = {p.key for p in self.up_front()}
        blocking = [k for k in self.touches_lm_stage() if k not in up_front]
        if not search_lm and blocking:
            raise SpaceError(
                f"space: {', '.join(blocking)} change the language-model stage, but search.search_lm is false "
                f"(all trials share one fine-tuned LM; only a choice of {', '.join(UP_FRONT_KEYS)} gets one LM per "
                f"value, trained before the trials). Set search.search_lm: true to search them, or fix their "
                f"values in the recipe: section")
        searched = {q.key: q for q in self.params}
        for p in self.params:
            for k, allowed in p.when:
                if k in searched:
                    q = searched[k]
                    if q.type == "choice":
                        can = [a for a in allowed if any(_same(a, v) for v in q.values)]
                        offered = list(q.values)
                    else:
                        can = [a for a in allowed if isinstance(a, (int, float)) and not isinstance(a, bool)
                               and q.low <= a <= q.high]
                        offered = f"a number in [{q.low}, {q.high}]"
                else:
                    try:
                        fixed = get_value(base_values, k)
                    except KeyError:
                        _fail(p.key, f"when: {k} is neither a searched key nor a recipe key")
                    can, offered = [a for a in allowed if _same(a, fixed)], f"{fixed!r} (the recipe's, not searched)"
                if not can:
                    _fail(p.key, f"when: {k} can never be {' or '.join(map(repr, allowed))}: it is {offered}; "
                                 f"{p.key} would never be sampled. Give {k} a value it can take")
        with warnings.catch_warnings():  # the extremes may cap dropouts: that warns per trial, not here
            warnings.simplefilter("ignore")
            self._validate_extremes(base)

    def _validate_extremes(self, base: Mapping[str, Any]) -> None:
        for p in self.params:  # each parameter alone at each extreme: errors name the parameter
            for v in p.extremes():
                try:
                    build_recipe(base, {p.key: v})
                except (ConfigError, KeyError, IndexError, TypeError) as e:
                    msg = str(e).strip("'\"")
                    _fail(p.key, f"value {v!r} does not make a valid recipe: {msg}")
        for corner in (0, -1):  # all together at their low / high ends: combinations the recipe refuses
            values = {p.key: p.extremes()[corner] for p in self.params}
            try:
                build_recipe(base, values)
            except (ConfigError, KeyError, IndexError, TypeError) as e:
                raise SpaceError(f"space: the values {values} together do not make a valid recipe: "
                                 f"{str(e).strip(chr(39))}") from None
