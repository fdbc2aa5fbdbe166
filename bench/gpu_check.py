"""GPU check and speed: the AWD-LSTM on CUDA agrees with the CPU, trains under mixed precision, and how fast.

Runs on a machine with a CUDA GPU (prints a notice and exits 0 without one):

    python bench/gpu_check.py --out bench/results/gpu_check.json

1. Correctness: the same weights give the same eval-mode logits on CUDA (fp32) as on the CPU, for the
   language model and for the classifier's chunked encoder over long documents.
2. Mixed precision: the shared Trainer runs LM and classifier epochs on CUDA under bf16 autocast with
   finite, falling loss.
3. Speed: language-model training tokens/s and classifier training/inference documents/s for the
   `small` and `paper` presets (bs 64, bptt 70, vocabulary 30k; classifier bs 32, 230 tokens).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ulmfit_core.awd_lstm import build_classifier, build_language_model, classifier_layer_groups, lm_layer_groups  # noqa: E402
from ulmfit_core.config import ClassifierConfig, LMConfig, ModelConfig  # noqa: E402
from ulmfit_core.schedule import unfreeze_phases  # noqa: E402
from ulmfit_core.tasks import ClassifierTask, LanguageModelTask  # noqa: E402
from ulmfit_core.train import Trainer, seed_everything  # noqa: E402


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_correctness(vocab: int = 5000) -> dict:
    """Exact fp32 on the GPU (cuDNN's TF32 off) must match the CPU; TF32's default error is reported."""
    torch.backends.cudnn.allow_tf32 = False
    try:
        result = _correctness(vocab)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    tf32 = _correctness(vocab)
    result["lm_logits_rel_err_tf32_default"] = tf32["lm_logits_rel_err"]
    return result


def _correctness(vocab: int) -> dict:
    seed_everything(0)
    mc = ModelConfig(preset="small")
    lm = build_language_model(vocab, mc, LMConfig().scaled_dropouts).eval()
    x = torch.randint(2, vocab, (8, 120))
    with torch.no_grad():
        ref = lm(x)[0]
        got = lm.cuda()(x.cuda())[0].cpu()
    lm_err = rel_err(got, ref)
    cc = ClassifierConfig(bptt=70, max_seq=140)
    clf = build_classifier(vocab, mc, cc.scaled_dropouts, n_classes=3, lin_ftrs=cc.lin_ftrs, head_p=cc.head_p,
                           bptt=cc.bptt, max_seq=cc.max_seq).eval()
    docs = torch.randint(2, vocab, (4, 300))  # > max_seq: several chunks, the early ones without gradients
    with torch.no_grad():
        ref_c = clf(docs)[0]
        got_c = clf.cuda()(docs.cuda())[0].cpu()
    clf_err = rel_err(got_c, ref_c)
    # float32 on both sides: only the summation order differs (cuDNN vs oneDNN).
    return {"lm_logits_rel_err": lm_err, "classifier_logits_rel_err": clf_err,
            "ok": lm_err < 1e-5 and clf_err < 1e-5}


def check_mixed_precision(vocab: int = 2000, device: str = "cuda") -> dict:
    seed_everything(0)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    # Text with structure (a repeating grammar) so loss must fall if training works.
    base = torch.randint(10, vocab, (50,), generator=g)
    docs = [np.concatenate([[2], base[torch.randint(0, 50, (30,), generator=g)].numpy()]).astype(np.int64)
            for _ in range(400)]
    mc = ModelConfig(preset="small")
    lmc = LMConfig(epochs=2, lr=3e-3, bs=16, bptt=30)
    lm = build_language_model(vocab, mc, lmc.scaled_dropouts).to(dev)
    groups = lm_layer_groups(lm)
    task = LanguageModelTask(docs[:360], docs[360:], lmc, dev, torch.Generator().manual_seed(1))
    lm_hist = Trainer(lm, groups, lmc, unfreeze_phases(len(groups), [], 2), task, device=dev).fit().history
    labels = np.array([int(d[1] % 3) for d in docs])
    cc = ClassifierConfig(epochs=2, lr=0.02, bs=32, bptt=30, max_seq=60)
    clf = build_classifier(vocab, mc, cc.scaled_dropouts, n_classes=3, lin_ftrs=cc.lin_ftrs, head_p=cc.head_p,
                           bptt=cc.bptt, max_seq=cc.max_seq).to(dev)
    cgroups = classifier_layer_groups(clf)
    ctask = ClassifierTask(docs[:360], labels[:360], docs[360:], labels[360:], 3, cc, 1, dev, torch.Generator().manual_seed(2))
    clf_hist = Trainer(clf, cgroups, cc, unfreeze_phases(len(cgroups), [1], 2), ctask, device=dev).fit().history
    finite = all(np.isfinite(h["train_loss"]) and np.isfinite(h["valid_loss"]) for h in lm_hist + clf_hist)
    return {"autocast_dtype": "bfloat16" if torch.cuda.is_bf16_supported() else "float16",
            "lm_history": lm_hist, "classifier_history": clf_hist,
            "ok": finite and lm_hist[-1]["valid_loss"] < lm_hist[0]["train_loss"]}


def _time(fn, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def speed(preset: str, vocab: int = 30000, steps: int = 20) -> dict:
    seed_everything(0)
    dev = torch.device("cuda")
    mc = ModelConfig(preset=preset)
    lm = build_language_model(vocab, mc, LMConfig().scaled_dropouts).to(dev).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3, betas=(0.8, 0.99))
    x = torch.randint(2, vocab, (64, 70), device=dev)
    y = torch.randint(2, vocab, (64, 70), device=dev)

    def lm_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = lm(x)[0]
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    lm_s = _time(lm_step, 3, steps)
    cc = ClassifierConfig()
    clf = build_classifier(vocab, mc, cc.scaled_dropouts, n_classes=2, lin_ftrs=cc.lin_ftrs, head_p=cc.head_p,
                           bptt=70, max_seq=1400).to(dev).train()
    copt = torch.optim.AdamW(clf.parameters(), lr=1e-3, betas=(0.8, 0.99))
    docs = torch.randint(2, vocab, (32, 230), device=dev)
    labels = torch.randint(0, 2, (32,), device=dev)

    def clf_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(clf(docs)[0].float(), labels)
        copt.zero_grad(set_to_none=True)
        loss.backward()
        copt.step()

    clf_s = _time(clf_step, 3, steps)
    clf.eval()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            clf(docs)

    inf_s = _time(infer, 3, steps)
    return {"preset": preset, "lm_tokens_per_s": 64 * 70 / lm_s, "classifier_train_docs_per_s": 32 / clf_s,
            "classifier_infer_docs_per_s": 32 / inf_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    result["correctness"] = check_correctness()
    print("correctness", result["correctness"], flush=True)
    result["mixed_precision"] = check_mixed_precision()
    print("mixed precision ok:", result["mixed_precision"]["ok"], flush=True)
    result["speed"] = [speed(p) for p in ("small", "paper")]
    for s in result["speed"]:
        print(f"{s['preset']:6s} LM {s['lm_tokens_per_s']:>10,.0f} tok/s   classifier train {s['classifier_train_docs_per_s']:>8,.0f} "
              f"docs/s   inference {s['classifier_infer_docs_per_s']:>8,.0f} docs/s")
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import write_result

        write_result("gpu_check", result, args.out)


if __name__ == "__main__":
    main()
