"""Every file the recipe writes or reads back: models, vocabularies, configs, metrics.

One writer and one reader per kind of file, all writes atomic (a temporary file in the same folder,
then ``os.replace``), so a reader (another trial, a resumed run) never sees half a file. Weights are
read with ``torch.load(weights_only=True)``: a file holds tensors, numbers, strings and lists, and
loading it can never run code.

Folders (names are the contract other code and users rely on):

* a **language model** (``finetune_lm`` / ``pretrain`` output): ``lm.pt`` (the whole tied model) and
  ``encoder.pt`` (what a classifier loads), each ``{"state_dict", "config"}``; ``vocab.json``;
* a **classifier**: ``model.pt`` (``{"state_dict", "config", "labels", "tokenizer", "format", "vocab_sha256"}``),
  ``vocab.json``, ``labels.json``, ``config.yaml``;
* both: ``metrics.json`` and a resumable ``checkpoint/`` (see :mod:`ulmfit_core.train`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # torch is imported where tensors are read or written: writing text stays cheap
    import torch
    from torch import nn

LM_FILE, ENCODER_FILE, VOCAB_FILE = "lm.pt", "encoder.pt", "vocab.json"
MODEL_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE = "model.pt", "labels.json", "config.yaml", "metrics.json"
#: A subword model's SentencePiece file (``text.tokenizer: subwords``), beside its vocabulary.
SUBWORD_FILE = "subwords.model"
CHECKPOINT_SUBDIR = "checkpoint"
#: Beside a checkpoint: the per-epoch history and the learning-rate schedule used so far (for plots).
TRAIN_LOG_FILE = "train_log.json"
#: Bump when the layout of ``model.pt`` changes.
CLASSIFIER_FORMAT = 1


class ArtifactError(ValueError):
    """A saved model, vocabulary or config cannot be used; the message names the file and why."""


# --- atomic writes --------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``.

    The one way this project writes a file: a concurrent reader sees the old file or the new one,
    never a mix; a failure leaves the old file and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable_folder(path: str | Path, what: str) -> None:
    """Raise ``PermissionError`` (``NotADirectoryError`` when a file is in the way) unless files can be
    written in folder ``path``: it exists and is writable, or it can be created in its nearest existing
    parent. ``what`` names the setting in the message (``--out``, ``--cache-dir``). Creates nothing.

    Commands call this before any work, so a run that cannot save fails at once, not at its first write.
    """
    path = Path(path).expanduser().absolute()
    existing = path
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as e:  # a parent this user may not even look into
        raise PermissionError(f"{what} {path}: cannot look into {existing} ({e.strerror}); choose another "
                              f"folder with {what}") from None
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path}: {existing} is a file, not a folder; choose another folder "
                                 f"with {what}")
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system
        where = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise PermissionError(f"{what} {path} {where} (by user {_user()}); choose another folder with {what}, "
                              "or make it writable")


def _user() -> str:
    """This process's user name (what a permission depends on; the login name can differ under sudo)."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):  # no pwd (Windows) or an unnamed uid (containers)
        return str(getattr(os, "geteuid", lambda: "?")())


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON (numpy/torch scalars as floats)."""
    return write_text(path, json.dumps(payload, indent=2, default=float, ensure_ascii=False))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); the file is damaged: write it again") from None


def write_yaml(path: str | Path, values: Mapping[str, Any]) -> Path:
    return write_text(path, yaml.safe_dump(dict(values), sort_keys=False))


def copy_file(src: str | Path, dest: str | Path) -> Path:
    """A copy of ``src`` at ``dest``, atomically (a present ``dest`` is a whole copy)."""
    with open(src, "rb") as f:
        return atomic_write(dest, lambda out: shutil.copyfileobj(f, out, 1 << 20))


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Build a folder in a staging folder beside ``target``; on success it replaces ``target`` whole.

    Readers see the old folder or the new one, never a mix of their files (e.g. weights of one run
    beside the vocabulary of another). On an exception the staging folder is removed and ``target``
    is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is as readable as any other
        if target.exists():
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_tensors(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` of plain data (tensors, numbers, strings, lists, dicts), atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(dict(payload), f))


def load_tensors(path: str | Path) -> dict[str, Any]:
    """What :func:`save_tensors` wrote, on the CPU, read as data only (``weights_only=True``).

    A file that would need code to load (a pickled object) or is truncated raises
    :class:`ArtifactError` naming the file, without running anything from it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        wanted = re.search(r"GLOBAL (\S+)", str(e))  # torch's paragraph names what the file asked for
        what = f"it asks for {wanted.group(1)}" if wanted else _first_sentence(e)
        raise ArtifactError(f"{path}: refused: it holds more than tensors and plain data, and loading it would run "
                            f"code ({what}); only load model files from a source you trust, or re-create it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot be read ({_first_sentence(e)}); the file is truncated or damaged: "
                            "train or copy it again") from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{path}: expected a mapping of tensors, got {type(payload).__name__}")
    return payload


def _first_sentence(error: BaseException) -> str:
    """The first sentence of an error: torch appends paragraphs of advice that do not apply here."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ", 1)[0].rstrip(".")


def cpu_state_dict(module: nn.Module,
                   move: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` on the CPU with tied tensors kept as one tensor.

    ``tensor.cpu()`` of a CUDA tensor makes a new copy each call, so the three names of a tied
    embedding (encoder, its dropout wrapper, the decoder) would be saved as three tensors (three
    times the disk, and no longer tied when loaded). Each distinct storage is moved once.
    ``move`` replaces ``Tensor.cpu`` (tests use a copying move).
    """
    move = move or (lambda t: t.cpu())
    moved: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for key, value in module.state_dict().items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if ident not in moved:
            moved[ident] = move(value.detach())
        out[key] = moved[ident]
    return out


# --- vocabulary -----------------------------------------------------------------------------


def write_vocab(path: str | Path, itos: Sequence[str]) -> Path:
    """The vocabulary as JSON ``{"itos": [...]}`` (a folder gets ``vocab.json`` inside)."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    return write_text(path, json.dumps({"itos": list(itos)}, ensure_ascii=False))


def read_vocab(path: str | Path) -> list[str]:
    """``itos`` from a ``vocab.json`` (``{"itos": [...]}`` or a bare list); a folder means its vocab.json."""
    path = Path(path)
    if path.is_dir():
        path = path / VOCAB_FILE
    data = read_json(path)
    itos = data.get("itos") if isinstance(data, dict) else data
    if not isinstance(itos, list) or not all(isinstance(w, str) for w in itos):
        raise ArtifactError(f"{path}: expected a list of strings, or {{\"itos\": [...]}}")
    return itos


def vocab_digest(itos: Sequence[str]) -> str:
    """SHA-256 of a vocabulary's tokens in order: a classifier's weights record the one they were trained
    with, so a ``vocab.json`` from another run (same size, other tokens) is refused, not read as garbage."""
    return hashlib.sha256(json.dumps(list(itos), ensure_ascii=False).encode("utf-8")).hexdigest()


# --- language models ------------------------------------------------------------------------


def save_language_model(directory: str | Path, lm: nn.Module, itos: Sequence[str],
                        config: Mapping[str, Any], subwords: bytes | None = None) -> Path:
    """Write ``lm.pt``, ``encoder.pt`` and ``vocab.json`` (and ``subwords.model`` for a subword model) into
    ``directory`` (created); returns it.

    ``lm`` is a :class:`~ulmfit_core.awd_lstm.LanguageModel`; ``config`` plain data (``to_dict``).
    """
    directory = Path(directory)
    config = dict(config)
    # lm.pt last: a folder holding it holds the matching vocabulary and encoder too
    write_subwords(directory, subwords)
    write_vocab(directory / VOCAB_FILE, itos)
    save_tensors(directory / ENCODER_FILE, {"state_dict": cpu_state_dict(lm.encoder), "config": config})
    save_tensors(directory / LM_FILE, {"state_dict": cpu_state_dict(lm), "config": config})
    return directory


#: A finished model's files (not its ``checkpoint/``); see :func:`remove_model_files`.
MODEL_FOLDER_FILES = (LM_FILE, MODEL_FILE, ENCODER_FILE, VOCAB_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE,
                      "fingerprint.json", SUBWORD_FILE)


def write_subwords(directory: Path, subwords: bytes | None) -> None:
    """The SentencePiece model beside the vocabulary (nothing for word tokens, and no stale one left)."""
    path = Path(directory) / SUBWORD_FILE
    if subwords is None:
        path.unlink(missing_ok=True)
    else:
        Path(directory).mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(subwords))


def read_subwords(directory: str | Path) -> bytes | None:
    path = Path(directory) / SUBWORD_FILE
    return path.read_bytes() if path.is_file() else None


def remove_model_files(directory: str | Path) -> None:
    """Remove an earlier run's finished-model files from ``directory`` before a new run writes there, so
    the folder never pairs one run's weights with another's vocabulary (the weights, written last by the
    new run, mark it finished)."""
    for name in MODEL_FOLDER_FILES:
        (Path(directory) / name).unlink(missing_ok=True)


def _state_payload(path: Path) -> dict[str, Any]:
    payload = load_tensors(path)
    if "state_dict" not in payload:
        raise ArtifactError(f"{path}: not a model saved by this project (no 'state_dict')")
    return payload


def load_language_model(directory: str | Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    """``(state_dict, itos, config)`` of a folder written by :func:`save_language_model`."""
    directory = Path(directory)
    payload = _state_payload(directory / LM_FILE)
    return payload["state_dict"], read_vocab(directory / VOCAB_FILE), payload.get("config", {})


def load_encoder(dir_or_file: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(encoder state_dict, itos)`` of a language-model folder (or its ``encoder.pt``)."""
    path = Path(dir_or_file)
    if path.is_dir():
        path = path / ENCODER_FILE
    return _state_payload(path)["state_dict"], read_vocab(path.parent / VOCAB_FILE)


# --- classifiers ----------------------------------------------------------------------------


@dataclass
class SavedClassifier:
    """What a classifier folder holds (see :func:`save_classifier`)."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    itos: list[str]
    labels: list[str]
    subwords: bytes | None = None  # the SentencePiece model of a subword classifier


def write_classifier_metadata(directory: str | Path, config: Mapping[str, Any], itos: Sequence[str],
                              labels: Sequence[str], subwords: bytes | None = None) -> None:
    """``vocab.json``, ``labels.json`` and ``config.yaml`` (and a subword model's ``subwords.model``): what a
    classifier's weights need beside them."""
    directory = Path(directory)
    write_subwords(directory, subwords)
    write_vocab(directory / VOCAB_FILE, itos)
    write_json(directory / LABELS_FILE, list(labels))
    write_yaml(directory / CONFIG_FILE, config)


def save_classifier(directory: str | Path, model: nn.Module, config: Mapping[str, Any], itos: Sequence[str],
                    labels: Sequence[str], tokenizer: str, subwords: bytes | None = None) -> Path:
    """A self-contained classifier: weights (no optimizer state), vocabulary, labels, tokenizer, config."""
    directory = Path(directory)
    write_classifier_metadata(directory, config, itos, labels, subwords)
    save_tensors(directory / MODEL_FILE, {"state_dict": cpu_state_dict(model), "config": dict(config),
                                          "labels": list(labels), "tokenizer": tokenizer,
                                          **_digests(itos, subwords)})
    return directory


def _digests(itos: Sequence[str], subwords: bytes | None) -> dict[str, Any]:
    """model.pt's record of the files beside it: its vocabulary (and subword model), checked on loading."""
    out: dict[str, Any] = {"format": CLASSIFIER_FORMAT, "vocab_sha256": vocab_digest(itos)}
    if subwords is not None:
        out["subwords_sha256"] = hashlib.sha256(subwords).hexdigest()
    return out


def load_classifier_files(directory: str | Path) -> SavedClassifier:
    """Read what :func:`save_classifier` wrote; needs no training data."""
    directory = Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise ArtifactError(f"{directory}: no {MODEL_FILE}; pass a folder that run, retrain or train-classifier "
                            "wrote (e.g. runs/recipe, or runs/recipe/classifier)")
    payload = _state_payload(directory / MODEL_FILE)
    if not isinstance(payload.get("config"), Mapping) or not isinstance(payload.get("labels"), list):
        what = "it holds a language model" if any(str(k).startswith("decoder.") for k in payload["state_dict"]) \
            else "it has no config or labels"
        raise ArtifactError(f"{directory / MODEL_FILE}: not a classifier ({what}); pass "
                            "the folder a classifier was saved in (run, retrain or train-classifier write one)")
    itos = read_vocab(directory / VOCAB_FILE)
    recorded = payload.get("vocab_sha256")  # absent in classifiers saved before it was recorded
    if recorded is not None and recorded != vocab_digest(itos):
        raise ArtifactError(f"{directory / VOCAB_FILE}: not the vocabulary {MODEL_FILE} was trained with (another "
                            "run's?); copy the classifier folder whole from one run")
    subwords = read_subwords(directory)
    wanted = payload.get("subwords_sha256")
    if wanted is not None and (subwords is None or hashlib.sha256(subwords).hexdigest() != wanted):
        problem = "missing" if subwords is None else f"not the subword model {MODEL_FILE} was trained with"
        raise ArtifactError(f"{directory / SUBWORD_FILE}: {problem}; copy the classifier folder whole from one run")
    return SavedClassifier(state_dict=payload["state_dict"], config=dict(payload["config"]),
                           itos=itos, labels=list(payload["labels"]), subwords=subwords if wanted else None)


def export_checkpoint_model(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """A classifier folder (as :func:`save_classifier` writes) from a training checkpoint folder: the
    weights only, without the optimizer and RNG state a checkpoint holds for resuming."""
    checkpoint_dir = Path(checkpoint_dir)
    state = load_tensors(checkpoint_dir / "checkpoint.pt")
    if "model" not in state or "config" not in state:
        raise ArtifactError(f"{checkpoint_dir / 'checkpoint.pt'}: not a classifier checkpoint (no model or config)")
    labels = read_json(checkpoint_dir / LABELS_FILE)
    itos = read_vocab(checkpoint_dir / VOCAB_FILE)
    subwords = read_subwords(checkpoint_dir)
    out_dir = Path(out_dir)
    write_classifier_metadata(out_dir, state["config"], itos, labels, subwords)
    save_tensors(out_dir / MODEL_FILE, {"state_dict": state["model"], "config": dict(state["config"]),
                                        "labels": list(labels), "tokenizer": state.get("tokenizer", "unknown"),
                                        **_digests(itos, subwords)})
    return out_dir
