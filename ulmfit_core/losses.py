"""The losses both stages train with, as functions on plain tensors.

- :func:`lm_cross_entropy`: next-token cross-entropy over a large vocabulary, in float32, without the
  full-size temporaries ``F.cross_entropy`` allocates on CPU.
- :func:`ar_tar`: activation and temporal activation regularisation (Merity et al. 2017, section 4.6).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows of logits handled at once by lm_cross_entropy: ~8 MB of float32, small enough for the C allocator
# to reuse heap memory for the per-chunk temporaries instead of mapping fresh pages every step.
_CE_CHUNK_BYTES = 8 << 20


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``logits`` (N, V) against ``targets`` (N,), in float32 whatever the logits' dtype.

    Forward writes each chunk's log-probabilities into one float32 (N, V) buffer with one fused
    ``log_softmax`` kernel per chunk (upcasting bf16 logits inside the kernel) and keeps only that
    buffer; backward turns the buffer into the gradient in place: ``exp`` (the softmax), minus one at
    each target, times ``grad / N``. ``F.cross_entropy`` instead materialises the (N, V)
    log-probabilities, a zero-filled (N, V) gradient for them and another (N, V) gradient for the
    logits; an earlier version of this function (logsumexp forward, softmax rebuilt in backward)
    made fewer passes than that but more than this one (``bench/profile_step.py``).

    Backward consumes the buffer: a second backward through the same graph (``retain_graph=True``)
    fails with autograd's in-place modification error instead of returning a wrong gradient.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        n, v = logits.shape
        rows = max(1, _CE_CHUNK_BYTES // (v * 4))
        logp = torch.empty((n, v), dtype=torch.float32, device=logits.device)
        for s in range(0, n, rows):
            torch.log_softmax(logits[s:s + rows], dim=1, dtype=torch.float32, out=logp[s:s + rows])
        nll = logp.gather(1, targets.unsqueeze(1)).squeeze(1).neg_()
        ctx.save_for_backward(logp, targets)
        ctx.rows, ctx.logits_dtype = rows, logits.dtype
        return nll.mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        logp, targets = ctx.saved_tensors
        n, rows = logp.size(0), ctx.rows
        scale = grad_out.float() / n
        # float32 logits take their gradient in the buffer itself; others get a copy in their dtype.
        grad = logp if ctx.logits_dtype == torch.float32 else torch.empty(logp.shape, dtype=ctx.logits_dtype,
                                                                             device=logp.device)
        row_index = torch.arange(rows, device=logp.device)
        for s in range(0, n, rows):
            chunk = logp[s:s + rows].exp_()  # softmax, (rows, V)
            chunk[row_index[:chunk.size(0)], targets[s:s + rows]] -= 1
            chunk.mul_(scale)  # while the chunk is still in cache
            if grad is not logp:
                grad[s:s + rows].copy_(chunk)
        return grad, None


def lm_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy in float32: ``logits`` (..., V), ``targets`` (...) long -> scalar.

    The same value and gradient as ``F.cross_entropy(logits.float().reshape(-1, V), targets.reshape(-1))``.
    On CPU it is computed in chunks (:class:`_ChunkedCrossEntropy`), for float32 and bf16 (autocast)
    logits alike: with a 30k vocabulary the language model's logits are ~0.5 GB per batch, and the
    extra full-size tensors that ``F.cross_entropy`` allocates (fresh, page-faulted memory each step)
    cost a quarter of a training step on a 2-core machine. Elsewhere (CUDA, where the caching
    allocator reuses memory) it is ``F.cross_entropy`` on the logits cast to float32.
    """
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    if logits.device.type != "cpu" or not logits.is_floating_point():
        return F.cross_entropy(logits.float(), targets)
    return _ChunkedCrossEntropy.apply(logits, targets)


def ar_tar(raw_out: torch.Tensor | None, dropped_out: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor | float:
    """Activation (AR) and temporal activation (TAR) regularisation, as fastai's RNNRegularizer."""
    # In float32 under autocast too: the step differences of bf16 activations lose most of their digits.
    reg: torch.Tensor | float = 0.0
    if alpha and dropped_out is not None:
        reg = reg + alpha * dropped_out.float().pow(2).mean()
    if beta and raw_out is not None and raw_out.size(1) > 1:
        raw = raw_out.float()
        reg = reg + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    return reg
