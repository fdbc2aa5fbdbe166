"""Transfer: a language model pretrained on general text (a slice of ../shared/corpora/general-en, made
here with `launch.py pretrain`) fine-tunes on TREC-6 to a lower validation perplexity than the same
model from random weights after the same steps; and a backwards LM reads its own direction."""
from __future__ import annotations

from pathlib import Path

import pytest

import launch
from ulmfit_core import stages
from ulmfit_core.config import build_recipe
from ulmfit_core.corpus import prepare_corpus

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "general-en"
TINY = {"data": {"dataset": "trec", "max_train_rows": 800}, "model": {"preset": "tiny"},
        "text": {"max_vocab": 4000},
        "lm": {"epochs": 1, "lr": 0.01, "bs": 32, "bptt": 30, "freeze_epochs": 0}}


@pytest.fixture(scope="module")
def general_lm(tmp_path_factory):
    if not (CORPUS / "train.txt.gz").exists():
        pytest.skip(f"general-en corpus not found at {CORPUS}")
    out = tmp_path_factory.mktemp("general") / "general-tiny"
    rc = launch.main(["pretrain", "--set", f"data.unlabeled={CORPUS / 'train.txt.gz'}",
                      "--set", "data.max_unlabeled_rows=300", "--set", "model.preset=tiny",
                      "--set", "text.max_vocab=8000", "--set", "lm.epochs=1", "--set", "lm.lr=0.02",
                      "--set", "lm.bs=32", "--set", "lm.bptt=50", "--set", "lm.drop_mult=0.1",
                      "--cache-dir", str(out.parent / "cache"), "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_a_pretrained_start_fine_tunes_to_lower_perplexity(general_lm, datasets_dir, tmp_path):
    random_start = build_recipe(TINY)
    pretrained_start = build_recipe(TINY, {"lm.pretrained": str(general_lm)})
    corpus = prepare_corpus(random_start, datasets_dir, tmp_path / "cache")
    scratch = stages.finetune_lm(random_start, corpus, tmp_path / "scratch")
    transfer = stages.finetune_lm(pretrained_start, corpus, tmp_path / "transfer")
    assert len(scratch.metrics) and len(transfer.metrics)
    # the same single epoch over the same TREC-6 training questions (no frozen epoch: freeze_epochs 0)
    assert scratch.metrics["epoch"] == transfer.metrics["epoch"] == 1
    assert transfer.metrics["valid_perplexity"] < 0.9 * scratch.metrics["valid_perplexity"], (
        transfer.metrics, scratch.metrics)


def test_a_backwards_lm_refuses_a_forward_start_and_keys_per_direction(general_lm, datasets_dir, tmp_path):
    backwards = build_recipe(TINY, {"lm.pretrained": str(general_lm), "lm.backwards": True})
    assert backwards.classifier.backwards  # the classifier follows the LM's direction
    corpus = prepare_corpus(backwards, datasets_dir, tmp_path / "cache")
    with pytest.raises(ValueError, match="trained forwards"):
        stages.finetune_lm(backwards, corpus, tmp_path / "bwd")
    # each direction of a search with lm.backwards in its space has its own shared LM
    forward = build_recipe(TINY)
    assert stages.lm_key(forward, corpus.lm_fingerprint) != stages.lm_key(
        build_recipe(TINY, {"lm.backwards": True}), corpus.lm_fingerprint)
