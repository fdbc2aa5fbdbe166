"""The recipe end to end on real TREC-6 data: LM fine-tuning, classifier, resume, save/load, errors."""
import collections
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import launch
from ulmfit_core import inference, stages
from ulmfit_core.awd_lstm import build_classifier, classifier_layer_groups
from ulmfit_core.config import recipe_from_dict
from ulmfit_core.corpus import prepare_corpus
from ulmfit_core.schedule import unfreeze_phases
from ulmfit_core.tasks import ClassifierTask
from ulmfit_core.train import Trainer, seed_everything

TINY = {
    "model": {"preset": "tiny"},
    "lm": {"epochs": 2, "lr": 0.01, "bs": 16, "bptt": 20},
    "classifier": {"epochs": 4, "lr": 0.01, "bs": 32, "bptt": 20, "max_seq": 200},
}


def _cfg(datasets_dir, **sections):
    values = {"data": {"dataset": "trec", "max_train_rows": 800}, **TINY}
    for k, v in sections.items():
        values[k] = {**values.get(k, {}), **v}
    return recipe_from_dict(values)


@pytest.fixture(scope="module")
def corpus_and_cfg(datasets_dir, tmp_path_factory):
    cfg = _cfg(datasets_dir)
    cache = tmp_path_factory.mktemp("cache")
    return prepare_corpus(cfg, datasets_dir, cache), cfg, cache


def _unigram_perplexity(train_docs, valid_docs, vocab_size):
    counts = collections.Counter(int(t) for d in train_docs for t in d[1:])
    total = sum(counts.values())
    logp = [math.log((counts[int(t)] + 1) / (total + vocab_size)) for d in valid_docs for t in d[1:]]
    return math.exp(-sum(logp) / len(logp))


def test_corpus_keeps_test_text_out_of_the_language_model(corpus_and_cfg):
    corpus, cfg, _ = corpus_and_cfg
    assert corpus.test is not None and len(corpus.test.ids) == 500
    # The LM's documents are exactly the classifier's training documents (no unlabeled set for
    # TREC-6): nothing from the validation or test split.
    lm_docs = sorted(tuple(d.tolist()) for d in corpus.lm_train + corpus.lm_valid)
    assert lm_docs == sorted(tuple(d.tolist()) for d in corpus.train.ids)
    assert corpus.vocab.itos[:9] == ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj"]


def test_finetune_lm_beats_a_unigram_model(datasets_dir, tmp_path):
    cfg = _cfg(datasets_dir, data={"max_train_rows": None}, lm={"epochs": 3})
    corpus = prepare_corpus(cfg, datasets_dir, tmp_path / "cache")
    res = stages.finetune_lm(cfg, corpus, tmp_path / "lm")
    unigram = _unigram_perplexity(corpus.lm_train, corpus.lm_valid, len(corpus.vocab))
    assert res.metrics["valid_perplexity"] < 0.5 * unigram, (res.metrics, unigram)
    assert (tmp_path / "lm" / "encoder.pt").exists() and (tmp_path / "lm" / "metrics.json").exists()


def test_lm_resume_after_epoch_one_matches_uninterrupted(corpus_and_cfg, tmp_path):
    corpus, cfg, _ = corpus_and_cfg
    full = stages.finetune_lm(cfg, corpus, tmp_path / "full")

    class Interrupt(Exception):
        pass

    def stop_after_first(metrics, _ckpt):
        raise Interrupt

    with pytest.raises(Interrupt):
        stages.finetune_lm(cfg, corpus, tmp_path / "cut", report=stop_after_first)
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = stages.finetune_lm(cfg, corpus, tmp_path / "cut")
    for key in ("valid_loss", "valid_accuracy", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(full.metrics[key], abs=1e-6)


def test_ensure_lm_trains_once_and_reuses(corpus_and_cfg, tmp_path):
    corpus, cfg, _ = corpus_and_cfg
    first = stages.ensure_lm(cfg, corpus, tmp_path)
    second = stages.ensure_lm(cfg, corpus, tmp_path)
    assert first.trained and not second.trained and first.lm_dir == second.lm_dir
    other = recipe_from_dict({**cfg.to_dict(), "classifier": {**cfg.to_dict()["classifier"], "lr": 0.5}})
    assert stages.lm_key(other, corpus.lm_fingerprint) == stages.lm_key(cfg, corpus.lm_fingerprint)
    changed = recipe_from_dict({**cfg.to_dict(), "lm": {**cfg.to_dict()["lm"], "lr": 0.5}})
    assert stages.lm_key(changed) != stages.lm_key(cfg)


def test_gradual_unfreezing_changes_exactly_the_intended_groups(corpus_and_cfg):
    corpus, cfg, _ = corpus_and_cfg
    seed_everything(0)
    cc = cfg.classifier
    model = build_classifier(len(corpus.vocab), cfg.model, cc.scaled_dropouts, n_classes=len(corpus.label_names),
                             lin_ftrs=cc.lin_ftrs, head_p=cc.head_p, bptt=cc.bptt, max_seq=cc.max_seq)
    groups = classifier_layer_groups(model)
    assert len(groups) == 4  # embedding, 2 LSTM layers, head
    task = ClassifierTask(corpus.train.ids[:200], corpus.train.labels[:200], corpus.valid.ids[:50],
                          corpus.valid.labels[:50], len(corpus.label_names), cc, 1, torch.device("cpu"),
                          torch.Generator().manual_seed(0))
    trainer = Trainer(model, groups, cc, unfreeze_phases(len(groups), [1, 1], 4), task, device=torch.device("cpu"))
    expected_trainable = [1, 2, 4, 4]
    for epoch, n_top in enumerate(expected_trainable, start=1):
        before = [[p.detach().clone() for p in g] for g in groups]
        trainer.total_epochs = epoch
        trainer.fit()
        changed = [any(not torch.equal(a, p) for a, p in zip(b, g)) for b, g in zip(before, groups)]
        assert changed == [k >= len(groups) - n_top for k in range(len(groups))], (epoch, changed)


def test_recipe_reaches_far_above_majority_and_reloads_identically(datasets_dir, tmp_path):
    cfg = _cfg(datasets_dir, data={"max_train_rows": None}, lm={"epochs": 4, "bptt": 30},
               classifier={"epochs": 6, "bptt": 30})
    result = stages.run_recipe(cfg, tmp_path, data_dir=datasets_dir, cache_dir=tmp_path / "cache")
    majority = 138 / 500  # DESC in TREC-6's test set
    assert result["test_accuracy"] > majority + 0.35, result
    saved = json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert saved["test_accuracy"] == pytest.approx(result["test_accuracy"])

    texts = ["What is the capital of Peru ?", "Who wrote Hamlet ?", "How many feet are in a mile ?"]
    labels, p1 = inference.predict_proba([tmp_path / "classifier"], texts)
    _, p2 = inference.predict_proba([tmp_path / "classifier"], texts)
    np.testing.assert_array_equal(p1, p2)
    assert labels == sorted(labels) and p1.shape == (3, 6)
    np.testing.assert_allclose(p1.sum(1), 1.0, rtol=1e-5)
    ev = inference.evaluate(tmp_path / "classifier", datasets_dir / "trec" / "test.csv")
    assert ev["accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-9)
    assert np.array(ev["confusion_matrix"]).sum() == 500


def test_backwards_classifier_and_ensemble(corpus_and_cfg, datasets_dir, tmp_path):
    corpus, cfg, _ = corpus_and_cfg
    fwd = stages.train_classifier(cfg, corpus, None, tmp_path / "fwd")
    bwd_cfg = recipe_from_dict({**cfg.to_dict(), "lm": {**cfg.to_dict()["lm"], "backwards": True},
                                "classifier": {**cfg.to_dict()["classifier"], "backwards": True}})
    bwd = stages.train_classifier(bwd_cfg, corpus, None, tmp_path / "bwd")
    texts = ["Who invented the telephone ?", "Where is Timbuktu ?"]
    _, pf = inference.predict_proba([fwd.out_dir], texts)
    _, pb = inference.predict_proba([bwd.out_dir], texts)
    _, pe = inference.predict_proba([fwd.out_dir, bwd.out_dir], texts)
    np.testing.assert_allclose(pe, (pf + pb) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pf, pb)


def _write_csv(path: Path, rows, header=("label", "text")):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _cli(*argv):
    return launch.main([str(a) for a in argv])


def test_cli_errors_name_the_problem(tmp_path, capsys, datasets_dir):
    base = ["--set", "model.preset=tiny", "--set", "lm.epochs=1", "--set", "classifier.epochs=1",
            "--set", "classifier.unfreeze=[]", "--no-progress",
            "--cache-dir", tmp_path / "cache"]
    one_class = _write_csv(tmp_path / "one.csv", [("A", f"text number {i}") for i in range(20)])
    assert _cli("run", "--set", f"data.train={one_class}", *base, "--out", tmp_path / "o1") == 2
    assert "at least two" in capsys.readouterr().err

    assert _cli("run", "--set", f"data.train={one_class}", "--set", "data.label_col=category", *base,
                "--out", tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert "category" in err and "label" in err

    assert _cli("run", "--set", f"data.train={tmp_path / 'nope.csv'}", *base, "--out", tmp_path / "o3") == 2
    assert "nope.csv" in capsys.readouterr().err

    assert _cli("run", "--set", "classifier.lrm=0", *base, "--out", tmp_path / "o4") == 2
    assert "classifier.lrm" in capsys.readouterr().err


def test_cli_run_predict_evaluate_and_unseen_labels(tmp_path, capsys, datasets_dir):
    rows = [(lab, f"{w} question about {w} number {i} ?") for i in range(40) for lab, w in (("A", "apple"), ("B", "river"))]
    train = _write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "run"
    assert _cli("run", "--set", f"data.train={train}", "--set", "model.preset=tiny", "--set", "lm.epochs=1",
                "--set", "classifier.epochs=2", "--set", "classifier.unfreeze=[1]", "--set", "lm.bptt=10",
                "--set", "classifier.bptt=10", "--no-progress", "--cache-dir", tmp_path / "cache", "--out", out) == 0
    capsys.readouterr()
    assert (out / "metrics.json").exists() and (out / "classifier" / "model.pt").exists()

    assert _cli("predict", "--model", out / "classifier", "--json", "apple question ?") == 0
    rows_out = json.loads(capsys.readouterr().out)
    assert rows_out[0]["label"] in ("A", "B") and set(rows_out[0]["probabilities"]) == {"A", "B"}

    unseen = _write_csv(tmp_path / "eval.csv", [("C", "a new kind of question ?"), ("A", "apple ?")])
    assert _cli("evaluate", "--model", out / "classifier", "--file", unseen) == 2
    assert "never occur in the training data" in capsys.readouterr().err

    empty = _write_csv(tmp_path / "empty.csv", [("A", ""), ("B", "river ?")])
    assert _cli("evaluate", "--model", out / "classifier", "--file", empty) == 2
    assert "empty" in capsys.readouterr().err.lower()


def test_finetune_from_fastai_model_maps_vocabulary(datasets_dir, fastai_fixtures, tmp_path):
    cfg = _cfg(datasets_dir, data={"max_train_rows": 300},
               lm={"epochs": 1, "pretrained": str(fastai_fixtures / "fastai_tiny_lm.pth"),
                   "pretrained_vocab": str(fastai_fixtures / "fastai_tiny_vocab.pkl"), "freeze_epochs": 1})
    corpus = prepare_corpus(cfg, datasets_dir, tmp_path / "cache")
    seen = []
    res = stages.finetune_lm(cfg, corpus, tmp_path / "lm", report=lambda m, _c: seen.append(m))
    assert len(seen) == 2  # one frozen epoch (embeddings/decoder only), then one with everything
    assert math.isfinite(res.metrics["valid_loss"])
    clf = stages.train_classifier(cfg, corpus, res.lm_dir, tmp_path / "clf")
    assert clf.metrics["epoch"] == 4


def test_pretrain_from_unlabeled_text_then_finetune_onto_a_new_vocabulary(datasets_dir, tmp_path, capsys):
    # A "general-domain" corpus: IMDb's unlabeled reviews (a slice), one document per line.
    import gzip

    with gzip.open(datasets_dir / "imdb" / "unsup.csv.gz", "rt", encoding="utf-8") as f:
        reviews = [row["text"].replace("\n", " ") for _, row in zip(range(300), csv.DictReader(f))]
    corpus_file = tmp_path / "general.txt"
    corpus_file.write_text("\n".join(reviews), encoding="utf-8")
    common = ["--set", "model.preset=tiny", "--set", "lm.bptt=30", "--set", "lm.bs=16", "--no-progress",
              "--cache-dir", tmp_path / "cache"]
    assert _cli("pretrain", "--set", f"data.unlabeled={corpus_file}", "--set", "lm.epochs=1", *common,
                "--out", tmp_path / "general") == 0
    general_vocab = json.loads((tmp_path / "general" / "vocab.json").read_text())["itos"]
    assert "movie" in general_vocab
    assert _cli("finetune-lm", "--set", "data.dataset=trec", "--set", "data.max_train_rows=300",
                "--set", f"lm.pretrained={tmp_path / 'general'}", "--set", "lm.epochs=1", *common,
                "--data-dir", datasets_dir, "--out", tmp_path / "lm") == 0
    out = capsys.readouterr().out
    assert "language model saved" in out
    target_vocab = json.loads((tmp_path / "lm" / "vocab.json").read_text())["itos"]
    assert target_vocab != general_vocab and "who" in target_vocab
    history = json.loads((tmp_path / "lm" / "metrics.json").read_text())["history"]
    assert len(history) == 2  # freeze epoch (embeddings/decoder) + 1 epoch unfrozen
