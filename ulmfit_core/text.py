"""Text processing as fastai v2 does it: rules, spaCy tokenizer, special tokens, vocabulary.

The rules and their order are those of fastai v2 ``fastai/text/core.py``
(``defaults.text_proc_rules`` then the post-rule ``replace_space``), and :class:`Vocab` builds
and numericalizes exactly as fastai's ``make_vocab``/``Numericalize`` do, so a vocabulary
pickled by fastai (a ``list[str]``) lines up token for token with ours and pretrained fastai
language models can be imported.

Tokenizing a large corpus takes minutes, so :func:`tokenize_cached` keeps the result on disk,
keyed by the texts' content and the tokenizer settings, built once under a file lock. Large corpora
are tokenized by several processes (one per usable core), with the same output.
"""
from __future__ import annotations

import bisect
import hashlib
import html
import itertools
import os
import pickle
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from .artifacts import atomic_write

# --- special tokens (fastai's names and order: the first nine ids of every vocabulary) ------

UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ = (
    "xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj")
SPECIAL_TOKENS: list[str] = [UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ]
#: fastai pads every vocabulary to a multiple of 8 with this token (never produced by the tokenizer).
FAKE = "xxfake"

# --- fastai's rules, applied to the raw text before spaCy -----------------------------------

_re_spec = re.compile(r"([/#\\])")
_re_space = re.compile(" {2,}")
_re_rep = re.compile(r"(\S)(\1{2,})")
_re_wrep = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_re_all_caps = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
_re_maj = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")


def fix_html(x: str) -> str:
    """Undo HTML escapes and markup seen in web text (``<br />`` becomes a newline)."""
    x = (x.replace("#39;", "'").replace("amp;", "&").replace("#146;", "'").replace("nbsp;", " ")
         .replace("#36;", "$").replace("\\n", "\n").replace("quot;", "'").replace("<br />", "\n")
         .replace('\\"', '"').replace("<unk>", UNK).replace(" @.@ ", ".").replace(" @-@ ", "-")
         .replace("...", " \u2026"))
    return html.unescape(x)


def replace_rep(t: str) -> str:
    """Character repetitions: ``cccc`` -> `` xxrep 4 c ``."""
    def _sub(m: re.Match) -> str:
        c, cc = m.groups()
        return f" {TK_REP} {len(cc) + 1} {c} "
    return _re_rep.sub(_sub, t)


def replace_wrep(t: str) -> str:
    """Word repetitions: ``w w w w`` -> `` xxwrep 4 w ``."""
    def _sub(m: re.Match) -> str:
        c, cc, e = m.groups()
        return f" {TK_WREP} {len(cc.split()) + 2} {c} {e}"
    return _re_wrep.sub(_sub, t)


def spec_add_spaces(t: str) -> str:
    """Spaces around ``/``, ``#`` and ``\\`` so they become tokens of their own."""
    return _re_spec.sub(r" \1 ", t)


def rm_useless_spaces(t: str) -> str:
    """Collapse runs of spaces (only spaces: newlines are kept, they are tokens)."""
    return _re_space.sub(" ", t)


def replace_all_caps(t: str) -> str:
    """``LOVED`` -> ``xxup loved`` (words of one letter are only lowercased)."""
    def _sub(m: re.Match) -> str:
        tok = f"{TK_UP} " if len(m.groups()[1]) > 1 else ""
        return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"
    return _re_all_caps.sub(_sub, t)


def replace_maj(t: str) -> str:
    """``Movie`` -> ``xxmaj movie`` (one capital letter alone is only lowercased)."""
    def _sub(m: re.Match) -> str:
        tok = f"{TK_MAJ} " if len(m.groups()[1]) > 1 else ""
        return f"{m.groups()[0]}{tok}{m.groups()[1].lower()}"
    return _re_maj.sub(_sub, t)


def lowercase(t: str, add_bos: bool = True, add_eos: bool = False) -> str:
    """Lowercase and strip, with ``xxbos`` in front (every document starts with it)."""
    return (f"{BOS} " if add_bos else "") + t.lower().strip() + (f" {EOS}" if add_eos else "")


def replace_space(t: str) -> str:
    """fastai's post-rule on each token: a space inside a token becomes ``▁``."""
    return t.replace(" ", "\u2581")


#: fastai v2 ``defaults.text_proc_rules``, in order.
DEFAULT_RULES = (fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces,
                 replace_all_caps, replace_maj, lowercase)


def apply_rules(text: str) -> str:
    """All of :data:`DEFAULT_RULES` applied to one text, in fastai's order."""
    for rule in DEFAULT_RULES:
        text = rule(text)
    return text


def join_fields(fields: Sequence[str]) -> str:
    """Several text columns as one text, as fastai's ``mark_fields``.

    ``["Title", "Body"]`` -> ``"xxfld 1 Title xxfld 2 Body"``. A single field is returned as is
    (fastai marks fields only when there are several).
    """
    if len(fields) == 1:
        return str(fields[0])
    return " ".join(f"{FLD} {i} {f}" for i, f in enumerate(fields, start=1))


# --- tokenizer ------------------------------------------------------------------------------

#: Bump when the rules or the token layout change, so old caches are not reused.
RULES_VERSION = 1


#: Below this many characters of text one process tokenizes. A worker's start-up (a fresh interpreter
#: importing spaCy) cost as much CPU as tokenizing ~3.6 M characters of IMDb, and taking its tokens
#: back ~0.8 M more, so two processes break even near 9 M characters (CPU-time ratios measured on a
#: busy 2-core machine; bench/tokenize_speed.py measures the crossover in wall time, docs/BENCHMARKS.md).
PARALLEL_MIN_CHARS = 10_000_000


def usable_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when set (Ray sets it
    to a trial's CPU share, so a one-CPU trial tokenizes in one process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cpus, int(omp))) if omp.isdigit() and int(omp) > 0 else max(1, cpus)


class Tokenizer:
    """fastai's rules, then spaCy's blank-language tokenizer (no model needed).

    Special tokens stay single tokens. Whitespace tokens that spaCy produces (``"\\n"`` from
    ``<br />``) are kept: they are real tokens, as in fastai (whose post-rule turns a space
    inside a token into ``▁``, so ``"\\n "`` becomes ``"\\n▁"``).

    Corpora of :data:`PARALLEL_MIN_CHARS` characters or more are split among ``n_workers`` processes
    (default: :func:`usable_cpus`), this one included; the output is the same as one process's.
    """

    def __init__(self, lang: str = "en", batch_size: int = 1000, n_workers: int | None = None):
        self.lang = lang
        self.batch_size = batch_size
        self.n_workers = n_workers
        self._nlp = None  # built on first use: loading spaCy takes a moment and does not pickle

    def settings_key(self) -> str:
        """Everything the output depends on, for cache keys (not ``n_workers``: the output is the same)."""
        import spacy

        return f"spacy-{spacy.__version__}-blank-{self.lang}-rules-{RULES_VERSION}"

    @property
    def nlp(self) -> Any:
        """The blank spaCy pipeline (only its tokenizer is used)."""
        if self._nlp is None:
            import spacy

            # fastai registers the special tokens as spaCy special cases. We don't: the rules
            # always put spaces around them and spaCy's prefix/suffix/infix rules never split a
            # lowercase ASCII word, so they stay single tokens anyway (tests compare both), while
            # a special case that occurs in a doc makes spaCy run its special-case matcher over
            # the whole doc: every doc holds xxbos, and tokenizing got ~2.3x slower.
            self._nlp = spacy.blank(self.lang)
        return self._nlp

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_nlp"] = None
        return state

    def tokenize(self, texts: Iterable[str], progress: bool = False) -> list[list[str]]:
        """Token lists, one per text, each starting with ``xxbos``."""
        texts = [str(t) for t in texts]
        workers = self.workers_for(texts)
        if workers > 1:
            return self._tokenize_in_workers(texts, workers, progress)
        docs = self._tokenize_here(texts)
        if progress:
            from tqdm import tqdm

            docs = tqdm(docs, total=len(texts), desc="tokenize", unit="doc")
        return list(docs)

    def workers_for(self, texts: Sequence[str]) -> int:
        """Processes that :meth:`tokenize` uses for ``texts``: 1 below :data:`PARALLEL_MIN_CHARS`."""
        workers = self.n_workers if self.n_workers is not None else usable_cpus()
        if workers <= 1 or len(texts) < 2 or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
            return 1
        return min(workers, len(texts))

    def _tokenize_here(self, texts: Sequence[str]) -> Iterator[list[str]]:
        # The tokenizer alone: a blank pipeline has no other components. spaCy's own n_process was
        # ~5x slower than one process on 2 cores (it pickles every Doc back); the workers below send
        # plain token ids instead.
        docs = self.nlp.tokenizer.pipe((apply_rules(t) for t in texts), batch_size=self.batch_size)
        return ([replace_space(tok.text) for tok in doc] for doc in docs)

    def _tokenize_in_workers(self, texts: list[str], workers: int, progress: bool) -> list[list[str]]:
        """``texts`` cut into ``workers`` shares of about equal length: this process tokenizes the first
        while ``workers - 1`` worker processes tokenize the others; results in the texts' order.

        Workers are fresh interpreters (``python -m ulmfit_core.tokenize_worker``), not multiprocessing's:
        a forked child would copy the locks of the caller's threads (torch, Ray, tqdm) mid-use, and a
        spawned one re-runs the caller's main script (a script without an ``if __name__ == "__main__"``
        guard would then fail or run twice). Texts and tokens travel through files in a private
        temporary folder, the tokens as :func:`encode_tokens` arrays.
        """
        shares = split_by_length(texts, workers)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(texts), desc=f"tokenize ({workers} processes)", unit="doc")
        with tempfile.TemporaryDirectory(prefix="ulmfit-tokenize-") as tmp:
            jobs = [_WorkerJob.start(Path(tmp), i, share, self.lang, self.batch_size)
                    for i, share in enumerate(shares[1:], start=1)]
            try:
                out: list[list[str]] = []
                for doc in self._tokenize_here(shares[0]):
                    out.append(doc)
                    if bar is not None:
                        bar.update()
                for job, share in zip(jobs, shares[1:]):
                    out += job.result()
                    if bar is not None:
                        bar.update(len(share))
            finally:
                for job in jobs:
                    job.stop()
                if bar is not None:
                    bar.close()
        return out


# --- subword units (SentencePiece) ---------------------------------------------------------------

#: A document longer than this (in bytes) is still learnt from whole (SentencePiece's default skips it).
_SUBWORD_MAX_DOC_BYTES = 1 << 20


class SubwordTokenizer(Tokenizer):
    """fastai's rules, then a SentencePiece model's units, as fastai v2's ``SentencePieceTokenizer``: the
    special tokens (``xxbos``, ``xxmaj``, ...) are user-defined symbols, so each stays one unit; a unit that
    starts a word carries SentencePiece's ``▁``. Needs no language rules: SentencePiece learns from raw text.

    ``model`` is the SentencePiece model file's bytes (a protobuf, read as data); its SHA-256 is part of
    :meth:`settings_key`, so token caches and fingerprints change with it."""

    def __init__(self, model: bytes):
        super().__init__()
        self.model = bytes(model)
        self.digest = hashlib.sha256(self.model).hexdigest()
        self._processor = None

    def settings_key(self) -> str:
        import sentencepiece

        return f"sentencepiece-{sentencepiece.__version__}-{self.digest[:16]}-rules-{RULES_VERSION}"

    @property
    def processor(self) -> Any:
        if self._processor is None:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor()
            processor.LoadFromSerializedProto(self.model)
            self._processor = processor
        return self._processor

    def pieces(self) -> list[str]:
        """Every unit of the model, by id (``xxunk`` first, then the special tokens, then the learnt units)."""
        p = self.processor
        return [p.IdToPiece(i) for i in range(p.GetPieceSize())]

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_processor"] = None
        return state

    def workers_for(self, texts: Sequence[str]) -> int:
        return 1  # SentencePiece is fast (no spaCy to start in each worker)

    def _tokenize_here(self, texts: Sequence[str]) -> Iterator[list[str]]:
        p = self.processor
        return (_drop_space_before_specials(p.EncodeAsPieces(apply_rules(t))) for t in texts)

    @classmethod
    def read(cls, path: str | Path) -> SubwordTokenizer:
        """The tokenizer of a saved model folder's :data:`SUBWORD_FILE`; a damaged file is a one-line error."""
        from .artifacts import ArtifactError

        tok = cls(Path(path).read_bytes())
        try:
            tok.pieces()  # parses the model
        except (RuntimeError, OSError) as e:
            raise ArtifactError(f"{path}: not a SentencePiece model ({str(e).strip()[:200]}); the file is damaged: "
                                "copy the model folder again") from None
        return tok


_SPECIAL_SET = frozenset(SPECIAL_TOKENS)


def _drop_space_before_specials(pieces: list[str]) -> list[str]:
    """SentencePiece writes the space before a user-defined symbol as a unit of its own (``▁``, ``xxmaj``); a
    special token always starts a word, so that unit says nothing and only lengthens every document."""
    return [u for u, nxt in zip(pieces, [*pieces[1:], ""]) if not (u == "\u2581" and nxt in _SPECIAL_SET)]


def learn_subwords(texts: Sequence[str], model_type: str, vocab_size: int) -> bytes:
    """A SentencePiece model (its file's bytes) learnt from ``texts`` after fastai's rules: ``xxunk`` is id 0,
    the other special tokens user-defined symbols. One thread and unshuffled input, so the same texts give the
    same model. ``vocab_size`` is a ceiling: a small corpus yields fewer units (``hard_vocab_limit`` off)."""
    import io

    import sentencepiece

    docs = [d for d in (apply_rules(t) for t in texts) if d.strip()]
    if not docs:
        raise ValueError("no text to learn subword units from")
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.Train(
        sentence_iterator=iter(docs), model_writer=out, model_type=model_type, vocab_size=vocab_size,
        hard_vocab_limit=False, unk_id=0, unk_piece=UNK, bos_id=-1, eos_id=-1, pad_id=-1,
        user_defined_symbols=[t for t in SPECIAL_TOKENS if t != UNK], character_coverage=0.9995,
        num_threads=1, shuffle_input_sentence=False, max_sentence_length=_SUBWORD_MAX_DOC_BYTES,
        split_digits=True, minloglevel=2)
    return out.getvalue()


def subword_tokenizer(texts: Sequence[str], model_type: str, vocab_size: int, cache_dir: str | Path) -> SubwordTokenizer:
    """:func:`learn_subwords` on ``texts``, cached in ``cache_dir`` (keyed by the texts and settings, built under
    a file lock like the token cache; a damaged file is learnt again with a warning)."""
    import sentencepiece

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256(f"{sentencepiece.__version__}|{model_type}|{vocab_size}|{RULES_VERSION}".encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    path = cache_dir / f"subwords-{h.hexdigest()[:32]}.model"

    def cached() -> SubwordTokenizer | None:
        if not path.exists():
            return None
        try:
            return SubwordTokenizer.read(path)
        except ValueError as e:
            warnings.warn(f"{e}; learning the subword units again", UserWarning, stacklevel=3)
            return None

    tok = cached()
    if tok is not None:
        return tok
    with FileLock(str(path.with_suffix(".lock"))):
        tok = cached()
        if tok is None:
            model = learn_subwords(texts, model_type, vocab_size)
            atomic_write(path, lambda f: f.write(model))
            tok = SubwordTokenizer(model)
    return tok


def split_by_length(texts: Sequence[str], parts: int) -> list[Sequence[str]]:
    """``texts`` as ``parts`` contiguous, non-empty slices of about equal total length (in characters),
    so that processes given one slice each finish at about the same time. Needs ``len(texts) >= parts``."""
    if not 1 <= parts <= len(texts):
        raise ValueError(f"cannot cut {len(texts)} texts into {parts} non-empty parts")
    ends = list(itertools.accumulate(len(t) + 1 for t in texts))  # + 1: empty texts still cost a little
    cuts = [0]
    for k in range(1, parts):
        target = ends[-1] * k / parts
        j = bisect.bisect_left(ends, target)  # text j crosses the target: cut before or after it, whichever is nearer
        cut = j + 1 if j == 0 or ends[j] - target < target - ends[j - 1] else j
        cuts.append(min(max(cut, cuts[-1] + 1), len(texts) - (parts - k)))  # every part keeps a text
    cuts.append(len(texts))
    return [texts[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class _WorkerJob:
    """One ``python -m ulmfit_core.tokenize_worker IN OUT`` process and its files."""

    def __init__(self, proc: subprocess.Popen, out_path: Path, err_path: Path) -> None:
        self.proc, self.out_path, self.err_path = proc, out_path, err_path

    @classmethod
    def start(cls, folder: Path, index: int, texts: Sequence[str], lang: str, batch_size: int) -> _WorkerJob:
        src, dst, err = folder / f"in{index}.pkl", folder / f"out{index}.pkl", folder / f"err{index}.txt"
        src.write_bytes(pickle.dumps((lang, batch_size, list(texts)), protocol=pickle.HIGHEST_PROTOCOL))
        # The worker imports this very ulmfit_core (an installed copy elsewhere must not stand in for it),
        # and needs no threads for its numpy.
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        with err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "ulmfit_core.tokenize_worker", str(src), str(dst)],
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        return cls(proc, dst, err)

    def result(self) -> list[list[str]]:
        """The worker's token lists, once it has finished; RuntimeError with its error output if it failed."""
        code = self.proc.wait()
        if code != 0:
            tail = "\n".join(self.err_path.read_text(errors="replace").splitlines()[-12:])
            raise RuntimeError(f"tokenizer worker process failed (exit code {code}); its error output:\n{tail}\n"
                               "Tokenize in one process with Tokenizer(n_workers=1) to see the error directly.")
        return decode_tokens(*pickle.loads(self.out_path.read_bytes()))

    def stop(self) -> None:
        """End the worker if it still runs (the caller failed or was interrupted)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --- vocabulary -----------------------------------------------------------------------------


class Vocab:
    """Token <-> id mapping, fastai-compatible.

    ``itos[i]`` is the token of id ``i``; ids 0..8 are :data:`SPECIAL_TOKENS`. ``stoi`` maps a
    token to its LAST position when a token appears twice (as fastai's dict comprehension does)
    and anything unknown (``xxfake`` included) to 0, ``xxunk``.
    """

    unk_idx = 0
    pad_idx = 1

    def __init__(self, itos: Sequence[str]):
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos) if t != FAKE}

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[:12])} ...)"

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], max_vocab: int = 60000, min_freq: int = 2) -> Vocab:
        """fastai's ``make_vocab``: the ``max_vocab`` most common tokens seen ``min_freq`` times,
        special tokens first, then ``xxfake`` up to a multiple of 8 (8 of them if already one)."""
        count: Counter = Counter()
        for tokens in token_lists:
            count.update(tokens)
        vocab = [t for t, c in count.most_common(max_vocab) if c >= min_freq]
        for tok in reversed(SPECIAL_TOKENS):
            if tok in vocab:
                vocab.remove(tok)
            vocab.insert(0, tok)
        vocab = vocab[:max_vocab]
        return cls(vocab + [FAKE for _ in range(0, 8 - len(vocab) % 8)])

    @classmethod
    def of_pieces(cls, pieces: Sequence[str]) -> Vocab:
        """A subword model's fixed vocabulary: the special tokens first (fastai's ids), then every other unit
        in the model's order, padded with ``xxfake`` to a multiple of 8 as :meth:`build` does."""
        vocab = [*SPECIAL_TOKENS, *(p for p in pieces if p not in SPECIAL_TOKENS)]
        return cls(vocab + [FAKE for _ in range(0, 8 - len(vocab) % 8)])

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids, int64 array of shape (len(tokens),); unknown tokens become 0."""
        get = self.stoi.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int64, count=len(tokens))


# --- on-disk token cache --------------------------------------------------------------------

#: Bump when the cache file layout changes.
CACHE_FORMAT = 1


def cache_key(texts: Sequence[str], tokenizer: Tokenizer) -> str:
    """sha256 of the cache format, the tokenizer settings and every text (length-prefixed)."""
    h = hashlib.sha256(f"tokcache-v{CACHE_FORMAT}|{tokenizer.settings_key()}|{len(texts)}|".encode())
    for t in texts:
        b = t.encode("utf-8")
        # the length prefix keeps ["ab", "c"] and ["a", "bc"] apart
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def tokenize_cached(texts: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path,
                    progress: bool = False) -> list[list[str]]:
    """``tokenizer.tokenize(texts)``, read from ``cache_dir`` when it was done before.

    Built under a file lock, so when several processes (trials) ask for the same texts at once
    one tokenizes and the others wait, then read its file. Written atomically (tmp + rename).
    """
    texts = [str(t) for t in texts]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(texts, tokenizer)
    path = cache_dir / f"tokens-{key[:32]}.npz"
    if path.exists():
        tokens = _load_checked(path, len(texts))
        if tokens is not None:
            return tokens
    with FileLock(str(cache_dir / f"tokens-{key[:32]}.lock")):
        if path.exists():  # another process built it while we waited (or it is the damaged one)
            tokens = _load_checked(path, len(texts))
            if tokens is not None:
                return tokens
        tokens = tokenizer.tokenize(texts, progress=progress)
        _save_tokens(path, tokens)
        return tokens


def _load_checked(path: Path, n_docs: int) -> list[list[str]] | None:
    """The cached token lists, or None (with a warning naming the file) when the file is damaged: cut short,
    overwritten, or holding another number of documents. The caller then tokenizes again and replaces it."""
    try:
        tokens = _load_tokens(path)
        if len(tokens) != n_docs:
            raise ValueError(f"{len(tokens)} documents where {n_docs} were tokenized")
        return tokens
    except (OSError, EOFError, ValueError, KeyError, IndexError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        warnings.warn(f"token cache {path} is damaged ({type(e).__name__}: {e}); tokenizing again and replacing it",
                      UserWarning, stacklevel=3)
        return None


def encode_tokens(token_lists: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Token lists as ``(table, ids, doc_offsets)``: the distinct tokens in order of first use, int32
    ids into the table, and int64 offsets of each document's ids (``len(token_lists) + 1`` of them)."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(t, len(table)) for doc in token_lists for t in doc), dtype=np.int32)
    doc_offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in token_lists], out=doc_offsets[1:])
    return list(table), ids, doc_offsets


def decode_tokens(table: Sequence[str], ids: np.ndarray, doc_offsets: np.ndarray) -> list[list[str]]:
    """The token lists :func:`encode_tokens` encoded."""
    flat = np.array(table, dtype=object)[ids].tolist() if len(table) else []
    bounds = doc_offsets.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _save_tokens(path: Path, token_lists: list[list[str]]) -> None:
    """Compact layout: a table of distinct tokens (UTF-8 bytes + offsets), int32 token ids,
    and per-document offsets into the ids. A variable-width table, because numpy's fixed-width
    strings would pad every token to the longest one (a URL makes that hundreds of bytes)."""
    table, ids, doc_offsets = encode_tokens(token_lists)
    encoded = [t.encode("utf-8") for t in table]
    tok_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=tok_offsets[1:])
    tok_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    atomic_write(path, lambda f: np.savez_compressed(f, format=np.array([CACHE_FORMAT]), tok_bytes=tok_bytes,
                                                     tok_offsets=tok_offsets, ids=ids, doc_offsets=doc_offsets))


def _load_tokens(path: Path) -> list[list[str]]:
    with np.load(path) as z:  # allow_pickle stays False: a cache file is read as data
        tok_bytes = z["tok_bytes"].tobytes()
        tok_offsets, ids, doc_offsets = z["tok_offsets"], z["ids"], z["doc_offsets"]
    bounds = tok_offsets.tolist()
    n_tokens = len(bounds) - 1
    if len(ids) and (ids.min() < 0 or ids.max() >= n_tokens):
        raise ValueError("token ids point outside the token table")
    if len(doc_offsets) < 1 or doc_offsets[0] != 0 or doc_offsets[-1] != len(ids) or np.any(np.diff(doc_offsets) < 0):
        raise ValueError("document offsets do not cover the token ids")
    return decode_tokens([tok_bytes[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])], ids, doc_offsets)
