"""fastai's text rules, the spaCy tokenizer, Vocab and the on-disk token cache."""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ulmfit_core import text
from ulmfit_core.artifacts import read_vocab, write_vocab
from ulmfit_core.pretrained import read_fastai_vocab
from ulmfit_core.text import (
    BOS,
    FAKE,
    SPECIAL_TOKENS,
    TK_MAJ,
    TK_REP,
    TK_UP,
    TK_WREP,
    Tokenizer,
    Vocab,
    apply_rules,
    fix_html,
    join_fields,
    lowercase,
    replace_all_caps,
    replace_maj,
    replace_rep,
    replace_wrep,
    rm_useless_spaces,
    spec_add_spaces,
    tokenize_cached,
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


# --- rules (expected values are fastai v2's own test cases where it has them) --------------


def test_special_tokens_in_fastai_order():
    assert SPECIAL_TOKENS == "xxunk xxpad xxbos xxeos xxfld xxrep xxwrep xxup xxmaj".split()


def test_fix_html():
    assert fix_html("#39;bli#146;") == "'bli'"
    assert fix_html("Sarah amp; Duck...") == "Sarah & Duck \u2026"
    assert fix_html("a nbsp; #36;") == "a   $"
    assert fix_html('\\" <unk>') == '" xxunk'
    assert fix_html("quot;  @.@  @-@ ") == "' .-"
    assert fix_html("Good.<br /><br />Bad") == "Good.\n\nBad"
    assert fix_html("a &lt;b&gt; &eacute;") == "a <b> \u00e9"  # html.unescape


def test_replace_rep():
    assert replace_rep("aa") == "aa"
    assert replace_rep("aaaa") == f" {TK_REP} 4 a "
    assert replace_rep("cool!!!!") == f"cool {TK_REP} 4 ! "


def test_replace_wrep():
    assert replace_wrep("ah ah") == "ah ah"
    assert replace_wrep("ah ah ah") == f" {TK_WREP} 3 ah "
    assert replace_wrep("ah ah ah ah") == f" {TK_WREP} 4 ah "
    assert replace_wrep("ah ah ah ah ") == f" {TK_WREP} 4 ah  "
    assert replace_wrep("ah ah ah ah.") == f" {TK_WREP} 4 ah ."
    assert replace_wrep("ah ah ahi") == "ah ah ahi"


def test_spec_add_spaces_and_rm_useless_spaces():
    assert spec_add_spaces("#$/\\") == " # $ /  \\ "
    assert spec_add_spaces("10/10 #1") == "10 / 10  # 1"
    assert rm_useless_spaces("a  b   c") == "a b c"
    assert rm_useless_spaces("a\n\n  b") == "a\n\n b"  # newlines are tokens: kept


def test_replace_all_caps():
    assert replace_all_caps("I'M SHOUTING") == f"{TK_UP} i'm {TK_UP} shouting"
    assert replace_all_caps("I'm speaking normally") == "I'm speaking normally"
    assert replace_all_caps("I am speaking normally") == "i am speaking normally"  # one letter: no xxup


def test_replace_maj():
    assert replace_maj("Jeremy Howard") == f"{TK_MAJ} jeremy {TK_MAJ} howard"
    assert replace_maj("I don't think there is any maj here") == "i don't think there is any maj here"


def test_lowercase_adds_bos():
    assert lowercase("  Hello World ") == f"{BOS} hello world"


def test_apply_rules_in_fastai_order():
    got = apply_rules("This movie is GREAT!!!! <br /><br />I LOVED it, 10/10 #best")
    assert got == ("xxbos xxmaj this movie is xxup great xxrep 4 ! \n\ni xxup loved it, 10 / 10 # best")


def test_join_fields():
    assert join_fields(["only"]) == "only"
    assert join_fields(["Title", "Body text"]) == "xxfld 1 Title xxfld 2 Body text"


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenize(tok):
    (tokens,) = tok.tokenize(["This movie is GREAT!!!! <br /><br />I LOVED it, 10/10 #best"])
    assert tokens == ["xxbos", "xxmaj", "this", "movie", "is", "xxup", "great", "xxrep", "4", "!", "\n\n",
                      "i", "xxup", "loved", "it", ",", "10", "/", "10", "#", "best"]


def test_tokenize_keeps_whitespace_tokens_as_fastai(tok):
    (tokens,) = tok.tokenize(["Good. <br /> Bad"])
    # spaCy keeps "\n " as one token; fastai's replace_space turns its space into "▁"
    assert tokens == ["xxbos", "xxmaj", "good", ".", "\n\u2581", "xxmaj", "bad"]


def test_tokenize_fields_and_progress(tok, capsys):
    out = tok.tokenize([join_fields(["Title", "Some body"]), "x"], progress=True)
    assert out[0] == ["xxbos", "xxfld", "1", "xxmaj", "title", "xxfld", "2", "xxmaj", "some", "body"]
    assert out[1] == ["xxbos", "x"]
    assert "tokenize" in capsys.readouterr().err  # the tqdm bar


def test_special_tokens_stay_single_tokens_like_spacy_special_cases(tok):
    """We skip fastai's spaCy special cases for speed: show the output is the same anyway."""
    import spacy
    from spacy.symbols import ORTH

    nlp = spacy.blank("en")
    for w in SPECIAL_TOKENS:
        nlp.tokenizer.add_special_case(w, [{ORTH: w}])
    texts = ["xxmaj.", "(xxup)", "xxbos's", "\"xxrep\"", "xxwrep-xxfld", "a/xxeos", "xxunk!!", "XXMAJ? ok",
             "http://xxpad.com", "xxmaj\n\nxxup", "#xxfld 2", "i'm xxmaj's", "e.g. xxup:)", "don't xxunk"]
    for t in texts:
        rules = apply_rules(t)
        assert [w.text for w in tok.nlp.tokenizer(rules)] == [w.text for w in nlp.tokenizer(rules)], t


def test_tokenizer_pickles_without_spacy_and_has_settings_key(tok):
    tok.tokenize(["warm up"])
    copy = pickle.loads(pickle.dumps(tok))
    assert copy._nlp is None
    assert copy.tokenize(["Hi there"]) == [["xxbos", "xxmaj", "hi", "there"]]
    assert copy.settings_key() == tok.settings_key()
    assert "en" in tok.settings_key() and Tokenizer(lang="de").settings_key() != tok.settings_key()


# --- vocabulary -----------------------------------------------------------------------------


def test_vocab_build_specials_first_min_freq_and_fake_padding():
    docs = [["xxbos", "b", "a", "a", "c"], ["xxbos", "a", "b", "d", "xxmaj"]]
    v = Vocab.build(docs, max_vocab=100, min_freq=2)
    # specials in fastai's order, then by count (ties: first seen first); c, d seen once: out
    assert v.itos[:9] == SPECIAL_TOKENS
    assert v.itos[9:11] == ["a", "b"]
    assert len(v) == 16 and v.itos[11:] == [FAKE] * 5
    assert Vocab.build(docs, min_freq=1).itos[9:13] == ["a", "b", "c", "d"]


def test_vocab_fake_padding_adds_eight_when_already_a_multiple():
    words = [f"w{i}" for i in range(7)]  # 9 specials + 7 = 16, a multiple of 8
    v = Vocab.build([words, words], min_freq=2)
    assert len(v) == 24 and v.itos[16:] == [FAKE] * 8  # fastai's range(0, 8 - len % 8)


def test_vocab_max_vocab_counts_the_specials():
    docs = [[f"w{i}"] * (100 - i) for i in range(50)]
    v = Vocab.build(docs, max_vocab=20, min_freq=2)
    real = [t for t in v.itos if t != FAKE]
    assert len(real) == 20 and real[:9] == SPECIAL_TOKENS
    assert real[9:] == [f"w{i}" for i in range(11)]  # most common first
    assert len(v) % 8 == 0


def test_vocab_stoi_last_duplicate_unknown_and_fake_are_zero():
    v = Vocab(SPECIAL_TOKENS + ["a", "b", "a"] + [FAKE] * 4)
    assert v.stoi["a"] == 11  # fastai: {v: k for k, v in enumerate(itos)} keeps the last
    assert v.stoi.get(FAKE) is None
    ids = v.numericalize(["xxbos", "a", "b", "never-seen", FAKE])
    assert ids.dtype == np.int64 and ids.tolist() == [2, 11, 10, 0, 0]
    assert v.unk_idx == 0 and v.pad_idx == 1 and v.itos[v.pad_idx] == "xxpad"


def test_numericalize_round_trip(tok):
    tokens = tok.tokenize(["The CAT sat on the mat. The cat sat!"])
    v = Vocab.build(tokens, min_freq=1)
    ids = v.numericalize(tokens[0])
    assert ids.shape == (len(tokens[0]),)
    assert [v.itos[i] for i in ids] == tokens[0]


def test_vocab_save_load(tmp_path):
    v = Vocab(SPECIAL_TOKENS + ["caf\u00e9", "\n\n", "a b"] + [FAKE] * 4)
    path = write_vocab(tmp_path, v.itos)
    assert path == tmp_path / "vocab.json"
    assert Vocab(read_vocab(tmp_path)) == v and read_vocab(path) == v.itos


def test_vocab_reproduces_fastai_fixture_structure(fastai_fixtures):
    fx = Vocab(read_fastai_vocab(fastai_fixtures / "fastai_tiny_vocab.pkl"))
    assert len(fx) == 104 and fx.itos[:9] == SPECIAL_TOKENS and fx.itos[-4:] == [FAKE] * 4
    # a corpus whose word counts fall in the fixture's order builds the same list
    words = [w for w in fx.itos if w not in SPECIAL_TOKENS and w != FAKE]
    corpus = [[w] * (200 - i) for i, w in enumerate(words)] + [["rare"]]
    ours = Vocab.build(corpus, max_vocab=60000, min_freq=2)
    assert ours.itos == fx.itos
    assert ours.numericalize([words[0], "w00", "rare"]).tolist() == [9, fx.itos.index("w00"), 0]


def test_fastai_vocab_pickle_of_another_type_is_refused(tmp_path):
    p = tmp_path / "bad.pkl"
    p.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="list of strings"):
        read_fastai_vocab(p)


# --- token cache ----------------------------------------------------------------------------


class CountingTokenizer(Tokenizer):
    """Whitespace splitting (no spaCy) that counts its calls; optionally slow, and leaves a
    marker file per build so other processes' builds can be counted."""

    def __init__(self, marker_dir: str | None = None, delay: float = 0.0):
        super().__init__()
        self.calls, self.marker_dir, self.delay = 0, marker_dir, delay

    def settings_key(self) -> str:
        return "counting-whitespace"

    def tokenize(self, texts, progress=False):
        self.calls += 1
        if self.marker_dir:
            Path(self.marker_dir, f"built-{time.time_ns()}").touch()
        time.sleep(self.delay)
        return [["xxbos", *t.split(" ")] for t in texts]


TEXTS = ["a b c", "caf\u00e9 \u2603 x", "newline\n tok", "", "a a a"]


def test_cache_hit_returns_same_tokens_without_tokenizing(tmp_path):
    counting = CountingTokenizer()
    first = tokenize_cached(TEXTS, counting, tmp_path)
    again = tokenize_cached(TEXTS, counting, tmp_path)
    assert counting.calls == 1
    assert again == first == counting.tokenize(TEXTS)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    assert set(np.load(files[0]).files) >= {"ids", "doc_offsets", "tok_bytes", "tok_offsets"}


@pytest.mark.parametrize("damage", ["cut short", "not a zip", "ids past the table", "another document count"])
def test_a_damaged_cache_file_is_rebuilt_with_a_notice(tmp_path, damage):
    counting = CountingTokenizer()
    first = tokenize_cached(TEXTS, counting, tmp_path)
    (path,) = tmp_path.glob("*.npz")
    data = path.read_bytes()
    if damage == "cut short":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not a zip":
        path.write_bytes(b"garbage" * 50)
    else:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if damage == "ids past the table":
            arrays["ids"] = arrays["ids"] + 1000
        else:
            arrays["doc_offsets"] = arrays["doc_offsets"][:-1]
            arrays["ids"] = arrays["ids"][: arrays["doc_offsets"][-1]]
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
    with pytest.warns(UserWarning, match=rf"token cache {re.escape(str(path))} is damaged .*tokenizing again"):
        again = tokenize_cached(TEXTS, counting, tmp_path)
    assert again == first and counting.calls == 2  # tokenized again, not read as garbage
    assert tokenize_cached(TEXTS, counting, tmp_path) == first and counting.calls == 2  # and replaced


def test_cache_key_depends_on_content_and_settings(tmp_path):
    counting = CountingTokenizer()
    tokenize_cached(["ab", "c"], counting, tmp_path)
    tokenize_cached(["a", "bc"], counting, tmp_path)  # same characters, other documents
    assert counting.calls == 2
    assert text.cache_key(["x"], counting) != text.cache_key(["x"], Tokenizer())


def test_cache_with_real_tokenizer(tmp_path, tok):
    texts = ["I LOVED it!!! <br /><br />Really.", "Caf\u00e9 #1"]
    assert tokenize_cached(texts, tok, tmp_path) == tok.tokenize(texts)
    assert tokenize_cached(texts, tok, tmp_path) == tok.tokenize(texts)


def _race(cache_dir: str, marker_dir: str, start_at: float, out: str) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    tokens = tokenize_cached(TEXTS, CountingTokenizer(marker_dir, delay=0.5), cache_dir)
    Path(out).write_bytes(pickle.dumps(tokens))


def test_two_processes_build_the_cache_once(tmp_path):
    ctx = mp.get_context("spawn")  # a clean child: no forked threads or locks
    cache, markers = tmp_path / "cache", tmp_path / "markers"
    markers.mkdir()
    start_at = time.time() + 3.0  # both children past their imports before either starts
    procs = [ctx.Process(target=_race, args=(str(cache), str(markers), start_at, str(tmp_path / f"out{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(list(markers.iterdir())) == 1
    outs = [pickle.loads((tmp_path / f"out{i}").read_bytes()) for i in range(2)]
    assert outs[0] == outs[1] == CountingTokenizer().tokenize(TEXTS)


# --- tokenizing in worker processes ---------------------------------------------------------

#: Texts that exercise every rule, spaCy's special handling and odd input (empty, only spaces, unicode).
VARIED = ["I LOVED it!!! <br /><br />Really.", "Caf\u00e9 #1 / 2 \\ 3", "", "   ", "w w w w word", "cccc ok",
          "It's 5 a.m. in the U.S.A., isn't it?", "\u2603 snow\u2014man \u2026 &amp; &quot;quoted&quot;",
          "http://example.com/a?b=c", "xxbos already", "Tab\there\nnew line", "ALL CAPS TITLE: Sub"]


def test_tokenizing_in_worker_processes_gives_the_single_process_output(monkeypatch):
    texts = [f"{t} {i}" if i % 3 else t for i, t in enumerate(VARIED * 40)]  # 480 texts
    monkeypatch.setattr(text, "PARALLEL_MIN_CHARS", 0)
    parallel = Tokenizer(n_workers=3)  # this process and two workers
    assert parallel.workers_for(texts) == 3
    assert parallel.tokenize(texts, progress=True) == Tokenizer(n_workers=1).tokenize(texts)


def test_a_script_without_a_main_guard_can_tokenize_in_workers(tmp_path):
    """multiprocessing's spawn would re-run this script in each worker and fail; our workers do not."""
    script = tmp_path / "unguarded.py"
    script.write_text("from ulmfit_core import text\n"
                      "text.PARALLEL_MIN_CHARS = 0\n"
                      "tokens = text.Tokenizer(n_workers=2).tokenize(['First TEXT here.', 'Second one!'] * 20)\n"
                      "print(len(tokens), tokens[-1])\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "40 ['xxbos', 'xxmaj', 'second', 'one', '!']"


def test_a_failing_worker_is_reported_with_its_error(monkeypatch, tmp_path):
    monkeypatch.setattr(text, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(text.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises((RuntimeError, OSError)):
        Tokenizer(n_workers=2).tokenize(["one text", "another text"])
    monkeypatch.undo()
    job = text._WorkerJob.start(tmp_path, 1, ["x"], "no-such-language-code", 10)
    with pytest.raises(RuntimeError, match=r"(?s)tokenizer worker process failed \(exit code 1\).*no-such-language-code.*n_workers=1"):
        job.result()


def test_texts_are_split_into_contiguous_parts_of_about_equal_length():
    texts = ["a" * 10] * 6 + ["b" * 100] + [""] * 3
    parts = text.split_by_length(texts, 2)
    assert [t for p in parts for t in p] == texts and all(parts)
    assert parts[1][0] == "b" * 100  # the long text starts the second half by length
    assert [len(p) for p in text.split_by_length(["x"] * 3, 3)] == [1, 1, 1]
    assert [len(p) for p in text.split_by_length(["long" * 100, "", ""], 3)] == [1, 1, 1]  # never an empty part
    with pytest.raises(ValueError, match="non-empty parts"):
        text.split_by_length(["x"], 2)


def test_small_corpora_are_tokenized_in_this_process(monkeypatch):
    four = Tokenizer(n_workers=4)
    assert four.workers_for(["a short text"] * 100) == 1  # far below PARALLEL_MIN_CHARS
    monkeypatch.setattr(text, "PARALLEL_MIN_CHARS", 10)
    assert four.workers_for(["a short text"] * 100) == 4
    assert four.workers_for(["a short text"] * 3) == 3  # never more workers than texts
    assert four.workers_for(["one long text" * 10]) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a one-CPU Ray trial
    assert text.usable_cpus() == 1 and Tokenizer().workers_for(["a short text"] * 100) == 1


def test_worker_count_does_not_change_the_cache_key():
    assert text.cache_key(VARIED, Tokenizer(n_workers=2)) == text.cache_key(VARIED, Tokenizer(n_workers=1))


def test_encoded_tokens_round_trip_with_empty_documents():
    docs = [["xxbos", "a", "b"], [], ["b", "caf\u00e9"], []]
    table, ids, offsets = text.encode_tokens(docs)
    assert table == ["xxbos", "a", "b", "caf\u00e9"] and ids.dtype == np.int32 and offsets.tolist() == [0, 3, 3, 5, 5]
    assert text.decode_tokens(table, ids, offsets) == docs
    assert text.decode_tokens(*text.encode_tokens([[], []])) == [[], []]
