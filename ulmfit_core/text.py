"""Text processing as fastai v2 does it: rules, spaCy tokenizer, special tokens, vocabulary.

The rules and their order are those of fastai v2 ``fastai/text/core.py``
(``defaults.text_proc_rules`` then the post-rule ``replace_space``), and :class:`Vocab` builds
and numericalizes exactly as fastai's ``make_vocab``/``Numericalize`` do, so a vocabulary
pickled by fastai (a ``list[str]``) lines up token for token with ours and pretrained fastai
language models can be imported.

Tokenizing a large corpus takes minutes, so :func:`tokenize_cached` keeps the result on disk,
keyed by the texts' content and the tokenizer settings, built once under a file lock.
"""
from __future__ import annotations

import hashlib
import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
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


class Tokenizer:
    """fastai's rules, then spaCy's blank-language tokenizer (no model needed).

    Special tokens stay single tokens. Whitespace tokens that spaCy produces (``"\\n"`` from
    ``<br />``) are kept: they are real tokens, as in fastai (whose post-rule turns a space
    inside a token into ``▁``, so ``"\\n "`` becomes ``"\\n▁"``).
    """

    def __init__(self, lang: str = "en", batch_size: int = 1000):
        self.lang = lang
        self.batch_size = batch_size
        self._nlp = None  # built on first use: loading spaCy takes a moment and does not pickle

    def settings_key(self) -> str:
        """Everything the output depends on, for cache keys."""
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
        texts = list(texts)
        # The tokenizer alone: a blank pipeline has no other components, and n_process=1 is
        # fastest on a few cores (more processes pay to pickle every Doc back).
        docs = self.nlp.tokenizer.pipe((apply_rules(str(t)) for t in texts), batch_size=self.batch_size)
        if progress:
            from tqdm import tqdm

            docs = tqdm(docs, total=len(texts), desc="tokenize", unit="doc")
        return [[replace_space(tok.text) for tok in doc] for doc in docs]


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
        return _load_tokens(path)
    with FileLock(str(cache_dir / f"tokens-{key[:32]}.lock")):
        if path.exists():  # another process built it while we waited
            return _load_tokens(path)
        tokens = tokenizer.tokenize(texts, progress=progress)
        _save_tokens(path, tokens)
        return tokens


def _save_tokens(path: Path, token_lists: list[list[str]]) -> None:
    """Compact layout: a table of distinct tokens (UTF-8 bytes + offsets), int32 token ids,
    and per-document offsets into the ids. A variable-width table, because numpy's fixed-width
    strings would pad every token to the longest one (a URL makes that hundreds of bytes)."""
    table: dict[str, int] = {}
    ids = np.fromiter((table.setdefault(t, len(table)) for doc in token_lists for t in doc), dtype=np.int32)
    doc_offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum([len(d) for d in token_lists], out=doc_offsets[1:])
    encoded = [t.encode("utf-8") for t in table]
    tok_offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=tok_offsets[1:])
    tok_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    atomic_write(path, lambda f: np.savez_compressed(f, format=np.array([CACHE_FORMAT]), tok_bytes=tok_bytes,
                                                     tok_offsets=tok_offsets, ids=ids, doc_offsets=doc_offsets))


def _load_tokens(path: Path) -> list[list[str]]:
    with np.load(path) as z:
        tok_bytes = z["tok_bytes"].tobytes()
        tok_offsets, ids, doc_offsets = z["tok_offsets"], z["ids"], z["doc_offsets"]
    bounds = tok_offsets.tolist()
    table = np.array([tok_bytes[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])], dtype=object)
    flat = table[ids].tolist()
    return [flat[a:b] for a, b in zip(doc_offsets[:-1].tolist(), doc_offsets[1:].tolist())]
