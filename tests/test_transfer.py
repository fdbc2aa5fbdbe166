"""Transfer: a language model pretrained on general text (../shared/pretrained/general-en-tiny-fwd, made
with `launch.py pretrain` on ../shared/corpora/general-en) fine-tunes on TREC-6 to a lower validation perplexity than the same
model from random weights after the same steps; and a backwards LM reads its own direction."""
from __future__ import annotations

from pathlib import Path

import pytest

from ulmfit_core import stages
from ulmfit_core.config import build_recipe
from ulmfit_core.corpus import prepare_corpus

GENERAL_TINY = Path(__file__).resolve().parents[2] / "shared" / "pretrained" / "general-en-tiny-fwd"
TINY = {"data": {"dataset": "trec", "max_train_rows": 800}, "model": {"preset": "tiny"},
        "text": {"max_vocab": 4000},
        "lm": {"epochs": 1, "lr": 0.01, "bs": 32, "bptt": 30, "freeze_epochs": 0}}


@pytest.fixture(scope="module")
def general_lm():
    """The general-domain tiny LM this project pretrained on general-en (launch.py pretrain; the command
    itself is tested in test_pipeline and the pretrain_general benchmark's smoke run)."""
    if not (GENERAL_TINY / "lm.pt").exists():
        pytest.skip(f"pretrained general-domain model not found at {GENERAL_TINY}")
    return GENERAL_TINY


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
