"""Where a training step's time goes on CPU, and how much of the machine's matmul peak it reaches (MFU).

Profiles the real step (``Trainer.train_step``: our model, task loss, AR/TAR, clipping, the Trainer's
AdamW, mixed precision as the recipe's ``precision`` sets it) of a language model and of a classifier on
random documents with ``torch.profiler``, after warm-up steps, and sorts every op's self time into
buckets: data, embedding, dropout masks, weight-drop, LSTM, decoder matmul, cross-entropy, AR/TAR,
classifier chunking and head, gradient accumulation, clipping, optimizer, other. Backward ops count
towards the forward op that made them (autograd's sequence numbers link the two). The step time and
throughput come from separate, unprofiled steps (the profiler's own cost distorts absolute times).

FLOPs are counted analytically (matmul work; a multiply-add is 2 flops; a backward pass costs twice its
forward, one matmul for the inputs' gradient and one for the weights'):

- LSTM layer with ``n_in`` inputs and ``h`` units: 4 gates x (n_in + h) x h x 2 flops per token;
- decoder: emb x vocab x 2 flops per token;
- a training step: 3 x forward flops for every token whose graph is kept (all LM tokens; a classifier's
  tokens within its last ``max_seq``), forward only for the classifier's earlier chunks.

MFU = those flops / step seconds / peak, with the peak the best rate of a large matmul measured here in
float32 and in bfloat16 (with the same threads). On a CPU without AVX512_BF16/AMX the bf16 "peak" is an
emulation a hundred times below float32, which is why ``precision: auto`` stays float32 there.

    python bench/profile_step.py                       # small and paper, fp32 (and bf16 where native): ~5 min on 2 cores
    python bench/profile_step.py --precisions fp32 bf16 --presets small   # force emulated bf16 too (slow)
    python bench/profile_step.py --smoke               # seconds: tiny sizes, for the tests
    ULMFIT_KEEP_FREED_MEMORY=0 python bench/profile_step.py --out bench/results/profile_step_default_malloc.json
                                                       # the same steps with glibc's default malloc (ulmfit_core/memory.py)

Writes bench/results/profile_step.json (``--out``); ``bench/report.py`` renders it.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from common import add_step_shape_args, write_result  # puts the repository root on sys.path
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from ulmfit_core import precision as mixed_precision
from ulmfit_core.awd_lstm import (
    EmbeddingDropout,
    LockedDropout,
    TextClassifier,
    WeightDropLSTM,
    build_classifier,
    build_language_model,
    classifier_layer_groups,
    lm_layer_groups,
)
from ulmfit_core.config import MODEL_PRESETS, ClassifierConfig, LMConfig, ModelConfig
from ulmfit_core.memory import keep_freed_memory
from ulmfit_core.schedule import freeze_to, unfreeze_phases
from ulmfit_core.tasks import ClassifierTask, LanguageModelTask
from ulmfit_core.train import Trainer

BUCKETS = ("data", "embedding", "dropout masks", "weight-drop", "LSTM", "decoder matmul", "cross-entropy", "AR/TAR",
           "classifier chunking", "classifier head + pooling", "gradient accumulation", "clipping", "optimizer", "other")
_BACKWARD_NODE = "autograd::engine::evaluate_function: "


# --- analytic FLOPs ------------------------------------------------------------------------------


def lstm_flops_per_token(preset: str) -> int:
    """Forward matmul flops of the encoder's LSTMs for one token: sum over layers of 8 h (n_in + h)."""
    emb, hid, layers = MODEL_PRESETS[preset]
    sizes = [hid] * (layers - 1) + [emb]
    inputs = [emb] + [hid] * (layers - 1)
    return sum(4 * (n_in + h) * h * 2 for n_in, h in zip(inputs, sizes))


def decoder_flops_per_token(preset: str, vocab: int) -> int:
    return 2 * MODEL_PRESETS[preset][0] * vocab


def lm_step_flops(preset: str, vocab: int, tokens: int) -> int:
    return 3 * tokens * (lstm_flops_per_token(preset) + decoder_flops_per_token(preset, vocab))


def classifier_step_flops(preset: str, bs: int, doc_len: int, bptt: int, max_seq: int, n_classes: int,
                          lin_ftrs: list[int]) -> int:
    """LSTM flops (backward only over the chunks ChunkedEncoder keeps) plus the head's linear layers."""
    kept = sum(min(bptt, doc_len - i) for i in range(0, doc_len, bptt) if doc_len - i <= max_seq)
    dims = [3 * MODEL_PRESETS[preset][0], *lin_ftrs, n_classes]
    head = sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))
    return bs * (lstm_flops_per_token(preset) * (doc_len + 2 * kept) + 3 * head)


# --- the machine's peak ----------------------------------------------------------------------------


def matmul_peak(dtype: torch.dtype, budget_s: float = 3.0, max_n: int = 4096) -> dict[str, Any]:
    """Best GFLOP/s of square matmuls in ``dtype``, growing the size while one product takes under
    ~0.3 s (so an emulated bf16 does not take minutes), then repeating the largest within ``budget_s``."""
    n, best, last = 256, 0.0, 0.0
    while True:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        c = torch.empty(n, n, dtype=dtype)  # one output for every product: no fresh pages timed with it
        torch.matmul(a, b, out=c)  # warm-up: oneDNN primitive creation, page faults
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        last = time.perf_counter() - t0
        best = max(best, 2 * n ** 3 / last / 1e9)
        if last > 0.3 or n >= max_n:
            break
        n *= 2
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "gflops": best, "load_after": list(os.getloadavg())}


# --- one profiled stage ------------------------------------------------------------------------------


def _random_docs(n: int, length: int | tuple[int, int], vocab: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = [length] * n if isinstance(length, int) else rng.integers(*length, size=n)
    return [rng.integers(2, vocab, size=int(k)) for k in lengths]


def lm_trainer(args: argparse.Namespace, preset: str, prec: str, n_batches: int) -> Trainer:
    cfg = LMConfig(epochs=1, bs=args.bs, bptt=args.bptt)
    model = build_language_model(args.vocab, ModelConfig(preset=preset), cfg.scaled_dropouts)
    tokens = args.bs * (args.bptt + 10) * (n_batches + 2)  # variable BPTT: some slack
    train = _random_docs(max(4, tokens // 200), (100, 300), args.vocab, 0)
    task = LanguageModelTask(train, train[:2], cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    groups = lm_layer_groups(model)
    return Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=torch.device("cpu"),
                   precision=prec)


def classifier_trainer(args: argparse.Namespace, preset: str, prec: str, n_batches: int) -> Trainer:
    cfg = ClassifierConfig(epochs=1, bs=args.clf_bs, bptt=args.clf_bptt, max_seq=args.max_seq, unfreeze=[])
    model = build_classifier(args.vocab, ModelConfig(preset=preset), cfg.scaled_dropouts, n_classes=2,
                             lin_ftrs=cfg.lin_ftrs, head_p=cfg.head_p, bptt=cfg.bptt, max_seq=cfg.max_seq)
    n_docs = args.clf_bs * (n_batches + 1)
    docs = _random_docs(n_docs, args.doc_len, args.vocab, 1)
    labels = np.arange(n_docs) % 2
    task = ClassifierTask(docs, labels, docs[:2], labels[:2], 2, cfg, 1, torch.device("cpu"),
                          torch.Generator().manual_seed(0))
    groups = classifier_layer_groups(model)
    return Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=torch.device("cpu"),
                   precision=prec)


def _module_labels(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, bucket label) for every module whose forward gets a profiler range."""
    labels: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, EmbeddingDropout):
            labels.append((module, "embedding"))
        elif isinstance(module, LockedDropout):
            labels.append((module, "dropout masks"))
        elif isinstance(module, WeightDropLSTM):
            labels.append((module, "rnn"))
        elif isinstance(module, TextClassifier):
            labels += [(module.chunked, "classifier chunking"), (module.head, "classifier head + pooling")]
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        labels.append((decoder, "decoder matmul"))
    return labels


def label_forward_ranges(model: nn.Module) -> Callable[[], None]:
    """Wrap chosen modules' forward passes in ``mod::LABEL`` profiler ranges; returns the remover."""
    handles = []
    for module, label in _module_labels(model):
        def enter(mod: nn.Module, _inputs: Any, label: str = label) -> None:
            mod._profile_range = record_function(f"mod::{label}")  # type: ignore[attr-defined]
            mod._profile_range.__enter__()  # type: ignore[attr-defined]

        def leave(mod: nn.Module, _inputs: Any, _output: Any) -> None:
            mod._profile_range.__exit__(None, None, None)  # type: ignore[attr-defined]

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    return lambda: [h.remove() for h in handles]  # type: ignore[func-returns-value]


def _refine(label: str, op: str) -> str:
    """A module label made precise by the op's name: the LSTM kernel vs the weight-drop around it, the
    embedding lookup vs its dropout mask."""
    op = op.lower()
    if label == "rnn":
        return "LSTM" if ("lstm" in op or "rnn" in op) else "weight-drop"
    if label == "embedding":
        return "embedding" if "embedding" in op else "dropout masks"
    return label


def _context_label(event: Any) -> tuple[str | None, Any]:
    """The innermost range ``event`` runs in (a ``mod::`` or ``ulmfit::`` range, the optimizer, or a
    backward node) and that enclosing event."""
    node = event
    while node is not None:
        name = node.name
        if name.startswith(("mod::", "ulmfit::", "Optimizer.")) or name.startswith(_BACKWARD_NODE):
            return name, node
        node = node.cpu_parent
    return None, None


_ULMFIT_BUCKETS = {"ulmfit::data": "data", "ulmfit::ar_tar": "AR/TAR", "ulmfit::clip": "clipping",
                   "ulmfit::optimizer": "optimizer", "ulmfit::backward": "other", "ulmfit::forward": "cross-entropy"}


def _forward_bucket(label: str, event: Any) -> str:
    if label.startswith("mod::"):
        return _refine(label[5:], event.name)
    if label.startswith("Optimizer."):
        return "optimizer"
    # ulmfit::forward outside any module range: the task's loss (the LM's cross-entropy, plus the
    # classifier's tiny one and hidden-state bookkeeping).
    return _ULMFIT_BUCKETS.get(label, "other")


def breakdown(events: list[Any]) -> dict[str, float]:
    """Self CPU seconds per bucket. Forward ops are bucketed by their range; a backward node's ops by
    the forward op that has the node's sequence number."""
    forward_of_seq: dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(_BACKWARD_NODE) and not e.name.endswith("Backward0"):
            label, _ = _context_label(e)
            if label and not label.startswith(_BACKWARD_NODE):
                forward_of_seq.setdefault(e.sequence_nr, _forward_bucket(label, e))
    seconds: dict[str, float] = defaultdict(float)
    for e in events:
        label, ctx = _context_label(e)
        if label is None:
            bucket = "other"
        elif label.startswith(_BACKWARD_NODE):
            node = label[len(_BACKWARD_NODE):]
            if "AccumulateGrad" in node:
                bucket = "gradient accumulation"
            else:
                bucket = forward_of_seq.get(ctx.sequence_nr, "other")
                if bucket in ("weight-drop", "LSTM"):  # the backward node's own name is the sharper clue
                    bucket = _refine("rnn", node)
        else:
            bucket = _forward_bucket(label, e)
        seconds[bucket] += e.self_cpu_time_total / 1e6
    return {b: seconds.get(b, 0.0) for b in BUCKETS}


def _batches(trainer: Trainer) -> Iterator[Any]:
    trainer.model.train()
    trainer.task.start_epoch(trainer.model)
    freeze_to(trainer.groups, len(trainer.groups))
    return iter(trainer.task.train_batches())


def _items(batch: Any, lm: bool) -> tuple[int, int]:
    """(items, tokens) in a batch: tokens for the LM, documents for the classifier."""
    x = batch[0]
    return (x.numel(), x.numel()) if lm else (x.size(0), x.numel())


def profile_stage(trainer: Trainer, lm: bool, warmup: int, timed: int, profiled: int) -> dict[str, Any]:
    """Unprofiled timed steps (throughput), then profiled steps (breakdown), after ``warmup`` steps."""
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    batches = _batches(trainer)
    for _ in range(warmup):
        trainer.train_step(next(batches), trainable)
    step_seconds, items, tokens = [], 0, 0
    for _ in range(timed):
        t0 = time.perf_counter()
        batch = next(batches)
        trainer.train_step(batch, trainable)
        step_seconds.append(time.perf_counter() - t0)
        n_items, n_tokens = _items(batch, lm)
        items, tokens = items + n_items, tokens + n_tokens
    remove = label_forward_ranges(trainer.model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(profiled):
                with record_function("ulmfit::data"):
                    batch = next(batches)
                trainer.train_step(batch, trainable)
    finally:
        remove()
    seconds = breakdown(list(prof.events()))
    total = sum(seconds.values())
    return {"step_seconds_median": statistics.median(step_seconds), "step_seconds": step_seconds,
            "items_per_s": items / sum(step_seconds), "tokens_per_step": tokens / timed,
            "profiled_steps": profiled, "profiled_seconds": total,
            "breakdown_share": {b: s / total for b, s in seconds.items()} if total else {},
            "breakdown_seconds_per_step": {b: s / profiled for b, s in seconds.items()}}


def lstm_autocast_probe(preset: str, bs: int, bptt: int) -> dict[str, Any]:
    """The raw fused LSTM kernel (``torch.lstm``, as ``nn.LSTM`` and fastai call it) forward + backward
    on the preset's first layer, in float32 and under CPU bf16 autocast: does bf16 run, is it faster,
    are its gradients finite. Our model runs it under autocast only on CPUs with native bf16 (docs/RECIPE.md)."""
    emb, hid, _ = MODEL_PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, bptt, emb, generator=g, requires_grad=True)
    weights = [torch.randn(4 * hid, emb, generator=g) * hid ** -0.5, torch.randn(4 * hid, hid, generator=g) * hid ** -0.5,
               torch.zeros(4 * hid), torch.zeros(4 * hid)]
    weights = [w.requires_grad_() for w in weights]
    state = (torch.zeros(1, bs, hid), torch.zeros(1, bs, hid))

    def run(autocast: bool) -> float:
        for w in [x, *weights]:
            w.grad = None
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        t0 = time.perf_counter()
        with ctx:
            out, _, _ = torch.lstm(x, state, weights, True, 1, 0.0, True, False, True)
        out.float().pow(2).mean().backward()
        return time.perf_counter() - t0

    result: dict[str, Any] = {"preset": preset, "shape": [bs, bptt, emb, hid]}
    run(False)
    result["fp32_seconds"] = min(run(False) for _ in range(2))
    try:
        run(True)
        result["bf16_seconds"] = min(run(True) for _ in range(2))
        result["bf16_runs"] = True
        result["bf16_grads_finite"] = all(bool(torch.isfinite(w.grad).all()) for w in [x, *weights])
        result["bf16_speedup"] = result["fp32_seconds"] / result["bf16_seconds"]
    except RuntimeError as e:  # oneDNN cannot build a bf16 LSTM primitive on CPUs without native bf16
        result["bf16_runs"] = False
        result["bf16_error"] = str(e).splitlines()[0]
    return result


def measure_preset(args: argparse.Namespace, preset: str, prec: str) -> dict[str, Any]:
    n_steps = args.warmup + args.steps + args.profiled
    row: dict[str, Any] = {"preset": preset, "precision": prec}
    torch.manual_seed(0)
    lm = lm_trainer(args, preset, prec, n_steps)
    row["resolved_precision"] = lm.precision.name
    row["lm"] = profile_stage(lm, True, args.warmup, args.steps, args.profiled)
    row["lm"]["flops_per_step"] = lm_step_flops(preset, args.vocab, round(row["lm"]["tokens_per_step"]))
    del lm
    torch.manual_seed(0)
    clf = classifier_trainer(args, preset, prec, n_steps)
    row["classifier"] = profile_stage(clf, False, args.warmup, args.steps, args.profiled)
    row["classifier"]["flops_per_step"] = classifier_step_flops(
        preset, args.clf_bs, args.doc_len, args.clf_bptt, args.max_seq, 2, list(ClassifierConfig().lin_ftrs))
    del clf
    for stage in ("lm", "classifier"):
        r = row[stage]
        r["gflops"] = r["flops_per_step"] / r["step_seconds_median"] / 1e9
        top = sorted(r["breakdown_share"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{preset:6s} {prec:5s} {stage:10s} {r['step_seconds_median']:7.3f} s/step  {r['items_per_s']:>9,.1f} "
              f"{'tokens' if stage == 'lm' else 'docs'}/s  {r['gflops']:6.1f} GFLOP/s | " + ", ".join(f"{b} {100 * s:.0f} %" for b, s in top), flush=True)
    return row


def default_precisions() -> list[str]:
    """fp32, plus bf16 where this CPU computes it natively (emulated bf16 is ~100x slower: ask for it)."""
    return ["fp32", "bf16"] if mixed_precision.cpu_has_native_bf16() else ["fp32"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"], choices=sorted(MODEL_PRESETS))
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "auto"],
                    help="default: fp32, and bf16 when the CPU has AVX512_BF16/AMX")
    add_step_shape_args(ap)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed, unprofiled steps per stage")
    ap.add_argument("--profiled", type=int, default=2, help="profiled steps per stage")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="result JSON (default bench/results/profile_step.json; smoke writes only with --out)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one step of each kind: checks the script runs")
    args = ap.parse_args(argv)
    keep_freed_memory()  # as the project's training commands do (ULMFIT_KEEP_FREED_MEMORY=0: glibc's default)
    if args.smoke:
        args.presets, args.vocab, args.bs, args.bptt = ["tiny"], 500, 8, 20
        args.clf_bs, args.doc_len, args.clf_bptt, args.max_seq = 4, 50, 20, 40
        args.warmup, args.steps, args.profiled = 1, 1, 1
    precisions = args.precisions or default_precisions()

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    budget = 0.5 if args.smoke else 3.0
    max_n = 1024 if args.smoke else 4096
    peak_runs = [matmul_peak(dtype, budget, max_n) for dtype in (torch.float32, torch.bfloat16)]
    print(f"matmul peak ({args.threads} threads): fp32 {peak_runs[0]['gflops']:.1f} GFLOP/s, bf16 "
          f"{peak_runs[1]['gflops']:.1f} GFLOP/s; native bf16: {mixed_precision.cpu_has_native_bf16()}; "
          f"load {os.getloadavg()}", flush=True)
    rows = [measure_preset(args, preset, prec) for preset in args.presets for prec in precisions]
    # The matmul rate of a shared machine drifts by 10-15 % over minutes: measure it again after the steps
    # and take the better of the two, so a slow moment at the start does not inflate every MFU.
    peak_runs += [matmul_peak(dtype, budget, max_n) for dtype in (torch.float32, torch.bfloat16)]
    peaks = {dtype: max(p["gflops"] for p in peak_runs if p["dtype"] == dtype) for dtype in ("float32", "bfloat16")}
    for row in rows:
        for stage in ("lm", "classifier"):
            r = row[stage]
            r["mfu_vs_fp32_peak"], r["mfu_vs_bf16_peak"] = r["gflops"] / peaks["float32"], r["gflops"] / peaks["bfloat16"]
            print(f"{row['preset']:6s} {row['precision']:5s} {stage:10s} MFU {100 * r['mfu_vs_fp32_peak']:.0f} % of the "
                  f"fp32 peak ({peaks['float32']:.1f} GFLOP/s), {100 * r['mfu_vs_bf16_peak']:.0f} % of bf16's", flush=True)
    probes = [lstm_autocast_probe(p, args.bs, args.bptt) for p in args.presets]
    for p in probes:
        verdict = (f"runs, {p['bf16_speedup']:.2f}x fp32, gradients finite: {p['bf16_grads_finite']}" if p["bf16_runs"]
                   else f"fails: {p['bf16_error']}")
        print(f"torch.lstm under CPU bf16 autocast ({p['preset']}): {verdict}")
    payload = {
        "smoke": args.smoke, "threads": args.threads, "native_cpu_bf16": mixed_precision.cpu_has_native_bf16(),
        # The training commands' malloc setting (ulmfit_core/memory.py); ULMFIT_KEEP_FREED_MEMORY=0 runs the default.
        "keep_freed_memory": keep_freed_memory(), "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        "peaks": peak_runs, "precisions": precisions,
        "lm": {"vocab": args.vocab, "bs": args.bs, "bptt": args.bptt},
        "classifier": {"vocab": args.vocab, "bs": args.clf_bs, "doc_len": args.doc_len, "bptt": args.clf_bptt,
                       "max_seq": args.max_seq, "n_classes": 2},
        "steps": {"warmup": args.warmup, "timed": args.steps, "profiled": args.profiled},
        "flops_formula": "LSTM: 4 gates x (n_in + h) x h x 2 per token and layer; decoder: emb x vocab x 2 per token; "
                         "training = 3 x forward for tokens whose graph is kept (classifier: forward only outside max_seq)",
        "rows": rows, "lstm_autocast_probe": probes,
        "load_average_start_end": [peak_runs[0]["load_after"], list(os.getloadavg())],
        "total_seconds": time.perf_counter() - t0,
    }
    if not args.smoke or args.out:
        write_result("profile_step", payload, args.out)
    return payload


if __name__ == "__main__":
    main()
