"""The losses both stages train with, as functions on plain tensors.

- :func:`lm_cross_entropy`: next-token cross-entropy over a large vocabulary, without the full-size
  temporaries ``F.cross_entropy`` allocates on CPU.
- :func:`ar_tar`: activation and temporal activation regularisation (Merity et al. 2017, section 4.6).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows of logits handled at once by lm_cross_entropy: ~8 MB, small enough for the C allocator to
# reuse heap memory instead of mapping (and page-faulting) fresh pages every step.
_CE_CHUNK_BYTES = 8 << 20


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``logits`` (N, V) against ``targets`` (N,), computed chunk by chunk.

    Forward keeps only the per-row log-sum-exp (N,); backward writes ``softmax - onehot`` straight
    into one gradient buffer. ``F.cross_entropy`` instead materialises the (N, V) log-probabilities,
    a zero-filled (N, V) gradient for them and another (N, V) gradient for the logits.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor) -> Tensor:  # type: ignore[override]
        n, v = logits.shape
        rows = max(1, _CE_CHUNK_BYTES // (v * logits.element_size()))
        lse = logits.new_empty(n)
        for s in range(0, n, rows):
            lse[s:s + rows] = torch.logsumexp(logits[s:s + rows], dim=1)
        target_logit = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(logits, lse, targets)
        ctx.rows = rows
        return (lse - target_logit).mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        logits, lse, targets = ctx.saved_tensors
        n, rows = logits.size(0), ctx.rows
        grad = torch.empty_like(logits)
        for s in range(0, n, rows):
            torch.sub(logits[s:s + rows], lse[s:s + rows, None], out=grad[s:s + rows]).exp_()  # softmax
        grad[torch.arange(n, device=grad.device), targets] -= 1
        return grad.mul_(grad_out / n), None


def lm_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy: ``logits`` (..., V), ``targets`` (...) long -> scalar.

    The same value and gradient as ``F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))``.
    On CPU it is computed in chunks (:class:`_ChunkedCrossEntropy`): with a 30k vocabulary the
    language model's logits are ~0.5 GB per batch, and the three extra full-size tensors that
    ``F.cross_entropy`` allocates (fresh, page-faulted memory each step) cost a quarter of a
    training step on a 2-core machine. Elsewhere (CUDA, where the caching allocator reuses memory)
    it is ``F.cross_entropy`` on the logits cast to float32 (half-precision logits under autocast).
    """
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    if logits.device.type != "cpu" or logits.dtype != torch.float32:
        return F.cross_entropy(logits.float(), targets)
    return _ChunkedCrossEntropy.apply(logits, targets)


def ar_tar(raw_out: torch.Tensor | None, dropped_out: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor | float:
    """Activation (AR) and temporal activation (TAR) regularisation, as fastai's RNNRegularizer."""
    reg: torch.Tensor | float = 0.0
    if alpha and dropped_out is not None:
        reg = reg + alpha * dropped_out.float().pow(2).mean()
    if beta and raw_out is not None and raw_out.size(1) > 1:
        reg = reg + beta * (raw_out[:, 1:] - raw_out[:, :-1]).float().pow(2).mean()
    return reg
