"""The catalogue of bad inputs (docs/TROUBLESHOOTING.md lists every case with its message).

Each case runs a real command line in-process (``launch.main`` or ``search.cli.main``) and must:
exit with 2; print exactly one ``error:`` line on stderr, no traceback; name the problem (a key, a file,
a value) and the fix in that line; and change nothing that was there (every file and folder of the
case's workspace, and of a trained run it uses, hashes the same afterwards; no output folder appears).

Almost every case fails in validation, before any training. The few that need a model share one tiny
run (300 TREC-6 rows, 1 epoch per stage, bptt 20), trained once for the module.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import select
import shutil
import signal
import stat
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest_search import SMOKE, free_port

import launch
from search import cli as search_cli
from search.export import write_best
from ulmfit_core.config import default_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
TROUBLESHOOTING = ROOT / "docs" / "TROUBLESHOOTING.md"
#: The uid/gid an unprivileged child runs as when the tests run as root (who ignores permission bits).
NOBODY = 65534

#: A recipe small enough to train in seconds: the tiny model on 300 TREC-6 rows, one epoch per stage.
TINY = ["--set", "data.dataset=trec", "--set", "data.max_train_rows=300", "--set", "model.preset=tiny",
        "--set", "text.max_vocab=2000", "--set", "lm.epochs=1", "--set", "lm.bptt=20", "--set", "lm.bs=16",
        "--set", "classifier.epochs=1", "--set", "classifier.bptt=20", "--set", "classifier.unfreeze=[]",
        "--no-progress"]


# --- the workspace a case runs in --------------------------------------------------------------------------


class Workspace:
    """One case's folder, the inputs it writes there, and the shared things it may use.

    The folder is world-readable (not under pytest's private tmp folder) so that a case run as an
    unprivileged user (the read-only cases, when the tests run as root) can reach it.
    """

    def __init__(self, root: Path, request: pytest.FixtureRequest, datasets: Path, cache: Path):
        self.root, self.data, self.cache = root, datasets, cache
        self._request = request
        self.uses_trained = False
        self.read_only_folder = False

    def path(self, name: str) -> Path:
        return self.root / name

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def csv(self, name: str, rows: list[tuple[str, str]], header: str = "label,text") -> Path:
        return self.file(name, "\n".join([header, *(f"{label},{text}" for label, text in rows)]) + "\n")

    def two_classes(self, name: str = "train.csv") -> Path:
        return self.csv(name, [(lab, f"{word} question number {i} ?") for i in range(30)
                               for lab, word in (("A", "apple"), ("B", "river"))])

    @property
    def trained(self) -> Path:
        """The module's trained run (``run --out``): its ``classifier/`` is a finished model."""
        self.uses_trained = True
        return self._request.getfixturevalue("trained_run")

    def zoo_models(self, *names: str) -> Path:
        """A models folder holding these zoo models, copied from the shared mirror as `models fetch` does."""
        from ulmfit_core import zoo

        folder = self.root / "models"
        mirror = self.data.parent / "pretrained"
        if not all((mirror / n).is_dir() for n in names):
            pytest.skip(f"{names} not in {mirror}")
        for name in names:
            zoo.fetch(name, folder, mirror=mirror, progress=False)
        return folder

    @property
    def fastai(self) -> Path:
        return self._request.getfixturevalue("fastai_fixtures")

    @property
    def ro(self) -> Path:
        """A folder no one but root may write in."""
        self.read_only_folder = True
        folder = self.root / "read-only"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder

    @property
    def rw(self) -> Path:
        """A folder anyone may write in (for outputs a read-only case needs besides the read-only one)."""
        folder = self.root / "writable"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)
        return folder

    def training(self, command: str, *sets: str, out: Path | str | None = None,
                 cache: Path | None = None) -> list[str]:
        """``command`` with the tiny recipe, this workspace's data, cache and (default) ``out`` folder."""
        return [command, *TINY, *[a for s in sets for a in ("--set", s)], "--data-dir", str(self.data),
                "--cache-dir", str(cache or self.cache), "--out", str(out or self.path("out"))]

    def search(self, *sets: str, tracking_uri: str | None = None, storage: Path | None = None,
               space: str | None = None) -> list[str]:
        """``search`` of the smoke config; ``space``: YAML lines that replace its search space."""
        config = SMOKE
        if space is not None:  # a space key is dotted itself, so --set cannot reach one
            smoke = yaml.safe_load(SMOKE.read_text())
            smoke.pop("space")
            config = self.file("space.yaml", yaml.safe_dump(smoke) + "space:\n" + space + "\n")
        return ["search", "--config", str(config), "--storage", str(storage or self.path("runs")),
                "--tracking-uri", tracking_uri or f"sqlite:///{self.path('mlflow.db')}", "--data-dir", str(self.data),
                *[a for s in sets for a in ("--set", s)]]

    def search_folder(self, name: str = "search", edit: Callable[[dict], object] | None = None,
                      study: bool = True) -> Path:
        """A search folder as `search` leaves it before the first trial: ``search.json`` and (``study``) its
        Optuna study, with no trial yet."""
        from search.settings import load_search_config

        cfg = load_search_config(SMOKE, [f"search.storage={self.path('runs')}"])
        meta = {"config": cfg.to_dict(), "tracking_uri": f"sqlite:///{self.path('mlflow.db')}",
                "experiment": "smoke", "experiment_id": "1", "parent_run_id": "0" * 32, "created": 0.0,
                "shared_lm": None}
        if edit is not None:
            edit(meta)
        self.file(f"{name}/search.json", json.dumps(meta))
        if study:
            import optuna

            optuna.create_study(study_name=name, storage=f"sqlite:///{self.path(name) / 'optuna.db'}")
        return self.path(name)


class RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: if the marker folder appears, a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _truncated_copy(w: Workspace) -> Path:
    model = w.path("truncated")
    shutil.copytree(w.trained / "classifier", model, ignore=shutil.ignore_patterns("checkpoint"))
    data = (model / "model.pt").read_bytes()
    (model / "model.pt").write_bytes(data[: len(data) // 2])
    return model


def _model_that_runs_code(w: Workspace) -> Path:
    model = w.path("evil-model")
    shutil.copytree(w.trained / "classifier", model, ignore=shutil.ignore_patterns("checkpoint"))
    torch.save({"state_dict": RunsCode(w.path("code-ran"))}, model / "model.pt")
    return model


def _classifier_copy(w: Workspace, name: str, edit_vocab: Callable[[list], list] | None = None,
                     drop_vocab_digest: bool = False, lm_as_model: bool = False, damage: str | None = None) -> Path:
    """A copy of the trained classifier folder with one file from elsewhere."""
    from ulmfit_core import artifacts

    model = w.path(name)
    shutil.copytree(w.trained / "classifier", model, ignore=shutil.ignore_patterns("checkpoint"))
    if edit_vocab:
        artifacts.write_vocab(model / "vocab.json", edit_vocab(artifacts.read_vocab(model / "vocab.json")))
    if drop_vocab_digest:  # as a classifier saved before model.pt recorded its vocabulary
        payload = artifacts.load_tensors(model / "model.pt")
        del payload["vocab_sha256"]
        artifacts.save_tensors(model / "model.pt", payload)
    if lm_as_model:
        shutil.copy(w.trained / "lm" / "lm.pt", model / "model.pt")
    if damage:  # cut short, as a copy that stopped half-way
        (model / damage).write_bytes((model / damage).read_bytes()[:10])
    return model


def _swap_two_words(itos: list[str]) -> list[str]:
    """Another run's vocabulary of the same size: two words (not the padding at its end) trade places."""
    return [*itos[:20], itos[21], itos[20], *itos[22:]]


def _checkpoint_that_runs_code(w: Workspace) -> Path:
    out = w.path("out")
    torch.save({"model": RunsCode(w.path("code-ran"))}, w.file("out/checkpoint/checkpoint.pt", b""))
    return out


def _complete_best_yaml(w: Workspace, edit: Callable[[str], str] = lambda text: text) -> Path:
    """A best.yaml as export writes it (with its record), then ``edit``-ed as text."""
    recipe = default_recipe()
    recipe["data"] = {**recipe["data"], "dataset": "trec"}
    path = write_best({"recipe": recipe, "result": {"metric": "valid_accuracy", "value": 0.5},
                       "project_root": str(w.root)}, w.path("best.yaml"))
    path.write_text(edit(path.read_text()))
    return path


def _other_database(w: Workspace) -> Path:
    import sqlite3

    path = w.path("shop.db")
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE customers (name TEXT)")
        con.commit()
    return path


def _without_record(text: str) -> str:
    doc = yaml.safe_load(text)
    del doc["record"]
    return yaml.safe_dump(doc, sort_keys=False)


def _damaged_study(w: Workspace) -> Path:
    """A search folder whose optuna.db was cut short in the copy."""
    folder = w.search_folder()
    study = folder / "optuna.db"
    study.write_bytes(study.read_bytes()[:3000])
    return folder


def _store_without_the_run(w: Workspace) -> Path:
    """A search folder next to an MLflow store that exists but holds no run of that search."""
    from search.tracking import check_reachable

    check_reachable(f"sqlite:///{w.path('mlflow.db')}")
    return w.search_folder()


FIELD_COUNT_CSV = "label,text\nA,fine\nB,one, two\n"  # line 3: an unquoted comma
NUL_CSV = b"label,text\nA,fine\nB,bro\x00ken\n"  # line 3: a NUL byte
LATIN1_CSV = "label,text\nA,caf\xe9\n".encode("latin-1")  # line 2: not UTF-8


def _set_num_samples(meta: dict) -> None:
    meta["config"]["search"]["num_samples"] = "many"


# --- the catalogue ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    #: The command line, built from the workspace (writing any input files it needs there).
    argv: Callable[[Workspace], list]
    #: Fragments the one error line must hold: what is wrong (a key, a file, a value) and the fix.
    says: tuple[str, ...]
    #: ``launch`` (launch.main) or ``search`` (search.cli.main: search, export, retrain).
    cli: str = "launch"


CASES = [
    # --- configuration values (ulmfit_core/config.py) ---
    Case("config-unknown-key", lambda w: w.training("run", "classifier.lrr=0.01"),
         ("classifier.lrr: unknown key", "did you mean classifier.lr?")),
    Case("config-not-a-number", lambda w: w.training("run", "classifier.lr=fast"),
         ("classifier.lr: must be a number", "'fast'")),
    Case("config-lrm-below-one", lambda w: w.training("run", "classifier.lrm=0.5"),
         ("classifier.lrm: must be >= 1", "0.5")),
    Case("config-infinite-learning-rate", lambda w: w.training("finetune-lm", "lm.lr=.inf"),
         ("lm.lr: must be a finite number, got inf",)),
    Case("config-nan-in-a-list", lambda w: w.training("run", "classifier.use_clr=[.nan, 10]"),
         ("classifier.use_clr[0]: must be a finite number, got nan",)),
    Case("config-nan-lrm", lambda w: w.training("run", "classifier.lrm=.nan"),
         ("classifier.lrm: must be a finite number, got nan",)),
    Case("config-infinite-drop-mult", lambda w: w.training("run", "classifier.drop_mult=.inf"),
         ("classifier.drop_mult: must be a finite number, got inf",)),
    Case("config-bptt-too-short", lambda w: w.training("run", "lm.bptt=4"),
         ("lm.bptt: must be >= 8", "got 4")),
    Case("config-unknown-preset", lambda w: w.training("run", "model.preset=huge"),
         ("model.preset: unknown preset 'huge'", "choose one of")),
    Case("config-unfreeze-not-integers", lambda w: w.training("run", 'classifier.unfreeze=["a"]'),
         ("classifier.unfreeze[0]: must be an integer", "'a'")),
    Case("config-lin-ftrs-fraction", lambda w: w.training("run", "classifier.lin_ftrs=[50.5]"),
         ("classifier.lin_ftrs[0]: must be an integer", "50.5")),
    Case("config-use-clr-words", lambda w: w.training("run", "classifier.use_clr=[a, b]"),
         ("classifier.use_clr[0]: must be a number", "'a'")),
    Case("config-use-clr-nested", lambda w: w.training("run", "classifier.use_clr=[[1, 2], 3]"),
         ("classifier.use_clr[0]: must be a number", "[1, 2]")),
    Case("config-use-clr-one-value", lambda w: w.training("run", "classifier.use_clr=[32]"),
         ("classifier.use_clr: must be [ratio >= 1, cut > 1]", "e.g. [32, 10]")),
    Case("config-dropout-out-of-range", lambda w: w.training("run", "classifier.dropouts.input_p=1.5"),
         ("classifier.dropouts.input_p: must be a probability in [0, 1)", "1.5")),
    Case("config-max-seq-below-bptt", lambda w: w.training("run", "classifier.max_seq=10"),
         ("classifier.max_seq: must be >= classifier.bptt (20)", "got 10")),
    Case("config-classifier-direction", lambda w: w.training("run", "classifier.backwards=true"),
         ("classifier.backwards: must equal lm.backwards", "set lm.backwards alone")),
    Case("config-set-without-equals", lambda w: [*w.training("run"), "--set", "classifier.lr"],
         ("--set 'classifier.lr': expected key=value", "--set classifier.lr=0.01")),
    Case("config-malformed-yaml", lambda w: ["run", "--config", str(w.file("bad.yaml", "model:\n  preset: tiny\n"
                                                                              "lm: {epochs: 1\nclassifier: {}\n")),
                                             "--out", str(w.path("out"))],
         ("bad.yaml:", "invalid YAML")),
    Case("config-unknown-key-in-file", lambda w: ["run", "--config", str(w.file("typo.yaml", "data: {dataset: trec}\n"
                                                                                  "classifier:\n  lrr: 0.01\n")),
                                                  "--out", str(w.path("out"))],
         ("typo.yaml:3: classifier.lrr: unknown key", "did you mean classifier.lr?")),
    Case("config-duplicate-key", lambda w: ["run", "--config", str(w.file("twice.yaml", "data: {dataset: trec}\n"
                                                                           "classifier:\n  lr: 0.01\n  lr: 50\n")),
                                            "--out", str(w.path("out"))],
         ("twice.yaml:4: invalid YAML: key 'lr' appears twice in one mapping (lines 3 and 4)", "keep one")),
    Case("config-unfreeze-longer-than-epochs", lambda w: w.training("run", "classifier.epochs=2",
                                                                    "classifier.unfreeze=[1, 1, 1]"),
         ("classifier.unfreeze: [1, 1, 1] takes 3 epochs but classifier.epochs is 2", "train more epochs")),
    Case("config-negative-epochs", lambda w: w.training("run", "lm.epochs=-1"), ("lm.epochs: must be >= 1", "got -1")),
    Case("config-zero-batch-size", lambda w: w.training("run", "classifier.bs=0"),
         ("classifier.bs: must be a positive integer", "got 0")),
    Case("config-batch-size-fraction", lambda w: w.training("run", "lm.bs=1.5"), ("lm.bs: must be an integer", "1.5")),
    Case("config-negative-weight-decay", lambda w: w.training("run", "classifier.wd=-1"),
         ("classifier.wd: must be >= 0", "got -1.0")),
    Case("config-negative-dropout", lambda w: w.training("run", "lm.dropouts.hidden_p=-0.1"),
         ("lm.dropouts.hidden_p: must be a probability in [0, 1)", "-0.1")),
    Case("config-use-clr-ratio-below-one", lambda w: w.training("run", "classifier.use_clr=[0.5, 10]"),
         ("classifier.use_clr: must be [ratio >= 1, cut > 1]", "got [0.5, 10.0]")),
    Case("config-valid-pct-too-large", lambda w: w.training("run", "data.valid_pct=0.7"),
         ("data.valid_pct: must be in (0, 0.5)", "got 0.7")),
    Case("config-max-vocab-too-small", lambda w: w.training("run", "text.max_vocab=0"),
         ("text.max_vocab: must be >= 16", "got 0")),
    Case("config-min-freq-zero", lambda w: w.training("run", "text.min_freq=0"), ("text.min_freq: must be >= 1",)),
    Case("config-unknown-section", lambda w: w.training("run", "optimizer.lr=1"),
         ("optimizer: unknown key", "known keys: data, text, model, lm, classifier")),
    Case("config-seed-not-integer", lambda w: w.training("run", "seed=abc"), ("seed: must be an integer", "'abc'")),
    Case("config-head-layer-zero", lambda w: w.training("run", "classifier.lin_ftrs=[0]"),
         ("classifier.lin_ftrs: head layer sizes must be >= 1", "[0]")),
    Case("config-unfreeze-negative", lambda w: w.training("run", "classifier.unfreeze=[-1]"),
         ("classifier.unfreeze: epochs per phase must be >= 0", "[-1]")),
    Case("config-file-missing", lambda w: ["run", "--config", str(w.path("nope.yaml")), "--out", str(w.path("out"))],
         ("cannot read config file", "nope.yaml: No such file or directory")),
    Case("config-file-a-list", lambda w: ["run", "--config", str(w.file("list.yaml", "- a\n- b\n")),
                                          "--out", str(w.path("out"))],
         ("list.yaml: the top level must be a mapping of sections",)),
    Case("config-section-given-a-value", lambda w: w.training("run", "lm=3"),
         ("lm: must be a mapping of keys to values, got int",)),
    Case("config-max-train-rows-zero", lambda w: w.training("run", "data.max_train_rows=0"),
         ("data.max_train_rows: must be >= 2 or null", "got 0")),
    Case("config-learning-rate-zero", lambda w: w.training("run", "lm.lr=0"), ("lm.lr: must be > 0", "got 0.0")),
    Case("config-tab-indent", lambda w: ["run", "--config", str(w.file("tab.yaml", "lm:\n\tepochs: 1\n")),
                                         "--out", str(w.path("out"))],
         ("tab.yaml:2: invalid YAML", "'\\t'")),
    Case("config-bool-not-bool", lambda w: w.training("run", "lm.backwards=maybe"),
         ("lm.backwards: must be true or false", "'maybe'")),
    Case("config-clip-negative", lambda w: w.training("run", "classifier.clip=-1"), ("classifier.clip: must be > 0",)),
    Case("config-bptt-fraction", lambda w: w.training("run", "classifier.bptt=20.5"),
         ("classifier.bptt: must be an integer", "20.5")),
    Case("config-unknown-tokenizer", lambda w: w.training("run", "text.tokenizer=chars"),
         ("text.tokenizer: must be one of ['words', 'subwords']", "'chars'")),
    Case("config-subword-vocab-too-small", lambda w: w.training("run", "text.subword_vocab=10"),
         ("text.subword_vocab: must be >= 32", "got 10")),
    Case("config-unknown-subword-model", lambda w: w.training("run", "text.subword_model=wordpiece"),
         ("text.subword_model: must be one of ['unigram', 'bpe']", "'wordpiece'")),
    Case("config-subwords-with-a-zoo-word-model",
         lambda w: w.training("run", "text.tokenizer=subwords", "lm.pretrained=wt103-fwd"),
         ("text.tokenizer: subwords with lm.pretrained 'wt103-fwd', a word-level zoo model",
          "give lm.pretrained a subword language model (a zoo name with -sp-")),
    Case("pretrained-subword-model-for-words",
         lambda w: w.training("finetune-lm", f"lm.pretrained={w.file('sub-lm/subwords.model', b'units').parent}"),
         ("sub-lm is a subword language model (it holds subwords.model) but text.tokenizer is words",
          "set text.tokenizer: subwords to fine-tune it")),
    Case("pretrained-word-model-for-subwords",
         lambda w: w.training("finetune-lm", "text.tokenizer=subwords", f"lm.pretrained={w.trained / 'lm'}"),
         ("lm is not a subword language model (no subwords.model in it) but text.tokenizer is subwords",
          "launch.py pretrain --set text.tokenizer=subwords")),
    Case("cli-unknown-command", lambda w: ["trian", "--out", str(w.path("out"))],
         ("ulmfit: argument COMMAND: invalid choice: 'trian'", "see `ulmfit --help`")),
    Case("cli-unknown-option", lambda w: [*w.training("run"), "--epochs", "3"],
         ("ulmfit: unrecognized arguments: --epochs 3", "see `ulmfit --help`")),
    Case("cli-missing-required-option", lambda w: ["predict", "who is it ?"],
         ("ulmfit predict: the following arguments are required: --model", "see `ulmfit predict --help`")),
    Case("cli-misspelt-zoo-model", lambda w: ["models", "fetch", "wt104-fwd", "--dest", str(w.path("m"))],
         ("ulmfit models fetch: argument NAME: invalid choice: 'wt104-fwd'", "choose from 'wt103-fwd'")),
    Case("cli-unknown-dataset-to-fetch", lambda w: ["data", "fetch", "imdbb", "--data-dir", str(w.path("d"))],
         ("ulmfit data fetch: argument name: invalid choice: 'imdbb'", "choose from 'trec', 'imdb'")),
    Case("cli-unknown-lr-find-stage", lambda w: ["lr-find", "--stage", "head", *w.training("x")[1:]],
         ("ulmfit lr-find: argument --stage: invalid choice: 'head'", "choose from 'lm', 'classifier'")),
    Case("cli-search-without-config", lambda w: ["search", "--storage", str(w.path("runs"))],
         ("search: one of the arguments --config --resume is required",), cli="search"),
    Case("data-label-among-text-columns", lambda w: w.training("run", "data.text_cols=[text, label]"),
         ("data.text_cols: holds the label column 'label'", "list the text columns only")),
    Case("data-validation-smaller-than-classes",
         lambda w: w.training("run", "data.dataset=null", "data.max_train_rows=null",
                              f"data.train={w.csv('many.csv', [(f'C{i}', f'question {i} {j} ?') for i in range(40) for j in range(3)])}"),
         ("the validation set holds", "for 40 classes, too few to score every class", "a larger data.valid_pct")),
    Case("config-dataset-and-train", lambda w: w.training("run", f"data.train={w.two_classes()}"),
         ("data.train: given together with data.dataset ('trec')", "--set data.dataset=null")),
    Case("config-unknown-device", lambda w: w.training("run", "device=tpu"),
         ("device: must be auto, cpu, cuda or cuda:N", "'tpu'")),
    # cuda:N with N = the number of CUDA devices never exists: no CUDA at all here, or one too many there
    Case("config-cuda-missing", lambda w: w.training("run", f"device=cuda:{torch.cuda.device_count()}"),
         (f"device: 'cuda:{torch.cuda.device_count()}'", "set device to auto" if not torch.cuda.is_available()
          else "set one of them")),
    # --- pretrained language models (pretrained.py, zoo.py) ---
    Case("pretrained-fastai-without-vocab", lambda w: w.training("run", f"lm.pretrained={w.file('lm.pth', b'')}"),
         ("lm.pretrained_vocab: a fastai .pth model needs its vocabulary pickle", "set lm.pretrained_vocab")),
    Case("pretrained-misspelt-zoo-name", lambda w: w.training("run", "lm.pretrained=wt103-fwdd"),
         ("lm.pretrained: 'wt103-fwdd' is neither a file nor a zoo model", "did you mean wt103-fwd?")),
    Case("pretrained-missing-path", lambda w: w.training("run", f"lm.pretrained={w.path('no-such-model')}"),
         ("no-such-model does not exist", "give a zoo name")),
    Case("pretrained-zoo-not-fetched",
         lambda w: [*w.training("run", "lm.pretrained=wt103-fwd"), "--models-dir", str(w.path("models"))],
         ("zoo model 'wt103-fwd' is not fetched yet", "python launch.py models fetch wt103-fwd --dest")),
    Case("pretrained-vocab-runs-code",
         lambda w: w.training("finetune-lm", f"lm.pretrained={w.fastai / 'fastai_tiny_lm.pth'}",
                              f"lm.pretrained_vocab={w.file('evil.pkl', pickle.dumps(RunsCode(w.path('code-ran'))))}"),
         ("evil.pkl: not a pickled list of strings", "refusing to load", "lm.pretrained_vocab must be")),
    Case("pretrained-wrong-sizes",
         lambda w: w.training("finetune-lm", "model.preset=small", f"lm.pretrained={w.fastai / 'fastai_tiny_lm.pth'}",
                              f"lm.pretrained_vocab={w.fastai / 'fastai_tiny_vocab.pkl'}"),
         ("fastai_tiny_lm.pth is 64/128/2 (emb/hid/layers) (preset tiny) but the configured model is 200/512/3",
          "set model.preset: tiny")),
    Case("pretrained-zoo-model-of-another-size",
         lambda w: [*w.training("run", "model.preset=small", "lm.pretrained=general-en-tiny-fwd"),
                    "--models-dir", str(w.zoo_models("general-en-tiny-fwd"))],
         ("general-en-tiny-fwd is 64/128/2", "(model.preset: small); set model.preset: tiny",
          "or use a small model (general-en-small-fwd)")),
    Case("pretrained-backward-model-not-fetched",
         lambda w: [*w.training("run", "lm.pretrained=general-en-tiny-fwd"), "--directions", "fwd", "bwd",
                    "--models-dir", str(w.zoo_models("general-en-tiny-fwd"))],
         ("zoo model 'general-en-tiny-bwd' is not fetched yet", "python launch.py models fetch general-en-tiny-bwd")),
    Case("search-pretrained-of-another-size",
         lambda w: [*w.search("recipe.lm.pretrained=general-en-tiny-fwd", "recipe.model.preset=small"),
                    "--models-dir", str(w.zoo_models("general-en-tiny-fwd"))],
         ("general-en-tiny-fwd is 64/128/2", "set model.preset: tiny"), cli="search"),
    # --- data (data.py, datasets.py, corpus.py) ---
    Case("data-dataset-not-fetched", lambda w: [*w.training("run"), "--data-dir", str(w.path("data"))],
         ("dataset 'trec' not found", "run `python launch.py data fetch trec --data-dir")),
    Case("data-unknown-dataset", lambda w: [*w.training("run", "data.dataset=mine"), "--data-dir", str(w.path("data"))],
         ("dataset 'mine' not found", "put train.csv (and test.csv) in")),
    Case("data-missing-train-file",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.path('nope.csv')}"),
         ("data.train:", "nope.csv does not exist", "fix the path")),
    Case("data-missing-label-column",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}", "data.label_col=category"),
         ("train.csv: no column 'category'", "Set data.text_cols / data.label_col")),
    Case("data-single-class",
         lambda w: w.training("run", "data.dataset=null",
                              f"data.train={w.csv('one.csv', [('A', f'text number {i}') for i in range(20)])}"),
         ("one.csv: only the label 'A' in 20 rows", "at least two different labels")),
    Case("data-wrong-field-count",
         lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("fields.csv", FIELD_COUNT_CSV))),
         ("fields.csv: line 3: 3 fields where the header has 2", "must be quoted")),
    Case("data-empty-file", lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("empty.csv", ""))),
         ("empty.csv: the file is empty", "expected a header row")),
    Case("data-header-only",
         lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("header.csv", "label,text\n"))),
         ("header.csv: a header but no rows", "one row per example")),
    Case("data-nul-byte", lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("nul.csv", NUL_CSV))),
         ("nul.csv: line 3: a NUL byte", "save the file as UTF-8")),
    Case("data-not-utf8",
         lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("latin1.csv", LATIN1_CSV))),
         ("latin1.csv: line 2: not valid UTF-8", "save the file as UTF-8")),
    Case("data-empty-text",
         lambda w: w.training("run", "data.dataset=null",
                              f"data.train={w.csv('blank.csv', [('A', 'fine'), ('B', ' '), ('A', 'also fine')])}"),
         ("blank.csv: empty text (column 'text') at line 3", "remove these rows or fill in their text")),
    Case("data-missing-text-column",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}", "data.text_cols=[body]"),
         ("train.csv: no column 'body'", "the file has columns 'label', 'text'")),
    Case("data-valid-file-missing",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}", f"data.valid={w.path('v.csv')}"),
         ("data.valid:", "v.csv does not exist", "fix the path")),
    Case("data-test-file-missing",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}", f"data.test={w.path('t.csv')}"),
         ("data.test:", "t.csv does not exist", "fix the path")),
    Case("data-unlabeled-file-missing",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}",
                              f"data.unlabeled={w.path('u.txt')}"),
         ("data.unlabeled:", "u.txt does not exist")),
    Case("data-validation-label-unseen",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}",
                              f"data.valid={w.csv('v.csv', [('A', 'x y'), ('B', 'z'), ('Z', 'new')])}"),
         ("v.csv: labels ['Z'] never occur in the training data", "fix the labels or add training examples")),
    Case("data-train-a-folder-without-labels",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.file('dir/x.txt', 'x').parent}"),
         ("dir: a folder, but no LABEL/*.txt files in it", "one subfolder per label")),
    Case("data-binary-file",
         lambda w: w.training("run", "data.dataset=null", "data.train=" + str(w.file("bin.csv", bytes(range(256)) * 4))),
         ("bin.csv: line 2: not valid UTF-8", "save the file as UTF-8")),
    Case("data-column-named-twice",
         lambda w: w.training("run", "data.dataset=null",
                              "data.train=" + str(w.file("dup.csv", "label,text,text\n" + "A,x,y\nB,z,w\n" * 20))),
         ("dup.csv: the header names column(s) 'text' more than once", "give every column its own name")),
    Case("data-quote-never-closed",
         lambda w: w.training("run", "data.dataset=null",
                              "data.train=" + str(w.file("quote.csv", 'label,text\n' + 'A,fine\nB,also\n' * 20
                                                         + 'A,"open\nB,fine\n'))),
         ("quote.csv: line 42: a quoted field that is never closed", "close the quote")),
    Case("data-text-after-closing-quote",
         lambda w: w.training("run", "data.dataset=null",
                              "data.train=" + str(w.file("after.csv", 'label,text\nA,"quoted" rest\nB,fine\n'))),
         ("after.csv: line 2: malformed CSV", "quote fields that hold the delimiter, quotes or newlines")),
    Case("data-unlabeled-not-utf8",
         lambda w: w.training("run", "data.dataset=null", f"data.train={w.two_classes()}",
                              "data.unlabeled=" + str(w.file("u.txt", "caf\xe9\n".encode("latin-1")))),
         ("u.txt: not valid UTF-8", "save the file as UTF-8")),
    Case("evaluate-file-without-label-column",
         lambda w: ["evaluate", "--model", str(w.trained / "classifier"), "--file",
                    str(w.csv("e.csv", [("a", "b")], header="text,category"))],
         ("e.csv: no column 'label'", "the file has columns 'text', 'category'")),
    Case("evaluate-file-missing",
         lambda w: ["evaluate", "--model", str(w.trained / "classifier"), "--file", str(w.path("nope.csv"))],
         ("nope.csv: no such file or folder",)),
    Case("predict-model-folder-missing", lambda w: ["predict", "--model", str(w.path("nowhere")), "who is it ?"],
         ("nowhere: no model.pt", "pass a folder that run, retrain or train-classifier wrote")),
    Case("predict-vocabulary-damaged",
         lambda w: ["predict", "--model", str(_classifier_copy(w, "damaged-vocab", damage="vocab.json")), "who is it ?"],
         ("damaged-vocab/vocab.json: not valid JSON", "the file is damaged: write it again")),
    # --- trained models: predict and evaluate (inference.py, artifacts.py) ---
    Case("evaluate-unseen-labels",
         lambda w: ["evaluate", "--model", str(w.trained / "classifier"), "--file",
                    str(w.csv("eval.csv", [("NEWCLASS", "a question ?"), ("HUM", "who is it ?")]))],
         ("labels ['NEWCLASS'] never occur in the training data", "fix the labels or add training examples")),
    Case("evaluate-empty-text",
         lambda w: ["evaluate", "--model", str(w.trained / "classifier"), "--file",
                    str(w.csv("eval.csv", [("HUM", ""), ("HUM", "who is it ?")]))],
         ("eval.csv: empty text", "remove these rows")),
    Case("evaluate-truncated-model",
         lambda w: ["evaluate", "--model", str(_truncated_copy(w)), "--file", str(w.data / "trec" / "test.csv")],
         ("truncated/model.pt: cannot be read (PytorchStreamReader", "truncated or damaged: train or copy it again")),
    Case("predict-truncated-model", lambda w: ["predict", "--model", str(_truncated_copy(w)), "who is it ?"],
         ("truncated/model.pt: cannot be read", "truncated or damaged: train or copy it again")),
    Case("predict-model-runs-code", lambda w: ["predict", "--model", str(_model_that_runs_code(w)), "who is it ?"],
         ("evil-model/model.pt: refused", "loading it would run code", "only load model files from a source you trust")),
    Case("predict-vocabulary-of-another-run",
         lambda w: ["predict", "--model", str(_classifier_copy(w, "mixed", _swap_two_words)), "who is it ?"],
         ("mixed/vocab.json: not the vocabulary model.pt was trained with", "copy the classifier folder whole")),
    Case("evaluate-weights-of-another-shape",
         lambda w: ["evaluate", "--model", str(_classifier_copy(w, "older", lambda itos: itos[:-5], True)),
                    "--file", str(w.two_classes())],
         ("older/model.pt: its weights do not fit the model its vocabulary and labels describe",
          "size mismatch for", "copy the classifier folder whole")),
    Case("predict-language-model-as-classifier",
         lambda w: ["predict", "--model", str(_classifier_copy(w, "lm-in", lm_as_model=True)), "who is it ?"],
         ("lm-in/model.pt: not a classifier (it holds a language model)", "pass the folder a classifier was saved in")),
    Case("predict-not-a-model-folder", lambda w: ["predict", "--model", str(w.file("empty/readme.txt", "x").parent),
                                                  "who is it ?"],
         ("empty: no model.pt", "pass a folder that run, retrain or train-classifier wrote")),
    Case("predict-file-not-utf8",
         lambda w: ["predict", "--model", str(w.trained / "classifier"), "--file",
                    str(w.file("texts.txt", "who is it ?\ncaf\xe9 ?\n".encode("latin-1")))],
         ("predict --file", "texts.txt: line 2: not valid UTF-8", "save the file as UTF-8")),
    Case("predict-file-missing",
         lambda w: ["predict", "--model", str(w.trained / "classifier"), "--file", str(w.path("nothing.txt"))],
         ("predict --file", "nothing.txt: cannot read it", "one document per line")),
    Case("predict-unknown-device",
         lambda w: ["predict", "--model", str(w.trained / "classifier"), "--device", "gpu", "who is it ?"],
         ("device: must be auto, cpu, cuda or cuda:N", "'gpu'")),
    # --- training: resume and divergence (train.py, stages.py) ---
    Case("resume-changed-value",
         lambda w: w.training("run", "classifier.dropouts.input_p=0.3", "classifier.lr=0.05", out=w.trained),
         ("belongs to a different run", "classifier.lr: 0.02 -> 0.05", "pass --restart")),
    Case("resume-checkpoint-runs-code",
         lambda w: w.training("train-classifier", out=_checkpoint_that_runs_code(w)),
         ("checkpoint/checkpoint.pt: refused", "loading it would run code", "from a source you trust")),
    Case("training-diverged", lambda w: w.training("train-classifier", "classifier.lr=1e30", "classifier.clip=null"),
         ("classifier: loss became nan", "lower the learning rate")),
    # --- output folders (artifacts.check_writable_folder, tracking.check_reachable) ---
    Case("out-is-a-file", lambda w: w.training("run", out=w.file("taken", "x")),
         ("--out", "taken is a file, not a folder", "choose another folder with --out")),
    Case("out-under-a-file", lambda w: w.training("run", out=w.file("taken", "x") / "run"),
         ("--out", "taken is a file, not a folder", "choose another folder with --out")),
    Case("cache-dir-is-a-file", lambda w: w.training("run", cache=w.file("cache", "x")),
         ("--cache-dir", "cache is a file, not a folder", "choose another folder with --cache-dir")),
    Case("read-only-out", lambda w: w.training("run", out=w.ro / "run", cache=w.rw / "cache"),
         ("--out", "read-only/run cannot be created", "is not writable", "choose another folder with --out")),
    Case("read-only-cache-dir", lambda w: w.training("run", out=w.rw / "run", cache=w.ro / "cache"),
         ("--cache-dir", "read-only/cache cannot be created", "choose another folder with --cache-dir")),
    Case("read-only-data-fetch-dir",
         lambda w: ["data", "fetch", "trec", "--data-dir", str(w.ro / "data"), "--mirror", str(w.data), "--no-progress"],
         ("--data-dir", "read-only/data cannot be created", "choose another folder with --data-dir")),
    Case("read-only-models-fetch-dest",
         lambda w: ["models", "fetch", "wt103-fwd", "--dest", str(w.ro / "models"), "--no-progress"],
         ("--dest", "read-only/models cannot be created", "choose another folder with --dest")),
    Case("read-only-search-storage", lambda w: w.search(storage=w.ro / "runs"),
         ("--storage (search.storage)", "read-only/runs cannot be created"), cli="search"),
    Case("read-only-sqlite-store",
         lambda w: w.search(tracking_uri=f"sqlite:///{w.ro / 'mlflow.db'}", storage=w.rw / "runs"),
         ("MLflow tracking store sqlite:///", "read-only is not writable", "in a writable folder"),
         cli="search"),
    # --- search configs (search/settings.py, search/space.py) ---
    Case("search-num-samples-not-integer", lambda w: w.search("search.num_samples=many"),
         ("search_smoke.yaml: search.num_samples: must be an integer", "'many'"), cli="search"),
    Case("search-cpu-not-a-number", lambda w: w.search("search.resources.cpu=two"),
         ("search.resources.cpu: must be a number", "'two'"), cli="search"),
    Case("search-unknown-setting", lambda w: w.search("search.num_sample=4"),
         ("search.num_sample: unknown key", "did you mean search.num_samples?"), cli="search"),
    Case("search-unknown-metric", lambda w: w.search("search.metric=valid_acc"),
         ("search.metric: must be one of", "'valid_acc'"), cli="search"),
    Case("search-mode-contradicts-metric", lambda w: w.search("search.metric=valid_loss", "search.mode=max"),
         ("search.mode: max would seek the worst valid_loss", "set mode: min"), cli="search"),
    Case("search-space-when-never-true",
         lambda w: w.search(space="  classifier.from_scratch: [false, true]\n"
                                  "  classifier.lrm: {type: uniform, low: 1.5, high: 4, when: {classifier.from_scratch: 'yes'}}"),
         ("space.classifier.lrm: when: classifier.from_scratch can never be 'yes'", "would never be sampled"),
         cli="search"),
    Case("search-grace-period-too-long", lambda w: w.search("search.scheduler.grace_period=9"),
         ("search.scheduler.grace_period: 9 epochs is more than the 3 a trial runs", "lower it"), cli="search"),
    Case("search-invalid-recipe", lambda w: w.search("recipe.classifier.epochs=0"),
         ("recipe.classifier.epochs: must be >= 1",), cli="search"),
    Case("search-space-unknown-key", lambda w: w.search(space="  classifier.dropmult: {type: uniform, low: 0.2, high: 1}"),
         ("space.yaml: space.classifier.dropmult", "did you mean classifier.drop_mult"), cli="search"),
    Case("search-space-low-above-high",
         lambda w: w.search(space="  classifier.lr: {type: loguniform, low: 0.1, high: 0.001}"),
         ("space.classifier.lr: low must be < high", "low=0.1, high=0.001"), cli="search"),
    Case("search-space-nan-choice", lambda w: w.search(space="  classifier.use_clr[0]: [8, .nan]"),
         ("space.classifier.use_clr[0]: value nan does not make a valid recipe", "must be a finite number"),
         cli="search"),
    Case("search-space-unknown-type", lambda w: w.search(space="  classifier.lr: {type: gaussian, low: 0.1, high: 1}"),
         ("space.classifier.lr: type must be one of", "'gaussian'"), cli="search"),
    Case("search-space-value-the-recipe-refuses",
         lambda w: w.search(space="  classifier.lrm: {type: uniform, low: 0.5, high: 3}"),
         ("space.classifier.lrm: value 0.5 does not make a valid recipe", "classifier.lrm: must be >= 1"),
         cli="search"),
    Case("search-unreachable-tracking-server", lambda w: w.search(tracking_uri=f"http://127.0.0.1:{free_port()}"),
         ("MLflow tracking server http://127.0.0.1:", "is unreachable", "Start it"), cli="search"),
    Case("search-tracking-in-memory", lambda w: w.search(tracking_uri="sqlite://"),
         ("MLflow tracking store sqlite://: names no database file", "e.g. sqlite:///mlflow.db"), cli="search"),
    Case("search-tracking-store-a-folder",
         lambda w: w.search(tracking_uri=f"sqlite:///{w.file('store/notes.txt', 'x').parent}"),
         ("store is a folder, not a database file", "store/mlflow.db"), cli="search"),
    Case("search-tracking-store-not-a-database",
         lambda w: w.search(tracking_uri=f"sqlite:///{w.file('notes.db', 'shopping list')}"),
         ("notes.db is not an SQLite database", "give --tracking-uri a database file"), cli="search"),
    Case("search-tracking-store-another-applications-database",
         lambda w: w.search(tracking_uri=f"sqlite:///{_other_database(w)}"),
         ("shop.db is another application's database (tables customers)", "a file of its own"), cli="search"),
    # --- resume, export and retrain of a search (search/store.py, search/export.py) ---
    Case("search-resume-not-a-search", lambda w: ["search", "--resume", str(w.file("plain/notes.txt", "x").parent)],
         ("plain is not a search folder (no search.json)", "give the folder `search` printed"), cli="search"),
    Case("search-resume-damaged-json",
         lambda w: ["search", "--resume", str(w.file("s/search.json", '{"config": {"recipe": ').parent)],
         ("search.json: damaged (not valid JSON", "Start a new search"), cli="search"),
    Case("search-resume-invalid-setting-in-json",
         lambda w: ["search", "--resume", str(w.search_folder(edit=_set_num_samples))],
         ("search.json: damaged (search.num_samples: must be an integer", "Start a new search"), cli="search"),
    Case("export-damaged-json", lambda w: ["export", "--search", str(w.file("s/search.json", "[]").parent)],
         ("search.json: damaged (it holds no search config)", "export from MLflow with --experiment"), cli="search"),
    Case("export-no-completed-trial", lambda w: ["export", "--search", str(w.search_folder())],
         ("no trial completed all its epochs", "python launch.py search --resume"), cli="search"),
    Case("retrain-best-yaml-missing-sections",
         lambda w: ["retrain", "--config", str(w.file("best.yaml", "recipe:\n  data: {dataset: trec}\nresult: {}\n")),
                    "--out", str(w.path("out"))],
         ("best.yaml: recipe has no text, model, lm, classifier section(s)", "export it again"), cli="search"),
    Case("retrain-best-yaml-edited",
         lambda w: ["retrain", "--config", str(_complete_best_yaml(w, lambda t: t.replace("lrm: 2.6", "lrm: 3.0"))),
                    "--out", str(w.path("out"))],
         ("best.yaml: differs from the trial it was exported from: recipe.classifier.lrm is 3.0 (the trial's: 2.6)",
          "recipe.lm.lrm is 3.0", "or pass --allow-edits"), cli="search"),
    Case("retrain-best-yaml-cut-short",
         lambda w: ["retrain", "--config", str(_complete_best_yaml(w, lambda t: t[:t.index("classifier:\n") + 30])),
                    "--out", str(w.path("out"))],
         ("best.yaml: differs from the trial it was exported from", "key(s) missing: recipe.classifier.",
          "export it again"), cli="search"),
    Case("retrain-best-yaml-without-record",
         lambda w: ["retrain", "--config", str(_complete_best_yaml(w, _without_record)), "--out", str(w.path("out"))],
         ("best.yaml: it has no record: section", "export it again", "--allow-edits"), cli="search"),
    Case("search-config-missing", lambda w: ["search", "--config", str(w.path("nope.yaml"))],
         ("cannot read config file", "nope.yaml: No such file or directory"), cli="search"),
    Case("search-num-samples-zero", lambda w: w.search("search.num_samples=0"),
         ("search.num_samples: must be >= 1", "got 0"), cli="search"),
    Case("search-max-concurrent-zero", lambda w: w.search("search.max_concurrent=0"),
         ("search.max_concurrent: must be >= 1", "got 0"), cli="search"),
    Case("search-space-empty-choice", lambda w: w.search(space="  classifier.lr: []"),
         ("space.classifier.lr: a choice needs a non-empty list",), cli="search"),
    Case("search-space-log-range-from-zero",
         lambda w: w.search(space="  classifier.lr: {type: loguniform, low: 0, high: 0.1}"),
         ("space.classifier.lr: a log-scaled range needs low > 0", "got low=0"), cli="search"),
    Case("search-unknown-algorithm", lambda w: w.search("search.algorithm=cmaes"),
         ("search.algorithm: must be one of ['tpe', 'random']", "'cmaes'"), cli="search"),
    Case("search-negative-gpu", lambda w: w.search("search.resources.gpu=-1"),
         ("search.resources.gpu: must be >= 0", "got -1"), cli="search"),
    Case("search-unknown-scheduler", lambda w: w.search("search.scheduler.type=pbt"),
         ("search.scheduler.type: must be one of ['asha', 'fifo']", "'pbt'"), cli="search"),
    Case("search-grace-period-zero", lambda w: w.search("search.scheduler.grace_period=0"),
         ("search.scheduler.grace_period: must be >= 1 epoch", "got 0"), cli="search"),
    Case("search-rungs-not-increasing", lambda w: w.search("search.scheduler.rungs=[2, 1]"),
         ("search.scheduler.rungs: list the epochs in increasing order", "got [2, 1]"), cli="search"),
    Case("search-resume-missing-folder", lambda w: ["search", "--resume", str(w.path("gone"))],
         ("gone is not a search folder (no search.json)",), cli="search"),
    Case("search-resume-without-its-store", lambda w: ["search", "--resume", str(w.search_folder())],
         ("search: its MLflow store sqlite:///", "mlflow.db does not exist", "copy the project's MLflow store"),
         cli="search"),
    Case("search-resume-without-its-study",
         lambda w: ["search", "--resume", str(w.search_folder(study=False))],
         ("search: no optuna.db (the search's Optuna study, which a resume continues)", "copy the whole search folder"),
         cli="search"),
    Case("search-resume-damaged-study",
         lambda w: ["search", "--resume", str(_damaged_study(w))],
         ("optuna.db: damaged or not this search's Optuna study", "copy it again"), cli="search"),
    Case("export-damaged-study", lambda w: ["export", "--search", str(_damaged_study(w))],
         ("optuna.db: damaged or not this search's Optuna study", "export from MLflow with --experiment"),
         cli="search"),
    Case("search-resume-store-without-its-run", lambda w: ["search", "--resume", str(_store_without_the_run(w))],
         ("holds no run 00000000000000000000000000000000, this search's parent run", "copy the project's MLflow store"),
         cli="search"),
    Case("export-missing-folder", lambda w: ["export", "--search", str(w.path("gone"))],
         ("gone is not a search folder (no search.json)",), cli="search"),
    Case("retrain-config-missing",
         lambda w: ["retrain", "--config", str(w.path("nope.yaml")), "--out", str(w.path("out"))],
         ("cannot read config file", "nope.yaml"), cli="search"),
    Case("retrain-best-yaml-a-list",
         lambda w: ["retrain", "--config", str(w.file("best.yaml", "- 1\n")), "--out", str(w.path("out"))],
         ("best.yaml: the top level must be a mapping of sections",), cli="search"),
    Case("relocate-store-not-sqlite", lambda w: ["relocate-store", "--tracking-uri", "http://127.0.0.1:9"],
         ("--tracking-uri http://127.0.0.1:9: only a SQLite store", "a tracking server keeps its own artifacts"),
         cli="search"),
    Case("relocate-store-no-database",
         lambda w: ["relocate-store", "--tracking-uri", f"sqlite:///{w.path('elsewhere/mlflow.db')}"],
         ("elsewhere/mlflow.db: no database",), cli="search"),
    Case("retrain-out-is-a-file",
         lambda w: ["retrain", "--config", str(_complete_best_yaml(w)), "--out", str(w.file("taken", "x"))],
         ("--out", "taken is a file, not a folder"), cli="search"),
]


# --- running a case --------------------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    """Every file's sha256 and every folder, by relative path: what "nothing changed" compares."""
    return {p.relative_to(folder).as_posix(): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def _call(cli: str, argv: list[str]) -> int:
    main = launch.main if cli == "launch" else search_cli.main
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        return int(e.code or 0)


def _run_in_process(cli: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    rc = _call(cli, argv)
    return rc, capsys.readouterr().err


def _run_as_nobody(cli: str, argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
    """Run the command in a forked child that has dropped root's privileges: root writes into any folder
    whatever its mode, so only another user meets a read-only folder as a user would."""
    import search.tuner  # noqa: F401  (imported here, not in the child: the child may not write Ray's caches)

    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as e:
            os.write(writer, json.dumps({"setuid": str(e)}).encode())
            os._exit(0)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = _call(cli, argv)
            payload = {"rc": rc, "err": err.getvalue()}
        except BaseException as e:  # noqa: BLE001 (reported to the parent, which fails the test)
            payload = {"rc": None, "err": f"{err.getvalue()}\nTraceback: {type(e).__name__}: {e}"}
        os.write(writer, json.dumps(payload).encode())
        os._exit(0)
    os.close(writer)
    chunks = []
    try:
        while select.select([reader], [], [], timeout)[0]:
            chunk = os.read(reader, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)  # the child we forked, hung
            pytest.fail(f"the unprivileged child did not answer in {timeout} s")
    finally:
        os.close(reader)
        os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks))
    if "setuid" in result:
        pytest.skip(f"running as root and cannot drop to an unprivileged user ({result['setuid']}), so a "
                    "read-only folder cannot be made: root writes into it regardless")
    return result["rc"], result["err"]


def _run(case: Case, w: Workspace, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    if not w.read_only_folder:
        return _run_in_process(case.cli, argv, capsys)
    if os.geteuid() == 0:
        if not hasattr(os, "fork"):
            pytest.skip("running as root without os.fork: a read-only folder cannot be made for root")
        return _run_as_nobody(case.cli, argv)
    if os.access(w.ro, os.W_OK):  # e.g. a capability that overrides permissions
        pytest.skip("this user can write into a folder of mode 0555, so a read-only folder cannot be made here")
    return _run_in_process(case.cli, argv, capsys)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, datasets_dir, shared_cache) -> Path:
    """A finished tiny ``run`` (LM + classifier), with one dropout set alone (the others keep their defaults)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = [*TINY, "--set", "classifier.dropouts.input_p=0.3", "--data-dir", str(datasets_dir),
            "--cache-dir", str(shared_cache), "--out", str(out)]
    assert launch.main(["run", *args]) == 0
    return out


@pytest.fixture
def workspace(request, datasets_dir, shared_cache):
    root = Path(tempfile.mkdtemp(prefix="ulmfit-bad-input-"))
    root.chmod(0o755)  # readable by the unprivileged child of the read-only cases
    try:
        yield Workspace(root, request, datasets_dir, shared_cache)
    finally:
        for folder in root.rglob("*"):  # a read-only folder left by the case: make it removable
            if folder.is_dir() and not folder.is_symlink():
                folder.chmod(folder.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_with_one_clear_line_and_changes_nothing(case: Case, workspace: Workspace, capsys):
    argv = case.argv(workspace)
    watched = [workspace.root] + ([workspace.trained] if workspace.uses_trained else [])
    capsys.readouterr()  # what building the workspace printed (the trained run's epochs)
    before = [_digest(f) for f in watched]

    rc, err = _run(case, workspace, argv, capsys)

    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in case.says:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert [_digest(f) for f in watched] == before, "the failed command changed files or folders"


# --- beside the catalogue -----------------------------------------------------------------------------------


def test_catalogue_is_large_and_documented():
    ids = [c.id for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    doc = TROUBLESHOOTING.read_text(encoding="utf-8")
    missing = [i for i in ids if f"`{i}`" not in doc]
    assert not missing, f"docs/TROUBLESHOOTING.md lacks {missing}"
    assert "docs/TROUBLESHOOTING.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_one_dropout_set_alone_trains_with_the_others_at_their_defaults(trained_run):
    saved = yaml.safe_load((trained_run / "classifier" / "config.yaml").read_text())["classifier"]["dropouts"]
    assert saved == {"embed_p": 0.05, "input_p": 0.3, "weight_p": 0.5, "hidden_p": 0.3, "output_p": 0.4}
    assert (trained_run / "classifier" / "model.pt").is_file()


def test_a_cuda_device_past_the_last_one_is_named(monkeypatch):
    """The branch for machines with CUDA (the catalogue's machine may have none)."""
    from ulmfit_core.config import ConfigError
    from ulmfit_core.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"device: 'cuda:2' does not exist; this machine has 2 CUDA device\(s\), "
                                          r"cuda:0 to cuda:1: set one of them, or auto"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


def test_a_message_of_several_lines_is_printed_as_one(capsys):
    from ulmfit_core.console import report_user_error

    assert report_user_error(ValueError("first line\n  second line\n")) == 2
    assert capsys.readouterr().err == "error: first line second line\n"


def test_drop_mult_past_the_cap_warns_naming_the_key_and_the_capped_value():
    with pytest.warns(UserWarning) as caught:
        cfg = load_recipe(None, ["data.dataset=trec", "classifier.drop_mult=2.0"])
    message = " ".join(str(w.message) for w in caught)
    assert "classifier.drop_mult: 2 pushes classifier.dropouts past 0.95" in message
    assert "weight_p 0.5 x 2 = 1" in message and "lower classifier.drop_mult" in message
    assert cfg.classifier.scaled_dropouts.weight_p == 0.95  # capped, and said so
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # below the cap: no warning
        load_recipe(None, ["data.dataset=trec", "classifier.drop_mult=1.5"])


def test_default_search_space_stays_valid_with_drop_mult_up_to_two():
    from search.settings import load_search_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its top end is capped (and warns); it must not fail
        cfg = load_search_config(SMOKE)
    assert max(p.extremes()[-1] for p in cfg.space.params if p.key == "classifier.drop_mult") == 2.0


def _open_store_in_a_child(uri: str, go: float) -> int:
    """Fork a process that, at time ``go``, opens the store at ``uri`` with ``check_reachable``; its pid.
    Forked, not spawned: a fresh interpreter spends a minute importing Ray and MLflow on a loaded machine."""
    from search.tracking import check_reachable

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            time.sleep(max(0.0, go - time.time()))  # both start together, as two searches launched at once
            check_reachable(uri)
            code = 0
        except BaseException as e:  # noqa: BLE001 (the exit code tells the parent)
            print(f"check_reachable failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_two_searches_creating_one_new_sqlite_store_at_once_both_succeed(tmp_path):
    """Two processes open one new SQLite store at the same moment: without the lock beside the database,
    MLflow's schema migrations race ("Online migration expected to match one row"); with it, both work."""
    import mlflow  # noqa: F401  (imported before forking, so both children start their clocks ready)

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    go = time.time() + 0.5
    pids = [_open_store_in_a_child(uri, go) for _ in range(2)]
    codes = []
    deadline = time.monotonic() + 240
    for pid in pids:
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)  # a child this test forked, hung
            os.waitpid(pid, 0)
            codes.append(None)
        else:
            codes.append(os.waitstatus_to_exitcode(done[1]))
    assert codes == [0, 0]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(uri).search_experiments()  # the store works: its Default experiment is there
