"""The two training stages of ULMFiT, and the whole recipe: LM fine-tuning -> classifier -> test.

Each stage takes a ``report`` callback so the caller (the CLI, or a Ray Tune trial) decides what
happens after every epoch. Nothing here imports Ray, Optuna or MLflow.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import torch

from . import artifacts, fetching, pretrained
from .artifacts import CHECKPOINT_SUBDIR, METRICS_FILE
from .awd_lstm import (
    build_classifier,
    build_language_model,
    classifier_group_names,
    classifier_layer_groups,
    lm_layer_groups,
)
from .config import RecipeConfig, build_recipe, text_settings, to_dict
from .corpus import Corpus, content_hash, prepare_corpus
from .inference import report_split, write_ensemble
from .schedule import unfreeze_phases
from .tasks import ClassifierTask, LanguageModelTask
from .train import CHECKPOINT_FILE, Trainer, resolve_device, save_checkpoint, seed_everything

ReportFn = Callable[[dict[str, float], "Path | None"], None]

_LM_DONE = "DONE"
FINGERPRINT_FILE = "fingerprint.json"
#: In a run_recipe folder: the test set's labels, confusion matrix and scores per direction and ensemble.
TEST_REPORT_FILE = "test_report.json"


# --- language model --------------------------------------------------------------------------


@dataclass
class LMResult:
    lm_dir: Path
    trained: bool  # False when an existing fine-tuned model was reused
    seconds: float  # wall time of the training that produced it (0 when it was only loaded)
    metrics: dict[str, float]


#: Bump when what the LM stage writes, or how its key is made, changes.
LM_FORMAT = "lm-v2"
#: LM settings that name the pretrained model's files: its content fingerprint goes into the key instead.
_PRETRAINED_PATHS = ("pretrained", "pretrained_vocab", "pretrained_backwards", "pretrained_required")


def lm_key(cfg: RecipeConfig, data_fingerprint: str = "", models_dir: str | Path | None = None) -> str:
    """Hash of everything the language-model stage depends on (not the classifier's settings).

    ``data_fingerprint`` is the corpus's ``lm_fingerprint``: the LM's own text, never validation or test
    text. A pretrained start counts by its files' content (a copy elsewhere has the same key), not its path.
    """
    return content_hash(LM_FORMAT, _lm_settings(cfg), _pretrained_fingerprint(cfg, models_dir), data_fingerprint)[:16]


def lm_settings_key(cfg: RecipeConfig) -> str:
    """Hash of the recipe's language-model settings alone, pretrained files named by path: two recipes
    with the same key, run on the same data with the same models folder, share one :func:`lm_key`.
    Cheap (no corpus, no file reads), so a search's driver can group its trials by LM before they run."""
    named = {k: getattr(cfg.lm, k) for k in _PRETRAINED_PATHS}
    return content_hash(LM_FORMAT, _lm_settings(cfg), named)[:16]


def _pretrained_fingerprint(cfg: RecipeConfig, models_dir: str | Path | None) -> str | None:
    source = pretrained.resolve_source(cfg.lm, models_dir)
    return pretrained.source_fingerprint(source) if source is not None else None


#: Bump when what a checkpoint holds, or what makes its run, changes meaning.
CHECKPOINT_FORMAT = 2
#: Settings that change where or how fast a run goes, not what it computes.
_RUN_ONLY_KEYS = ("device",)


def _lm_settings(cfg: RecipeConfig) -> dict[str, Any]:
    """Everything the LM stage's result depends on, as plain data (paths of pretrained files excluded:
    their content counts instead, see :func:`lm_key`)."""
    lm = {k: v for k, v in to_dict(cfg.lm).items() if k not in _PRETRAINED_PATHS}
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("test", "valid")}  # never read by the LM
    settings = {"data": data, "text": text_settings(to_dict(cfg.text)), "model": to_dict(cfg.model), "lm": lm,
                "seed": cfg.seed}
    # An explicit precision is a different training run (bf16 and fp32 weights differ); ``auto`` adds
    # nothing, so keys made before ``precision`` existed still find their models.
    if cfg.precision != "auto":
        settings["precision"] = cfg.precision
    return settings


def fingerprint(stage: str, config: dict[str, Any], data: str, itos: Sequence[str], **parts: str | None) -> dict[str, Any]:
    """What made a checkpoint or a cached model: the stage, its settings (run-only keys left out), the
    content hash of its text, of its vocabulary, and of other inputs (``parts``: the pretrained files,
    the language model under a classifier). Resuming compares fingerprints, never paths."""
    config = {k: v for k, v in config.items() if k not in _RUN_ONLY_KEYS}
    if isinstance(config.get("text"), Mapping):
        config["text"] = text_settings(config["text"])
    return {"format": CHECKPOINT_FORMAT, "stage": stage, "config": config,
            "data": data, "vocab": content_hash(list(itos)), **parts}


def _lm_fingerprint(cfg: RecipeConfig, corpus: Corpus, models_dir: str | Path | None) -> dict[str, Any]:
    return fingerprint("lm", _lm_settings(cfg), corpus.lm_fingerprint, corpus.vocab.itos,
                       pretrained=_pretrained_fingerprint(cfg, models_dir))


def _initial_lm_state(cfg: RecipeConfig, itos: list[str], models_dir: str | Path | None) -> dict[str, torch.Tensor] | None:
    """The pretrained weights ``lm.pretrained`` names (for ``lm.backwards``' direction), mapped onto
    ``itos``; None without one."""
    source = pretrained.resolve_source(cfg.lm, models_dir)
    if source is None:
        return None
    state, old_itos = pretrained.load_source(source, backwards=cfg.lm.backwards)
    return pretrained.map_to_vocab(state, old_itos, itos)


def _load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(f"{what}: the pretrained weights do not fit the configured model ({'; '.join(bad[:3])}); "
                         "set model.preset / model.emb_sz / model.n_hid / model.n_layers to the pretrained model's sizes")
    missing = model.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"{what}: the pretrained weights lack {missing[:5]}")


def build_lm_stage(cfg: RecipeConfig, corpus: Corpus, device: torch.device, models_dir: str | Path | None = None
                   ) -> tuple[torch.nn.Module, list, LanguageModelTask, Any, bool]:
    """The language model (from ``lm.pretrained`` when set), its layer groups, its task and settings, on
    ``device``; the last item says whether it starts from pretrained weights."""
    lmc = cfg.lm
    model = build_language_model(len(corpus.vocab), cfg.model, lmc.scaled_dropouts, pad_idx=corpus.vocab.pad_idx)
    init = _initial_lm_state(cfg, corpus.vocab.itos, models_dir)
    if init is not None:
        _load_matching(model, init, "lm.pretrained")
    model.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    task = LanguageModelTask(corpus.lm_train, corpus.lm_valid, lmc, device, generator)
    return model, lm_layer_groups(model), task, lmc, init is not None


def build_classifier_stage(cfg: RecipeConfig, corpus: Corpus, lm_dir: str | Path | None, device: torch.device
                           ) -> tuple[torch.nn.Module, list, ClassifierTask, Any]:
    """The classifier (its encoder from ``lm_dir`` unless ``from_scratch``), its layer groups, its task
    and settings, on ``device``."""
    cc = cfg.classifier
    model = build_classifier(len(corpus.vocab), cfg.model, cc.scaled_dropouts, n_classes=len(corpus.label_names),
                             lin_ftrs=cc.lin_ftrs, head_p=cc.head_p, bptt=cc.bptt, max_seq=cc.max_seq,
                             pad_idx=corpus.vocab.pad_idx)
    if lm_dir is not None and not cc.from_scratch:
        pretrained.load_encoder_into(model, lm_dir, corpus.vocab.itos)
    model.to(device)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    task = ClassifierTask(corpus.train.ids, corpus.train.labels, corpus.valid.ids, corpus.valid.labels,
                          len(corpus.label_names), cc, corpus.vocab.pad_idx, device, generator)
    return model, classifier_layer_groups(model), task, cc


def finetune_lm(cfg: RecipeConfig, corpus: Corpus, out_dir: str | Path, report: ReportFn | None = None,
                progress: bool = False, resume: bool = True, models_dir: str | Path | None = None) -> LMResult:
    """Train (or fine-tune from ``cfg.lm.pretrained``, a zoo name looked up in ``models_dir``) the
    language model into ``out_dir``.

    Writes the language-model files (:func:`ulmfit_core.artifacts.save_language_model`),
    ``metrics.json`` and a resumable ``checkpoint/``.
    """
    out = Path(out_dir)  # created by its first write: a start that fails (weights of another size) leaves nothing
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    lmc = cfg.lm
    model, groups, task, _, pretrained_start = build_lm_stage(cfg, corpus, device, models_dir)
    # A pretrained model first trains only its top group (embeddings/decoder, fastai's order) so
    # rows for new words catch up before the LSTMs move (fastai's fine_tune(freeze_epochs=1)).
    freeze = [lmc.freeze_epochs] if pretrained_start and lmc.freeze_epochs else []
    phases = unfreeze_phases(len(groups), freeze, lmc.epochs + sum(freeze))
    made_by = _lm_fingerprint(cfg, corpus, models_dir)
    trainer = Trainer(model, groups, lmc, phases, task, device=device, checkpoint_dir=out / CHECKPOINT_SUBDIR,
                      checkpoint_meta={"config": to_dict(cfg), "stage": "lm"}, fingerprint=made_by,
                      progress=progress, desc="lm", precision=cfg.precision)
    # A checkpoint of another run is refused before anything here is touched; without one, the final
    # files of an earlier run go first, so the folder never pairs old weights with this run's vocabulary.
    if not (resume and trainer.resume_from(out / CHECKPOINT_SUBDIR)):
        artifacts.remove_model_files(out)
    elif trainer.epoch >= trainer.total_epochs and (out / artifacts.LM_FILE).is_file():
        info = artifacts.read_json(out / METRICS_FILE)  # finished before: nothing to train or to write
        return LMResult(lm_dir=out, trained=False, seconds=0.0, metrics=info["final"])

    def on_epoch(m: dict[str, float]) -> None:
        if report:
            report(m, None)

    fit = trainer.fit(on_epoch)
    seconds = time.perf_counter() - t0
    final = dict(fit.history[-1]) if fit.history else {}
    artifacts.write_json(out / METRICS_FILE, {"final": final, "history": fit.history, "seconds": seconds,
                                              "corpus": corpus.stats, "lm_key": lm_key(cfg, corpus.lm_fingerprint, models_dir)})
    artifacts.write_json(out / FINGERPRINT_FILE, made_by)
    artifacts.save_language_model(out, model, corpus.vocab.itos, to_dict(cfg),  # lm.pt last: it marks a finished LM
                                  subwords=corpus.subwords)
    return LMResult(lm_dir=out, trained=True, seconds=seconds, metrics=final)


def ensure_lm(cfg: RecipeConfig, corpus: Corpus, lm_root: str | Path, report: ReportFn | None = None,
              progress: bool = False, models_dir: str | Path | None = None) -> LMResult:
    """The fine-tuned LM for ``cfg``, trained once under ``lm_root/<lm_key>/`` and shared.

    Concurrent callers with the same key block on a file lock; the first trains, the rest reuse
    its result (``trained=False``). Works across nodes when ``lm_root`` is shared storage.
    """
    key = lm_key(cfg, corpus.lm_fingerprint, models_dir)
    lm_dir = Path(lm_root) / key
    lm_dir.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(lm_dir) + ".lock"):
        done = lm_dir / _LM_DONE
        fresh = False
        if done.exists():
            found = find_lm(cfg, corpus, lm_root, models_dir)
            if found is not None:
                return found
            # Made by something else under this key (an older format, a damaged folder): never reused.
            done.unlink()
            fresh = True
        result = finetune_lm(cfg, corpus, lm_dir, report=report, progress=progress, resume=not fresh,
                             models_dir=models_dir)
        artifacts.write_json(done, {"seconds": result.seconds})
        return result


def find_lm(cfg: RecipeConfig, corpus: Corpus, lm_root: str | Path, models_dir: str | Path | None = None
            ) -> LMResult | None:
    """The finished LM ``ensure_lm`` would return without training (same key and fingerprint), or None.
    Takes no lock and writes nothing: a folder is read only once its done-marker exists, which
    ``ensure_lm`` writes last."""
    lm_dir = Path(lm_root) / lm_key(cfg, corpus.lm_fingerprint, models_dir)
    if not (lm_dir / _LM_DONE).exists() or _recorded_fingerprint(lm_dir) != _lm_fingerprint(cfg, corpus, models_dir):
        return None
    info = artifacts.read_json(lm_dir / METRICS_FILE)
    return LMResult(lm_dir=lm_dir, trained=False, seconds=0.0, metrics=info["final"])


def _recorded_fingerprint(folder: Path) -> dict[str, Any] | None:
    try:
        return artifacts.read_json(folder / FINGERPRINT_FILE)
    except artifacts.ArtifactError:
        return None


def lm_training_seconds(lm_dir: str | Path) -> float:
    """Wall time the LM in ``lm_dir`` took to train (what a trial saves by reusing it)."""
    return float(artifacts.read_json(Path(lm_dir) / METRICS_FILE)["seconds"])


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
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, groups, task, _ = build_classifier_stage(cfg, corpus, lm_dir, device)
    phases = unfreeze_phases(len(groups), cc.unfreeze if not cc.from_scratch else [], cc.epochs)
    encoder = None if lm_dir is None or cc.from_scratch else \
        fetching.sha256(Path(lm_dir) / artifacts.ENCODER_FILE)
    made_by = fingerprint("classifier", to_dict(cfg), corpus.fingerprint, corpus.vocab.itos, encoder=encoder)

    def write_checkpoint(state: dict[str, Any]) -> None:
        # The whole folder at once: its vocabulary, labels and config always belong to its weights.
        with artifacts.staged_folder(ckpt_dir) as folder:
            artifacts.write_classifier_metadata(folder, to_dict(cfg), corpus.vocab.itos, corpus.label_names,
                                                subwords=corpus.subwords)
            artifacts.write_json(folder / artifacts.TRAIN_LOG_FILE, {
                "history": trainer.history, "lr_schedule": trainer.lr_schedule,
                "group_names": classifier_group_names(cfg.model.n_layers)})
            save_checkpoint(folder / CHECKPOINT_FILE, state)

    trainer = Trainer(model, groups, cc, phases, task, device=device, checkpoint_dir=ckpt_dir,
                      checkpoint_meta={"config": to_dict(cfg), "stage": "classifier",
                                       "tokenizer": corpus.tokenizer.settings_key()}, fingerprint=made_by,
                      write_checkpoint=write_checkpoint, progress=progress, desc="classifier",
                      precision=cfg.precision)
    if resume_from is not None:
        if not trainer.resume_from(Path(resume_from)):
            raise FileNotFoundError(f"resume_from={resume_from}: no checkpoint.pt there")
    elif not (resume and trainer.resume_from(ckpt_dir)):
        artifacts.remove_model_files(out)  # an earlier run's model must not outlive this run's start
    elif trainer.epoch >= trainer.total_epochs and (out / artifacts.MODEL_FILE).is_file():
        info = artifacts.read_json(out / METRICS_FILE)  # finished before: nothing to train or to write
        return ClassifierResult(out_dir=out, metrics=info["final"], history=info["history"])

    def on_epoch(m: dict[str, float]) -> None:
        if report:
            report(m, ckpt_dir)

    fit = trainer.fit(on_epoch)
    final = dict(fit.history[-1])
    artifacts.write_json(out / METRICS_FILE, {"final": final, "history": fit.history})
    artifacts.save_classifier(out, model, to_dict(cfg), corpus.vocab.itos, corpus.label_names,
                              corpus.tokenizer.settings_key(),  # model.pt last: it marks a finished classifier
                              subwords=corpus.subwords)
    return ClassifierResult(out_dir=out, metrics=final, history=fit.history)


# --- the whole recipe ------------------------------------------------------------------------


DIRECTIONS = ("fwd", "bwd")


def with_direction(cfg: RecipeConfig, direction: str) -> RecipeConfig:
    """``cfg`` reading text forwards (``fwd``) or backwards (``bwd``): the LM and the classifier both."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    backwards = direction == "bwd"
    return build_recipe(to_dict(cfg), {"lm.backwards": backwards, "classifier.backwards": backwards})


def _direction_dirs(out: Path, direction: str, first: bool) -> tuple[Path, Path]:
    """(LM folder, classifier folder) of one direction: the first direction keeps the plain names."""
    suffix = "" if first else f"_{direction}"
    return out / f"lm{suffix}", out / f"classifier{suffix}"


TOKENIZERS = ("words", "subwords")


def with_tokenizer(cfg: RecipeConfig, tokenizer: str) -> RecipeConfig:
    """``cfg`` with ``tokenizer``'s units. A language model is pretrained with one tokenizer's units: a zoo
    model's family member of the other units takes its place (``general-en-tiny-fwd`` ->
    ``general-en-tiny-sp-fwd``, checked like any start: fetched, or dropped under ``lm.pretrained_required:
    false``). Without one, the other tokenizer's members start from random weights, which needs
    ``lm.pretrained_required: false``; else it is refused here, before anything trains."""
    from .zoo_registry import is_zoo_name, of_units

    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if tokenizer == cfg.text.tokenizer:
        return cfg
    sibling = of_units(cfg.lm.pretrained, tokenizer) if is_zoo_name(cfg.lm.pretrained) else None
    if sibling is not None:
        return build_recipe(to_dict(cfg), {"text.tokenizer": tokenizer, "lm.pretrained": sibling})
    if cfg.lm.pretrained is not None and cfg.lm.pretrained_required:
        raise ValueError(f"--tokenizers {cfg.text.tokenizer} {tokenizer}: lm.pretrained {cfg.lm.pretrained} holds "
                         f"{cfg.text.tokenizer} units, and a language model works with its own units only, so the "
                         f"{tokenizer} members would start from random weights; set lm.pretrained_required: false to "
                         f"accept that, or train them in a run of their own from a {tokenizer} LM (lm.pretrained)")
    return build_recipe(to_dict(cfg), {"text.tokenizer": tokenizer, "lm.pretrained": None,
                                       "lm.pretrained_vocab": None})


def plan_members(cfg: RecipeConfig, directions: Sequence[str] | None = None, tokenizers: Sequence[str] | None = None,
                 models_dir: str | Path | None = None) -> list[tuple[str, RecipeConfig, str]]:
    """``(member, its recipe, the line saying where its LM starts)`` for every tokenizer x direction (defaults:
    the config's own), the config's own tokenizer first. A member of the config's tokenizer is named by its
    direction (``fwd``, ``bwd``), another by both (``subwords_fwd``). Everything is checked before training."""
    own = cfg.text.tokenizer
    recipes = {t: with_tokenizer(cfg, t) for t in sorted(dict.fromkeys(tokenizers or [own]), key=lambda t: t != own)}
    plans = []
    for tokenizer, tcfg in recipes.items():  # the config's own first
        for direction, dcfg, line in plan_directions(tcfg, directions, models_dir):
            plans.append((direction if tokenizer == own else f"{tokenizer}_{direction}", dcfg, line))
    return plans


def plan_directions(cfg: RecipeConfig, directions: Sequence[str] | None = None,
                    models_dir: str | Path | None = None) -> list[tuple[str, RecipeConfig, str]]:
    """``(direction, its recipe, the line saying which language model it starts from)`` for each direction
    (default: the config's own), every one resolved and checked before anything trains: a pretrained
    model that is missing or of another size fails here, whichever direction needs it.
    ``lm.pretrained_required: false`` applies per direction: a direction whose model is not fetched starts
    from random weights (its recipe then says ``pretrained: null``) while the others keep theirs."""
    own = "bwd" if cfg.lm.backwards else "fwd"
    plans = []
    for direction in dict.fromkeys(directions or [own]):
        dcfg, line = pretrained.describe_start(cfg if direction == own else with_direction(cfg, direction), models_dir)
        plans.append((direction, dcfg, line))
    return plans


def run_recipe(cfg: RecipeConfig, out_dir: str | Path, report: ReportFn | None = None,
               data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               progress: bool = False, lm_report: ReportFn | None = None,
               models_dir: str | Path | None = None, directions: Sequence[str] | None = None,
               resume: bool = True, announce: Callable[[str], None] | None = None,
               tokenizers: Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune the LM, train the classifier, evaluate on the test set; writes ``metrics.json``.

    ``directions`` (default: the config's own) trains one classifier per direction, each on the
    language model of its own direction (ULMFiT's forward + backward); ``tokenizers`` (default: the config's
    own) does so for each tokenizer, word and subword members alike (:func:`plan_members`). The first
    member's metrics are unprefixed, another's carry its name (``bwd_test_accuracy``,
    ``subwords_fwd_test_accuracy``), and with several the averaged ensemble's test metrics are
    ``ensemble_test_*``; ``out_dir/ensemble.json`` then lists the members,
    so ``predict``/``evaluate --model out_dir`` use the ensemble. ``report`` runs after each classifier
    epoch, ``lm_report`` after each language-model epoch. ``resume=False`` starts over in ``out_dir``
    instead of continuing its checkpoints (which must otherwise belong to this run, or it refuses).
    Every direction's pretrained start is checked before the data is read (:func:`plan_directions`);
    ``announce`` receives the line saying where each starts.
    """
    out = Path(out_dir)
    resolve_device(cfg.device)  # a missing CUDA device fails before the data is read
    plans = plan_members(cfg, directions, tokenizers, models_dir)
    names = [name for name, _, _ in plans]
    if announce:
        for name, _, line in plans:
            announce(line if len(plans) == 1 else f"[{name}] {line}")
    times: dict[str, float] = {}
    t = time.perf_counter()
    corpora = {tok: prepare_corpus(next(c for _, c, _ in plans if c.text.tokenizer == tok), data_dir, cache_dir,
                                   progress=progress, models_dir=models_dir) for tok in dict.fromkeys(c.text.tokenizer for _, c, _ in plans)}
    times["data_seconds"] = time.perf_counter() - t
    result: dict[str, Any] = {}
    reports: dict[str, Any] = {}  # member (or "ensemble") -> test labels, confusion matrix, scores
    members, test_splits = [], []
    for i, (direction, dcfg, _) in enumerate(plans):
        corpus = corpora[dcfg.text.tokenizer]
        lm_out, clf_out = _direction_dirs(out, direction, first=i == 0)
        prefix = "" if i == 0 else f"{direction}_"
        lm_dir, lm_metrics = None, {}
        if not dcfg.classifier.from_scratch:
            t = time.perf_counter()
            lm = finetune_lm(dcfg, corpus, lm_out, report=lm_report, progress=progress, models_dir=models_dir,
                             resume=resume)
            lm_dir, lm_metrics = lm.lm_dir, lm.metrics
            times[f"{prefix}lm_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        clf = train_classifier(dcfg, corpus, lm_dir, clf_out, report=report, progress=progress, resume=resume)
        times[f"{prefix}classifier_seconds"] = time.perf_counter() - t
        metrics: dict[str, Any] = {f"lm_{k}": v for k, v in lm_metrics.items() if k.startswith("valid_")}
        metrics.update(clf.metrics)
        if corpus.test is not None:
            reports[direction] = report_split(clf_out, corpus.test, dcfg.device)
            metrics.update({f"test_{k}": v for k, v in reports[direction].items() if isinstance(v, float)})
        result.update({f"{prefix}{k}": v for k, v in metrics.items()})
        members.append(clf_out)
        test_splits.append(corpus.test)
    if len(members) > 1:
        write_ensemble(out, members)
        if corpus.test is not None:  # each member reads the test set in its own units
            reports["ensemble"] = report_split(members, test_splits, cfg.device)
            result.update({f"ensemble_test_{k}": v for k, v in reports["ensemble"].items() if isinstance(v, float)})
    result.update(times)
    if reports:
        artifacts.write_json(out / TEST_REPORT_FILE, reports)
    first = corpora[plans[0][1].text.tokenizer]
    # The first member's recipe as it ran (``pretrained: null`` where it started from random weights).
    artifacts.write_json(out / METRICS_FILE, {"final": result, "corpus": first.stats, "config": to_dict(plans[0][1]),
                                              "directions": list(dict.fromkeys(n.rsplit("_", 1)[-1] for n in names)),
                                              "tokenizers": list(corpora), "members": names,
                                              "data_fingerprint": first.fingerprint})
    return result
