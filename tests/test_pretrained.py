"""Loading fastai's language models (against fastai's own outputs), vocabulary mapping, and our
own save/load format."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from ulmfit_core.artifacts import (
    ENCODER_FILE,
    LM_FILE,
    VOCAB_FILE,
    load_language_model,
    read_vocab,
    save_language_model,
)
from ulmfit_core.awd_lstm import build_classifier, build_language_model
from ulmfit_core.config import Dropouts, LMConfig, ModelConfig
from ulmfit_core.pretrained import (
    PretrainedError,
    fastai_to_ours,
    infer_sizes,
    load_encoder_into,
    load_fastai_lm,
    load_source,
    map_to_vocab,
    read_fastai_vocab,
    resolve_source,
)

TINY = ModelConfig(preset="tiny")  # emb 64, hid 128, 2 layers: the fixture's sizes
DROPS = Dropouts(embed_p=0.02, input_p=0.25, weight_p=0.2, hidden_p=0.15, output_p=0.1)


@pytest.fixture(scope="module")
def fastai_lm(fastai_fixtures: Path):
    return load_fastai_lm(fastai_fixtures / "fastai_tiny_lm.pth", fastai_fixtures / "fastai_tiny_vocab.pkl")


@pytest.fixture(scope="module")
def reference(fastai_fixtures: Path):
    return torch.load(fastai_fixtures / "fastai_tiny_ref.pt", weights_only=True)


def _lm_from(state, n_words: int):
    lm = build_language_model(n_words, TINY, DROPS)
    lm.load_state_dict(state)
    return lm.eval()


def _check_reproduces_fastai(state, itos, reference):
    lm = _lm_from(state, len(itos))
    with torch.no_grad():
        logits, _, _, hidden = lm(reference["x"])
    torch.testing.assert_close(logits, reference["logits"], atol=1e-5, rtol=0)
    assert len(hidden) == len(reference["last_hidden"])
    for (h, c), (ref_h, ref_c) in zip(hidden, reference["last_hidden"]):
        torch.testing.assert_close(h, ref_h, atol=1e-5, rtol=0)
        torch.testing.assert_close(c, ref_c, atol=1e-5, rtol=0)


# --- fastai files --------------------------------------------------------------------------


def test_fastai_v2_model_reproduces_fastai_outputs(fastai_lm, reference):
    state, itos, sizes = fastai_lm
    assert len(itos) == 104 and itos[:2] == ["xxunk", "xxpad"]
    assert sizes == {"emb_sz": 64, "n_hid": 128, "n_layers": 2}
    cfg = ModelConfig(**sizes)
    assert (cfg.emb_sz, cfg.n_hid, cfg.n_layers) == (TINY.emb_sz, TINY.n_hid, TINY.n_layers)
    _check_reproduces_fastai(state, itos, reference)


def test_fastai_v1_layout_loads_the_same(fastai_fixtures, fastai_lm, reference):
    v1_state, itos, _ = load_fastai_lm(fastai_fixtures / "fastai_tiny_lm_v1style.pth",
                                       fastai_fixtures / "fastai_tiny_vocab.pkl")
    state = fastai_lm[0]
    assert v1_state.keys() == state.keys()
    assert all(torch.equal(v1_state[k], state[k]) for k in state)
    _check_reproduces_fastai(v1_state, itos, reference)


def test_fastai_to_ours_unwraps_learner_save_with_opt_and_rejects_unknown_keys(fastai_fixtures):
    raw = torch.load(fastai_fixtures / "fastai_tiny_lm.pth", weights_only=True)
    assert fastai_to_ours({"model": raw, "opt": {}}).keys() == fastai_to_ours(raw).keys()
    with pytest.raises(PretrainedError, match="unknown keys"):
        fastai_to_ours({**raw, "0.transformer.weight": torch.zeros(1)})


def test_weights_and_vocabulary_of_different_sizes_are_refused(fastai_fixtures, tmp_path):
    vocab = tmp_path / "vocab.pkl"
    vocab.write_bytes(pickle.dumps(["a", "b", "c"]))
    with pytest.raises(PretrainedError, match="do not belong together"):
        load_fastai_lm(fastai_fixtures / "fastai_tiny_lm.pth", vocab)


def test_vocabulary_pickle_cannot_run_code(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(torch.Size([3])))  # any class, harmless or not, is refused
    with pytest.raises(PretrainedError, match="refusing to load"):
        read_fastai_vocab(evil)


# --- a new vocabulary ----------------------------------------------------------------------


def test_map_to_vocab_like_fastai_match_embeds(fastai_lm):
    state, itos, _ = fastai_lm
    new_itos = ["xxunk", "xxpad", "w05", "brand-new", "xxfake", "w00"]
    mapped = map_to_vocab(state, itos, new_itos)
    old_emb, old_bias = state["encoder.embedding.weight"], state["decoder.bias"]
    emb, bias = mapped["encoder.embedding.weight"], mapped["decoder.bias"]
    assert emb.shape == (6, 64) and bias.shape == (6,)
    for i, w in enumerate(new_itos):
        if w == "brand-new":
            torch.testing.assert_close(emb[i], old_emb.mean(0))
            torch.testing.assert_close(bias[i], old_bias.mean())
        else:
            j = len(itos) - 1 - itos[::-1].index(w)  # the word's last position in the old vocabulary
            assert torch.equal(emb[i], old_emb[j]) and torch.equal(bias[i], old_bias[j])
    assert itos.count("xxfake") == 4 and torch.equal(emb[4], old_emb[103])
    assert mapped["decoder.weight"] is emb and mapped["encoder.embedding_dp.emb.weight"] is emb
    assert state["encoder.embedding.weight"].shape == (104, 64)  # the input is left alone
    lm = _lm_from(mapped, len(new_itos))
    assert lm.decoder.weight.data_ptr() == lm.encoder.embedding.weight.data_ptr()
    assert torch.equal(lm.decoder.weight.detach(), emb)


# --- our own format ------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_logits(fastai_lm, reference, tmp_path):
    state, itos, _ = fastai_lm
    lm = _lm_from(state, len(itos))
    out_dir = save_language_model(tmp_path / "lm", lm, itos, {"model": {"preset": "tiny"}, "seed": 3})
    assert {p.name for p in out_dir.iterdir()} == {LM_FILE, ENCODER_FILE, VOCAB_FILE}
    assert json.loads((out_dir / VOCAB_FILE).read_text()) == {"itos": itos}
    assert read_vocab(out_dir) == itos
    loaded_state, loaded_itos, config = load_language_model(out_dir)
    assert loaded_itos == itos and config == {"model": {"preset": "tiny"}, "seed": 3}
    assert infer_sizes(loaded_state) == {"emb_sz": 64, "n_hid": 128, "n_layers": 2}
    again = _lm_from(loaded_state, len(loaded_itos))
    with torch.no_grad():
        assert torch.equal(again(reference["x"])[0], lm(reference["x"])[0])
    assert load_source(resolve_source(LMConfig(pretrained=str(out_dir))))[1] == itos


def test_bare_json_list_vocabulary_is_read(fastai_lm, tmp_path):
    state, itos, _ = fastai_lm
    save_language_model(tmp_path, _lm_from(state, len(itos)), itos, {})
    (tmp_path / VOCAB_FILE).write_text(json.dumps(itos))
    assert load_language_model(tmp_path)[1] == itos


def test_resolve_source_decides_what_lm_pretrained_names(fastai_fixtures, fastai_lm, tmp_path):
    pth, pkl = str(fastai_fixtures / "fastai_tiny_lm.pth"), str(fastai_fixtures / "fastai_tiny_vocab.pkl")
    source = resolve_source(LMConfig(pretrained=pth, pretrained_vocab=pkl))
    assert source.layout == "fastai"
    state, itos = load_source(source)
    assert len(itos) == 104 and infer_sizes(state)["n_layers"] == 2
    with pytest.raises(PretrainedError, match="does not exist"):
        resolve_source(LMConfig(pretrained=str(tmp_path / "missing")))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(PretrainedError, match="vocabulary pickle"):
        resolve_source(LMConfig(pretrained=str(tmp_path / "weights.bin")))
    assert resolve_source(LMConfig()) is None
    # our own folder records its direction; a backwards LM refuses a forward start ...
    fwd_state, fwd_itos, _ = fastai_lm
    save_language_model(tmp_path / "fwd", _lm_from(fwd_state, len(fwd_itos)), fwd_itos, {"lm": {"backwards": False}})
    with pytest.raises(PretrainedError, match="trained forwards"):
        load_source(resolve_source(LMConfig(pretrained=str(tmp_path / "fwd"), backwards=True)), backwards=True)
    # ... and takes lm.pretrained_backwards for a backwards LM
    save_language_model(tmp_path / "bwd", _lm_from(fwd_state, len(fwd_itos)), fwd_itos, {"lm": {"backwards": True}})
    bwd = LMConfig(pretrained=str(tmp_path / "fwd"), pretrained_backwards=str(tmp_path / "bwd"), backwards=True)
    assert resolve_source(bwd).path == tmp_path / "bwd"
    assert load_source(resolve_source(bwd), backwards=True)[1] == fwd_itos


def test_encoder_loads_into_classifier_on_same_and_new_vocabulary(fastai_lm, tmp_path):
    state, itos, _ = fastai_lm
    lm = _lm_from(state, len(itos))
    save_language_model(tmp_path, lm, itos, {})
    clf = build_classifier(len(itos), TINY, DROPS, n_classes=2, lin_ftrs=[50], head_p=0.1, bptt=8, max_seq=16)
    assert load_encoder_into(clf, tmp_path, itos) == len(itos)
    assert torch.equal(clf.encoder.embedding.weight, lm.encoder.embedding.weight)
    assert torch.equal(clf.encoder.rnns[1].weight_hh_raw, lm.encoder.rnns[1].weight_hh_raw)

    new_itos = ["xxunk", "xxpad", "w07", "unseen"]
    small = build_classifier(len(new_itos), TINY, DROPS, 2, [50], 0.1, 8, 16)
    assert load_encoder_into(small, tmp_path / ENCODER_FILE, new_itos) == 3
    emb = small.encoder.embedding.weight
    assert torch.equal(emb[2], lm.encoder.embedding.weight[itos.index("w07")])
    torch.testing.assert_close(emb[3], lm.encoder.embedding.weight.mean(0))

    wrong = build_classifier(len(itos), ModelConfig(preset="tiny", n_hid=96), DROPS, 2, [50], 0.1, 8, 16)
    with pytest.raises(PretrainedError, match="does not fit"):
        load_encoder_into(wrong, tmp_path, itos)
