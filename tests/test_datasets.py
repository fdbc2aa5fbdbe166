"""Named datasets: resolve() and fetch() from a local HTTP server serving tiny originals."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from loopback_http import serve

from ulmfit_core import datasets
from ulmfit_core.config import DataConfig
from ulmfit_core.data import DataError, read_labeled, read_unlabeled
from ulmfit_core.datasets import DatasetPaths, fetch, resolve

# --- tiny originals in their published formats ----------------------------------------------

TREC_TRAIN = [
    "DESC:manner How did serfdom develop in and then leave Russia ?",
    "ENTY:cremat What films featured the character Popeye Doyle ?",
    "LOC:city Which city has the oldest relationship as a sister\u00a0city with Los Angeles ?",
    "NUM:date When was Ozzy Osbourne born ?",
]
TREC_TEST = ["NUM:dist How far is it from Denver to Aspen ?", "LOC:city What county is Modesto , California in ?"]

IMDB_FILES = {
    "aclImdb/train/neg/0_3.txt": "Bad.<br /><br />Really, \"bad\".",
    "aclImdb/train/neg/10000_4.txt": " Leading space and\nnewline ",
    "aclImdb/train/neg/9_1.txt": "Nine.",
    "aclImdb/train/pos/1_10.txt": "Great, great film.",
    "aclImdb/test/pos/5_8.txt": "Loved it.",
    "aclImdb/test/neg/2_2.txt": "Meh; caf\u00e9.",
    "aclImdb/train/unsup/11_0.txt": "Unlabeled one.",
    "aclImdb/train/unsup/100_0.txt": "Unlabeled, two.",
    # files the archive also holds, which are not reviews
    "aclImdb/imdb.vocab": "the\nand\n",
    "aclImdb/train/urls_pos.txt": "http://www.imdb.com/title/tt0453418/usercomments\n",
    "aclImdb/README": "Large Movie Review Dataset v1.0",
}


def make_originals(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # the originals are latin-1, with CRLF-free lines
    (folder / "train_5500.label").write_bytes(("\n".join(TREC_TRAIN) + "\n").encode("latin-1"))
    (folder / "TREC_10.label").write_bytes(("\n".join(TREC_TEST) + "\n").encode("latin-1"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in IMDB_FILES.items():
            data = content.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "aclImdb_v1.tar.gz").write_bytes(buf.getvalue())
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path, no_proxy):
    """An HTTP server on 127.0.0.1 (a free port) serving tmp_path/www; yields (url, requests, www)."""
    with serve(make_originals(tmp_path / "www")) as loopback:
        yield loopback.url, loopback.requests, loopback.www


def read_csv(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


# --- fetch ----------------------------------------------------------------------------------


def test_fetch_trec_from_http_mirror(tmp_path, server):
    url, requests, _ = server
    out = fetch("trec", tmp_path / "data", mirror=url, progress=False)
    assert out == tmp_path / "data" / "trec"
    assert sorted(p.name for p in out.iterdir()) == ["test.csv", "train.csv"]  # downloads removed
    train = read_csv(out / "train.csv")
    assert train[0] == ["label", "fine_label", "text"]
    assert train[1] == ["DESC", "DESC:manner", "How did serfdom develop in and then leave Russia ?"]
    assert train[3] == ["LOC", "LOC:city",
                        "Which city has the oldest relationship as a sister\u00a0city with Los Angeles ?"]
    assert len(train) == 5
    assert read_csv(out / "test.csv")[2] == ["LOC", "LOC:city", "What county is Modesto , California in ?"]
    assert (out / "train.csv").read_bytes().startswith(b"label,fine_label,text\nDESC,")  # \n line ends
    assert "/train_5500.label" in requests and "/TREC_10.label" in requests
    # complete: nothing is requested again
    n = len(requests)
    assert fetch("trec", tmp_path / "data", mirror=url, progress=False) == out
    assert len(requests) == n
    got = read_labeled(out / "train.csv", ["text"], "label")
    assert got.labels == ["DESC", "ENTY", "LOC", "NUM"]


def test_fetch_imdb_from_http_mirror(tmp_path, server, capsys):
    url, requests, _ = server
    out = fetch("imdb", tmp_path / "data", mirror=url, progress=True)
    assert "aclImdb_v1.tar.gz" in capsys.readouterr().err  # the tqdm bar
    assert sorted(p.name for p in out.iterdir()) == ["test.csv.gz", "train.csv.gz", "unsup.csv.gz"]
    train = read_csv(out / "train.csv.gz")
    assert train == [
        ["label", "rating", "id", "text"],
        # neg before pos; within a label by file name as text, as the shared copy is ordered
        ["neg", "3", "train_neg_0", "Bad.<br /><br />Really, \"bad\"."],
        ["neg", "4", "train_neg_10000", " Leading space and\nnewline "],
        ["neg", "1", "train_neg_9", "Nine."],
        ["pos", "10", "train_pos_1", "Great, great film."],
    ]
    assert read_csv(out / "test.csv.gz")[1:] == [["neg", "2", "test_neg_2", "Meh; caf\u00e9."],
                                                 ["pos", "8", "test_pos_5", "Loved it."]]
    assert read_csv(out / "unsup.csv.gz") == [["id", "text"], ["unsup_100", "Unlabeled, two."],
                                              ["unsup_11", "Unlabeled one."]]
    assert read_unlabeled(out / "unsup.csv.gz") == ["Unlabeled, two.", "Unlabeled one."]
    assert requests.count("/aclImdb_v1.tar.gz") == 1


def test_fetch_checks_sha256sums_served_by_the_mirror(tmp_path, server):
    url, requests, www = server
    (www / "SHA256SUMS").write_text(f"{'0' * 64}  train_5500.label\n{sha256(www / 'TREC_10.label')}  TREC_10.label\n")
    with pytest.raises(DataError, match=r"train_5500\.label: sha256 .* does not match SHA256SUMS"):
        fetch("trec", tmp_path / "data", mirror=url, progress=False)
    assert not (tmp_path / "data" / "trec" / "train.csv").exists()
    (www / "SHA256SUMS").write_text(f"{sha256(www / 'train_5500.label')} *train_5500.label\n")
    fetch("trec", tmp_path / "data", mirror=url, progress=False)
    assert (tmp_path / "data" / "trec" / "train.csv").exists()
    assert requests.count("/train_5500.label") == 2  # the bad copy was not kept


def test_fetch_download_error_names_url(tmp_path, server):
    url, _, www = server
    (www / "TREC_10.label").unlink()
    with pytest.raises(DataError, match=r"cannot download http://127\.0\.0\.1:\d+/TREC_10\.label.*mirror"):
        fetch("trec", tmp_path / "data", mirror=url, progress=False)


def test_fetch_originals_from_local_mirror_dir(tmp_path):
    mirror = make_originals(tmp_path / "mirror")
    (mirror / "SHA256SUMS").write_text(f"{sha256(mirror / 'TREC_10.label')}  TREC_10.label\n")
    out = fetch("trec", tmp_path / "data", mirror=mirror, progress=False)
    assert len(read_csv(out / "train.csv")) == 5 and len(read_csv(out / "test.csv")) == 3
    (mirror / "TREC_10.label").write_text("DESC:def What is tampering ?\n")
    shutil.rmtree(out)
    with pytest.raises(DataError, match=r"TREC_10\.label: sha256 .* does not match"):
        fetch("trec", tmp_path / "data", mirror=mirror, progress=False)
    with pytest.raises(DataError, match=r"neither the converted files nor the original aclImdb_v1\.tar\.gz"):
        fetch("imdb", tmp_path / "data", mirror=tmp_path / "empty", progress=False)


def test_fetch_copies_converted_layout_from_shared_datasets(tmp_path, datasets_dir):
    out = fetch("trec", tmp_path / "data", mirror=datasets_dir, progress=False)
    for name in ("train.csv", "test.csv"):
        assert sha256(out / name) == sha256(datasets_dir / "trec" / name)
    assert len(read_labeled(out / "train.csv", ["text"], "label")) == 5452


def test_fetch_copy_verifies_checksums(tmp_path, datasets_dir):
    mirror = tmp_path / "mirror"
    (mirror / "trec").mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        shutil.copyfile(datasets_dir / "trec" / name, mirror / "trec" / name)
    sums = (datasets_dir / "SHA256SUMS").read_text()
    (mirror / "SHA256SUMS").write_text(sums.replace(sha256(datasets_dir / "trec" / "test.csv"), "f" * 64))
    with pytest.raises(DataError, match=r"trec/test\.csv: sha256 .* does not match"):
        fetch("trec", tmp_path / "data", mirror=mirror, progress=False)


def test_fetch_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'sst'; fetch knows imdb, trec"):
        fetch("sst", tmp_path)


def test_imdb_conversion_is_byte_reproducible(tmp_path):
    originals = make_originals(tmp_path / "orig")
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        out.mkdir()
        datasets._convert_imdb([originals / "aclImdb_v1.tar.gz"], out)
        outs.append(sha256(out / "train.csv.gz"))
    assert outs[0] == outs[1]


# --- resolve --------------------------------------------------------------------------------


def make_dataset(root: Path, name: str, files=("train.csv.gz", "test.csv.gz", "unsup.csv.gz")) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for f in files:
        (folder / f).write_bytes(b"")
    return folder


def test_resolve_dataset_folder(tmp_path):
    folder = make_dataset(tmp_path, "imdb")
    got = resolve("imdb", DataConfig(dataset="imdb"), tmp_path)
    assert got == DatasetPaths(train=folder / "train.csv.gz", test=folder / "test.csv.gz",
                               unlabeled=folder / "unsup.csv.gz", valid=None)
    assert resolve(None, DataConfig(dataset="imdb", use_unlabeled=False), tmp_path).unlabeled is None


def test_resolve_explicit_paths_override(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d", "trec", files=("train.csv", "test.csv"))
    mine = tmp_path / "mine.tsv"
    mine.write_text("")
    monkeypatch.setenv("ULMFIT_DATA", str(tmp_path / "d"))
    got = resolve(None, DataConfig(dataset="trec", test=str(mine), unlabeled=str(mine)))
    assert got.train == tmp_path / "d" / "trec" / "train.csv" and got.test == mine and got.unlabeled == mine
    only = resolve(None, DataConfig(train=str(mine)), tmp_path / "nowhere")
    assert only == DatasetPaths(train=mine)


def test_resolve_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ULMFIT_DATA", raising=False)
    with pytest.raises(DataError) as e:
        resolve("trec", DataConfig(dataset="trec"), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "trec") in msg and "launch.py data fetch trec" in msg and "data.train" in msg
    with pytest.raises(DataError, match=r"'mine' not found.*put train\.csv"):
        resolve("mine", DataConfig(dataset="mine"), tmp_path)
    make_dataset(tmp_path, "imdb", files=("test.csv.gz",))
    with pytest.raises(DataError, match=r"has no train\.csv or train\.csv\.gz; run `python launch\.py data fetch imdb"):
        resolve("imdb", DataConfig(dataset="imdb"), tmp_path)
    with pytest.raises(DataError, match=r"data\.test: .*missing\.csv does not exist"):
        resolve(None, DataConfig(train=str(tmp_path / "imdb" / "test.csv.gz"), test=str(tmp_path / "missing.csv")),
                tmp_path)
    assert datasets.default_data_dir() == Path("data")
