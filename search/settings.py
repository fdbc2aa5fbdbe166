"""The search-config file: base recipe + search space + search settings + MLflow settings.

::

    recipe:                  # the base recipe (same keys as a training config); or a path to one
      data: {dataset: trec, max_train_rows: 1500}
      model: {preset: tiny}
      classifier: {epochs: 4}
    space:                   # search/space.py; omit for space.DEFAULT_SPACE
      classifier.lr: {type: loguniform, low: 1.0e-3, high: 5.0e-2}
    search:
      name: trec_demo        # Ray experiment folder <storage>/<name>-<time>; default MLflow experiment
      num_samples: 12
      max_concurrent: 2
      resources: {cpu: 1, gpu: 0}   # per trial; gpu may be fractional (0.5: two trials per GPU)
      metric: valid_accuracy        # one of ulmfit_core.metrics.METRICS
      mode: max                     # default: min for *loss, else max
      seed: 0                       # the sampler's seed
      algorithm: tpe                # Optuna sampler: tpe, or random
      search_lm: false              # searching lm.*/model.*/text.*/data.*/seed gives each trial its own LM
      scheduler: {grace_period: 1, reduction_factor: 2}   # ASHA; time unit = classifier epoch
                                    # {type: fifo}: no early stopping
                                    # rungs: unfreeze (ASHA decides where an unfreezing phase ends) or [2, 4]
      warm_start: [runs/search/trec_demo-20250101-120000, trec_demo]   # earlier searches (folder or
                                    # MLflow experiment) whose trials TPE starts from (docs/SEARCH.md)
      points_to_evaluate: [paper, {classifier.lr: 0.01, classifier.drop_mult: 0.7}]   # tried first;
                                    # paper: the paper's values (space.PAPER_POINT)
      max_failures: 2               # retries of a failed trial, each from its last checkpoint
      storage: runs/search          # Ray results, checkpoints, shared LM and corpus caches
    mlflow:
      tracking_uri: sqlite:///mlflow.db   # or http://HOST:5000 for a tracking server
      artifact_location: mlartifacts      # for a local store; a server keeps its own
      experiment: trec_demo               # default: search.name

Each section validates itself when built and raises :class:`SearchConfigError` naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from search import portable
from search.errors import SearchConfigError, SpaceError, fail
from search.rungs import UNFREEZE_RUNGS, check_scheduler
from search.space import PAPER, SearchSpace
from ulmfit_core import zoo
from ulmfit_core.config import ConfigError, apply_overrides, coerce, default_recipe, read_yaml, recipe_from_dict, to_dict
from ulmfit_core.metrics import METRICS


@dataclass
class Resources:
    """Per-trial resources. Torch threads in a trial = ``cpu`` (so trials never oversubscribe cores)."""

    cpu: float = 1  # CPUs per trial (also its torch threads)
    gpu: float = 0  # GPUs per trial; a fraction shares one (0.5: two trials per GPU)

    def __post_init__(self) -> None:
        if not isinstance(self.cpu, (int, float)) or self.cpu < 1:
            fail("search.resources.cpu", f"must be >= 1 (a trial's torch threads = its CPUs); got {self.cpu!r}")
        if not isinstance(self.gpu, (int, float)) or self.gpu < 0:
            fail("search.resources.gpu", f"must be >= 0 (fractions share a GPU); got {self.gpu!r}")
        if self.gpu > 1 and self.gpu != int(self.gpu):
            fail("search.resources.gpu", f"more than one GPU must be a whole number; got {self.gpu}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpu))


#: ``search.algorithm``: how Optuna samples values. ``random`` (with ``scheduler.type: fifo``) is the
#: plain random search that the benchmarks compare TPE + ASHA against.
ALGORITHMS = ("tpe", "random")
SCHEDULERS = ("asha", "fifo")


@dataclass
class AshaSettings:
    """The trial scheduler: ASHA (async successive halving; the default; search/schedulers.py) or ``fifo``
    (no early stopping, every trial runs all its epochs). ``max_t`` defaults to the recipe's
    ``classifier.epochs`` and may not be below it.

    ``rungs`` (ASHA only) replaces ASHA's decision points (``grace_period x reduction_factor**k``) with
    the epochs where the recipe changes (``unfreeze``: the end of each gradual-unfreezing phase) or an
    explicit list of epochs; rungs before ``grace_period`` are dropped."""

    type: str = "asha"  # asha, or fifo: no early stopping
    grace_period: int = 1  # classifier epochs every trial runs before ASHA may stop it
    reduction_factor: float = 2  # at each rung ASHA lets the best 1/reduction_factor of the trials go on
    brackets: int = 1  # ASHA's brackets (1: plain successive halving)
    max_t: int | None = None  # the most epochs a trial runs; default: the largest classifier.epochs it can have
    rungs: str | list[int] | None = None  # ASHA's decision points: unfreeze (the ends of the unfreezing phases), or [epochs]

    def __post_init__(self) -> None:
        if self.type not in SCHEDULERS:
            fail("search.scheduler.type", f"must be one of {list(SCHEDULERS)}; got {self.type!r}")
        if self.grace_period < 1:
            fail("search.scheduler.grace_period", f"must be >= 1 epoch; got {self.grace_period}")
        if self.reduction_factor <= 1:
            fail("search.scheduler.reduction_factor", f"must be > 1; got {self.reduction_factor}")
        if self.brackets < 1:
            fail("search.scheduler.brackets", f"must be >= 1; got {self.brackets}")
        if self.max_t is not None and self.max_t < self.grace_period:
            fail("search.scheduler.max_t", f"must be >= grace_period ({self.grace_period}); got {self.max_t}")
        self._check_rungs()

    def _check_rungs(self) -> None:
        if self.rungs is None:
            return
        if self.type != "asha":
            fail("search.scheduler.rungs", f"places ASHA's decision points; scheduler.type is {self.type!r}. "
                                           f"Remove rungs, or set type: asha")
        if self.rungs == UNFREEZE_RUNGS:
            return
        if (not isinstance(self.rungs, list) or not self.rungs
                or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in self.rungs)):
            fail("search.scheduler.rungs", f"must be {UNFREEZE_RUNGS!r} or a list of epochs >= 1 such as [2, 4]; "
                                           f"got {self.rungs!r}")
        if sorted(set(self.rungs)) != self.rungs:
            fail("search.scheduler.rungs", f"list the epochs in increasing order, each once; got {self.rungs}")


@dataclass
class SearchSettings:
    """How the search runs: how many trials, on what, optimising which metric, stopped by what."""

    name: str = "search"  # the search folder <storage>/<name>-<time>, and the default MLflow experiment
    num_samples: int = 8  # trials in all
    max_concurrent: int = 2  # trials at once, at most (Ray runs fewer when the resources do not allow more)
    resources: Resources = field(default_factory=Resources)
    metric: str = "valid_accuracy"  # what the search optimises: valid_accuracy, valid_loss, valid_macro_f1 or train_loss
    mode: str | None = None  # max or min; default (and the only one accepted): min for a loss, else max
    seed: int = 0  # the sampler's seed
    algorithm: str = "tpe"  # Optuna's sampler: tpe (TPESampler) or random (RandomSampler), seeded by `seed`
    #: true lets the space hold lm.*, model.*, text.*, data.* and seed: each language-model setting then
    #: trains its own LM (once, shared by the trials that sample it); false: one LM, trained before the trials
    search_lm: bool = False
    scheduler: AshaSettings = field(default_factory=AshaSettings)
    max_failures: int = 2  # retries of a failed trial, each from its last checkpoint (-1: forever)
    storage: str = "runs/search"  # Ray results, checkpoints, LM and corpus caches; on a cluster a folder every node sees
    num_cpus: int | None = None  # a local Ray instance's CPUs (default: all cores); ignored with --address
    reuse_actors: bool = True  # a trial process (torch, spaCy loaded) serves the next trial: ~3 s saved each
    lm_root: str | None = None  # default <storage>/_lm_cache: LMs shared by every search in this storage
    cache_dir: str | None = None  # default <storage>/_corpus_cache
    data_dir: str | None = None  # where data.dataset names are looked up (default: $ULMFIT_DATA or ./data)
    models_dir: str | None = None  # where zoo models named by lm.pretrained are (default: $ULMFIT_MODELS or ./models)
    object_store_mb: int = 256  # a local Ray's object store (trials pass nothing big through it)
    verbose: int = 1  # console progress: 0 silent; 1 the live trial table (search/progress.py); 2-3 add Ray's per-trial lines
    #: Earlier searches (a search folder, or an MLflow experiment: its newest search) whose finished and
    #: pruned trials seed this search's study before its first trial (search/warm_start.py).
    warm_start: list[str] = field(default_factory=list)
    #: Configurations tried first: ``paper`` (the paper's values) or ``{space key: value}`` (keys left out
    #: are sampled).
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            fail("search.name", f"must be a plain folder name; got {self.name!r}")
        if self.num_samples < 1:
            fail("search.num_samples", f"must be >= 1; got {self.num_samples}")
        if self.max_concurrent < 1:
            fail("search.max_concurrent", f"must be >= 1; got {self.max_concurrent}")
        if self.algorithm not in ALGORITHMS:
            fail("search.algorithm", f"must be one of {list(ALGORITHMS)}; got {self.algorithm!r}")
        if self.metric not in METRICS:
            fail("search.metric", f"must be one of {list(METRICS)}; got {self.metric!r}")
        better = "min" if self.metric.endswith("loss") else "max"  # a loss falls, a score rises
        if self.mode is None:
            self.mode = better
        if self.mode not in ("min", "max"):
            fail("search.mode", f"must be min or max; got {self.mode!r}")
        if self.mode != better:
            fail("search.mode", f"{self.mode} would seek the worst {self.metric} (better is {better}: "
                                f"{'lower' if better == 'min' else 'higher'}); set mode: {better} or leave mode out")
        if self.max_failures < -1:
            fail("search.max_failures", f"must be >= 0 (or -1: retry forever); got {self.max_failures}")
        if self.num_cpus is not None and self.num_cpus < 1:
            fail("search.num_cpus", f"must be >= 1; got {self.num_cpus}")
        self.warm_start = [_warm_start_entry(i, e) for i, e in enumerate(_as_list("search.warm_start", self.warm_start))]
        self.points_to_evaluate = _as_list("search.points_to_evaluate", self.points_to_evaluate)
        for i, point in enumerate(self.points_to_evaluate):
            if point != PAPER and (not isinstance(point, Mapping) or not point):
                fail(f"search.points_to_evaluate[{i}]", f"must be a mapping {{space key: value}} or {PAPER!r} "
                                                        f"(the paper's values); got {point!r}")


def _as_list(key: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        fail(key, f"must be a list; got {value!r}")
    return value


def _warm_start_entry(i: int, entry: Any) -> str:
    """A search folder (made absolute, so a resume or a later reader finds it) or an MLflow experiment name."""
    if not isinstance(entry, str) or not entry.strip():
        fail(f"search.warm_start[{i}]", f"must be a search folder or an MLflow experiment name; got {entry!r}")
    path = Path(entry).expanduser()
    return str(path.resolve()) if path.is_dir() else entry


@dataclass
class TrackingSettings:
    """Where the search is recorded in MLflow (search/tracking.py; what lands there: docs/RESULTS.md)."""

    tracking_uri: str = "sqlite:///mlflow.db"  # a local store (sqlite:///PATH) or a tracking server (http://HOST:PORT)
    artifact_location: str | None = "mlartifacts"  # where a new experiment of a local store keeps artifacts
    experiment: str | None = None  # default: search.name
    log_checkpoints: bool = True  # each trial's best checkpoint (+ vocab) as run artifacts

    def __post_init__(self) -> None:
        # Absolute, so a resume (or export) from another directory finds the same store.
        if self.tracking_uri.startswith("sqlite:///") and not self.tracking_uri.startswith("sqlite:////"):
            self.tracking_uri = "sqlite:///" + str(Path(self.tracking_uri[len("sqlite:///"):]).resolve())
        if self.artifact_location and "://" not in self.artifact_location:
            self.artifact_location = str(Path(self.artifact_location).expanduser().resolve())


@dataclass
class SearchConfig:
    """Everything one search needs; :meth:`to_dict` round-trips through :func:`search_config_from_dict`."""

    recipe: dict[str, Any]  # nested base recipe as written (paths made absolute)
    space: SearchSpace
    search: SearchSettings
    mlflow: TrackingSettings
    #: Lines the search prints before it starts (what the smoke test changed), not part of the config.
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def experiment(self) -> str:
        return self.mlflow.experiment or self.search.name

    @property
    def epochs(self) -> int:
        """The most classifier epochs a trial can run: the recipe's, or the largest a searched
        ``classifier.epochs`` can take (so ASHA's ``max_t`` never cuts a trial short of its own length,
        which would look like an early stop)."""
        epochs = recipe_from_dict(self.recipe).classifier.epochs
        searched = [max(p.extremes()) for p in self.space.params if p.key == "classifier.epochs"]
        return max([epochs, *searched])

    @property
    def max_t(self) -> int:
        return self.search.scheduler.max_t or self.epochs

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": copy.deepcopy(self.recipe), "space": self.space.to_dict(),
                "search": to_dict(self.search), "mlflow": to_dict(self.mlflow)}

    def validate(self) -> None:
        """Everything checkable before Ray starts: the recipe, the space against it."""
        try:
            recipe_from_dict(self.recipe)
        except ConfigError as e:
            raise SearchConfigError(f"recipe.{e}") from None
        if self.search.scheduler.grace_period > self.max_t:
            raise SearchConfigError(
                f"search.scheduler.grace_period: {self.search.scheduler.grace_period} epochs is more than the "
                f"{self.max_t} a trial runs (recipe.classifier.epochs); lower it")
        self.space.validate(self.recipe, self.search.search_lm)
        for i, point in enumerate(self.search.points_to_evaluate):
            problem = self.space.outside(point)
            if problem:
                fail(f"search.points_to_evaluate[{i}]", problem)
        check_scheduler(self)  # needs the validated recipe and space


def _build(cls: type, values: Any, prefix: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        fail(prefix, f"must be a mapping; got {values!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        import difflib
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {prefix}.{close[0]}?" if close else f"; known: {', '.join(sorted(known))}"
        fail(f"{prefix}.{key}", f"unknown key{hint}")
    kwargs = dict(values)
    for f in fields(cls):
        sub = {"resources": Resources, "scheduler": AshaSettings}.get(f.name)
        if sub and f.name in kwargs and not dataclasses.is_dataclass(kwargs[f.name]):
            kwargs[f.name] = _build(sub, kwargs[f.name], f"{prefix}.{f.name}")
        elif f.name in kwargs:
            kwargs[f.name] = _checked_scalar(kwargs[f.name], str(f.type), f"{prefix}.{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SearchConfigError(f"{prefix}: {e}") from None


#: Field annotations checked as the recipe's are (``ulmfit_core.config.coerce``); lists and unions check themselves.
_SCALAR_TYPES = ("int", "float", "bool", "str")


def _checked_scalar(value: Any, type_name: str, key: str) -> Any:
    """``value`` of a scalar field type-checked (``num_samples: many`` names ``search.num_samples``, instead of
    failing later at a comparison with a message that names no key). A whole number given for a float field
    stays as written, so the recorded config keeps ``cpu: 1``."""
    if type_name.removesuffix("| None").strip() not in _SCALAR_TYPES:
        return value
    try:
        checked = coerce(value, type_name, key)
    except ConfigError as e:
        raise SearchConfigError(str(e)) from None
    return value if isinstance(checked, float) and isinstance(value, int) else checked


def search_config_from_dict(values: Mapping[str, Any], base_dir: Path | None = None) -> SearchConfig:
    """Build and validate a :class:`SearchConfig` from a mapping (as read from YAML)."""
    unknown = set(values) - {"recipe", "space", "search", "mlflow"}
    if unknown:
        fail(sorted(unknown)[0], "unknown section; a search config has recipe, space, search and mlflow")
    recipe = absolute_paths(copy.deepcopy(_recipe_section(values.get("recipe"), base_dir)))
    try:
        space = SearchSpace.from_dict(values.get("space"))
    except SpaceError as e:
        raise SearchConfigError(str(e)) from None
    cfg = SearchConfig(recipe=recipe, space=space,
                       search=_build(SearchSettings, values.get("search"), "search"),
                       mlflow=_build(TrackingSettings, values.get("mlflow"), "mlflow"))
    cfg.search.points_to_evaluate = [space.paper_point() if p == PAPER else p for p in cfg.search.points_to_evaluate]
    try:
        cfg.validate()
    except SpaceError as e:
        raise SearchConfigError(str(e)) from None
    return cfg


def _recipe_section(recipe: Any, base_dir: Path | None) -> dict[str, Any]:
    """The ``recipe:`` section as a mapping: written inline, or read from the file it names (relative to
    the search config's folder)."""
    if isinstance(recipe, str):
        path = Path(recipe).expanduser()
        recipe = read_yaml(path if path.is_absolute() or base_dir is None else base_dir / path)
    if not isinstance(recipe, Mapping):
        fail("recipe", "give the base recipe as a mapping (data, model, lm, classifier, ...) or a path to one")
    return dict(recipe)


def absolute_paths(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with its file paths made absolute (relative to the current directory), because each trial
    runs in its own working directory (on a cluster, on another machine that must see the same path); zoo
    names stay names (each trial finds them in ``search.models_dir``)."""
    return portable.recipe_paths(recipe, lambda v: portable.absolute(v, Path.cwd()))


#: ``--smoke-test``: the whole machinery in about a minute: 2 trials, tiny model, 300 rows, 2 epochs.
SMOKE_PRESET = "tiny"
SMOKE_OVERRIDES = [
    "search.num_samples=2", "search.max_concurrent=1", f"recipe.model.preset={SMOKE_PRESET}",
    "recipe.model.emb_sz=null", "recipe.model.n_hid=null", "recipe.model.n_layers=null",
    "recipe.data.max_train_rows=300", "recipe.lm.epochs=1", "recipe.classifier.epochs=2",
    "recipe.classifier.unfreeze=[1]", "recipe.text.max_vocab=2000", "search.scheduler.grace_period=1",
]


SMOKE_SUFFIX = "_smoke"


def _smoke_test_names(values: dict[str, Any]) -> None:
    """A smoke test gets its own search folder name and MLflow experiment (``NAME_smoke``), so its two tiny
    trials never mix with the real search's trials, leaderboard or registered models."""
    search = values.setdefault("search", {})
    search["name"] = str(search.get("name") or SearchSettings.name) + SMOKE_SUFFIX
    tracking = values.get("mlflow")
    if isinstance(tracking, dict) and tracking.get("experiment"):
        tracking["experiment"] = str(tracking["experiment"]) + SMOKE_SUFFIX


def smoke_test_start(values: dict[str, Any]) -> str | None:
    """The smoke test's language model: it trains the tiny model, so a pretrained model of another size is
    swapped for its tiny twin in the zoo (``general-en-small-fwd`` -> ``general-en-tiny-fwd``) when that is
    fetched, else dropped (random weights). Mutates ``values``; returns the line that says so, or None."""
    lm = values.get("recipe", {}).get("lm")
    name = lm.get("pretrained") if isinstance(lm, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if not zoo.is_zoo_name(name):
        lm["pretrained"] = None
        return (f"smoke test: the tiny model starts from random weights, not from {name} (a model of your "
                "configured size)")
    if zoo.get(name).preset == SMOKE_PRESET:
        return None
    twin = zoo.of_preset(name, SMOKE_PRESET)
    models = (values.get("search") or {}).get("models_dir")
    if twin is not None and zoo.fetched(twin, models):
        lm["pretrained"] = twin
        return f"smoke test: the tiny model starts from {twin}, the tiny twin of {name}"
    lm["pretrained"] = None
    hint = f" (`{zoo.fetch_command(twin, models)} --mirror DIR` fetches its tiny twin)" if twin else ""
    return f"smoke test: the tiny model starts from random weights, not from {name}{hint}"


def load_search_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                       smoke_test: bool = False) -> SearchConfig:
    """Read a search-config YAML, apply ``--set`` overrides (``search.num_samples=4``,
    ``recipe.classifier.epochs=2``, ...) and validate. ``path=None`` starts from an empty config."""
    values = read_yaml(path) if path is not None else {}
    base_dir = Path(path).resolve().parent if path is not None else None
    defaults = {"recipe": default_recipe()}
    try:
        # A recipe given as a file is read in first: `--set recipe.*` and the smoke test's overrides
        # change its values, as they would the same recipe written inline.
        values["recipe"] = _recipe_section(values.get("recipe", {}), base_dir)
        if smoke_test:
            apply_overrides(values, SMOKE_OVERRIDES, defaults=defaults)
            _smoke_test_names(values)
        apply_overrides(values, list(overrides or []), defaults=defaults)  # the user's --set win
    except ConfigError as e:
        raise SearchConfigError(f"{path}: {e}" if path is not None else str(e)) from None
    note = smoke_test_start(values) if smoke_test else None
    try:
        cfg = search_config_from_dict(values, base_dir)
        if note:
            cfg.notes.append(note)
        return cfg
    except SearchConfigError as e:
        raise SearchConfigError(f"{path}: {e}" if path is not None else str(e)) from None
