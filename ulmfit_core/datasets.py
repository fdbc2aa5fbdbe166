"""Named datasets under the data directory, and fetching them from their public originals.

A dataset is a folder ``DATA_DIR/NAME/`` holding ``train.csv[.gz]``, ``test.csv[.gz]`` and
optionally ``unsup.csv[.gz]`` (unlabeled text for the language model). :func:`fetch` downloads
the public originals of ``trec`` and ``imdb`` and converts them to that layout:

- trec: ``train.csv``, ``test.csv`` with columns ``label,fine_label,text``;
- imdb: ``train.csv.gz``, ``test.csv.gz`` with ``label,rating,id,text`` (ids like
  ``train_pos_123``) and ``unsup.csv.gz`` with ``id,text`` (ids like ``unsup_123``).

Nothing is fetched unless asked for (``launch.py data fetch NAME``).
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO

from filelock import FileLock

from .artifacts import atomic_write, check_writable_folder
from .config import DataConfig
from .data import DataError
from .fetching import FetchError, check_unpacked_size, copy_atomic, download, fetch_sums, is_url, read_sums, verify

#: Environment variable naming the data directory (default ``./data``).
DATA_ENV = "ULMFIT_DATA"


@dataclass(frozen=True)
class Source:
    """Where a dataset's originals live and what its converted folder holds."""

    base_url: str
    originals: tuple[str, ...]  # file names under base_url (and under a mirror)
    outputs: tuple[str, ...]  # the converted files, relative to the dataset folder


SOURCES: Mapping[str, Source] = MappingProxyType({
    "trec": Source("https://cogcomp.seas.upenn.edu/Data/QA/QC/",
                   ("train_5500.label", "TREC_10.label"), ("train.csv", "test.csv")),
    "imdb": Source("https://ai.stanford.edu/~amaas/data/sentiment/",
                   ("aclImdb_v1.tar.gz",), ("train.csv.gz", "test.csv.gz", "unsup.csv.gz")),
})


@dataclass
class DatasetPaths:
    """The files a recipe reads; ``None`` where there is none."""

    train: Path
    test: Path | None = None
    unlabeled: Path | None = None
    valid: Path | None = None


def default_data_dir() -> Path:
    """``$ULMFIT_DATA``, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _existing(path: str | None, key: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise DataError(f"{key}: {p} does not exist; fix the path (relative paths start at {Path.cwd()})")
    return p


def resolve(name: str | None, data_cfg: DataConfig, data_dir: str | Path | None = None) -> DatasetPaths:
    """The files to read: dataset ``name`` (default ``data_cfg.dataset``) under ``data_dir``
    (default :func:`default_data_dir`), with explicit ``data_cfg.train/test/valid/unlabeled``
    taking precedence. ``unlabeled`` is None when ``data_cfg.use_unlabeled`` is off."""
    name = name if name is not None else data_cfg.dataset
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    found: dict[str, Path | None] = {"train": None, "test": None, "valid": None, "unlabeled": None}
    if name:
        folder = data_dir / name
        if not folder.is_dir():
            fetchable = f"run `python launch.py data fetch {name} --data-dir {data_dir}`" if name in SOURCES \
                else f"put train.csv (and test.csv) in {folder}"
            raise DataError(f"dataset {name!r} not found: {folder} does not exist; {fetchable}, "
                            "or set data.train to a CSV/TSV file or folder")
        found = {"train": _find(folder, "train"), "test": _find(folder, "test"),
                 "valid": _find(folder, "valid"), "unlabeled": _find(folder, "unsup")}
        if found["train"] is None and not data_cfg.train:
            hint = f"; run `python launch.py data fetch {name} --data-dir {data_dir}`" if name in SOURCES else ""
            raise DataError(f"dataset {name!r}: {folder} has no train.csv or train.csv.gz{hint}")
    for key in found:  # explicit paths win over the dataset folder's files
        found[key] = _existing(getattr(data_cfg, key), f"data.{key}") or found[key]
    if found["train"] is None:
        raise DataError("data: give data.dataset (a name such as 'trec') or data.train (a CSV/TSV file or folder)")
    if not data_cfg.use_unlabeled:
        found["unlabeled"] = None
    return DatasetPaths(**found)  # type: ignore[arg-type]


# --- fetching -------------------------------------------------------------------------------


def fetch(name: str, data_dir: str | Path | None = None, mirror: str | Path | None = None,
          progress: bool = True) -> Path:
    """Download and convert dataset ``name`` into ``data_dir/name``; returns that folder.

    ``mirror``: a local directory or a base URL. A directory that already holds the converted
    layout (``NAME/train.csv`` ...) is copied from; otherwise the originals are read from
    ``mirror/FILENAME`` instead of the public URLs. A ``SHA256SUMS`` file in the mirror (lines
    ``HASH  PATH``, paths relative to the mirror) is checked against what is taken from it.
    Nothing is done when the folder is already complete; an interrupted download is continued by
    the next call (see :func:`ulmfit_core.fetching.download`). Safe to run from several processes.
    """
    if name not in SOURCES:
        raise DataError(f"unknown dataset {name!r}; fetch knows {', '.join(sorted(SOURCES))}. "
                        "For other data set data.train to a CSV/TSV file or folder")
    src = SOURCES[name]
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    target = data_dir / name
    if _complete(target, src):
        return target
    check_writable_folder(data_dir, "--data-dir")  # before any download: it would have nowhere to go
    target.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_dir / f".{name}.fetch.lock")):
        if _complete(target, src):  # another process fetched it while we waited
            return target
        try:
            _fill(name, src, target, mirror, progress)
        except FetchError as e:
            raise DataError(str(e)) from None
    return target


def _fill(name: str, src: Source, target: Path, mirror: str | Path | None, progress: bool) -> None:
    """Write ``src.outputs`` into ``target``: copied from a mirror's converted layout, or converted
    from the originals."""
    mirror_dir = Path(mirror) if mirror is not None and not is_url(str(mirror)) else None
    if mirror_dir is not None and all((mirror_dir / name / f).is_file() for f in src.outputs):
        sums = read_sums(mirror_dir)
        for f in src.outputs:
            verify(mirror_dir / name / f, sums.get(f"{name}/{f}"))
            copy_atomic(mirror_dir / name / f, target / f)
        return
    downloads = target / ".download"
    downloads.mkdir(exist_ok=True)
    originals = [_obtain(src, fname, mirror, downloads, progress) for fname in src.originals]
    _CONVERTERS[name](originals, target)
    shutil.rmtree(downloads, ignore_errors=True)


def _complete(target: Path, src: Source) -> bool:
    # outputs are written by rename, so a present file is a finished one
    return all((target / f).is_file() for f in src.outputs)


def _obtain(src: Source, fname: str, mirror: str | Path | None, downloads: Path, progress: bool) -> Path:
    """The original ``fname`` as a local file: from a mirror directory, else downloaded."""
    if mirror is not None and not is_url(str(mirror)):
        path = Path(mirror) / fname
        if not path.is_file():
            raise DataError(f"mirror {mirror} has neither the converted files nor the original {fname}; "
                            f"put {fname} there, or leave out the mirror to download from {src.base_url}")
        verify(path, read_sums(Path(mirror)).get(fname))
        return path
    base = str(mirror).rstrip("/") + "/" if mirror is not None else src.base_url
    dest = downloads / fname
    if not dest.is_file():  # a finished download survives a failed conversion
        download(base + fname, dest, progress)
    if mirror is not None:
        try:
            verify(dest, fetch_sums(base).get(fname))
        except FetchError:
            dest.unlink()  # so the next try downloads it again
            raise
    return dest


def _write_csv(dest: Path, header: list[str], rows: Iterable[list[str]]) -> None:
    """CSV (gzipped when ``dest`` ends in .gz), ``\\n`` line ends, written to a tmp file then renamed."""
    def write(out: IO[bytes]) -> None:
        # no file name and mtime=0 in the gzip header: the same rows give the same bytes
        raw = gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) if dest.name.endswith(".gz") else out
        with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(rows)

    atomic_write(dest, write)


# --- converters: originals -> the dataset layout --------------------------------------------


def _trec_rows(path: Path) -> list[list[str]]:
    """``DESC:manner How did serfdom develop ... ?`` -> [``DESC``, ``DESC:manner``, text]."""
    rows = []
    # latin-1: the originals are not UTF-8 (a few bytes above 127)
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fine, _, text = line.strip().partition(" ")
        if ":" not in fine or not text.strip():
            raise DataError(f"{path}: line {n}: expected 'COARSE:fine question text', got {line[:60]!r}")
        rows.append([fine.split(":", 1)[0], fine, text.strip()])
    return rows


def _convert_trec(originals: list[Path], target: Path) -> None:
    train, test = originals
    _write_csv(target / "test.csv", ["label", "fine_label", "text"], _trec_rows(test))
    _write_csv(target / "train.csv", ["label", "fine_label", "text"], _trec_rows(train))


_IMDB_NAME = re.compile(r"^aclImdb/(train|test)/(pos|neg|unsup)/(\d+)_(\d+)\.txt$")


def _convert_imdb(originals: list[Path], target: Path) -> None:
    """aclImdb/{train,test}/{pos,neg}/ID_RATING.txt and aclImdb/train/unsup/ID_0.txt -> CSVs.

    Rows go by label (neg, then pos), then by file name as text (``0_3.txt``, ``10000_4.txt``),
    texts exactly as in the files (HTML ``<br />`` included).
    """
    (tar_path,) = originals
    found: dict[tuple[str, str], list[tuple[str, str, str]]] = {}  # (split, label) -> [(fname, rating, text)]
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            check_unpacked_size(tar_path.name, [m.size for m in tar.getmembers() if m.isfile()])
            for member in tar:
                m = _IMDB_NAME.match(member.name)
                if not m or not member.isfile():
                    continue
                split, label, _, rating = m.groups()
                f = tar.extractfile(member)
                assert f is not None  # a regular file
                fname = member.name.rsplit("/", 1)[1]
                found.setdefault((split, label), []).append((fname, rating, f.read().decode("utf-8")))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{tar_path}: not a readable aclImdb_v1.tar.gz ({e}); delete it and fetch again") from None
    for split in ("train", "test"):
        if not found.get((split, "pos")) or not found.get((split, "neg")):
            raise DataError(f"{tar_path}: no aclImdb/{split}/pos or /neg reviews in it; is it aclImdb_v1.tar.gz?")

    def labeled(split: str) -> Iterable[list[str]]:
        for label in ("neg", "pos"):
            for fname, rating, text in sorted(found[(split, label)]):
                yield [label, rating, f"{split}_{label}_{fname.split('_', 1)[0]}", text]

    def unlabeled() -> Iterable[list[str]]:
        for fname, _, text in sorted(found.get(("train", "unsup"), [])):
            yield [f"unsup_{fname.split('_', 1)[0]}", text]

    _write_csv(target / "test.csv.gz", ["label", "rating", "id", "text"], labeled("test"))
    _write_csv(target / "unsup.csv.gz", ["id", "text"], unlabeled())
    _write_csv(target / "train.csv.gz", ["label", "rating", "id", "text"], labeled("train"))


_CONVERTERS: Mapping[str, Callable[[list[Path], Path], None]] = MappingProxyType(
    {"trec": _convert_trec, "imdb": _convert_imdb})
