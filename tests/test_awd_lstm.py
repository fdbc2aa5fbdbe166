"""AWD-LSTM pieces on small tensors: dropouts, the weight-dropped LSTM, tying, chunked encoding,
pooling, the head and layer groups."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ulmfit_core.awd_lstm import (
    AWDLSTMEncoder,
    ChunkedEncoder,
    EmbeddingDropout,
    LanguageModel,
    LockedDropout,
    PoolingClassifierHead,
    TextClassifier,
    WeightDropLSTM,
    build_classifier,
    build_language_model,
    classifier_group_count,
    classifier_layer_groups,
    detach_hidden,
    dropout_mask,
    lm_layer_groups,
    masked_concat_pool,
)
from ulmfit_core.config import Dropouts, ModelConfig
from ulmfit_core.losses import lm_cross_entropy

PAD = 1
V, E, H, L = 50, 16, 24, 3
DROPS = Dropouts(embed_p=0.1, input_p=0.2, weight_p=0.3, hidden_p=0.2, output_p=0.1)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_encoder(dropouts: Dropouts = DROPS) -> AWDLSTMEncoder:
    return AWDLSTMEncoder(V, E, H, L, pad_idx=PAD, dropouts=dropouts)


def random_row(n: int) -> list[int]:
    return torch.randint(2, V, (n,)).tolist()  # never the pad index


def chunk_pad(rows: list[list[int]], bptt: int, pad: int = PAD) -> tuple[torch.Tensor, list[int]]:
    """fastai's ``pad_input_chunk(pad_first=True)`` on rows already sorted longest first.

    Returns the batch (B, M) and each row's number of leading pads.
    """
    m = max(len(r) for r in rows)
    batch, starts = [], []
    for r in rows:
        start, end = (m - len(r)) // bptt * bptt, (m - len(r)) % bptt
        batch.append([pad] * start + r + [pad] * end)
        starts.append(start)
    return torch.tensor(batch), starts


# --- dropouts ------------------------------------------------------------------------------


def test_dropout_mask_values_and_scale():
    m = dropout_mask(torch.zeros(1), (1000, 1), 0.25)
    assert m.shape == (1000, 1)
    assert m.unique().tolist() == pytest.approx([0.0, 1 / 0.75])


def test_locked_dropout_shares_mask_across_time_and_is_identity_in_eval():
    ld = LockedDropout(0.5)
    x = torch.ones(4, 7, 10)  # (B, T, H)
    y = ld(x)
    assert (y == 0).any() and (y == 2).any()
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every time step
    assert not torch.equal(y[0], y[1]) or not torch.equal(y[1], y[2])  # a mask per sequence
    ld.eval()
    assert ld(x) is x
    assert LockedDropout(0.0)(x) is x


def test_embedding_dropout_drops_whole_words_everywhere_and_is_identity_in_eval():
    emb = nn.Embedding(V, E, padding_idx=PAD)
    ed = EmbeddingDropout(emb, 0.5)
    words = torch.arange(V).repeat(3, 1)  # (3, V): every word three times
    out = ed(words)  # (3, V, E)
    dropped = (out == 0).all(dim=-1)  # (3, V): a word's vector is all zeros or all kept
    assert dropped.any() and (~dropped).any()
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same words in every row
    kept = ~dropped[0]
    assert torch.allclose(out[0, kept], emb.weight[kept] * 2)  # scaled by 1/(1-p)
    ed.eval()
    assert torch.equal(ed(words), emb(words))


def test_embedding_dropout_respects_padding_idx():
    emb = nn.Embedding(V, E, padding_idx=PAD)
    ed = EmbeddingDropout(emb, 0.3)
    ed(torch.tensor([[PAD, 3, 4, PAD]])).sum().backward()
    assert torch.count_nonzero(emb.weight.grad[PAD]) == 0


# --- weight-dropped LSTM -------------------------------------------------------------------


def test_weight_drop_lstm_matches_nn_lstm_without_drop():
    rnn = WeightDropLSTM(5, 6, weight_p=0.5).eval()
    ref = nn.LSTM(5, 6, batch_first=True)
    with torch.no_grad():
        for ours, theirs in [("weight_ih", "weight_ih_l0"), ("weight_hh_raw", "weight_hh_l0"),
                             ("bias_ih", "bias_ih_l0"), ("bias_hh", "bias_hh_l0")]:
            getattr(ref, theirs).copy_(getattr(rnn, ours))
    x, h0, c0 = torch.randn(3, 9, 5), torch.randn(1, 3, 6), torch.randn(1, 3, 6)
    out, (h, c) = rnn(x, (h0, c0))
    ref_out, (ref_h, ref_c) = ref(x, (h0, c0))
    assert out.shape == (3, 9, 6) and h.shape == c.shape == (1, 3, 6)
    for a, b in [(out, ref_out), (h, ref_h), (c, ref_c)]:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_weight_drop_changes_train_outputs_not_eval_and_leaves_raw_weight():
    rnn = WeightDropLSTM(5, 6, weight_p=0.5)
    raw = rnn.weight_hh_raw.detach().clone()
    x = torch.randn(2, 8, 5)
    state = (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6))
    rnn.eval()
    e1, _ = rnn(x, state)
    e2, _ = rnn(x, state)
    assert torch.equal(e1, e2)
    rnn.train()
    t1, _ = rnn(x, state)
    t2, _ = rnn(x, state)
    assert not torch.allclose(t1, e1) and not torch.allclose(t1, t2)  # a fresh mask per call
    t1.sum().backward()
    assert rnn.weight_hh_raw.grad is not None and torch.count_nonzero(rnn.weight_hh_raw.grad) > 0
    assert torch.equal(rnn.weight_hh_raw.detach(), raw)


def test_weight_drop_lstm_init_like_nn_lstm():
    rnn = WeightDropLSTM(7, 100)
    bound = 100 ** -0.5
    for p in rnn.parameters():
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound


# --- encoder and language model ------------------------------------------------------------


def test_encoder_layer_sizes_and_shapes():
    enc = make_encoder()
    assert [(r.n_in, r.n_out) for r in enc.rnns] == [(E, H), (H, H), (H, E)]
    assert [r.weight_p for r in enc.rnns] == [DROPS.weight_p] * L
    assert len(enc.hidden_dps) == L - 1
    assert enc.embedding.weight.abs().max() <= 0.1
    out, hidden = enc(torch.randint(0, V, (3, 11)))
    assert out.shape == (3, 11, E)
    assert [tuple(h.shape) for h, _ in hidden] == [(1, 3, H), (1, 3, H), (1, 3, E)]
    assert [tuple(c.shape) for _, c in enc.init_hidden(4)] == [(1, 4, H), (1, 4, H), (1, 4, E)]


def test_encoder_state_is_explicit_halves_equal_whole():
    enc = make_encoder().eval()
    x = torch.randint(0, V, (2, 20))
    whole, h_whole = enc(x)
    first, h = enc(x[:, :9])
    second, h2 = enc(x[:, 9:], detach_hidden(h))
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(h2[-1][0], h_whole[-1][0], atol=1e-6, rtol=0)
    again, _ = enc(x)  # nothing remembered between calls
    assert torch.equal(again, whole)


def test_language_model_tied_weights_are_one_tensor():
    lm = build_language_model(V, ModelConfig(emb_sz=E, n_hid=H, n_layers=L), DROPS, pad_idx=PAD)
    assert lm.decoder.weight is lm.encoder.embedding.weight
    assert lm.decoder.weight.data_ptr() == lm.encoder.embedding_dp.emb.weight.data_ptr()
    assert sum(p is lm.decoder.weight for p in lm.parameters()) == 1
    before = lm.decoder.weight.detach().clone()
    opt = torch.optim.SGD(lm.parameters(), lr=1.0)
    logits, raw, dropped, hidden = lm(torch.randint(0, V, (2, 6)))
    assert logits.shape == (2, 6, V) and raw.shape == dropped.shape == (2, 6, E) and len(hidden) == L
    logits.logsumexp(-1).mean().backward()
    opt.step()
    assert not torch.equal(lm.encoder.embedding.weight.detach(), before)
    assert lm.decoder.weight.data_ptr() == lm.encoder.embedding.weight.data_ptr()


def test_language_model_untied_and_output_dropout():
    lm = LanguageModel(make_encoder(), output_p=0.5, tie_weights=False)
    assert lm.decoder.weight is not lm.encoder.embedding.weight
    _, raw, dropped, _ = lm(torch.randint(0, V, (4, 5)))
    assert not torch.equal(raw, dropped)  # AR sees the dropped output, TAR the raw one
    lm.eval()
    _, raw, dropped, _ = lm(torch.randint(0, V, (4, 5)))
    assert torch.equal(raw, dropped)


@pytest.mark.parametrize("device", DEVICES)
def test_language_model_trains_on_device(device):
    lm = build_language_model(V, ModelConfig(emb_sz=E, n_hid=H, n_layers=2), DROPS).to(device)
    x = torch.randint(0, V, (3, 7), device=device)
    logits, _, _, hidden = lm(x)
    assert logits.device.type == device and hidden[0][0].device.type == device
    nn.functional.cross_entropy(logits.reshape(-1, V), x.reshape(-1)).backward()
    assert all(p.grad is not None for p in lm.parameters())


# --- chunked encoder -----------------------------------------------------------------------


def test_chunked_encoder_equals_one_pass_for_short_inputs():
    enc = make_encoder().eval()
    x = torch.randint(2, V, (3, 10))
    out, mask = ChunkedEncoder(enc, bptt=10, max_seq=100, pad_idx=PAD)(x)
    torch.testing.assert_close(out, enc(x)[0], atol=1e-6, rtol=0)
    assert mask.shape == (3, 10) and not mask.any()


@pytest.mark.parametrize("bptt", [40, 5])  # one chunk; several chunks with rows joining late
def test_chunked_encoder_rows_unaffected_by_padding_and_batch_mates(bptt):
    enc = make_encoder().eval()
    chunked = ChunkedEncoder(enc, bptt=bptt, max_seq=1000, pad_idx=PAD)
    rows = [random_row(n) for n in (23, 17, 11, 3)]  # longest first, as the data loader sorts
    x, starts = chunk_pad(rows, bptt)
    with torch.no_grad():
        out, mask = chunked(x)
    assert out.shape == (4, x.size(1), E) and torch.equal(mask, x == PAD)
    for r, (row, start) in enumerate(zip(rows, starts)):
        alone, _ = enc(torch.tensor([row]))  # (1, L, E): the row run by itself, unpadded
        torch.testing.assert_close(out[r, start:start + len(row)], alone[0], atol=1e-5, rtol=0)
        # the same row, alone in its own chunk-padded batch
        solo, solo_mask = chunked(torch.tensor([row]))
        torch.testing.assert_close(solo[0][~solo_mask[0]], alone[0], atol=1e-5, rtol=0)
    assert torch.count_nonzero(out[3, :starts[3]]) == 0  # inactive rows are zero-padded


def test_chunked_encoder_carries_state_chunk_by_chunk():
    enc = make_encoder().eval()
    bptt = 6
    rows = [random_row(20), random_row(13)]
    x, starts = chunk_pad(rows, bptt)
    with torch.no_grad():
        out, _ = ChunkedEncoder(enc, bptt=bptt, max_seq=1000, pad_idx=PAD)(x)
        for r, (row, start) in enumerate(zip(rows, starts)):
            t, hidden, pieces = torch.tensor([row]), None, []
            for i in range(0, len(row), bptt):
                o, hidden = enc(t[:, i:i + bptt], hidden)
                pieces.append(o)
            torch.testing.assert_close(out[r, start:start + len(row)], torch.cat(pieces, 1)[0], atol=1e-5, rtol=0)


def test_chunked_encoder_max_seq_keeps_last_chunks_only():
    enc = make_encoder().eval()
    x = torch.randint(2, V, (2, 25))
    with torch.no_grad():
        full, _ = ChunkedEncoder(enc, bptt=5, max_seq=1000, pad_idx=PAD)(x)
        win, mask = ChunkedEncoder(enc, bptt=5, max_seq=12, pad_idx=PAD)(x)
    assert win.shape == (2, 10, E) and mask.shape == (2, 10)  # whole chunks within the last 12 tokens
    torch.testing.assert_close(win, full[:, -10:], atol=1e-6, rtol=0)


def test_chunked_encoder_gradients_reach_only_the_window():
    enc = make_encoder()
    x = torch.randint(2, V, (2, 20))
    out, _ = ChunkedEncoder(enc, bptt=5, max_seq=5, pad_idx=PAD)(x)
    assert out.shape == (2, 5, E) and out.requires_grad
    out.sum().backward()
    grad_rows = torch.count_nonzero(enc.embedding.weight.grad, dim=1) > 0
    assert set(grad_rows.nonzero().flatten().tolist()) <= set(x[:, -5:].flatten().tolist())


# --- pooling, head, classifier -------------------------------------------------------------


def test_masked_concat_pool_ignores_padding():
    out = torch.randn(2, 6, 4)
    mask = torch.tensor([[True, True, False, False, False, True],  # pads at the start and the end
                         [False] * 6])
    out[mask] = 1e6  # whatever sits at padding must not matter
    pooled = masked_concat_pool(out, mask)
    assert pooled.shape == (2, 12)
    real = out[0, 2:5]
    torch.testing.assert_close(pooled[0], torch.cat([real[-1], real.max(0).values, real.mean(0)]))
    torch.testing.assert_close(pooled[1], torch.cat([out[1, -1], out[1].max(0).values, out[1].mean(0)]))


def test_head_layers_follow_fastai():
    head = PoolingClassifierHead(3 * E, [50], 4, ps=[0.4, 0.1])
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert [m.p for m in head.layers if isinstance(m, nn.Dropout)] == [0.4, 0.1]
    assert [(m.in_features, m.out_features) for m in head.layers if isinstance(m, nn.Linear)] == [(3 * E, 50), (50, 4)]
    with pytest.raises(ValueError, match="one dropout per linear layer"):
        PoolingClassifierHead(3 * E, [50], 4, ps=[0.4])


def test_classifier_forward_and_factory_dropouts():
    clf = build_classifier(V, ModelConfig(emb_sz=E, n_hid=H, n_layers=L), DROPS, n_classes=3, lin_ftrs=[8, 7],
                           head_p=0.15, bptt=5, max_seq=10, pad_idx=PAD)
    assert isinstance(clf, TextClassifier) and isinstance(clf.encoder, AWDLSTMEncoder)
    assert [m.p for m in clf.head.layers if isinstance(m, nn.Dropout)] == [DROPS.output_p, 0.15, 0.15]
    x, _ = chunk_pad([random_row(n) for n in (14, 9, 2)], bptt=5)
    logits, raw, dropped = clf(x)
    # 14 columns, chunks at 0, 5, 10: the chunks within the last 10 tokens start at 5 and 10
    assert logits.shape == (3, 3) and raw is dropped and raw.shape == (3, 9, E)
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    clf.eval()
    with torch.no_grad():
        single = clf(x[2:3, 10:])[0]  # the short row alone: its two tokens, then its end padding
        torch.testing.assert_close(clf(x)[0][2:3], single, atol=1e-5, rtol=0)


# --- layer groups --------------------------------------------------------------------------


def _assert_partition(groups: list[list[nn.Parameter]], model: nn.Module) -> None:
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat))
    assert set(flat) == {id(p) for p in model.parameters() if p.requires_grad}


def test_lm_layer_groups_partition_with_embedding_group_last():
    lm = build_language_model(V, ModelConfig(emb_sz=E, n_hid=H, n_layers=L), DROPS)
    groups = lm_layer_groups(lm)
    assert len(groups) == L + 1
    _assert_partition(groups, lm)
    assert any(p is lm.encoder.embedding.weight for p in groups[-1])
    assert any(p is lm.decoder.bias for p in groups[-1]) and len(groups[-1]) == 2
    assert all(len(g) == 4 for g in groups[:-1])


def test_classifier_layer_groups_partition():
    clf = build_classifier(V, ModelConfig(emb_sz=E, n_hid=H, n_layers=L), DROPS, 2, [50], 0.1, 5, 10)
    groups = classifier_layer_groups(clf)
    assert len(groups) == L + 2 == classifier_group_count(L)  # what the search's unfreeze rungs assume
    _assert_partition(groups, clf)
    assert groups[0] == [clf.encoder.embedding.weight]
    assert {id(p) for p in groups[-1]} == {id(p) for p in clf.head.parameters()}


# --- loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_rows", [7, 300])  # one chunk; several chunks (rows per chunk shrunk below)
def test_lm_cross_entropy_equals_torch_value_and_gradient(n_rows, monkeypatch):
    monkeypatch.setattr("ulmfit_core.losses._CE_CHUNK_BYTES", 40 * 4 * 64)  # 40 rows of 64 floats
    logits = (3 * torch.randn(n_rows, 64)).requires_grad_()
    targets = torch.randint(0, 64, (n_rows,))
    ref = nn.functional.cross_entropy(logits, targets)
    (ref_grad,) = torch.autograd.grad(3 * ref, logits)
    ours = lm_cross_entropy(logits.view(1, n_rows, 64), targets.view(1, n_rows))
    (grad,) = torch.autograd.grad(3 * ours, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad, ref_grad)


# --- the throughput benchmark's smoke mode ---------------------------------------------------


def test_lm_throughput_bench_smoke(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "lm.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(root / "bench" / "lm_throughput.py"), "--smoke", "--threads", "1",
                    "--out", str(out)], check=True, env=env, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    (row,) = result["presets"]
    assert row["preset"] == "tiny" and row["tokens_per_s"] > 0 and result["smoke"]
