"""Language-model training throughput of our AWD-LSTM, in tokens per second.

One training step is what the language-model stage does per batch: forward, cross-entropy + AR +
TAR, backward, gradient clipping, AdamW step, with the hidden state carried (detached) from step
to step. Random token ids; bs 64, bptt 70 and a 30k vocabulary unless told otherwise.

    python bench/lm_throughput.py                      # small and paper, 2 threads
    python bench/lm_throughput.py --presets tiny small --steps 10 --threads 1
    python bench/lm_throughput.py --smoke              # a few steps of tiny, for the tests

Prints a table and writes JSON (``--out``, default bench/results/lm_throughput.json).
For reference, fastai's own AWD-LSTM did ~1,750 (small) and ~750 (paper) tokens/s on a 2-core CPU
(shared/STACK_NOTES.md).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, write_result  # puts the repository root on sys.path

from ulmfit_core.awd_lstm import build_language_model, detach_hidden
from ulmfit_core.config import MODEL_PRESETS, LMConfig, ModelConfig
from ulmfit_core.losses import lm_cross_entropy

DEFAULT_OUT = RESULTS / "lm_throughput.json"


LOSSES = {
    "lm": lm_cross_entropy,  # chunked on CPU: no (N, V) log-probabilities
    "torch": lambda logits, y: F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)),
}


def measure(preset: str, vocab: int, bs: int, bptt: int, warmup: int, steps: int, device: torch.device,
            loss_name: str = "lm") -> dict:
    """Tokens/s of ``steps`` timed training steps after ``warmup`` untimed ones."""
    cross_entropy = LOSSES[loss_name]
    lm_cfg = LMConfig()
    lm = build_language_model(vocab, ModelConfig(preset=preset), lm_cfg.dropouts).to(device).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3, betas=lm_cfg.betas, weight_decay=lm_cfg.wd)
    hidden = lm.encoder.init_hidden(bs)
    gen = torch.Generator().manual_seed(0)

    def step() -> float:
        nonlocal hidden
        x = torch.randint(0, vocab, (bs, bptt + 1), generator=gen).to(device)
        logits, raw, dropped, hidden = lm(x[:, :-1], hidden)
        hidden = detach_hidden(hidden)
        loss = cross_entropy(logits, x[:, 1:])
        loss = loss + lm_cfg.alpha * dropped.pow(2).mean()  # AR (Merity et al. 2017, 4.6)
        loss = loss + lm_cfg.beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()  # TAR
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), lm_cfg.clip)
        opt.step()
        return loss.item()  # a sync point, so that timings on CUDA are real

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    emb, hid, layers = MODEL_PRESETS[preset]
    return {
        "preset": preset, "loss": loss_name, "emb_sz": emb, "n_hid": hid, "n_layers": layers,
        "vocab": vocab, "bs": bs, "bptt": bptt,
        "warmup_steps": warmup, "steps": steps, "seconds": round(total, 3),
        "tokens_per_s": round(bs * bptt * steps / total, 1),
        "step_s_min": round(min(times), 4), "step_s_median": round(sorted(times)[len(times) // 2], 4),
        "params": sum(p.numel() for p in lm.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"], choices=sorted(MODEL_PRESETS))
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--bptt", type=int, default=70)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (per preset)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps (per preset)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--loss", nargs="+", default=["lm"], choices=sorted(LOSSES),
                    help="lm: ulmfit_core's lm_cross_entropy; torch: F.cross_entropy (both: compare)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    ap.add_argument("--smoke", action="store_true", help="a few steps of a tiny model (vocab 500, bs 8, bptt 10)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.presets, args.vocab, args.bs, args.bptt, args.warmup, args.steps = ["tiny"], 500, 8, 10, 1, 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]
    results = [measure(p, args.vocab, args.bs, args.bptt, args.warmup, args.steps, device, loss)
               for p in args.presets for loss in args.loss]

    print(f"{'preset':<7} {'loss':<6} {'emb/hid/layers':<15} {'tokens/s':>9} {'median step s':>14} {'params':>11}")
    for r in results:
        sizes = f"{r['emb_sz']}/{r['n_hid']}/{r['n_layers']}"
        print(f"{r['preset']:<7} {r['loss']:<6} {sizes:<15} {r['tokens_per_s']:>9,.0f} {r['step_s_median']:>14.3f} "
              f"{r['params']:>11,}")
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"1-min load average before/after: {load} (other processes on the machine skew CPU timings)")
    write_result("lm_throughput", {"threads": args.threads, "device": str(device), "smoke": args.smoke,
                                   "loadavg_1min_before_after": load, "presets": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
