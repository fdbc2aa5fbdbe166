"""Smoke runs of the comparison benchmarks (bench/), so they don't rot: seconds each, real data.

The benchmarks themselves take long and are not tests. Their peers (fastai, the MiniLM package) live
in a separate virtual environment that CI does not have: here each script runs its own side and its
plumbing, and reports the peer as skipped. Where bench/.peers-venv exists, the peer side's smoke
runs too, in that environment.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def _peer_python(bench) -> Path:
    py = bench("peers").peer_python()
    if py is None:
        pytest.skip("bench/.peers-venv not set up (python bench/peers.py); CI runs without it")
    return py


def _check_provenance(path: Path, name: str) -> dict:
    r = json.loads(path.read_text())
    assert r["benchmark"] == name
    assert {"date", "torch", "cores"} <= set(r["machine"])
    assert r["command"]
    return r


def test_speed_vs_fastai_smoke_ours(bench, tmp_path):
    out = tmp_path / "speed.json"
    payload = bench("speed_vs_fastai").main(["--smoke", "--ours-only", "--threads", "1", "--out", str(out)])
    (p,) = payload["presets"]
    assert not payload["with_fastai"]
    assert payload["ours_precision"]["asked"] == "auto" and payload["ours_precision"]["resolved"] in ("fp32", "bf16")
    for key in ("lm_train_tokens", "classifier_train_docs", "classifier_infer_docs"):
        assert p[key]["ours_per_s_median"] > 0 and p[key]["ours_per_cpu_s_median"] > 0
        assert "ratio_median" not in p[key] and p[key]["sides"] == ["ours"]
    r = _check_provenance(out, "speed_vs_fastai")
    assert bench("report").speed_vs_fastai(r)  # the section renders a result without fastai


def test_speed_vs_fastai_reports_a_side_that_cannot_run_and_keeps_timing_the_others(bench):
    calls = {"ours": 0, "fastai_bf16": 0}

    def ours():
        calls["ours"] += 1

    def broken():
        calls["fastai_bf16"] += 1
        raise RuntimeError("could not create a primitive descriptor for the LSTM forward propagation primitive")

    out = bench("speed_vs_fastai").alternate({"ours": ours, "fastai_bf16": broken}, 10, warmup=1, steps=2, rounds=2,
                                             label="test")
    assert out["sides"] == ["ours"] and "could not create" in out["failed"]["fastai_bf16"]
    assert calls == {"ours": 1 + 2 * 2, "fastai_bf16": 1}  # warm-up found it broken; no rounds for it
    assert "ratio_fastai_bf16_median" not in out


def test_profile_step_smoke(bench, tmp_path):
    """One profiled LM and classifier step of the tiny model: every part of the step lands in its bucket."""
    out = tmp_path / "profile.json"
    payload = bench("profile_step").main(["--smoke", "--threads", "1", "--out", str(out)])
    (row,) = [r for r in payload["rows"] if r["precision"] == "fp32"]
    for stage, own in (("lm", "decoder matmul"), ("classifier", "classifier head + pooling")):
        share = row[stage]["breakdown_share"]
        assert sum(share.values()) == pytest.approx(1.0)
        for bucket in ("LSTM", "weight-drop", "dropout masks", "optimizer", "clipping", "data", "AR/TAR", own):
            assert share[bucket] > 0, (stage, bucket, share)
        assert row[stage]["gflops"] > 0 and 0 < row[stage]["mfu_vs_fp32_peak"] < 1
    assert row["lm"]["breakdown_share"]["cross-entropy"] > 0
    assert {p["dtype"] for p in payload["peaks"]} == {"float32", "bfloat16"}
    r = _check_provenance(out, "profile_step")
    assert bench("report").profile_step(r)


def test_profile_step_flop_formulas(bench):
    m = bench("profile_step")
    # paper: 8 h (n_in + h) for layers 400->1152, 1152->1152, 1152->400
    assert m.lstm_flops_per_token("paper") == 8 * 1152 * 1552 + 8 * 1152 * 2304 + 8 * 400 * 1552
    assert m.lm_step_flops("tiny", 1000, 10) == 3 * 10 * (m.lstm_flops_per_token("tiny") + 2 * 64 * 1000)
    # 230 tokens in chunks of 70, all within max_seq: backward everywhere; with max_seq 70 only the last chunk (20)
    full = m.classifier_step_flops("tiny", 1, 230, 70, 1400, 2, [50])
    cut = m.classifier_step_flops("tiny", 1, 230, 70, 70, 2, [50])
    assert full - cut == m.lstm_flops_per_token("tiny") * 2 * (230 - 20)


def test_tokenize_speed_smoke(bench, tmp_path, datasets_dir):
    if not (datasets_dir / "imdb" / "train.csv.gz").exists():
        pytest.skip("IMDb not in the shared datasets")
    out = tmp_path / "tok.json"
    payload = bench("tokenize_speed").main(["--smoke", "--data-dir", str(datasets_dir), "--out", str(out)])
    assert [x["docs"] for x in payload["sizes"]] == [400]
    for x in payload["sizes"]:
        assert x["identical"] and x["single_docs_per_s"] > 0 and x["pool_docs_per_s"] > 0 and x["tokens"] > 50 * x["docs"]
    from ulmfit_core import text

    assert text.PARALLEL_MIN_CHARS == payload["parallel_min_chars"] > 0  # the bench put the threshold back
    r = _check_provenance(out, "tokenize_speed")
    assert bench("report").tokenize_speed(r)


def test_trials_per_gpu_smoke(bench, tmp_path, datasets_dir, monkeypatch):
    """On CPU: two trials at once through the real search service, sharing one language model."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tpg.json"
    payload = bench("trials_per_gpu").main(["--smoke", "--data-dir", str(datasets_dir), "--out", str(out)])
    (level,) = payload["presets"]["tiny"]["levels"]
    assert level["concurrent"] == 2 and level["trials"] == level["trials_completed"] == 2
    assert level["max_trials_at_once"] == 2  # they really ran side by side
    assert level["lm_trainings"] == 0 and level["trials_per_hour"] > 0  # the LM was trained once, up front
    assert "search.resources.gpu=0" in level["resources"]
    r = _check_provenance(out, "trials_per_gpu")
    assert bench("report").trials_per_gpu(r)


def test_trials_per_gpu_concurrency_settings(bench):
    m = bench("trials_per_gpu")
    assert m.concurrency_overrides(4, True, 16, 4) == ["search.max_concurrent=4", "search.resources.cpu=4",
                                                       "search.resources.gpu=0.25"]
    assert m.concurrency_overrides(8, True, 16, 4)[1:] == ["search.resources.cpu=2", "search.resources.gpu=0.125"]
    spans = [{"start": 0, "end": 10}, {"start": 5, "end": 12}, {"start": 11, "end": 20}]
    assert m.max_overlap(spans) == 2


@pytest.mark.filterwarnings("ignore:precision. bf16 on a CPU without:RuntimeWarning")
def test_precision_accuracy_smoke(bench, tmp_path, datasets_dir):
    out = tmp_path / "prec.json"
    payload = bench("precision_accuracy").main(["--smoke", "--threads", "1", "--data-dir", str(datasets_dir),
                                                "--out", str(out)])
    assert sorted(r["precision"] for r in payload["runs"]) == ["bf16", "fp32"]
    for run in payload["runs"]:
        assert 1 < run["lm_valid_perplexity"] < 1e4 and 0 <= run["test_accuracy"] <= 1
    (pair,) = payload["summary"]["paired"]
    assert pair["seed"] == 0 and pair["lm_perplexity_bf16_over_fp32"] > 0
    r = _check_provenance(out, "precision_accuracy")
    assert bench("report").precision_accuracy(r)


def test_baselines_smoke(bench, tmp_path, datasets_dir):
    """TF-IDF runs wherever scikit-learn is installed; a missing package is reported as skipped."""
    out = tmp_path / "baselines.json"
    peers = bench("peers")
    payload = bench("baselines").main(["--smoke", "--only", "tfidf", "--data-dir", str(datasets_dir), "--out", str(out)])
    if peers.importable("sklearn"):
        tfidf = payload["results"]["tfidf"]
        assert tfidf["test_accuracy_mean"] > 0.5  # 6 classes; the majority class is ~23 %
        assert tfidf["runs"][0]["n_train"] < 600  # the validation 10 % is held out
    else:
        assert "tfidf" in payload["skipped"]
    r = _check_provenance(out, "baselines")
    assert bench("report").baselines(r)


def test_accuracy_vs_fastai_smoke_ours(bench, tmp_path, datasets_dir):
    """Our side of the TREC-6 comparison (tiny model on a slice), built from the same recipe config."""
    out = tmp_path / "acc.json"
    payload = bench("accuracy_vs_fastai").main(["--smoke", "--ours-only", "--threads", "1", "--data-dir",
                                                str(datasets_dir), "--out", str(out)])
    assert payload["fastai"] is None and payload["fastai_skipped"]
    (run,) = payload["ours"]["runs"]
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["classifier_seconds"] > 0
    r = _check_provenance(out, "accuracy_vs_fastai")
    assert bench("report").accuracy_vs_fastai(r)


def test_accuracy_vs_fastai_splits_match_ours(bench, tmp_path, datasets_dir):
    """fastai's data are the pipeline's: same classifier split, LM text = training questions only."""
    pytest.importorskip("pandas")
    from ulmfit_core.corpus import prepare_corpus

    acc = bench("accuracy_vs_fastai")
    cfg = acc.load_cfg(str(ROOT / "configs" / "trec_small.yaml"), ["data.max_train_rows=400"], seed=3)
    clas, lm, test = acc.trec_frames(cfg, datasets_dir)
    corpus = prepare_corpus(cfg, data_dir=datasets_dir, cache_dir=tmp_path / "cache")
    assert (~clas.is_valid).sum() == corpus.stats["n_train"] and clas.is_valid.sum() == corpus.stats["n_valid"]
    assert len(lm) == corpus.stats["n_train"] and len(test) == corpus.stats["n_test"]
    assert not set(lm.text) & set(clas.text[clas.is_valid]) and not set(lm.text) & set(test.text)


@pytest.mark.filterwarnings("ignore:.*longer than.*tokens")  # the smoke cuts reviews short on purpose
def test_imdb_lowshot_smoke(bench, tmp_path, datasets_dir):
    if not (datasets_dir / "imdb" / "train.csv.gz").exists():
        pytest.skip("IMDb not in the shared datasets")
    out = tmp_path / "imdb.json"
    args = ["--smoke", "--threads", "1", "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache")]
    payload = bench("imdb_lowshot").main(args + ["--out", str(out)])
    methods = {(r["method"], r["budget"]) for r in payload["runs"]}
    assert methods == {(m, b) for m in ("ulmfit", "scratch") for b in payload["budgets"]}
    assert {r["method"]: r["from_scratch"] for r in payload["runs"]} == {"ulmfit": False, "scratch": True}
    assert payload["corpus"]["n_test"] == payload["sizes"]["test"] and payload["complete"]
    # Each method and budget tried every rate of the grid and kept the one best on validation.
    for (method, budget) in methods:
        tried = [g for g in payload["lr_selection"] if (g["method"], g["budget"]) == (method, budget)]
        assert sorted(g["lr"] for g in tried) == sorted(payload["lr_grid"]) and len(payload["lr_grid"]) > 1
        (chosen,) = [g for g in tried if g["chosen"]]
        assert chosen["valid_accuracy"] == max(g["valid_accuracy"] for g in tried)
        assert payload["chosen_lr"][f"{method}/{budget}"] == chosen["lr"]
    assert not payload["lm"]["reused"]
    r = _check_provenance(out, "imdb_lowshot")
    assert bench("report").imdb_lowshot(r)
    # A rerun with the same cache reuses the language model (and reports the time it took to train).
    again = bench("imdb_lowshot").main(args + ["--no-scratch", "--lr-grid", "0.02", "--out", str(tmp_path / "again.json")])
    assert again["lm"]["reused"] and again["lm"]["seconds"] == pytest.approx(payload["lm"]["seconds"])
    assert again["lm"]["metrics"] == payload["lm"]["metrics"]
    # --add with another method: a general-domain start (here the LM above, a folder in this project's
    # layout) joins the first result, whose methods and language model are kept as they were.
    (lm_dir,) = [d for d in (tmp_path / "cache" / "lm").iterdir() if (d / "lm.pt").exists()]
    added = bench("imdb_lowshot").main(args + ["--methods", "general", "--pretrained", str(lm_dir), "--add",
                                               "--out", str(out)])
    merged = _check_provenance(out, "imdb_lowshot")
    assert {r["method"] for r in merged["runs"]} == {"general", "ulmfit", "scratch"}
    assert [r for r in merged["runs"] if r["method"] != "general"] == payload["runs"]
    assert merged["lm"] == payload["lm"] and not added["general_lm"]["reused"]
    assert {s["method"] for s in merged["summary"]} == {"general", "ulmfit", "scratch"}
    assert set(merged["chosen_lr"]) == {f"{m}/{b}" for m in ("general", "ulmfit", "scratch") for b in payload["budgets"]}
    assert len(merged["earlier_commands"]) == 1
    # a different setting is refused before any training
    with pytest.raises(SystemExit, match="--add"):
        bench("imdb_lowshot").main(args + ["--methods", "scratch", "--set", "classifier.bs=16", "--add",
                                           "--out", str(out)])


def test_imdb_lowshot_budgets_are_nested(bench):
    m = bench("imdb_lowshot")
    assert m.budget_indices(500, 100, 0) == list(range(100))
    other = m.budget_indices(500, 100, 1)
    assert len(set(other)) == 100 and max(other) < 500 and other != list(range(100))
    assert m.budget_indices(500, 500, 2) == list(range(500))


def test_search_efficiency_smoke(bench, tmp_path, datasets_dir, monkeypatch):
    """Every variant runs on a real local Ray and MLflow store (warm start and unfreeze rungs included);
    TPE + ASHA's best config is retrained on test; the curves come from the stored studies."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "eff.json"
    payload = bench("search_efficiency").main(["--smoke", "--data-dir", str(datasets_dir), "--out", str(out)])
    runs = {r["variant"]: r for r in payload["runs"]}
    assert set(runs) == set(bench("search_efficiency").VARIANTS)
    fifo = runs["random_fifo"]
    assert fifo["trials_stopped_by_asha"] == 0 and fifo["trial_epochs"] == fifo["trial_epochs_if_all_ran"]
    assert sum(r["lm_trainings"] for r in runs.values()) == 1  # smoke: one LM, trained once, shared by all
    for r in runs.values():
        assert r["trials"] == 2 and r["wall_seconds"] > 0
        assert r["curve"][-1]["trial_epochs"] == r["trial_epochs"]  # the curve covers every trial
    assert 0.0 < runs["tpe_asha"]["best_test_accuracy"] <= 1.0
    assert runs["tpe_asha_warm"]["warm_start_from_seed"] == 0
    assert set(payload["summary"]) == set(runs) and payload["summary"]["random_fifo"]["reached_random_best"] == "1/1"
    assert (tmp_path / "eff.png").stat().st_size > 10_000
    r = _check_provenance(out, "search_efficiency")
    assert bench("report").search_efficiency(r)


def test_space_evidence_reads_the_efficiency_benchmark(bench, tmp_path):
    """Importances and best regions from the committed benchmark's leaderboards (seconds, no training)."""
    out = tmp_path / "evidence.json"
    payload = bench("space_evidence").main(["--out", str(out)])
    importances = payload["pooled_importances"]
    from search.space import DEFAULT_SPACE

    assert set(importances) == set(payload["best_region"]) == set(DEFAULT_SPACE)
    assert abs(sum(importances.values()) - 1) < 1e-6 and payload["trials_completed"] > 10
    r = _check_provenance(out, "space_evidence")
    assert bench("report").space_evidence(r)


def test_search_scaling_smoke(bench, tmp_path, datasets_dir, monkeypatch):
    """The same trials directly, with 1 and with 2 workers; overhead is the difference to direct."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "scaling.json"
    payload = bench("search_scaling").main(["--smoke", "--data-dir", str(datasets_dir), "--out", str(out)])
    direct, w1, w2 = payload["modes"]  # each round's direct run is listed before its search (run after it)
    assert [(m["mode"], m["round"]) for m in payload["modes"]] == [("direct", 1), ("workers_1", 1), ("workers_2", 1)]
    assert direct["trials"] == w1["trials"] == w2["trials"] == 2
    assert payload["summary"]["same_configs_all_modes"]
    assert w1["lm_trainings"] == w2["lm_trainings"] == 0  # the LM was trained once, before the modes
    assert len(w1["trial_time_total_s"]) == 2 and all(t > 0 for t in w1["trial_time_total_s"])
    assert all(0 < e < t for e, t in zip(w1["trial_epoch_seconds"], w1["trial_time_total_s"]))
    s = payload["summary"]
    assert sum(s["overhead_parts"].values()) == pytest.approx(s["overhead_seconds_per_trial"])
    assert s["overhead_parts"]["per_search"] > 0 and s["overhead_parts"]["between_trials"] >= 0
    phases = w1["per_search_seconds"]  # run_search outside its trials, in parts that add up to it
    assert sum(phases.values()) == pytest.approx(w1["wall_seconds"] - w1["trials_makespan_seconds"])
    assert all(v >= 0 for v in phases.values()) and phases["first_trial_process"] > 0
    assert s["overhead_share_by_round"] == [pytest.approx(s["overhead_share"])]
    assert s["overhead_share_stderr"] is None  # one round has no spread to report
    assert s["timed_in_search_seconds_per_trial"] == pytest.approx(
        s["overhead_parts"]["per_search"] + s["overhead_parts"]["between_trials"])
    cpu = s["service_cpu_seconds_per_trial"]  # the driver draws the plots and writes MLflow
    assert cpu is None or cpu["driver"] > 0
    r = _check_provenance(out, "search_scaling")
    assert bench("report").search_scaling(r)


# --- the peers' side, only where bench/.peers-venv exists (never on CI) -----------------------


def _run_peer(py: Path, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(py), str(BENCH / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_speed_vs_fastai_smoke_with_fastai(bench, tmp_path):
    py = _peer_python(bench)
    out = tmp_path / "speed.json"
    _run_peer(py, "speed_vs_fastai.py", "--smoke", "--threads", "1", "--out", str(out))
    r = json.loads(out.read_text())
    (p,) = r["presets"]
    assert r["with_fastai"] and r["versions"]["fastai"]
    assert p["params_lm"]["ours"] == p["params_lm"]["fastai"]  # same model sizes on both sides
    assert p["params_classifier"]["ours"] == p["params_classifier"]["fastai"]
    assert p["lm_train_tokens"]["ratio_median"] > 0
    for key in ("lm_train_tokens", "classifier_train_docs", "classifier_infer_docs"):
        m = p[key]  # fastai under bf16 autocast: timed, or recorded as unable to run on this CPU
        assert ("ratio_fastai_bf16_median" in m) != ("fastai_bf16" in m["failed"])


@pytest.mark.slow
def test_accuracy_vs_fastai_smoke_with_fastai(bench, tmp_path, datasets_dir):
    py = _peer_python(bench)
    out = tmp_path / "acc.json"
    _run_peer(py, "accuracy_vs_fastai.py", "--smoke", "--threads", "1", "--data-dir", str(datasets_dir), "--out", str(out))
    r = json.loads(out.read_text())
    (run,) = r["fastai"]["runs"]
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["lm_docs"] < run["n_train"] + 1


@pytest.mark.slow
def test_baselines_smoke_with_minilm(bench, tmp_path, datasets_dir):
    py = _peer_python(bench)
    out = tmp_path / "baselines.json"
    _run_peer(py, "baselines.py", "--smoke", "--data-dir", str(datasets_dir), "--out", str(out))
    r = json.loads(out.read_text())
    assert r["results"]["minilm"]["embedding_dim"] == 384
    assert r["results"]["minilm"]["test_accuracy_mean"] > 0.5


def test_transfer_trec_smoke(bench, tmp_path, datasets_dir):
    out = tmp_path / "transfer.json"
    # two seeds at once, each in its own process (--jobs), as the full benchmark runs on 2 cores
    bench("transfer_trec").main(["--smoke", "--starts", "random", "--seeds", "0", "1", "--jobs", "2", "--threads", "1",
                                 "--data-dir", str(datasets_dir), "--out", str(out)])
    r = _check_provenance(out, "transfer_trec")
    assert sorted(run["seed"] for run in r["runs"]) == [0, 1] and r["jobs"] == 2
    for run in r["runs"]:
        assert set(run["test_accuracy"]) == {"fwd", "bwd", "ensemble"}
        assert all(0.0 < v <= 1.0 for v in run["test_accuracy"].values())
        assert run["test_accuracy"]["fwd"] != run["test_accuracy"]["bwd"] or run["valid_accuracy"]["fwd"] != \
            run["valid_accuracy"]["bwd"]  # two different classifiers really ran
    ensembles = [run["test_accuracy"]["ensemble"] for run in r["runs"]]
    assert r["summary"]["random"]["ensemble"]["mean"] == pytest.approx(sum(ensembles) / 2)


def test_subwords_trec_smoke(bench, tmp_path, datasets_dir):
    out = tmp_path / "subwords.json"
    bench("subwords_trec").main(["--smoke", "--seeds", "0", "--jobs", "1", "--data-dir", str(datasets_dir),
                                 "--out", str(out)])
    r = _check_provenance(out, "subwords_trec")
    assert sorted(run["tokenizer"] for run in r["runs"]) == ["subwords", "words"]
    words, subwords = (r["summary"][t] for t in ("words", "subwords"))
    assert words["vocab_size"] != subwords["vocab_size"] and subwords["vocab_size"] <= 300 + 8
    four = r["four_member_test_accuracy"]["0"]
    assert 0.0 < four <= 1.0 and r["summary"]["words+subwords fwd+bwd"]["mean"] == pytest.approx(four)


def test_subword_vocab_trec_smoke(bench, tmp_path, datasets_dir):
    """Each size's general-domain LM is pretrained with that many units, and its classifier keeps them."""
    corpus = ROOT.parent / "shared" / "corpora" / "general-en" / "train.txt.gz"
    if not corpus.exists():
        pytest.skip(f"general-en corpus not found at {corpus}")
    out = tmp_path / "vocab.json"
    bench("subword_vocab_trec").main(["--smoke", "--seeds", "0", "--jobs", "1", "--data-dir", str(datasets_dir),
                                      "--out", str(out)])
    r = _check_provenance(out, "subword_vocab_trec")
    assert [run["pretrained"] for run in r["runs"]] == ["general-en-tiny-sp200-fwd", "general-en-tiny-sp300-fwd"]
    small, large = r["summary"]["200"], r["summary"]["300"]
    # the classifier's vocabulary is its general LM's units (plus the special tokens), not TREC-6's own
    assert 200 <= small["vocab_size"] <= 208 < 300 <= large["vocab_size"] <= 308
    assert all(0.0 < s["fwd"]["mean"] <= 1.0 for s in (small, large))


def test_subword_vocab_trec_names_the_command_for_a_missing_model(bench, tmp_path):
    with pytest.raises(SystemExit, match=r"8,000 units in .*--subword-vocab N"):
        bench("subword_vocab_trec").general_models([8000], tmp_path)
    assert bench("pretrain_general").model_name("tiny", "bwd", True, 30000) == "general-en-tiny-sp30k-bwd"
    assert bench("pretrain_general").model_name("tiny", "fwd", True, 15000) == "general-en-tiny-sp-fwd"  # the zoo's


def test_pretrain_general_smoke(bench, tmp_path):
    corpus = ROOT.parent / "shared" / "corpora" / "general-en" / "train.txt.gz"
    if not corpus.exists():
        pytest.skip(f"general-en corpus not found at {corpus}")
    out = tmp_path / "pretrain.json"
    bench("pretrain_general").main(["--smoke", "--directions", "fwd", "bwd", "--out", str(out)])
    r = _check_provenance(out, "pretrain_general")
    fwd, bwd = r["models"]
    assert (fwd["direction"], bwd["direction"]) == ("fwd", "bwd")
    for m in (fwd, bwd):
        # measured on the corpus's own held-out documents, far better than uniform over the vocabulary
        assert 1 < m["valid_perplexity"] < 2000 and m["tokens_per_second"] > 0 and m["epochs"] == 1
    # --add: the forward model measured again replaces its row; the backward one is kept from the first run
    bench("pretrain_general").main(["--smoke", "--directions", "fwd", "--add", "--out", str(out)])
    merged = _check_provenance(out, "pretrain_general")
    assert [m["direction"] for m in merged["models"]] == ["bwd", "fwd"]
    assert merged["models"][0] == bwd and len(merged["earlier_commands"]) == 1
    # --subwords: a subword model, read in its own units; per word, its perplexity compares with a word model's
    bench("pretrain_general").main(["--smoke", "--subwords", "--directions", "fwd", "--add", "--out", str(out)])
    sp = _check_provenance(out, "pretrain_general")["models"][-1]
    assert sp["model"] == "general-en-tiny-sp-fwd" and sp["units"] == "subwords" and fwd["units"] == "words"
    assert sp["valid_tokens"] > sp["valid_words"]  # a word is one or more units
    assert sp["valid_perplexity_per_word"] > sp["valid_perplexity"] > 1


def test_imdb_lowshot_add_compares_recipes(bench):
    """--add merges only runs of one recipe; a result from before ``precision`` existed ran in float32."""
    diff = bench("imdb_lowshot").recipe_differences
    old = {"data": {"train": "/a/pool.csv"}, "lm": {"lr": 0.03}, "seed": 0}
    assert diff(old, {"data": {"train": "/b/pool.csv"}, "lm": {"lr": 0.03, "pretrained_required": True},
                      "seed": 0, "precision": "fp32"}) == []
    assert diff(old, {"data": {}, "lm": {"lr": 0.03}, "seed": 0, "precision": "auto"}) == ["precision: 'fp32' -> 'auto'"]
    assert diff(old, {"data": {}, "lm": {"lr": 0.01}, "seed": 0, "precision": "fp32"}) == ["lm.lr: 0.03 -> 0.01"]


@pytest.mark.filterwarnings("ignore:.*longer than.*tokens")  # the smoke cuts reviews short on purpose
def test_imdb_ensembles_average_separate_runs(bench, tmp_path, datasets_dir):
    """A forward and a backward low-shot run keep their test probabilities; bench/imdb_ensembles.py averages
    them per budget and seed, and refuses members that ran other draws."""
    if not (datasets_dir / "imdb" / "train.csv.gz").exists():
        pytest.skip("IMDb not in the shared datasets")
    args = ["--smoke", "--threads", "1", "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
            "--methods", "ulmfit", "--lr-grid", "0.02"]
    fwd = bench("imdb_lowshot").main(args + ["--out", str(tmp_path / "fwd.json")])
    bwd = bench("imdb_lowshot").main(args + ["--set", "lm.backwards=true", "--out", str(tmp_path / "bwd.json")])
    assert bwd["config"]["lm"]["backwards"] and not fwd["config"]["lm"]["backwards"]
    assert fwd["test_labels"] == bwd["test_labels"] and len(fwd["test_labels"]) == fwd["sizes"]["test"]
    ens = bench("imdb_ensembles")
    out = ens.main(["--member", f"words-fwd={tmp_path / 'fwd.json'}", "--member", f"words-bwd={tmp_path / 'bwd.json'}",
                    "--method", "ulmfit", "--out", str(tmp_path / "ens.json")])
    assert [(r["budget"], r["seed"]) for r in out["rows"]] == [(b, 0) for b in fwd["budgets"]]
    mod = bench("imdb_lowshot")
    for row in out["rows"]:
        f, b = ([x for x in r["runs"] if x["budget"] == row["budget"]][0] for r in (fwd, bwd))
        assert row["members"] == {"words-fwd": f["test_accuracy"], "words-bwd": b["test_accuracy"]}
        mean = [(p + q) / 2 for p, q in zip(mod.decode_probabilities(f[mod.PROBABILITIES]),
                                            mod.decode_probabilities(b[mod.PROBABILITIES]))]
        assert row["ensembles"] == {"words-fwd+words-bwd": ens.accuracy(mean, fwd["test_labels"])}
    table = bench("report").imdb_ensembles(_check_provenance(tmp_path / "ens.json", "imdb_ensembles"))
    assert any(row.startswith("| **words-fwd + words-bwd** |") for row in table)
    # A member with itself is that member: the averaging adds nothing of its own.
    same = ens.main(["--member", f"words-fwd={tmp_path / 'fwd.json'}", "--member", f"words-bwd={tmp_path / 'fwd.json'}",
                     "--method", "ulmfit", "--out", str(tmp_path / "same.json")])
    assert all(r["ensembles"]["words-fwd+words-bwd"] == r["members"]["words-fwd"] for r in same["rows"])
    # Members of other draws are refused, naming what differs.
    other = json.loads((tmp_path / "bwd.json").read_text())
    other["seeds"] = [1]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="ran other seeds"):
        ens.main(["--member", f"words-fwd={tmp_path / 'fwd.json'}", "--member", f"words-bwd={tmp_path / 'other.json'}",
                  "--method", "ulmfit", "--out", str(tmp_path / "x.json")])


def test_imdb_ensembles_combinations(bench):
    combos = bench("imdb_ensembles").combinations(["words-fwd", "words-bwd", "subwords-fwd", "subwords-bwd"])
    assert combos == [("words-fwd", "words-bwd"), ("words-fwd", "subwords-fwd"), ("words-bwd", "subwords-bwd"),
                      ("subwords-fwd", "subwords-bwd"), ("words-fwd", "words-bwd", "subwords-fwd", "subwords-bwd")]


def test_suite_time_counts_what_pytest_ran_and_fails_on_a_failing_suite(bench, tmp_path):
    """Timed on one small test file instead of the whole suite, and on a file with a failing test."""
    passing = f"{sys.executable} -m pytest -q -p no:cacheprovider tests/test_outcome.py"
    out = tmp_path / "suite.json"
    payload = bench("suite_time").main(["--command", passing, "--out", str(out)])
    [run] = payload["runs"]
    assert run["returncode"] == 0 and run["counts"]["passed"] >= 1 and "failed" not in run["counts"]
    assert 0 < run["pytest_seconds"] <= run["wall_seconds"]
    r = _check_provenance(out, "suite_time")
    assert bench("report").suite_time(r)

    failing = tmp_path / "test_fails.py"
    failing.write_text("def test_ok():\n    pass\n\n\ndef test_broken():\n    assert 1 == 2\n")
    with pytest.raises(SystemExit, match="a timed run failed"):
        bench("suite_time").main(["--command", f"{sys.executable} -m pytest -q -p no:cacheprovider {failing}",
                                  "--out", str(out)])
    [run] = json.loads(out.read_text())["runs"]
    assert run["returncode"] == 1 and run["counts"] == {"failed": 1, "passed": 1}
