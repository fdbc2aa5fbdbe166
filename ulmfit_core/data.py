"""Reading labeled and unlabeled text, the validation split, and the two batch iterators.

Readers accept CSV or TSV (by extension, optionally gzipped; RFC 4180 quoting, so fields may
hold commas and newlines) and folders laid out as ``label/*.txt`` (aclImdb's ``train/pos``).
Bad input raises :class:`DataError` naming the file, the line, the column and the fix.

:class:`LMStream` serves the language model (one long token stream cut into ``bs`` parallel
streams, variable BPTT as Merity et al. and fastai); :class:`ClassifierBatches` serves the
classifier (sortish batches, padded in chunks of ``bptt`` as fastai's ``pad_input_chunk``).
All randomness goes through a ``torch.Generator``, so saving its state saves the data order.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from .config import ClassifierConfig
from .text import join_fields


class DataError(ValueError):
    """Input data is wrong; the message names the file, where in it, and the fix."""


@dataclass
class LabeledTexts:
    """Texts and their labels (as strings), and where they came from (for messages)."""

    texts: list[str]
    labels: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


# --- reading --------------------------------------------------------------------------------

#: Folders in a ``label/*.txt`` layout that hold no label: aclImdb's unlabeled reviews.
UNLABELED_FOLDERS = ("unsup",)


def _suffixes(path: Path) -> tuple[str, bool]:
    """(the extension that decides the format, whether the file is gzipped)."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return Path(name).suffix, gz


def _open_text(path: Path):
    """A text stream for ``path`` (gunzipped if ``.gz``), UTF-8 with or without BOM."""
    _, gz = _suffixes(path)
    try:
        raw = gzip.open(path, "rb") if gz else open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}; check the path in the config "
                        "(data.train / data.test / data.unlabeled or data.dataset)") from None
    # newline="" is what the csv module needs to see quoted newlines inside fields
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _read_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number where the record starts, fields) for every record, header first.

    Decoding and gzip errors become :class:`DataError` naming the file and line.
    """
    ext, _ = _suffixes(path)
    delimiter = "\t" if ext in (".tsv", ".tab") else ","
    # A long document is a legitimate field: lift the csv module's 128 KiB default.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    with _open_text(path) as f:
        # strict: a quote never closed is an error, not a field that swallows every later row
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        start = 1
        try:
            for row in reader:
                if any("\x00" in field for field in row):
                    _refuse_nul(path, start)
                yield start, row
                start = reader.line_num + 1
        except UnicodeDecodeError as e:
            line = _first_bad_utf8_line(path) or reader.line_num + 1
            raise DataError(f"{path}: line {line}: not valid UTF-8 ({e.reason}); save the file as UTF-8") from None
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise DataError(f"{path}: cannot read past line {reader.line_num}: {e}; "
                            "the file is damaged, download or write it again") from None
        except csv.Error as e:
            if "unexpected end of data" in str(e):
                raise DataError(f"{path}: line {start}: a quoted field that is never closed (the file ends inside "
                                "it); close the quote, or double a quote inside quotes (\"\")") from None
            raise DataError(f"{path}: line {reader.line_num}: malformed CSV ({e}); "
                            "quote fields that hold the delimiter, quotes or newlines (RFC 4180)") from None


def _first_bad_utf8_line(path: Path) -> int | None:
    """The line holding the first byte that is not UTF-8. The text stream decodes ahead in chunks of
    several lines, so its error comes with the line being parsed, not the line of the bad byte."""
    _, gz = _suffixes(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return line + chunk[:e.start].count(b"\n")
            line += chunk.count(b"\n")
    return None


def _refuse_nul(path: Path, line: int) -> NoReturn:
    """A NUL byte is never text: the file is binary, or in an encoding with zero bytes (UTF-16) that
    happened to decode as UTF-8. Reading on would train on garbage, so stop at the first one."""
    raise DataError(f"{path}: line {line}: a NUL byte (\\x00) in a field; this is not UTF-8 text (a binary file, "
                    "or UTF-16?): save the file as UTF-8 CSV/TSV")


def _read_table(path: Path, wanted: Sequence[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]], list[int]]:
    """Header, the iterator over the remaining rows, and the positions of ``wanted`` columns."""
    rows = _read_rows(path)
    header = next((row for _, row in rows if row), None)
    if header is None:
        raise DataError(f"{path}: the file is empty; expected a header row naming the columns "
                        f"({', '.join(wanted)}) and then one row per example")
    header = [h.strip() for h in header]
    twice = sorted({h for h in header if header.count(h) > 1 and h in wanted})
    if twice:  # which of them is the text? Reading either would be a guess
        raise DataError(f"{path}: the header names column(s) {', '.join(repr(h) for h in twice)} more than once; "
                        "give every column its own name and point data.text_cols / data.label_col at them")
    missing = [c for c in wanted if c not in header]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DataError(f"{path}: no column{plural} {', '.join(repr(c) for c in missing)}; the file has columns "
                        f"{', '.join(repr(h) for h in header)}. Set data.text_cols / data.label_col to the "
                        "columns that hold the text and the label")
    return header, rows, [header.index(c) for c in wanted]


def _records(path: Path, wanted: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line, the ``wanted`` fields) for each data row, checking the field count."""
    header, rows, positions = _read_table(path, wanted)
    for line, row in rows:
        if not row:  # a blank line between records
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: {len(row)} fields where the header has {len(header)} "
                            f"({', '.join(header)}); a field holding the delimiter, a quote or a newline "
                            "must be quoted (RFC 4180: \"a, b\", with quotes doubled inside)")
        yield line, [row[p] for p in positions]


def _row_list(lines: list[int], limit: int = 8) -> str:
    """``line 4 (1 row)`` or ``lines 3, 5, ... (15 rows in all)``."""
    if len(lines) == 1:
        return f"line {lines[0]} (1 row)"
    shown = ", ".join(str(n) for n in lines[:limit])
    return f"lines {shown}" + (f", ... ({len(lines)} rows in all)" if len(lines) > limit else f" ({len(lines)} rows)")


def read_labeled(path: str | Path, text_cols: Sequence[str] = ("text",), label_col: str = "label") -> LabeledTexts:
    """Texts and labels from a CSV/TSV file (optionally ``.gz``) or a ``label/*.txt`` folder.

    Several ``text_cols`` are joined into one text with ``xxfld 1 ... xxfld 2 ...`` markers.
    In a folder, every subfolder is a label (``unsup`` is skipped) and every ``.txt`` file in
    it one example; ``text_cols``/``label_col`` are not used there.
    """
    path = Path(path)
    if path.is_dir():
        return _read_labeled_folder(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; check data.train / data.test / data.valid")
    texts: list[str] = []
    labels: list[str] = []
    empty_text: list[int] = []
    empty_label: list[int] = []
    for line, fields in _records(path, [*text_cols, label_col]):
        *parts, label = fields
        if not any(p.strip() for p in parts):
            empty_text.append(line)
        if not label.strip():
            empty_label.append(line)
        texts.append(join_fields(parts))
        labels.append(label.strip())
    cols = ", ".join(repr(c) for c in text_cols)
    if empty_text:
        raise DataError(f"{path}: empty text (column {cols}) at {_row_list(empty_text)}; "
                        "remove these rows or fill in their text")
    if empty_label:
        raise DataError(f"{path}: empty label (column {label_col!r}) at {_row_list(empty_label)}; "
                        "remove these rows or give them a label")
    if not texts:
        raise DataError(f"{path}: a header but no rows; expected one row per example")
    return LabeledTexts(texts, labels, str(path))


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """The lines of a UTF-8 text file (a BOM is allowed), without line ends. Errors are :class:`DataError`
    naming ``what`` (e.g. ``predict --file``), the file, and for bad bytes their line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read it ({e.strerror or e}); give a text file, one document "
                        "per line") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{what} {path}: line {line}: not valid UTF-8 ({e.reason}); save the file as UTF-8") from None
    return text.splitlines()


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason}); save the file as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from None


def _read_labeled_folder(path: Path) -> LabeledTexts:
    label_dirs = sorted(d for d in path.iterdir() if d.is_dir() and d.name not in UNLABELED_FOLDERS)
    texts: list[str] = []
    labels: list[str] = []
    empty: list[str] = []
    for d in label_dirs:
        for f in sorted(d.glob("*.txt")):
            text = _read_text_file(f)
            if not text.strip():
                empty.append(f.name)
            texts.append(text)
            labels.append(d.name)
    if not texts:
        raise DataError(f"{path}: a folder, but no LABEL/*.txt files in it; lay it out as "
                        "one subfolder per label (e.g. pos/, neg/) holding one .txt file per example")
    if empty:
        raise DataError(f"{path}: {len(empty)} empty .txt files ({', '.join(empty[:8])}); remove them or fill them")
    return LabeledTexts(texts, labels, str(path))


def read_unlabeled(path: str | Path, text_col: str = "text") -> list[str]:
    """Unlabeled documents: a CSV/TSV column (optionally ``.gz``), a folder of ``.txt`` files
    (searched recursively), or a plain ``.txt`` file holding one document per line.

    Empty documents carry nothing to learn and are skipped.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataError(f"{path}: no .txt files in this folder; data.unlabeled needs a folder of "
                            ".txt files, a CSV/TSV file, or a .txt file with one document per line")
        docs = [_read_text_file(f) for f in files]
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder; check data.unlabeled")
    elif _suffixes(path)[0] == ".txt":
        with _open_text(path) as f:
            try:
                docs = f.read().splitlines()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 ({e.reason}); save the file as UTF-8") from None
    else:
        docs = [fields[0] for _, fields in _records(path, [text_col])]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{path}: no text in it; give data.unlabeled a file with at least one document")
    return docs


# --- labels and the validation split --------------------------------------------------------


def check_classes(labels: Sequence[str], source: str = "the training set") -> list[str]:
    """The sorted distinct labels; fewer than two raises :class:`DataError`."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        only = f"only the label {classes[0]!r}" if classes else "no labels"
        raise DataError(f"{source}: {only} in {len(labels)} rows; a classifier needs at least two "
                        "different labels. Check data.label_col names the label column, and that the "
                        "file holds examples of every class")
    return classes


def split_validation(labels: Sequence[str], valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, reproducible split: (train indices, valid indices), both sorted int64 arrays.

    Each class gives ``round(n_class * valid_pct)`` examples to validation, but always keeps at
    least one in train, so every class is learnt.
    """
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be in (0, 1), got {valid_pct}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in sorted(set(labels.tolist()))]
    valid_parts = []
    for idx in by_class:
        idx = rng.permutation(idx)
        n_valid = min(int(round(len(idx) * valid_pct)), len(idx) - 1)
        valid_parts.append(idx[:n_valid])
    valid = np.concatenate(valid_parts) if valid_parts else np.array([], dtype=np.int64)
    if len(valid) == 0 and len(labels) >= 2:
        # a tiny set where rounding left validation empty: one example of the largest class
        largest = max(by_class, key=len)
        if len(largest) >= 2:
            valid = rng.permutation(largest)[:1]
    valid = np.sort(valid).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels), dtype=np.int64), valid)
    return train, valid


# --- language-model batches -----------------------------------------------------------------


class LMStream:
    """Language-model batches over a token stream, as fastai's ``LMDataLoader``.

    Each epoch (each ``iter()``): shuffle document order (when ``shuffle``), concatenate,
    reverse the whole stream when ``backwards``, cut it into ``bs`` contiguous streams (the
    remainder is dropped) and walk them left to right. Yields ``(x, y)``, LongTensors of shape
    (bs, seq_len), ``y`` = ``x`` shifted one token on; batch k+1 continues each row exactly
    where batch k ended, so a model can carry its hidden state across batches.

    When training (``shuffle=True``) ``seq_len`` varies (Merity et al. 2017): ``bptt`` with
    probability 0.95, else ``bptt/2``, plus N(0, 5) noise, at least 5 tokens. In evaluation it
    is ``bptt``. The last batch of an epoch may be shorter.
    """

    def __init__(self, docs: Sequence[np.ndarray], bs: int, bptt: int, *, shuffle: bool,
                 backwards: bool = False, generator: torch.Generator | None = None):
        if bs < 1 or bptt < 1:
            raise ValueError(f"bs and bptt must be >= 1, got bs={bs}, bptt={bptt}")
        self.docs = [np.asarray(d, dtype=np.int64) for d in docs]
        self.bs, self.bptt = bs, bptt
        self.shuffle, self.backwards = shuffle, backwards
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._n_tokens = int(sum(len(d) for d in self.docs))
        if self.stream_len < 1:
            raise DataError(f"the language-model text has {self._n_tokens} tokens, too few for {bs} streams "
                            f"(at least bs + 1 = {bs + 1} are needed); lower lm.bs or add text")

    @property
    def stream_len(self) -> int:
        """Input tokens per stream (row) per epoch; the +1 is the last target."""
        return (self._n_tokens - 1) // self.bs

    def __len__(self) -> int:
        """Batches per epoch when not shuffling (fixed ``bptt``); use ``len(self.epoch())`` when training."""
        return max(1, math.ceil(self.stream_len / self.bptt))

    def _stream(self) -> torch.Tensor:
        order = (torch.randperm(len(self.docs), generator=self.generator).tolist() if self.shuffle
                 else range(len(self.docs)))
        flat = np.concatenate([self.docs[i] for i in order]) if self.docs else np.zeros(0, np.int64)
        stream = torch.from_numpy(flat)
        return stream.flip(0) if self.backwards else stream

    def _seq_len(self) -> int:
        if not self.shuffle:
            return self.bptt
        g = self.generator
        bptt = self.bptt if torch.rand(1, generator=g).item() < 0.95 else self.bptt / 2
        return max(5, int(bptt + 5 * torch.randn(1, generator=g).item()))

    def epoch(self) -> LMEpoch:
        """One epoch's batches, with the document order and every sequence length drawn now.

        Drawing the lengths up front makes ``len()`` exact, so a learning-rate schedule spans the batches
        that really run (variable BPTT yields ~3 % more batches than ``stream_len // bptt``); the
        generator is consumed in the same order as drawing them batch by batch would.
        """
        stream = self._stream()
        n = self.stream_len
        lengths = []
        i = 0
        while i < n:
            seq_len = min(self._seq_len(), n - i)
            lengths.append(seq_len)
            i += seq_len
        return LMEpoch(stream[: self.bs * n].view(self.bs, n), stream[1: self.bs * n + 1].view(self.bs, n), lengths)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.epoch())


@dataclass
class LMEpoch:
    """The batches of one epoch: ``x_all``/``y_all`` (bs, n) cut into consecutive ``lengths``."""

    x_all: torch.Tensor
    y_all: torch.Tensor
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        i = 0
        for seq_len in self.lengths:
            yield self.x_all[:, i:i + seq_len].contiguous(), self.y_all[:, i:i + seq_len].contiguous()
            i += seq_len


# --- classifier batches ---------------------------------------------------------------------


def pad_chunks(docs: Sequence[np.ndarray], pad_idx: int, bptt: int) -> torch.Tensor:
    """Pad to the longest doc as fastai's ``pad_input_chunk`` (pad_first=True).

    A doc of length L in a batch of max length M gets ``(M-L)//bptt*bptt`` pad tokens in front
    and ``(M-L)%bptt`` at the end: the text starts at a multiple of ``bptt``, so the chunked
    encoder's first chunks are pure padding it can skip. Returns a LongTensor (B, M).
    """
    m = max(len(d) for d in docs)
    out = torch.full((len(docs), m), pad_idx, dtype=torch.long)
    for row, d in enumerate(docs):
        start = (m - len(d)) // bptt * bptt
        out[row, start:start + len(d)] = torch.as_tensor(d, dtype=torch.long)
    return out


class ClassifierBatches:
    """Classifier batches of whole documents.

    Training (``shuffle=True``): fastai's SortishSampler: shuffle, cut into chunks of 50 batches,
    sort each chunk by length, cut into batches, shuffle the batches and put the one holding the
    longest document first (so memory runs out at once, if at all). A last partial batch is
    dropped, as fastai does for training, so a batch of one never meets BatchNorm; a set smaller
    than ``bs`` is one batch. Evaluation: sorted by length, longest first; ``order`` is that
    permutation (``order[k]`` = input index of the k-th document served).

    Rows of a batch are sorted by length, longest first, padded by :func:`pad_chunks`. Yields
    ``(x (B, M), lengths (B,), y (B,) or None, idx (B,))``, all LongTensors; ``idx`` holds the
    input indices. ``backwards`` reverses every document (for a backwards model). Documents longer
    than ``max_len`` are then cut to their first ``max_len`` tokens, with one warning: the start of a
    document for a forward model, its end for a backwards one.
    """

    def __init__(self, docs: Sequence[np.ndarray], labels: np.ndarray | None, bs: int, *, pad_idx: int,
                 bptt: int, shuffle: bool, generator: torch.Generator | None, max_len: int,
                 backwards: bool = False):
        if bs < 1 or bptt < 1 or max_len < 1:
            raise ValueError(f"bs, bptt and max_len must be >= 1, got {bs}, {bptt}, {max_len}")
        if labels is not None and len(labels) != len(docs):
            raise ValueError(f"{len(docs)} documents but {len(labels)} labels")
        if not len(docs):
            raise DataError("no documents to classify")
        n_long = sum(len(d) > max_len for d in docs)
        if n_long:
            warnings.warn(f"{n_long} of {len(docs)} documents are longer than {max_len} tokens and were cut "
                          f"to their first {max_len}; raise classifier.max_len to keep more", stacklevel=2)
        if backwards:
            docs = [np.asarray(d)[::-1] for d in docs]
        # A copy, not ascontiguousarray: a reversed one-token view counts as contiguous to NumPy and keeps its
        # negative stride, which torch refuses (a backwards model given a one-token or empty document).
        self.docs = [np.array(d[:max_len], dtype=np.int64) for d in docs]
        if any(len(d) == 0 for d in self.docs):
            raise DataError("an empty document (0 tokens); every document needs at least one token")
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.lengths = np.array([len(d) for d in self.docs], dtype=np.int64)
        self.bs, self.pad_idx, self.bptt = bs, pad_idx, bptt
        self.shuffle = shuffle
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        # stable sort of -length: longest first, ties in input order
        self.order = np.argsort(-self.lengths, kind="stable")

    def __len__(self) -> int:
        n = len(self.docs)
        if not self.shuffle:
            return math.ceil(n / self.bs)
        if n >= self.bs:
            return n // self.bs
        return 1 if n > 1 else 0  # a lone document cannot train BatchNorm: no batch at all

    def _sortish(self) -> list[np.ndarray]:
        g = self.generator
        n = len(self.docs)
        idx = torch.randperm(n, generator=g).numpy()
        chunk = self.bs * 50
        # stable sort within each chunk, so equal lengths keep the random order
        sorted_idx = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")]
                                     for c in np.split(idx, range(chunk, n, chunk))])
        batches = np.split(sorted_idx, range(self.bs, n, self.bs))
        if len(batches) > 1 and len(batches[-1]) < self.bs:
            batches.pop()
        if len(batches[0]) < 2:  # BatchNorm cannot normalise one example in training mode
            return []
        first = int(np.argmax([self.lengths[b].max() for b in batches]))
        batches[0], batches[first] = batches[first], batches[0]
        rest = torch.randperm(len(batches) - 1, generator=g).tolist()
        return [batches[0]] + [batches[1 + k] for k in rest]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        if self.shuffle:
            batches = self._sortish()
        else:
            batches = np.split(self.order, range(self.bs, len(self.order), self.bs))
        for b in batches:
            b = b[np.argsort(-self.lengths[b], kind="stable")]
            x = pad_chunks([self.docs[i] for i in b], self.pad_idx, self.bptt)
            idx = torch.from_numpy(b.astype(np.int64))
            y = None if self.labels is None else self.labels[idx]
            yield x, torch.from_numpy(self.lengths[b]), y, idx


def classifier_batches(docs: Sequence[np.ndarray], labels: np.ndarray | None, cfg: ClassifierConfig, pad_idx: int,
                       *, train: bool, generator: torch.Generator | None = None) -> ClassifierBatches:
    """The classifier's batches, built in this one place: sortish and shuffled with ``bs`` when training;
    sorted with ``2 * bs`` for evaluation and prediction (no gradients: twice the rows fit). Documents are
    reversed for a backwards classifier (``cfg.backwards``)."""
    if train:
        return ClassifierBatches(docs, labels, cfg.bs, pad_idx=pad_idx, bptt=cfg.bptt, shuffle=True,
                                 generator=generator, max_len=cfg.max_len, backwards=cfg.backwards)
    return ClassifierBatches(docs, labels, cfg.bs * 2, pad_idx=pad_idx, bptt=cfg.bptt, shuffle=False,
                             generator=None, max_len=cfg.max_len, backwards=cfg.backwards)
