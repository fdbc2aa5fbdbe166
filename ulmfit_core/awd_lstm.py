"""AWD-LSTM (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models",
arXiv:1708.02182) as ULMFiT (Howard & Ruder 2018, arXiv:1801.06146) and fastai v2 use it.

The pieces, each small enough to test on plain tensors:

* the five dropouts: :class:`EmbeddingDropout` (``embed_p``, whole words), :class:`LockedDropout`
  (``input_p``, ``hidden_p``, ``output_p``: one mask per sequence) and the DropConnect on the
  hidden-to-hidden matrices inside :class:`WeightDropLSTM` (``weight_p``);
* :class:`AWDLSTMEncoder`: embedding + stacked one-layer LSTMs. It keeps no hidden state: callers
  pass ``hidden`` in and get the new one back (and detach it between batches themselves);
* :class:`LanguageModel`: the encoder with a decoder tied to the embedding (Inan et al. 2017;
  Press & Wolf 2017), returning what AR/TAR need;
* :class:`ChunkedEncoder`, :func:`masked_concat_pool`, :class:`PoolingClassifierHead` and
  :class:`TextClassifier`: ULMFiT's classifier (BPTT for Text Classification, concat pooling);
* :func:`lm_layer_groups` and :func:`classifier_layer_groups`: the parameter groups that
  discriminative learning rates and gradual unfreezing act on.

Shapes: B batch, T time steps, E embedding size, H hidden size, V vocabulary size, C classes.
State-dict names and initialisation follow fastai where that makes weights interchangeable
(see :mod:`ulmfit_core.pretrained`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ulmfit_core.config import Dropouts, ModelConfig
from ulmfit_core.precision import cpu_has_native_bf16

#: One LSTM layer's state: ``(h, c)``, each (1, B, H).
LayerState = tuple[Tensor, Tensor]
#: The encoder's state: one :data:`LayerState` per layer, bottom first.
Hidden = list[LayerState]

#: fastai's ``AWD_LSTM.initrange`` / ``LinearDecoder.initrange``: U(-0.1, 0.1) embeddings.
EMBED_INIT_RANGE = 0.1


# --- dropouts ------------------------------------------------------------------------------


def dropout_mask(x: Tensor, size: Sequence[int], p: float) -> Tensor:
    """A mask of shape ``size`` (dtype/device of ``x``): 0 with probability ``p``, else 1/(1-p)."""
    return x.new_empty(size).bernoulli_(1 - p).div_(1 - p)


class LockedDropout(nn.Module):
    """Variational ("locked") dropout: one mask per sequence, shared by all its time steps.

    Gal & Ghahramani 2016 (arXiv:1512.05287), used by AWD-LSTM on the LSTM inputs, between layers
    and on the output (fastai's ``RNNDropout``). Input and output (B, T, H); identity in eval.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        return x * dropout_mask(x, (x.size(0), 1, *x.shape[2:]), self.p)  # mask (B, 1, H)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EmbeddingDropout(nn.Module):
    """Drops whole words: each row of ``emb``'s matrix is zeroed with probability ``embed_p``.

    Gal & Ghahramani 2016, section 4.2; AWD-LSTM section 4.3. A dropped word is zero in all its
    dimensions at every position of the batch; kept rows are scaled by 1/(1-p). Identity in eval.
    ``emb`` is shared, not copied (its weight is the one the decoder ties to).
    ``forward(words (B, T) long) -> (B, T, E)``.
    """

    def __init__(self, emb: nn.Embedding, embed_p: float) -> None:
        super().__init__()
        self.emb = emb
        self.embed_p = embed_p

    def forward(self, words: Tensor) -> Tensor:
        w = self.emb.weight
        out = F.embedding(words, w, self.emb.padding_idx)  # (B, T, E); no gradient to the pad row
        if self.training and self.embed_p != 0:
            # Masking the looked-up rows with the word's row of a (V, 1) mask equals embedding with
            # the masked (V, E) matrix (fastai), without materialising a masked copy of it.
            mask = dropout_mask(w, (w.size(0), 1), self.embed_p)  # (V, 1)
            out = out * F.embedding(words, mask)  # (B, T, 1)
        return out

    def extra_repr(self) -> str:
        return f"embed_p={self.embed_p}"


# --- the recurrent layer -------------------------------------------------------------------


class WeightDropLSTM(nn.Module):
    """A one-layer, batch-first LSTM with DropConnect on its hidden-to-hidden matrix.

    Wan et al. 2013's DropConnect on ``W_hh`` is AWD-LSTM's main regulariser (section 2): the
    recurrent connections are regularised without changing the fused LSTM kernel, since the mask
    is drawn once per forward call and applied to the weight, not per time step. The raw weight is
    the parameter (``weight_hh_raw``, as fastai's ``WeightDropout``); it is never modified.

    ``forward(x (B, T, n_in), state (h, c) each (1, B, n_out)) -> (out (B, T, n_out), (h, c))``.
    Initialised like :class:`torch.nn.LSTM`: U(-1/sqrt(n_out), 1/sqrt(n_out)).
    """

    def __init__(self, n_in: int, n_out: int, weight_p: float = 0.0) -> None:
        super().__init__()
        self.n_in, self.n_out, self.weight_p = n_in, n_out, weight_p
        # Gates stacked as PyTorch does: input, forget, cell, output.
        self.weight_ih = nn.Parameter(torch.empty(4 * n_out, n_in))
        self.weight_hh_raw = nn.Parameter(torch.empty(4 * n_out, n_out))
        self.bias_ih = nn.Parameter(torch.empty(4 * n_out))
        self.bias_hh = nn.Parameter(torch.empty(4 * n_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.n_out)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    def forward(self, x: Tensor, state: LayerState) -> tuple[Tensor, LayerState]:
        # A fresh mask each call; F.dropout is the identity when not training.
        w_hh = F.dropout(self.weight_hh_raw, p=self.weight_p, training=self.training)
        params = [self.weight_ih, w_hh, self.bias_ih, self.bias_hh]
        if x.is_cuda:
            # cuDNN takes the weights as views of one buffer in this order; with a new w_hh every
            # call it would copy them into one itself (and warn that it does). Copy them once here.
            flat = torch.cat([p.reshape(-1) for p in params])
            params = [t.view_as(p) for t, p in zip(flat.split([p.numel() for p in params]), params)]
            out, h, c = _fused_lstm(x, state, params, self.training)
        elif torch.is_autocast_enabled("cpu") and not cpu_has_native_bf16():
            # float32 under CPU autocast where the CPU has no native bf16 (docs/RECIPE.md): there oneDNN's
            # bf16 LSTM cannot even create its primitive.
            with torch.autocast("cpu", enabled=False):
                out, h, c = _fused_lstm(x.float(), (state[0].float(), state[1].float()), params, self.training)
        else:
            # CUDA aside, this is float32 without autocast and oneDNN's bf16 LSTM under CPU autocast on a
            # CPU with AVX512_BF16/AMX (1.4-1.6x faster here; bench/precision_accuracy.py checks accuracy).
            out, h, c = _fused_lstm(x, state, params, self.training)
        # The state handed on (to the next chunk or batch) is float32 whatever autocast did inside.
        return out, (h.float(), c.float())

    def extra_repr(self) -> str:
        return f"{self.n_in}, {self.n_out}, weight_p={self.weight_p}"


def _fused_lstm(x: Tensor, state: LayerState, params: list[Tensor], train: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One batch-first, one-layer LSTM through the fused kernel ``nn.LSTM`` calls (oneDNN on CPU, cuDNN
    on CUDA): no Python loop over time. Returns ``(out, h, c)``."""
    # Arguments: params, has_biases, num_layers, dropout, train, bidirectional, batch_first.
    return torch.lstm(x, state, params, True, 1, 0.0, train, False, True)


def detach_hidden(hidden: Hidden) -> Hidden:
    """The same state cut from the graph (truncated BPTT between batches or chunks)."""
    return [(h.detach(), c.detach()) for h, c in hidden]


# --- encoder and language model ------------------------------------------------------------


class AWDLSTMEncoder(nn.Module):
    """Embedding, embedding/input dropout, then ``n_layers`` weight-dropped LSTMs.

    Layer ``i`` reads ``emb_sz`` (i == 0) or ``n_hid`` features and has ``n_hid`` units, except the
    last, which has ``emb_sz`` units so that its output can feed a decoder tied to the embedding.
    Locked dropout ``hidden_p`` sits between layers, not after the last (the language model's or
    classifier's ``output_p`` does that job).

    ``forward(tokens (B, T) long, hidden=None) -> (output (B, T, E), new_hidden)``; ``hidden`` and
    ``new_hidden`` are lists of ``(h, c)`` each (1, B, H_layer). ``hidden=None`` starts from zeros.
    ``new_hidden`` is attached to the graph: callers detach it between batches.
    """

    def __init__(self, vocab_sz: int, emb_sz: int, n_hid: int, n_layers: int, pad_idx: int = 1,
                 dropouts: Dropouts | None = None) -> None:
        super().__init__()
        d = dropouts or Dropouts(embed_p=0.0, input_p=0.0, weight_p=0.0, hidden_p=0.0, output_p=0.0)
        self.vocab_sz, self.emb_sz, self.n_hid, self.n_layers, self.pad_idx = vocab_sz, emb_sz, n_hid, n_layers, pad_idx
        self.embedding = nn.Embedding(vocab_sz, emb_sz, padding_idx=pad_idx)
        nn.init.uniform_(self.embedding.weight, -EMBED_INIT_RANGE, EMBED_INIT_RANGE)  # fastai; pad row too
        self.embedding_dp = EmbeddingDropout(self.embedding, d.embed_p)
        self.input_dp = LockedDropout(d.input_p)
        self.rnns = nn.ModuleList(
            WeightDropLSTM(n_in, n_out, d.weight_p) for n_in, n_out in zip(self.layer_inputs, self.layer_sizes))
        self.hidden_dps = nn.ModuleList(LockedDropout(d.hidden_p) for _ in range(n_layers - 1))

    @property
    def layer_sizes(self) -> list[int]:
        """Hidden units of each layer, bottom first."""
        return [self.n_hid] * (self.n_layers - 1) + [self.emb_sz]

    @property
    def layer_inputs(self) -> list[int]:
        """Input features of each layer, bottom first."""
        return [self.emb_sz] + [self.n_hid] * (self.n_layers - 1)

    def init_hidden(self, bs: int) -> Hidden:
        """Zero state for ``bs`` sequences, on the parameters' device and dtype."""
        w = self.embedding.weight
        return [(w.new_zeros(1, bs, n), w.new_zeros(1, bs, n)) for n in self.layer_sizes]

    def forward(self, tokens: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        if hidden is None:
            hidden = self.init_hidden(tokens.size(0))
        x = self.input_dp(self.embedding_dp(tokens))  # (B, T, E)
        new_hidden: Hidden = []
        for i, (rnn, state) in enumerate(zip(self.rnns, hidden)):
            x, state = rnn(x, state)  # (B, T, H_i)
            new_hidden.append(state)
            if i < self.n_layers - 1:
                x = self.hidden_dps[i](x)
        return x, new_hidden


class LanguageModel(nn.Module):
    """:class:`AWDLSTMEncoder` -> locked dropout ``output_p`` -> linear decoder over the vocabulary.

    With ``tie_weights`` the decoder's weight *is* the embedding matrix (one tensor): Inan et al.
    2017 (arXiv:1611.01462) and Press & Wolf 2017 (arXiv:1608.05859); AWD-LSTM section 4.5.

    ``forward(tokens (B, T), hidden=None) -> (logits (B, T, V), raw_out (B, T, E),
    dropped_out (B, T, E), new_hidden)``: AR is applied to ``dropped_out`` and TAR to ``raw_out``
    (AWD-LSTM section 4.6; fastai's ``RNNRegularizer``).
    """

    def __init__(self, encoder: AWDLSTMEncoder, output_p: float, tie_weights: bool = True,
                 out_bias: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.output_dp = LockedDropout(output_p)
        self.decoder = nn.Linear(encoder.emb_sz, encoder.vocab_sz, bias=out_bias)
        nn.init.uniform_(self.decoder.weight, -EMBED_INIT_RANGE, EMBED_INIT_RANGE)
        if out_bias:
            nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = encoder.embedding.weight

    def forward(self, tokens: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Tensor, Tensor, Hidden]:
        raw_out, new_hidden = self.encoder(tokens, hidden)  # (B, T, E)
        dropped_out = self.output_dp(raw_out)
        return self.decoder(dropped_out), raw_out, dropped_out, new_hidden


# --- classifier ----------------------------------------------------------------------------


def _resize_hidden(hidden: Hidden, bs: int) -> Hidden:
    """``hidden`` for ``bs`` rows: extra rows start from zeros, surplus rows are dropped."""
    out: Hidden = []
    for h, c in hidden:
        n = h.size(1)
        if n < bs:
            h = torch.cat([h, h.new_zeros(1, bs - n, h.size(2))], dim=1)
            c = torch.cat([c, c.new_zeros(1, bs - n, c.size(2))], dim=1)
        elif n > bs:
            h, c = h[:, :bs].contiguous(), c[:, :bs].contiguous()
        out.append((h, c))
    return out


def _pad_rows(t: Tensor, bs: int) -> Tensor:
    """``t`` (b, ...) with zero rows appended up to ``bs`` rows."""
    return t if t.size(0) >= bs else torch.cat([t, t.new_zeros(bs - t.size(0), *t.shape[1:])])


class ChunkedEncoder(nn.Module):
    """Runs an :class:`AWDLSTMEncoder` over long documents ``bptt`` tokens at a time.

    ULMFiT section 3.3 "BPTT for Text Classification" (fastai's ``SentenceEncoder``): the document
    is split into chunks of ``bptt`` tokens; the state is carried from chunk to chunk (detached),
    and only the chunks within the last ``max_seq`` tokens keep their outputs (and gradients).

    Expected input, as fastai's ``pad_input_chunk(pad_first=True)`` builds it: rows sorted by
    length, longest first; a row of length L in a batch of width M has ``(M - L) // bptt * bptt``
    pads at the start and ``(M - L) % bptt`` at the end. Each row therefore starts on a chunk
    boundary, and the rows active in a chunk are a prefix of the batch: ``real_bs`` rows, those
    without a pad at the chunk's first position. Rows joining start from a zero state. Every real
    token's output then equals that of the unpadded row run alone, chunk by chunk.

    ``forward(tokens (B, T)) -> (outputs (B, T', E), pad_mask (B, T'))``, with T' <= T the kept
    window and ``pad_mask`` True at padding; outputs of inactive rows are zeros.
    """

    def __init__(self, encoder: AWDLSTMEncoder, bptt: int, max_seq: int, pad_idx: int = 1) -> None:
        super().__init__()
        self.encoder, self.bptt, self.max_seq, self.pad_idx = encoder, bptt, max_seq, pad_idx

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        bs, sl = tokens.shape
        pad_mask = tokens == self.pad_idx  # (B, T)
        starts = range(0, sl, self.bptt)
        # One device sync for all chunks: active rows at each chunk's first position.
        real_bss = (~pad_mask[:, ::self.bptt]).sum(dim=0).tolist()
        hidden: Hidden = self.encoder.init_hidden(0)
        outs, masks = [], []
        for i, real_bs in zip(starts, real_bss):
            keep = sl - i <= self.max_seq  # fastai's window rule: whole chunks, the last ones
            chunk = tokens[:real_bs, i:i + self.bptt]  # (b, t)
            if real_bs == 0:
                out = self.encoder.embedding.weight.new_zeros(0, chunk.size(1), self.encoder.emb_sz)
            else:
                hidden = _resize_hidden(hidden, real_bs)
                # Early chunks only set up the state, which is detached anyway: no graph needed.
                with torch.set_grad_enabled(keep and torch.is_grad_enabled()):
                    out, hidden = self.encoder(chunk, hidden)  # (b, t, E)
                hidden = detach_hidden(hidden)
            if keep:
                outs.append(_pad_rows(out, bs))
                masks.append(pad_mask[:, i:i + self.bptt])
        return torch.cat(outs, dim=1), torch.cat(masks, dim=1)


def masked_concat_pool(outputs: Tensor, mask: Tensor) -> Tensor:
    """ULMFiT's concat pooling (section 3.3) over the real tokens of each row.

    ``outputs`` (B, T, E), ``mask`` (B, T) True at padding -> (B, 3E): ``[output at the row's last
    real token, max over its real tokens, mean over its real tokens]``. Padding anywhere is ignored.
    """
    outputs = outputs.float()  # pooled in float32: a bf16 mean would round lengths above 256 and the sums
    b, t, _ = outputs.shape
    pad = mask.unsqueeze(-1)  # (B, T, 1)
    positions = torch.arange(t, device=outputs.device).expand(b, t)
    last = positions.masked_fill(mask, -1).amax(dim=1).clamp(min=0)  # (B,)
    last_out = outputs[torch.arange(b, device=outputs.device), last]  # (B, E)
    n_real = (~mask).sum(dim=1, keepdim=True).clamp(min=1).to(outputs.dtype)  # (B, 1)
    avg_pool = outputs.masked_fill(pad, 0.0).sum(dim=1) / n_real
    max_pool = outputs.masked_fill(pad, float("-inf")).amax(dim=1)
    return torch.cat([last_out, max_pool, avg_pool], dim=1)


def _bn_drop_lin(n_in: int, n_out: int, p: float) -> list[nn.Module]:
    """fastai's ``LinBnDrop``: BatchNorm1d -> Dropout -> Linear.

    The linear layer has no bias: the batch norm before it supplies one (fastai: ``bias=not bn``).
    Batch-norm init as fastai's ``BatchNorm``: weight 1, bias 1e-3. Dropout is kept at p=0 so the
    state-dict names do not depend on the dropout values.
    """
    bn = nn.BatchNorm1d(n_in)
    nn.init.ones_(bn.weight)
    nn.init.constant_(bn.bias, 1e-3)
    return [bn, nn.Dropout(p), nn.Linear(n_in, n_out, bias=False)]


class PoolingClassifierHead(nn.Module):
    """Concat pooling then ``[BN -> Dropout -> Linear]`` blocks with ReLU between them.

    ULMFiT section 3.3 (fastai's ``PoolingLinearClassifier``): for ``lin_ftrs=[50]`` the layers
    are ``BN(3E) -> Dropout(ps[0]) -> Linear(3E, 50) -> ReLU -> BN(50) -> Dropout(ps[1]) ->
    Linear(50, C)``. ``forward(outputs (B, T, E), mask (B, T)) -> logits (B, C)``.
    """

    def __init__(self, n_in: int, lin_ftrs: Sequence[int], n_classes: int, ps: Sequence[float]) -> None:
        super().__init__()
        dims = [n_in, *lin_ftrs, n_classes]
        if len(ps) != len(dims) - 1:
            raise ValueError(f"need one dropout per linear layer: {len(dims) - 1} layers, got ps={list(ps)}")
        layers: list[nn.Module] = []
        for k, (d_in, d_out, p) in enumerate(zip(dims[:-1], dims[1:], ps)):
            layers += _bn_drop_lin(d_in, d_out, p)
            if k < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, outputs: Tensor, mask: Tensor) -> Tensor:
        return self.layers(masked_concat_pool(outputs, mask))


class TextClassifier(nn.Module):
    """:class:`ChunkedEncoder` over an :class:`AWDLSTMEncoder`, then :class:`PoolingClassifierHead`.

    ``forward(tokens (B, T)) -> (logits (B, C), raw_out (B, T', E), dropped_out (B, T', E))``;
    raw and dropped are both the encoder's outputs (fastai applies AR/TAR to them; the head's
    first dropout plays ``output_p``'s part). ``ps`` holds one dropout per head layer.
    """

    def __init__(self, encoder: AWDLSTMEncoder, bptt: int, max_seq: int, pad_idx: int, n_classes: int,
                 lin_ftrs: Sequence[int], ps: Sequence[float]) -> None:
        super().__init__()
        self.chunked = ChunkedEncoder(encoder, bptt, max_seq, pad_idx)
        self.head = PoolingClassifierHead(3 * encoder.emb_sz, lin_ftrs, n_classes, ps)

    @property
    def encoder(self) -> AWDLSTMEncoder:
        """The AWD-LSTM inside (the part a fine-tuned language model's weights load into)."""
        return self.chunked.encoder

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        outputs, mask = self.chunked(tokens)
        return self.head(outputs, mask), outputs, outputs


# --- layer groups --------------------------------------------------------------------------


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Parameters in order, each once (a tied weight appears under several modules)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def lm_layer_groups(lm: LanguageModel) -> list[list[nn.Parameter]]:
    """fastai's ``awd_lstm_lm_split``: ``[rnn_0], ..., [rnn_{n-1}], [embedding + decoder]``.

    The embedding/decoder group is last, so "train only the last group" after loading pretrained
    weights onto a new vocabulary trains the (partly new) embeddings first (ULMFiT section 3.2).
    """
    groups = [list(rnn.parameters()) for rnn in lm.encoder.rnns]
    groups.append(_unique([*lm.encoder.embedding.parameters(), *lm.decoder.parameters()]))
    return groups


def classifier_group_names(n_layers: int) -> list[str]:
    """Names of :func:`classifier_layer_groups`' groups, lowest first (for plots and logs)."""
    return ["embedding", *(f"lstm {i + 1}" for i in range(n_layers)), "head"]


def classifier_layer_groups(clf: TextClassifier) -> list[list[nn.Parameter]]:
    """fastai's ``awd_lstm_clas_split``: ``[embedding], [rnn_0], ..., [rnn_{n-1}], [head]``.

    Gradual unfreezing (ULMFiT section 3.3) unfreezes these from the last (the head) down.
    """
    enc = clf.encoder
    return [list(enc.embedding.parameters()), *(list(r.parameters()) for r in enc.rnns), list(clf.head.parameters())]


def classifier_group_count(n_layers: int) -> int:
    """How many groups :func:`classifier_layer_groups` makes for ``n_layers`` LSTM layers (embedding, each
    layer, head), without building a model: the unfreezing schedule of a recipe, known in advance."""
    return n_layers + 2


# --- factories -----------------------------------------------------------------------------


def _encoder(vocab_sz: int, model_cfg: ModelConfig, dropouts: Dropouts, pad_idx: int) -> AWDLSTMEncoder:
    return AWDLSTMEncoder(vocab_sz, model_cfg.emb_sz, model_cfg.n_hid, model_cfg.n_layers, pad_idx, dropouts)


def build_language_model(vocab_sz: int, model_cfg: ModelConfig, dropouts: Dropouts, pad_idx: int = 1) -> LanguageModel:
    """A tied AWD-LSTM language model. ``dropouts`` are used as given (already ``drop_mult``-scaled)."""
    return LanguageModel(_encoder(vocab_sz, model_cfg, dropouts, pad_idx), dropouts.output_p)


def build_classifier(vocab_sz: int, model_cfg: ModelConfig, dropouts: Dropouts, n_classes: int,
                     lin_ftrs: Sequence[int], head_p: float, bptt: int, max_seq: int,
                     pad_idx: int = 1) -> TextClassifier:
    """A ULMFiT classifier; the head's dropouts are ``[dropouts.output_p] + [head_p] * len(lin_ftrs)``."""
    ps = [dropouts.output_p] + [head_p] * len(lin_ftrs)
    return TextClassifier(_encoder(vocab_sz, model_cfg, dropouts, pad_idx), bptt, max_seq, pad_idx,
                          n_classes, lin_ftrs, ps)
