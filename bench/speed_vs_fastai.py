"""Speed of our AWD-LSTM against fastai's, measured alternately in one process: ratios with their spread.

Ours runs at the recipe's precision (``--precision``, default ``auto``: bf16 autocast on CUDA and on CPUs
with AVX512_BF16/AMX, float32 elsewhere; ``ulmfit_core/precision.py``), fastai in float32 and under the
same bf16 autocast (``--fastai-precisions``, default both). A side that cannot run (fastai's ``nn.LSTM``
under CPU bf16 autocast fails to build its oneDNN kernel on CPUs without native bf16) is reported with
its error and left out of the rounds.

Three measurements per model preset, each on identical random batches, sizes, dropouts and threads:

- language-model training tokens/s: bs 64 × bptt 70, vocabulary 30k, forward + cross-entropy + AR/TAR,
  backward, gradient clipping (0.4), AdamW step, hidden state carried between steps;
- classifier training documents/s: bs 32 documents of 230 tokens, BPTT chunks of 70, outputs kept for
  the last 1,400 tokens, concat pooling and the [3·emb, 50, 2] head, the same step as above;
- classifier inference documents/s: the same batch in eval mode without gradients.

fastai's side is ``fastai.text.all``: ``get_language_model(AWD_LSTM, ...)`` and
``get_text_classifier(AWD_LSTM, ...)`` with the same sizes and (already ``drop_mult``-scaled) dropouts.
Both models run through the same step function, so the ratio is the models' speed, not a training
loop's. Each round times a few steps (``DEFAULT_PLAN``) of one side, then of the other (the order
alternates from round to round, so background load on a shared machine hits both sides alike); the
ratio of each round is ours/fastai, and the summary gives the median and the min–max over rounds, in
wall time and in process CPU time (steadier when other processes compete for the cores). Load average
is recorded with every round.

fastai lives in the peer virtual environment (``python bench/peers.py``); run this with its python,
which imports ``ulmfit_core`` from the repository:

    bench/.peers-venv/bin/python bench/speed_vs_fastai.py            # small and paper, CPU: 10-15 minutes on 2 cores
                                                                     # (x ~1.5 with the fastai bf16 side on a bf16 CPU)
    python bench/speed_vs_fastai.py --device cuda --name speed_vs_fastai_gpu   # on a GPU, ~2 minutes
    python bench/speed_vs_fastai.py --smoke                          # seconds; fastai's side only if importable

``--amp`` (kept for the recorded GPU runs) means ``--precision bf16 --fastai-precisions bf16``.

Run with another python, the script re-runs itself with the peer venv's python when that exists.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from common import add_step_shape_args, write_result  # noqa: E402  (also puts the repository on sys.path)


def _fastai_available() -> bool:
    return peers.importable("fastai.text.all")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


#: fastai's side name for each of its precisions; ratios are ours / that side.
FASTAI_SIDES = {"fp32": "fastai", "bf16": "fastai_bf16"}


def _autocast_factory(device: Any, dtype: Any) -> Callable[[], Any]:
    """A maker of fresh autocast contexts (None: float32, no autocast)."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _fastai_dtypes(precisions: list[str]) -> dict[str, Any]:
    import torch

    return {FASTAI_SIDES[p]: (torch.bfloat16 if p == "bf16" else None) for p in precisions}


def make_lm_sides(preset: str, vocab: int, device: Any, ours_dtype: Any, fastai_precisions: list[str]) -> list[dict[str, Any]]:
    from ulmfit_core.awd_lstm import build_language_model, detach_hidden
    from ulmfit_core.config import LMConfig, ModelConfig

    mc, lmc = ModelConfig(preset=preset), LMConfig()
    d = lmc.scaled_dropouts
    ours = build_language_model(vocab, mc, d).to(device)
    state: dict[str, Any] = {"hidden": None}

    def ours_fwd(x):
        logits, raw, dropped, hidden = ours(x, state["hidden"])
        state["hidden"] = detach_hidden(hidden)
        return logits, raw, dropped

    sides = [{"name": "ours", "model": ours, "fwd": ours_fwd, "reset": lambda: state.update(hidden=None),
              "autocast": _autocast_factory(device, ours_dtype)}]
    for name, dtype in _fastai_dtypes(fastai_precisions).items():
        from fastai.text.all import AWD_LSTM, get_language_model

        config = dict(emb_sz=mc.emb_sz, n_hid=mc.n_hid, n_layers=mc.n_layers, pad_token=1, bidir=False,
                      output_p=d.output_p, hidden_p=d.hidden_p, input_p=d.input_p, embed_p=d.embed_p,
                      weight_p=d.weight_p, tie_weights=True, out_bias=True)
        fa = get_language_model(AWD_LSTM, vocab, config=config, drop_mult=1.0).to(device)  # dropouts already scaled
        fa.reset()  # its hidden state is a plain list made at init: recreate it on the device (fastai's ModelResetter does)
        sides.append({"name": name, "model": fa, "fwd": fa, "reset": fa.reset,  # hidden state kept inside
                      "autocast": _autocast_factory(device, dtype)})
    for s in sides:
        s["params"] = sum(p.numel() for p in s["model"].parameters())
    return sides


def make_classifier_sides(preset: str, vocab: int, n_classes: int, bptt: int, max_seq: int, device: Any,
                          ours_dtype: Any, fastai_precisions: list[str]) -> list[dict[str, Any]]:
    from ulmfit_core.awd_lstm import build_classifier
    from ulmfit_core.config import ClassifierConfig, ModelConfig

    mc, cc = ModelConfig(preset=preset), ClassifierConfig(bptt=bptt, max_seq=max_seq)
    d = cc.scaled_dropouts
    ours = build_classifier(vocab, mc, d, n_classes=n_classes, lin_ftrs=cc.lin_ftrs, head_p=cc.head_p,
                            bptt=bptt, max_seq=max_seq).to(device)
    sides = [{"name": "ours", "model": ours, "fwd": ours, "reset": lambda: None,
              "autocast": _autocast_factory(device, ours_dtype)}]
    for name, dtype in _fastai_dtypes(fastai_precisions).items():
        from fastai.text.all import AWD_LSTM, get_text_classifier

        config = dict(emb_sz=mc.emb_sz, n_hid=mc.n_hid, n_layers=mc.n_layers, pad_token=1, bidir=False,
                      output_p=d.output_p, hidden_p=d.hidden_p, input_p=d.input_p, embed_p=d.embed_p,
                      weight_p=d.weight_p)
        fa = get_text_classifier(AWD_LSTM, vocab, n_classes, seq_len=bptt, config=config, drop_mult=1.0,
                                 lin_ftrs=list(cc.lin_ftrs), ps=[cc.head_p] * len(cc.lin_ftrs), pad_idx=1,
                                 max_len=max_seq).to(device)
        sides.append({"name": name, "model": fa, "fwd": fa, "reset": lambda: None,
                      "autocast": _autocast_factory(device, dtype)})
    for s in sides:
        s["params"] = sum(p.numel() for p in s["model"].parameters())
    return sides


def train_step_fn(side: dict[str, Any], batches: list[tuple[Any, Any]], alpha: float, beta: float, clip: float,
                  lm: bool, device: Any) -> Callable[[], None]:
    """One training step, the same code for every side (each under its own autocast); cycles through ``batches``."""
    import torch
    import torch.nn.functional as F

    model, fwd, autocast = side["model"], side["fwd"], side["autocast"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99), weight_decay=0.01)
    it = {"i": 0}

    def step() -> None:
        x, y = batches[it["i"] % len(batches)]
        it["i"] += 1
        model.train()
        with autocast():
            logits, raw, dropped = fwd(x)
            logits, raw, dropped = logits.float(), raw.float(), dropped.float()
            if lm:
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            else:
                loss = F.cross_entropy(logits, y)
            loss = loss + alpha * dropped.pow(2).mean() + beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        loss.item()  # a sync point
        _sync(device)

    return step


def infer_step_fn(side: dict[str, Any], batches: list[tuple[Any, Any]], device: Any) -> Callable[[], None]:
    import torch

    model, autocast = side["model"], side["autocast"]
    it = {"i": 0}

    def step() -> None:
        x, _ = batches[it["i"] % len(batches)]
        it["i"] += 1
        model.eval()
        with torch.no_grad(), autocast():
            model(x)[0].float().sum().item()
        _sync(device)

    return step


def alternate(fns: dict[str, Callable[[], None]], items_per_step: int, warmup: int, steps: int, rounds: int,
              label: str) -> dict[str, Any]:
    """Warm each side up, then ``rounds`` rounds of ``steps`` timed steps per side, order alternating.

    Records wall time and the process's CPU time (all threads). On a machine shared with other
    work, wall time also counts waiting for a core; CPU time counts only the work done, so its
    ratio is the steadier of the two there (both are reported).
    """
    failed: dict[str, str] = {}
    for name in list(fns):
        try:
            for _ in range(warmup):
                fns[name]()
        except RuntimeError as e:  # e.g. oneDNN cannot build a bf16 LSTM on this CPU
            if name == "ours":
                raise
            failed[name] = str(e).splitlines()[0]
            print(f"  {label}: {name} cannot run here: {failed[name]}", flush=True)
    names = [n for n in fns if n not in failed]
    others = [n for n in names if n != "ours"]
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        rec: dict[str, Any] = {"round": r, "order": order, "load_before": list(os.getloadavg())}
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fns[name]()
            rec[f"{name}_seconds"] = time.perf_counter() - t0
            rec[f"{name}_cpu_seconds"] = time.process_time() - c0
            rec[f"{name}_per_s"] = items_per_step * steps / rec[f"{name}_seconds"]
            rec[f"{name}_per_cpu_s"] = items_per_step * steps / rec[f"{name}_cpu_seconds"]
        for other in others:
            rec[ratio_key("ratio", other)] = rec["ours_per_s"] / rec[f"{other}_per_s"]
            rec[ratio_key("cpu_ratio", other)] = rec["ours_per_cpu_s"] / rec[f"{other}_per_cpu_s"]
        rec["load_after"] = list(os.getloadavg())
        per_round.append(rec)
        extra = "".join(f"  ours/{o} {rec[ratio_key('ratio', o)]:.3f} (CPU time {rec[ratio_key('cpu_ratio', o)]:.3f})"
                        for o in others)
        print(f"  {label} round {r}: " + "  ".join(f"{n} {rec[f'{n}_per_s']:,.1f}/s" for n in names) + extra
              + f"  (load {rec['load_before'][0]:.2f})", flush=True)
    out: dict[str, Any] = {"rounds": per_round, "steps": steps, "warmup": warmup, "sides": names, "failed": failed}
    for name in names:
        for unit in ("per_s", "per_cpu_s"):
            rates = [rec[f"{name}_{unit}"] for rec in per_round]
            out[f"{name}_{unit}_median"] = statistics.median(rates)
            out[f"{name}_{unit}_min"], out[f"{name}_{unit}_max"] = min(rates), max(rates)
    for other in others:
        for kind in ("ratio", "cpu_ratio"):
            key = ratio_key(kind, other)
            vals = [rec[key] for rec in per_round]
            out.update({f"{key}_median": statistics.median(vals), f"{key}_min": min(vals), f"{key}_max": max(vals)})
    return out


def ratio_key(kind: str, other: str) -> str:
    """``ratio`` / ``cpu_ratio`` against fastai in float32 (the names earlier results use), else suffixed."""
    return kind if other == "fastai" else f"{kind}_{other}"


def bench_preset(preset: str, args: argparse.Namespace, with_fastai: bool, device: Any) -> dict[str, Any]:
    import torch

    from ulmfit_core.config import ClassifierConfig, LMConfig

    plan = args.plan.get(preset, args.plan["default"])
    g = torch.Generator().manual_seed(0)
    res: dict[str, Any] = {"preset": preset}
    fastai_precisions = args.fastai_precisions if with_fastai else []

    # language model
    torch.manual_seed(0)
    sides = make_lm_sides(preset, args.vocab, device, args.ours_dtype, fastai_precisions)
    lmc = LMConfig()
    lm_batches = []
    for _ in range(4):
        t = torch.randint(2, args.vocab, (args.bs, args.bptt + 1), generator=g).to(device)
        lm_batches.append((t[:, :-1], t[:, 1:]))
    fns = {s["name"]: train_step_fn(s, lm_batches, lmc.alpha, lmc.beta, lmc.clip, True, device) for s in sides}
    res["params_lm"] = {s["name"]: s["params"] for s in sides}
    res["lm_train_tokens"] = alternate(fns, args.bs * args.bptt, args.warmup, plan["lm"][1], plan["lm"][0],
                                       f"{preset} LM train tok")
    del sides, fns

    # classifier
    torch.manual_seed(0)
    sides = make_classifier_sides(preset, args.vocab, 2, args.clf_bptt, args.max_seq, device, args.ours_dtype,
                                  fastai_precisions)
    cc = ClassifierConfig()
    clf_batches = [(torch.randint(2, args.vocab, (args.clf_bs, args.doc_len), generator=g).to(device),
                    torch.randint(0, 2, (args.clf_bs,), generator=g).to(device)) for _ in range(2)]
    res["params_classifier"] = {s["name"]: s["params"] for s in sides}
    fns = {s["name"]: train_step_fn(s, clf_batches, cc.alpha, cc.beta, cc.clip, False, device) for s in sides}
    res["classifier_train_docs"] = alternate(fns, args.clf_bs, args.warmup, plan["clf"][1], plan["clf"][0],
                                             f"{preset} classifier train docs")
    fns = {s["name"]: infer_step_fn(s, clf_batches, device) for s in sides}
    res["classifier_infer_docs"] = alternate(fns, args.clf_bs, args.warmup, plan["infer"][1], plan["infer"][0],
                                             f"{preset} classifier inference docs")
    return res


#: (rounds, timed steps per side per round) by preset and measurement. One step per side per round
#: (ABBA order) keeps the two sides' samples seconds apart, so load from other processes on a shared
#: machine hits both alike; paper is ~6 s per LM step on 2 idle CPU cores.
DEFAULT_PLAN = {
    "small": {"lm": (8, 1), "clf": (8, 1), "infer": (8, 3)},
    "paper": {"lm": (6, 1), "clf": (6, 1), "infer": (6, 2)},
    "tiny": {"lm": (6, 2), "clf": (6, 2), "infer": (6, 5)},
}
#: On a GPU a step takes milliseconds: more rounds, several steps per sample.
GPU_PLAN = {p: {"lm": (12, 10), "clf": (12, 10), "infer": (12, 20)} for p in ("small", "paper", "tiny")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--rounds", type=int, help="rounds for every measurement (default: DEFAULT_PLAN's, 6-8)")
    ap.add_argument("--warmup", type=int, help="untimed steps per side before the rounds (1 on CPU, 5 on CUDA)")
    add_step_shape_args(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (fastai must be importable there too)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="ours: the recipe's precision key (auto: bf16 where the hardware has it)")
    ap.add_argument("--fastai-precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(FASTAI_SIDES),
                    help="fastai's sides: float32, and/or under the same bf16 autocast")
    ap.add_argument("--amp", action="store_true", help="the recorded GPU runs' flag: --precision bf16 --fastai-precisions bf16")
    ap.add_argument("--name", default="speed_vs_fastai", help="result name (bench/results/NAME.json)")
    ap.add_argument("--ours-only", action="store_true", help="skip fastai even when it is importable")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the script runs")
    ap.add_argument("--out", help="result JSON (default bench/results/speed_vs_fastai.json; smoke writes only with --out)")
    args = ap.parse_args(argv)

    if args.amp:
        args.precision, args.fastai_precisions = "bf16", ["bf16"]
    with_fastai = not args.ours_only and _fastai_available()
    if not with_fastai and not (args.smoke or args.ours_only):
        sys.exit("fastai is not importable here and bench/.peers-venv is missing: run `python bench/peers.py` "
                 "first (or pass --ours-only / --smoke)")
    plan = GPU_PLAN if args.device.startswith("cuda") else DEFAULT_PLAN
    if args.warmup is None:
        args.warmup = 5 if args.device.startswith("cuda") else 1
    args.plan = {**plan, "default": plan["small"]}
    if args.smoke:
        args.presets, args.vocab, args.bs, args.bptt = ["tiny"], 500, 8, 20
        args.clf_bs, args.doc_len, args.clf_bptt, args.max_seq = 4, 50, 20, 40
        args.plan = {"default": {"lm": (2, 1), "clf": (2, 1), "infer": (2, 1)}}
    if args.rounds:
        args.plan = {p: {k: (args.rounds, st) for k, (_, st) in v.items()} for p, v in args.plan.items()}

    import torch

    from ulmfit_core.precision import resolve

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ours_precision = resolve(args.precision, device)
    args.ours_dtype = ours_precision.dtype
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    print(f"fastai: {'yes (' + ', '.join(args.fastai_precisions) + ')' if with_fastai else 'NO (ours only)'}; ours: "
          f"precision {args.precision} = {ours_precision.name}; threads {args.threads}; device {device}; "
          f"load average {load_start}", flush=True)
    presets = [bench_preset(p, args, with_fastai, device) for p in args.presets]
    payload = {
        "smoke": args.smoke, "with_fastai": with_fastai, "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "threads": args.threads, "warmup": args.warmup,
        "ours_precision": {"asked": args.precision, "resolved": ours_precision.name},
        "fastai_precisions": args.fastai_precisions if with_fastai else [],
        "plan": {p: {k: {"rounds": r, "steps": st} for k, (r, st) in v.items()} for p, v in args.plan.items()},
        "lm": {"vocab": args.vocab, "bs": args.bs, "bptt": args.bptt, "loss": "F.cross_entropy + AR/TAR"},
        "classifier": {"vocab": args.vocab, "bs": args.clf_bs, "doc_len": args.doc_len, "bptt": args.clf_bptt,
                       "max_seq": args.max_seq, "n_classes": 2},
        "python": peers.python_label(), "versions": peers.versions(), "load_average_start": load_start, "load_average_end": list(os.getloadavg()),
        "total_seconds": time.perf_counter() - t0, "presets": presets,
    }
    for p in presets:
        for k in ("lm_train_tokens", "classifier_train_docs", "classifier_infer_docs"):
            m = p[k]
            line = f"{p['preset']:6s} {k:22s} ours {m['ours_per_s_median']:>9,.1f}/s"
            for other in (n for n in m["sides"] if n != "ours"):
                r, c = ratio_key("ratio", other), ratio_key("cpu_ratio", other)
                line += (f"  {other} {m[f'{other}_per_s_median']:>9,.1f}/s  ratio {m[r + '_median']:.3f} "
                         f"({m[r + '_min']:.3f}-{m[r + '_max']:.3f}), CPU-time ratio {m[c + '_median']:.3f}")
            for other, why in m["failed"].items():
                line += f"  {other}: cannot run ({why[:60]})"
            print(line)
    print(f"total {payload['total_seconds']:.0f} s")
    if not args.smoke or args.out:
        write_result(args.name, payload, args.out)
    return payload


if __name__ == "__main__":
    if not {"--ours-only", "-h", "--help"} & set(sys.argv[1:]) and not _fastai_available():
        peers.reexec_in_peer_venv(__file__, sys.argv[1:])  # returns only when there is no peer venv
    main()
