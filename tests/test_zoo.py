"""The model zoo: fetching fastai-layout archives from a loopback HTTP mirror (resumed, checked,
refused when damaged), copying this project's models from a mirror folder, resolving zoo names in
``lm.pretrained``, and fine-tuning from one end to end."""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import math
import pickle
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from loopback_http import serve

import launch
from ulmfit_core import fetching, stages, zoo
from ulmfit_core.config import MODEL_PRESETS, ConfigError, recipe_from_dict
from ulmfit_core.corpus import prepare_corpus
from ulmfit_core.zoo import ZOO, ZooError

ROOT = Path(__file__).resolve().parents[1]
SHARED_PRETRAINED = ROOT.parent / "shared" / "pretrained"

# fastai's archive layout: wt103-fwd.tgz holds wt103-fwd/lstm_fwd.pth and wt103-fwd/itos_wt103.pkl
FASTAI_MEMBERS = ("wt103-fwd/lstm_fwd.pth", "wt103-fwd/itos_wt103.pkl")


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fastai_archive(fastai_fixtures: Path, **replace: bytes) -> bytes:
    """wt103-fwd.tgz in fastai's layout, made of the tiny fixture; ``replace`` swaps or adds members
    by file name (``lstm_fwd_pth=...``), a value of ``b""`` with key ``drop_...`` leaves one out."""
    files = {FASTAI_MEMBERS[0]: (fastai_fixtures / "fastai_tiny_lm.pth").read_bytes(),
             FASTAI_MEMBERS[1]: (fastai_fixtures / "fastai_tiny_vocab.pkl").read_bytes()}
    for key, data in replace.items():
        name = "wt103-fwd/" + key.removeprefix("drop_").replace("_pth", ".pth").replace("_pkl", ".pkl")
        if key.startswith("drop_"):
            del files[name]
        else:
            files[name] = data
    return tgz(files)


@pytest.fixture
def mirror(tmp_path, fastai_fixtures, no_proxy):
    """A loopback HTTP mirror serving wt103-fwd.tgz (the tiny fixture in fastai's layout)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "wt103-fwd.tgz").write_bytes(fastai_archive(fastai_fixtures))
    with serve(www) as server:
        yield server


def leftovers(dest: Path) -> list[str]:
    """What a fetch left in ``dest`` besides finished models and lock files."""
    return sorted(p.name for p in dest.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


# --- registry --------------------------------------------------------------------------------


def test_registry_records_fastai_urls_and_our_models():
    assert list(ZOO) == ["wt103-fwd", "wt103-bwd", "general-en-small-fwd", "general-en-tiny-fwd",
                         "general-en-small-bwd", "general-en-tiny-bwd", "general-en-tiny-sp-fwd",
                         "general-en-tiny-sp-bwd", "general-en-small-sp-fwd", "general-en-small-sp-bwd"]
    assert {n for n, e in ZOO.items() if e.units == "subwords"} == {n for n in ZOO if "-sp-" in n}
    assert ZOO["wt103-fwd"].url == "https://s3.amazonaws.com/fast-ai-modelzoo/wt103-fwd.tgz"
    assert ZOO["wt103-bwd"].url == "https://s3.amazonaws.com/fast-ai-modelzoo/wt103-bwd.tgz"
    for e in ZOO.values():
        assert e.preset in MODEL_PRESETS and e.direction in ("fwd", "bwd") and e.name.endswith(e.direction)
        assert (e.layout, e.preset) == (("fastai", "paper") if e.name.startswith("wt103") else ("ulmfit", e.preset))
        assert (e.url is None) == (e.layout == "ulmfit") and e.description and e.source
    assert zoo.ULMFIT_FILES == ("lm.pt", "encoder.pt", "vocab.json")


def test_config_takes_a_zoo_name_without_vocabulary_and_refuses_one_with_it():
    cfg = recipe_from_dict({"data": {"dataset": "trec"}, "lm": {"pretrained": "wt103-fwd"}})
    assert cfg.lm.pretrained == "wt103-fwd" and cfg.lm.pretrained_vocab is None
    with pytest.raises(ConfigError, match=r"lm\.pretrained_vocab: 'wt103-fwd' is a zoo model.*remove"):
        recipe_from_dict({"data": {"dataset": "trec"},
                          "lm": {"pretrained": "wt103-fwd", "pretrained_vocab": "itos.pkl"}})
    with pytest.raises(ConfigError, match=r"lm\.pretrained_vocab: a fastai \.pth model needs"):
        recipe_from_dict({"data": {"dataset": "trec"}, "lm": {"pretrained": "mine.pth"}})


# --- fetch over HTTP ---------------------------------------------------------------------------


def test_fetch_from_http_mirror_unpacks_checks_and_resolves(tmp_path, mirror, fastai_fixtures):
    dest = tmp_path / "models"
    out = zoo.fetch("wt103-fwd", dest, mirror=mirror.url + "/", progress=False)
    assert out == dest / "wt103-fwd"
    assert sorted(p.name for p in out.iterdir()) == ["itos_wt103.pkl", "lstm_fwd.pth"]  # top folder stripped
    assert leftovers(dest) == []  # the archive and the staging folder are gone
    local = zoo.resolve("wt103-fwd", dest)
    assert (local.path, local.vocab, local.layout, local.name) == (
        out / "lstm_fwd.pth", out / "itos_wt103.pkl", "fastai", "wt103-fwd")
    got = torch.load(local.path, weights_only=True)
    want = torch.load(fastai_fixtures / "fastai_tiny_lm.pth", weights_only=True)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # complete: a second fetch asks the server for nothing
    n = len(mirror.requests)
    assert zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False) == out
    assert len(mirror.requests) == n
    # a path stays a path
    assert zoo.resolve(str(tmp_path / "x.pth")).layout == "fastai"
    assert zoo.resolve(str(tmp_path / "lm")) == zoo.LocalModel(tmp_path / "lm", None, "ulmfit")


def test_interrupted_download_is_resumed_with_a_range_request(tmp_path, mirror, capsys):
    dest = tmp_path / "models"
    archive = (mirror.www / "wt103-fwd.tgz").read_bytes()
    mirror.cut_after = len(archive) // 2  # the connection drops halfway
    with pytest.raises(ZooError, match=r"cannot download .*wt103-fwd\.tgz: .*closed after .* bytes.*kept in .*next try"):
        zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False)
    part = dest / ".wt103-fwd.tgz.part"
    assert part.read_bytes() == archive[:len(archive) // 2] and not (dest / "wt103-fwd").exists()
    mirror.cut_after = None
    out = zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=True)
    assert "wt103-fwd.tgz" in capsys.readouterr().err  # the tqdm bar
    tries = [(h.range, h.status) for h in mirror.hits if h.path == "/wt103-fwd.tgz"]
    assert tries == [(None, 200), (f"bytes={len(archive) // 2}-", 206)]
    assert (out / "lstm_fwd.pth").is_file() and leftovers(dest) == []


def test_download_continues_a_part_file_or_starts_again_without_range_support(tmp_path, mirror):
    url = mirror.url + "/wt103-fwd.tgz"
    archive = (mirror.www / "wt103-fwd.tgz").read_bytes()
    half = len(archive) // 2
    resumed = tmp_path / "resumed.tgz"
    resumed.with_name("resumed.tgz.part").write_bytes(archive[:half])
    fetching.download(url, resumed, progress=False)
    assert resumed.read_bytes() == archive and not resumed.with_name("resumed.tgz.part").exists()
    assert (mirror.hits[-1].range, mirror.hits[-1].status) == (f"bytes={half}-", 206)

    whole = tmp_path / "whole.tgz"  # a .part already complete: 416 (range not satisfiable), then all again
    whole.with_name("whole.tgz.part").write_bytes(archive)
    fetching.download(url, whole, progress=False)
    assert whole.read_bytes() == archive
    assert [h.status for h in mirror.hits[-2:]] == [416, 200]

    mirror.ranges = False  # a server that ignores Range answers 200 with the whole file
    fresh = tmp_path / "fresh.tgz"
    fresh.with_name("fresh.tgz.part").write_bytes(b"x" * half)  # not even the right bytes
    fetching.download(url, fresh, progress=False)
    assert fresh.read_bytes() == archive
    assert (mirror.hits[-1].range, mirror.hits[-1].status) == (f"bytes={half}-", 200)


def test_concurrent_fetches_download_once(tmp_path, mirror):
    dest = tmp_path / "models"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda _: zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False), range(3)))
    assert outs == [dest / "wt103-fwd"] * 3 and mirror.requests.count("/wt103-fwd.tgz") == 1
    assert leftovers(dest) == []


def test_http_mirror_sha256sums_are_checked(tmp_path, mirror):
    dest = tmp_path / "models"
    (mirror.www / "SHA256SUMS").write_text(f"{'0' * 64}  wt103-fwd.tgz\n")
    with pytest.raises(ZooError, match=r"wt103-fwd\.tgz: sha256 .* does not match SHA256SUMS"):
        zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False)
    assert not (dest / "wt103-fwd").exists() and leftovers(dest) == []
    digest = hashlib.sha256((mirror.www / "wt103-fwd.tgz").read_bytes()).hexdigest()
    (mirror.www / "SHA256SUMS").write_text(f"{digest}  wt103-fwd.tgz\n")
    assert zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False).is_dir()
    assert mirror.requests.count("/wt103-fwd.tgz") == 2  # the bad copy was not kept


class _RunsCode:
    """Unpickling this would call Path.touch: a vocabulary file must never get that far."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _bad_archives(fixtures: Path, marker: Path) -> dict[str, tuple[bytes, str]]:
    """Archive bytes and the error each must give."""
    good = fastai_archive(fixtures)
    lm = (fixtures / "fastai_tiny_lm.pth").read_bytes()
    not_state = io.BytesIO()
    torch.save([1, 2, 3], not_state)
    return {
        "truncated": (good[: len(good) * 2 // 3], r"not a complete \.tgz archive .*cut short or damaged"),
        "two_pth": (fastai_archive(fixtures, other_pth=lm),
                    r"exactly one \.pth .* and one \.pkl .*found lstm_fwd\.pth, other\.pth, itos_wt103\.pkl"),
        "no_pkl": (fastai_archive(fixtures, drop_itos_wt103_pkl=b""), r"exactly one \.pth.*found lstm_fwd\.pth\. Nothing was installed"),
        "pth_not_a_state_dict": (fastai_archive(fixtures, lstm_fwd_pth=not_state.getvalue()),
                                 r"lstm_fwd\.pth: expected a mapping of tensors, got list"),
        "pkl_runs_code": (fastai_archive(fixtures, itos_wt103_pkl=pickle.dumps(_RunsCode(marker))),
                          r"itos_wt103\.pkl: not a pickled list of strings: refusing to load pathlib"),
        "link": (_with_link(fixtures), r"refusing 'wt103-fwd/evil', which is not a regular file"),
    }


def _with_link(fixtures: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(fixtures / "fastai_tiny_lm.pth", arcname="wt103-fwd/lstm_fwd.pth")
        tar.add(fixtures / "fastai_tiny_vocab.pkl", arcname="wt103-fwd/itos_wt103.pkl")
        link = tarfile.TarInfo("wt103-fwd/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("case", ["truncated", "two_pth", "no_pkl", "pth_not_a_state_dict", "pkl_runs_code", "link"])
def test_damaged_or_wrong_archive_is_refused_and_leaves_nothing(tmp_path, mirror, fastai_fixtures, case):
    marker = tmp_path / "code-ran"
    data, message = _bad_archives(fastai_fixtures, marker)[case]
    (mirror.www / "wt103-fwd.tgz").write_bytes(data)
    dest = tmp_path / "models"
    with pytest.raises(ZooError, match=message) as e:
        zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False)
    text = str(e.value)
    assert f"wt103-fwd.tgz from {mirror.url}/wt103-fwd.tgz" in text  # names the file and where it came from
    assert "fetch it again" in text or "fetch again" in text  # and the fix
    assert not (dest / "wt103-fwd").exists() and leftovers(dest) == [] and not marker.exists()
    # the mirror is repaired: the next fetch downloads again and succeeds
    (mirror.www / "wt103-fwd.tgz").write_bytes(fastai_archive(fastai_fixtures))
    assert (zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False) / "lstm_fwd.pth").is_file()


def test_an_archive_that_unpacks_past_the_stated_limit_is_refused_before_unpacking(tmp_path, mirror, fastai_fixtures,
                                                                                     monkeypatch):
    # 3 MB of zeros: a few kB compressed, like an archive bomb at small scale; the limit set to 2 MB
    (mirror.www / "wt103-fwd.tgz").write_bytes(fastai_archive(fastai_fixtures, README=bytes(3_000_000)))
    monkeypatch.setenv(fetching.MAX_FETCH_GB_ENV, "0.002")
    dest = tmp_path / "models"
    with pytest.raises(ZooError, match=r"wt103-fwd\.tgz unpacked is 0\.00 GB, more than the 0\.002 GB a fetch "
                                       r"accepts .*raise the limit with ULMFIT_MAX_FETCH_GB"):
        zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False)
    assert not (dest / "wt103-fwd").exists() and leftovers(dest) == []
    monkeypatch.setenv(fetching.MAX_FETCH_GB_ENV, "1")  # the default limit is far above it
    assert (zoo.fetch("wt103-fwd", dest, mirror=mirror.url, progress=False) / "lstm_fwd.pth").is_file()


def test_a_download_past_the_stated_limit_stops_before_writing(tmp_path, mirror, monkeypatch):
    (mirror.www / "big.bin").write_bytes(bytes(3_000_000))
    monkeypatch.setenv(fetching.MAX_FETCH_GB_ENV, "0.002")
    dest = tmp_path / "big.bin"
    with pytest.raises(fetching.FetchError, match=r"big\.bin is 0\.00 GB, more than the 0\.002 GB a fetch accepts"):
        fetching.download(f"{mirror.url}/big.bin", dest, progress=False)
    assert not dest.exists() and not dest.with_name("big.bin.part").exists()


def test_fetch_errors_without_a_source(tmp_path):
    with pytest.raises(ZooError, match=r"general-en-small-bwd has no public download.*pass --mirror"):
        zoo.fetch("general-en-small-bwd", tmp_path / "models")
    with pytest.raises(ZooError, match=r"mirror .*empty has neither a wt103-fwd/ folder nor wt103-fwd\.tgz.*"
                                       r"leave out --mirror to download https://s3"):
        zoo.fetch("wt103-fwd", tmp_path / "models", mirror=tmp_path / "empty")
    with pytest.raises(ZooError, match=r"unknown zoo model 'wt103'; the zoo has wt103-fwd, wt103-bwd"):
        zoo.fetch("wt103", tmp_path / "models")
    assert not (tmp_path / "models" / "general-en-small-bwd").exists()
    assert launch.main(["models", "fetch", "general-en-tiny-bwd", "--dest", str(tmp_path / "models")]) == 2


# --- mirror folders (this project's models) ------------------------------------------------------


@pytest.fixture
def shared_pretrained() -> Path:
    if not (SHARED_PRETRAINED / "general-en-tiny-fwd" / "lm.pt").is_file():
        pytest.skip(f"pretrained models not found at {SHARED_PRETRAINED} (its README says how they were made)")
    return SHARED_PRETRAINED


def test_models_fetch_copies_a_mirror_folder_with_its_checksums_verified(tmp_path, shared_pretrained, capsys):
    dest = tmp_path / "models"
    assert launch.main(["models", "fetch", "general-en-tiny-fwd", "--mirror", str(shared_pretrained),
                        "--dest", str(dest), "--no-progress"]) == 0
    assert f"ready in {dest / 'general-en-tiny-fwd'}" in capsys.readouterr().out
    source = shared_pretrained / "general-en-tiny-fwd"
    sums = fetching.read_sums(source)
    assert set(sums) == {"lm.pt", "encoder.pt", "vocab.json"}
    for name, digest in sums.items():
        assert fetching.sha256(dest / "general-en-tiny-fwd" / name) == digest
    assert zoo.resolve("general-en-tiny-fwd", dest) == zoo.LocalModel(dest / "general-en-tiny-fwd", None, "ulmfit",
                                                                       "general-en-tiny-fwd")
    # a damaged copy on a mirror: its own SHA256SUMS catches it
    bad = tmp_path / "bad-mirror" / "general-en-tiny-fwd"
    shutil.copytree(source, bad)
    (bad / "vocab.json").chmod(0o644)
    (bad / "vocab.json").write_text('{"itos": ["xxunk"]}')
    with pytest.raises(ZooError, match=r"general-en-tiny-fwd: vocab\.json: sha256 .* does not match SHA256SUMS"):
        zoo.fetch("general-en-tiny-fwd", tmp_path / "other", mirror=bad.parent, progress=False)
    assert not (tmp_path / "other" / "general-en-tiny-fwd").exists() and leftovers(tmp_path / "other") == []
    # registered as the tiny preset, forwards: the same folder offered as the small one is refused
    small = tmp_path / "wrong" / "general-en-small-fwd"
    shutil.copytree(source, small)
    with pytest.raises(ZooError, match=r"sizes .* are not the 'small' preset's"):
        zoo.fetch("general-en-small-fwd", tmp_path / "other", mirror=small.parent, progress=False)


# --- lm.pretrained: a zoo name -------------------------------------------------------------------


def test_unfetched_zoo_name_fails_before_training_with_the_fetch_command(tmp_path, datasets_dir, monkeypatch, capsys):
    models = tmp_path / "models"
    monkeypatch.setenv(zoo.MODELS_ENV, str(models))
    command = f"python launch.py models fetch wt103-fwd --dest {models}"
    with pytest.raises(ZooError) as e:
        zoo.resolve("wt103-fwd")
    assert f"run `{command}`" in str(e.value) and isinstance(e.value, ValueError)
    out = tmp_path / "lm"
    rc = launch.main(["finetune-lm", "--set", "lm.pretrained=wt103-fwd", "--set", "model.preset=tiny",
                      "--set", "data.max_train_rows=300", "--data-dir", str(datasets_dir),
                      "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and command in err and len(err.strip().splitlines()) == 1
    assert not (out / "lm.pt").exists() and not (out / "checkpoint").exists()  # nothing trained
    # the search driver checks zoo names before Ray starts (trials then find them in search.models_dir)
    from search.settings import search_config_from_dict
    from search.tuner import check_language_model_start

    values = {"recipe": {"data": {"dataset": "trec"}, "model": {"preset": "tiny"}, "lm": {"pretrained": "wt103-fwd"}},
              "search": {"models_dir": str(models)}}
    with pytest.raises(ZooError, match=command):
        check_language_model_start(search_config_from_dict(values))
    # ... unless the recipe says it may start from random weights: then the recorded recipe says so
    values["recipe"]["lm"]["pretrained_required"] = False
    cfg = search_config_from_dict(values)
    line = check_language_model_start(cfg)
    assert "random weights" in line and command in line and cfg.recipe["lm"]["pretrained"] is None
    # the default directory needs no --dest
    monkeypatch.delenv(zoo.MODELS_ENV)
    assert zoo.fetch_command("wt103-fwd") == "python launch.py models fetch wt103-fwd"


def test_finetune_from_a_zoo_name_end_to_end(tmp_path, datasets_dir, mirror, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setenv(zoo.MODELS_ENV, str(models))
    assert launch.main(["models", "fetch", "wt103-fwd", "--mirror", mirror.url, "--no-progress"]) == 0
    from search.settings import absolute_paths

    # a zoo name stays a name in configs and records (each trial finds it in search.models_dir)
    assert absolute_paths({"lm": {"pretrained": "wt103-fwd"}})["lm"] == {"pretrained": "wt103-fwd"}
    cfg = recipe_from_dict({
        "data": {"dataset": "trec", "max_train_rows": 300}, "model": {"preset": "tiny"},
        "lm": {"pretrained": "wt103-fwd", "epochs": 1, "freeze_epochs": 1, "lr": 0.01, "bs": 16, "bptt": 20}})
    corpus = prepare_corpus(cfg, datasets_dir, tmp_path / "cache")
    # the pretrained rows arrive: a word both vocabularies know keeps its fixture embedding
    init = stages._initial_lm_state(cfg, corpus.vocab.itos, None)
    want = torch.load(models / "wt103-fwd" / "lstm_fwd.pth", weights_only=True)
    xxbos = corpus.vocab.itos.index("xxbos")
    assert torch.equal(init["encoder.embedding.weight"][xxbos], want["0.encoder.weight"][2])
    seen = []
    res = stages.finetune_lm(cfg, corpus, tmp_path / "lm", report=lambda m, _c: seen.append(m))
    assert len(seen) == 2  # one frozen epoch (embeddings/decoder only), then one with everything
    assert all(math.isfinite(m["valid_loss"]) and math.isfinite(m["train_loss"]) for m in seen)
    assert (res.lm_dir / "lm.pt").is_file()


# --- CLI and docs -------------------------------------------------------------------------------


def test_models_list_names_every_entry_and_where_it_is(tmp_path, capsys):
    (tmp_path / "wt103-bwd").mkdir()  # as fetch leaves a model: renamed into place when complete
    assert launch.main(["models", "list", "--dest", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, entry in ZOO.items():
        row = next(line for line in lines if line.startswith(name + " "))
        assert entry.direction in row and entry.preset in row and entry.layout in row
        assert (str(tmp_path / name) in row) == (name == "wt103-bwd")
        assert (entry.url or "--mirror") in row


def test_models_doc_lists_every_entry_and_its_commands_parse():
    text = (ROOT / "docs" / "MODELS.md").read_text()
    for name, entry in ZOO.items():
        assert f"`{name}`" in text and (entry.url is None or entry.url in text)
    parser = launch.build_parser()
    commands = [line.split("python launch.py ", 1)[1].split("`")[0].split() for line in text.splitlines()
                if "python launch.py models" in line and "NAME" not in line]  # NAME: a placeholder
    assert len(commands) >= 3
    for argv in commands:
        parser.parse_args(argv)
