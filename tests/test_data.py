"""Readers and their error messages, the validation split, LMStream and ClassifierBatches."""
from __future__ import annotations

import gzip
import os
import warnings

import numpy as np
import pytest
import torch

from ulmfit_core.data import (
    ClassifierBatches,
    DataError,
    LabeledTexts,
    LMStream,
    check_classes,
    pad_chunks,
    read_labeled,
    read_unlabeled,
    split_validation,
)

# --- reading --------------------------------------------------------------------------------


def write(path, content: str, gz: bool = False):
    data = content.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_read_csv_with_quoted_commas_and_newlines(tmp_path):
    p = write(tmp_path / "t.csv", 'label,text\npos,"Good, very\ngood"\nneg,"She said ""no"""\n')
    got = read_labeled(p, ["text"], "label")
    assert isinstance(got, LabeledTexts)
    assert got.texts == ["Good, very\ngood", 'She said "no"'] and got.labels == ["pos", "neg"]
    assert got.source == str(p) and len(got) == 2


def test_read_tsv_gz_and_several_text_columns(tmp_path):
    p = write(tmp_path / "t.tsv.gz", "title\tbody\ty\nHi\tthere, you\ta\nYo\tok\tb\n", gz=True)
    got = read_labeled(p, ["title", "body"], "y")
    assert got.texts == ["xxfld 1 Hi xxfld 2 there, you", "xxfld 1 Yo xxfld 2 ok"]
    assert got.labels == ["a", "b"]


def test_read_csv_gz_with_bom(tmp_path):
    p = write(tmp_path / "t.csv.gz", "\ufefflabel,text\nx,one\ny,two\n", gz=True)
    assert read_labeled(p, ["text"], "label").labels == ["x", "y"]


def test_read_real_trec(datasets_dir):
    got = read_labeled(datasets_dir / "trec" / "test.csv", ["text"], "label")
    assert len(got) == 500 and set(got.labels) == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}


def test_read_folder_label_txt(tmp_path):
    for label, docs in {"pos": ["great", "fine"], "neg": ["bad"], "unsup": ["no label"]}.items():
        (tmp_path / label).mkdir()
        for i, d in enumerate(docs):
            (tmp_path / label / f"{i}_7.txt").write_text(d, encoding="utf-8")
    (tmp_path / "urls.txt").write_text("ignored")
    got = read_labeled(tmp_path, ["text"], "label")
    assert got.texts == ["bad", "great", "fine"] and got.labels == ["neg", "pos", "pos"]


def test_missing_column_lists_present_columns_and_the_fix(tmp_path):
    p = write(tmp_path / "t.csv", "sentiment,review\npos,x\n")
    with pytest.raises(DataError) as e:
        read_labeled(p, ["text"], "label")
    msg = str(e.value)
    assert str(p) in msg and "'text'" in msg and "'label'" in msg
    assert "'sentiment', 'review'" in msg and "data.text_cols" in msg and "data.label_col" in msg


def test_malformed_row_names_file_and_line(tmp_path):
    p = write(tmp_path / "t.csv", 'label,text\npos,"multi\nline"\nneg,a,b\n')
    with pytest.raises(DataError, match=r"t\.csv: line 4: 3 fields where the header has 2.*quoted"):
        read_labeled(p, ["text"], "label")


def test_empty_text_lists_rows_and_count(tmp_path):
    rows = "".join(f"pos,{'' if i % 2 else 'x'}\n" for i in range(30))
    p = write(tmp_path / "t.csv", "label,text\n" + rows)
    with pytest.raises(DataError) as e:
        read_labeled(p, ["text"], "label")
    msg = str(e.value)
    assert str(p) in msg and "empty text" in msg and "'text'" in msg
    assert "lines 3, 5, 7" in msg and "15 rows in all" in msg and "remove" in msg


def test_empty_label(tmp_path):
    p = write(tmp_path / "t.csv", "label,text\n,x\npos,y\n")
    with pytest.raises(DataError, match=r"empty label \(column 'label'\) at line 2 \(1 row\)"):
        read_labeled(p, ["text"], "label")


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(DataError, match=r"e\.csv: the file is empty.*header"):
        read_labeled(write(tmp_path / "e.csv", ""), ["text"], "label")
    with pytest.raises(DataError, match="a header but no rows"):
        read_labeled(write(tmp_path / "h.csv", "label,text\n"), ["text"], "label")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file.*data\.train"):
        read_labeled(tmp_path / "nope.csv", ["text"], "label")
    bad_gz = write(tmp_path / "bad.csv.gz", "label,text\nx,y\n")  # not gzipped
    with pytest.raises(DataError, match=r"bad\.csv\.gz: cannot read"):
        read_labeled(bad_gz, ["text"], "label")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("label,text\nx,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: line \d: not valid UTF-8.*save the file as UTF-8"):
        read_labeled(latin, ["text"], "label")
    if os.geteuid() != 0:  # root reads anything
        locked = write(tmp_path / "locked.csv", "label,text\nx,y\n")
        locked.chmod(0)
        with pytest.raises(DataError, match=r"locked\.csv: cannot read file: Permission denied"):
            read_labeled(locked, ["text"], "label")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match=r"no LABEL/\*\.txt files"):
        read_labeled(tmp_path, ["text"], "label")


def test_read_unlabeled_kinds(tmp_path):
    csv_gz = write(tmp_path / "u.csv.gz", 'id,text\n1,"a, b"\n2,\n3,c\n', gz=True)
    assert read_unlabeled(csv_gz) == ["a, b", "c"]  # empty docs skipped
    txt = write(tmp_path / "u.txt", "doc one\n\ndoc two\n")
    assert read_unlabeled(txt) == ["doc one", "doc two"]
    folder = tmp_path / "f" / "sub"
    folder.mkdir(parents=True)
    (folder / "1.txt").write_text("x\ny")
    assert read_unlabeled(tmp_path / "f") == ["x\ny"]
    with pytest.raises(DataError, match="no column 'body'"):
        read_unlabeled(csv_gz, text_col="body")
    with pytest.raises(DataError, match="data.unlabeled"):
        read_unlabeled(tmp_path / "missing.csv")


def test_read_real_imdb(datasets_dir):
    got = read_labeled(datasets_dir / "imdb" / "test.csv.gz", ["text"], "label")
    assert len(got) == 25000 and got.labels.count("pos") == 12500
    assert any("<br />" in t for t in got.texts[:100])  # raw text: the rules handle HTML later


# --- classes and split ----------------------------------------------------------------------


def test_check_classes():
    assert check_classes(["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(DataError, match=r"only the label 'pos' in 3 rows; a classifier needs at least two"):
        check_classes(["pos"] * 3)


def test_split_validation_stratified_reproducible():
    labels = ["a"] * 80 + ["b"] * 20 + ["c"] * 1
    train, valid = split_validation(labels, 0.1, seed=3)
    assert len(np.intersect1d(train, valid)) == 0 and len(train) + len(valid) == 101
    lab = np.array(labels)
    assert (lab[valid] == "a").sum() == 8 and (lab[valid] == "b").sum() == 2
    assert set(lab[train]) == {"a", "b", "c"}  # the single "c" stays in train
    again = split_validation(labels, 0.1, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train, valid), again))
    assert not np.array_equal(split_validation(labels, 0.1, seed=4)[1], valid)
    assert train.dtype == np.int64 and np.all(np.diff(valid) > 0)


def test_split_validation_tiny_set_keeps_one_for_validation():
    train, valid = split_validation(["a", "a", "b", "b"], 0.1, seed=0)
    assert len(valid) == 1 and len(train) == 3


# --- LMStream -------------------------------------------------------------------------------


def make_docs(n_docs=40, seed=0):
    rng = np.random.default_rng(seed)
    docs, start = [], 0
    for _ in range(n_docs):
        n = int(rng.integers(5, 60))
        docs.append(np.arange(start, start + n))  # every token distinct: positions are checkable
        start += n
    return docs


def test_lm_batches_line_up_and_cover_the_stream():
    docs = make_docs()
    n_tokens = sum(map(len, docs))
    lm = LMStream(docs, bs=4, bptt=12, shuffle=True, generator=torch.Generator().manual_seed(0))
    epoch = lm.epoch()
    batches = list(epoch)
    assert len(epoch) == len(batches)  # exact: the lengths are drawn before the epoch runs
    xs = torch.cat([x for x, _ in batches], dim=1)
    ys = torch.cat([y for _, y in batches], dim=1)
    for x, y in batches:
        assert x.dtype == torch.long and x.shape == y.shape and x.shape[0] == 4
    stream_len = (n_tokens - 1) // 4
    assert xs.shape == (4, stream_len)
    # y is x shifted by one; each row continues across batches, and row r+1 follows row r
    flat_x, flat_y = xs.reshape(-1), ys.reshape(-1)
    assert torch.equal(flat_y[:-1], flat_x[1:])
    # every token of the (shuffled) stream, once: the docs' tokens minus the dropped tail
    assert len(set(flat_x.tolist())) == 4 * stream_len
    assert set(flat_x.tolist()) <= set(range(n_tokens))
    # documents stay whole and in order inside the stream
    doc_of = {t: i for i, d in enumerate(docs) for t in d.tolist()}
    pos = flat_x.tolist()
    assert all(b == a + 1 for a, b in zip(pos, pos[1:]) if doc_of[a] == doc_of[b])


def test_lm_shuffle_changes_order_per_epoch_and_eval_does_not():
    docs = make_docs()
    lm = LMStream(docs, bs=2, bptt=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    e1, e2 = [torch.cat([x for x, _ in lm], 1) for _ in range(2)]
    assert not torch.equal(e1, e2)
    ev = LMStream(docs, bs=2, bptt=10, shuffle=False)
    b = list(ev)
    assert all(x.shape[1] == 10 for x, _ in b[:-1])
    assert torch.cat([x for x, _ in b], 1)[0, :5].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(torch.cat([x for x, _ in ev], 1), torch.cat([x for x, _ in b], 1))


def test_lm_backwards_reverses_the_stream():
    docs = make_docs()
    n = sum(map(len, docs))
    fwd = LMStream(docs, bs=1, bptt=10, shuffle=False)
    bwd = LMStream(docs, bs=1, bptt=10, shuffle=False, backwards=True)
    f = torch.cat([x for x, _ in fwd], 1)[0]
    b = torch.cat([x for x, _ in bwd], 1)[0]
    assert f.tolist() == list(range(n - 1))
    assert b.tolist() == list(range(n - 1, 0, -1))


def test_lm_same_seed_same_batches_and_generator_state_resumes():
    docs = make_docs()
    a = [x for x, _ in LMStream(docs, 3, 10, shuffle=True, generator=torch.Generator().manual_seed(7))]
    b = [x for x, _ in LMStream(docs, 3, 10, shuffle=True, generator=torch.Generator().manual_seed(7))]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    g = torch.Generator().manual_seed(1)
    lm = LMStream(docs, 3, 10, shuffle=True, generator=g)
    list(lm)
    state = g.get_state()
    second = [x for x, _ in lm]
    g.set_state(state)
    assert all(torch.equal(x, y) for x, y in zip(second, [x for x, _ in lm]))


def test_lm_variable_seq_len_distribution():
    docs = [np.arange(200_000)]
    lm = LMStream(docs, bs=2, bptt=70, shuffle=True, generator=torch.Generator().manual_seed(0))
    lens = np.array([x.shape[1] for x, _ in lm][:-1])  # the last batch takes what is left
    assert lens.min() >= 5
    near = np.abs(lens - 70) <= 25  # 5 standard deviations
    half = np.abs(lens - 35) <= 25
    assert near.mean() > 0.9 and 0.01 < half.mean() < 0.1 and (near | half).all()
    assert 65 < lens.mean() < 70
    assert abs(len(lm) - len(lens)) <= 0.1 * len(lm)


def test_lm_too_few_tokens():
    with pytest.raises(DataError, match=r"too few for 8 streams.*lm\.bs"):
        LMStream([np.arange(5)], bs=8, bptt=10, shuffle=False)


# --- classifier batches ---------------------------------------------------------------------


def test_pad_chunks_layout_as_fastai():
    x = pad_chunks([np.arange(10, 33), np.arange(100, 105), np.arange(200, 218)], pad_idx=1, bptt=8)
    assert x.shape == (3, 23)
    # M-L = 18: 16 pads in front (two chunks of 8), the text, 2 at the end
    assert x[1].tolist() == [1] * 16 + list(range(100, 105)) + [1] * 2
    # M-L = 5: 0 in front, 5 at the end
    assert x[2].tolist() == list(range(200, 218)) + [1] * 5
    assert x[0].tolist() == list(range(10, 33))


def test_classifier_eval_sorted_longest_first_with_order():
    lengths = [3, 9, 1, 9, 5, 2, 7]
    docs = [np.full(n, 10 + i) for i, n in enumerate(lengths)]
    labels = np.arange(7) % 2
    cb = ClassifierBatches(docs, labels, 3, pad_idx=1, bptt=4, shuffle=False, generator=None, max_len=100)
    assert len(cb) == 3
    assert cb.order.tolist() == [1, 3, 6, 4, 0, 5, 2]
    seen = []
    for x, lens, y, idx in cb:
        assert x.shape == (len(idx), lens.max().item()) and torch.all(lens[:-1] >= lens[1:])
        assert torch.equal(y, torch.as_tensor(labels)[idx])
        for row, i in enumerate(idx.tolist()):
            assert torch.equal(lens[row], torch.tensor(lengths[i]))
            assert (x[row] == 10 + i).sum().item() == lengths[i]
        seen += idx.tolist()
    assert seen == cb.order.tolist()
    # predictions put back in input order through `order`
    preds = np.array(seen) * 10
    back = np.empty_like(preds)
    back[cb.order] = preds
    assert back.tolist() == [i * 10 for i in range(7)]


def test_classifier_batch_padding_layout():
    docs = [np.full(20, 5), np.full(7, 6), np.full(3, 7)]
    cb = ClassifierBatches(docs, None, 3, pad_idx=1, bptt=5, shuffle=False, generator=None, max_len=100)
    ((x, lens, y, idx),) = list(cb)
    assert y is None and lens.tolist() == [20, 7, 3]
    assert x[1].tolist() == [1] * 10 + [6] * 7 + [1] * 3  # (20-7)//5*5 = 10 in front, 3 after
    assert x[2].tolist() == [1] * 15 + [7] * 3 + [1] * 2


def test_sortish_batches_are_homogeneous_and_longest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=2000)
    docs = [np.zeros(n, dtype=np.int64) + 2 for n in lengths]
    labels = rng.integers(0, 2, size=2000)
    cb = ClassifierBatches(docs, labels, 16, pad_idx=1, bptt=70, shuffle=True,
                           generator=torch.Generator().manual_seed(0), max_len=1000)
    batches = list(cb)
    assert len(batches) == len(cb) == 125
    x0, lens0, _, _ = batches[0]
    assert lens0[0].item() == lengths.max()
    idx_all = torch.cat([b[3] for b in batches]).tolist()
    assert len(set(idx_all)) == len(idx_all) == 2000
    padding = sum((b[0].numel() - b[1].sum().item()) for b in batches)
    random_padding = sum(16 * lengths[c].max() - lengths[c].sum() for c in rng.permutation(2000).reshape(-1, 16))
    assert padding < 0.2 * random_padding
    for _x, lens, _y, _idx in batches:
        assert torch.all(lens[:-1] >= lens[1:])
    # reproducible, and a new order each epoch
    again = [b[3] for b in ClassifierBatches(docs, labels, 16, pad_idx=1, bptt=70, shuffle=True,
                                             generator=torch.Generator().manual_seed(0), max_len=1000)]
    assert all(torch.equal(a, b[3]) for a, b in zip(again, batches))
    assert not torch.equal(torch.cat([b[3] for b in cb]), torch.cat([b[3] for b in batches]))


def test_sortish_drops_a_partial_last_batch_but_keeps_a_small_set():
    docs = [np.arange(1, n + 2) for n in range(35)]
    labels = np.zeros(35, dtype=np.int64)
    g = torch.Generator().manual_seed(0)
    cb = ClassifierBatches(docs, labels, 16, pad_idx=1, bptt=8, shuffle=True, generator=g, max_len=100)
    assert len(cb) == 2 and [len(b[3]) for b in cb] == [16, 16]
    small = ClassifierBatches(docs[:5], labels[:5], 16, pad_idx=1, bptt=8, shuffle=True, generator=g, max_len=100)
    assert len(small) == 1 and len(list(small)[0][3]) == 5


def test_truncation_warns_once_with_count():
    docs = [np.arange(50), np.arange(10), np.arange(80)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cb = ClassifierBatches(docs, None, 2, pad_idx=1, bptt=8, shuffle=False, generator=None, max_len=30)
        batches = list(cb)
    assert len(w) == 1 and "2 of 3 documents are longer than 30 tokens" in str(w[0].message)
    x, lens, _, idx = batches[0]
    assert lens.tolist() == [30, 30] and x[0].tolist() == list(range(30))  # the first max_len tokens


def test_a_backwards_batch_holds_one_token_documents():
    """A reversed one-token document (an empty text's lone xxbos, for a backwards model) is copied like the
    rest: NumPy calls its reversed view contiguous, and torch refuses a negative stride."""
    docs = [np.array([2], dtype=np.int64), np.array([2, 5, 6], dtype=np.int64)]
    (x, _lengths, _y, idx), = list(ClassifierBatches(docs, None, 4, pad_idx=1, bptt=8, shuffle=False, generator=None,
                                                     max_len=100, backwards=True))
    assert x.tolist() == [[6, 5, 2], [2, 1, 1]] and idx.tolist() == [1, 0]
