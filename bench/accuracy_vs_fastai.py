"""fastai's ULMFiT against ours on TREC-6: the same recipe, data and CPU, no general-domain pretraining.

Every setting of fastai's run is read from OUR recipe config (``configs/trec_small.yaml`` by default),
so the two cannot drift apart: model sizes (``small``: 200/512/3), dropouts and ``drop_mult``, epochs,
peak learning rates, discriminative factor ``lrm`` (as ``slice(lr / lrm**(groups-1), lr)``), batch size,
BPTT, weight decay, gradient clipping, vocabulary limits, and gradual unfreezing (``classifier.unfreeze``
[1, 1, 1]: the head one epoch, ``freeze_to(-2)`` one, ``freeze_to(-3)`` one, then everything).
The data are ours too: the classifier trains on the training questions minus the stratified 10 % held
out for validation (``ulmfit_core.data.split_validation``, same seed), and the language model reads
those training questions only, never validation or test text (``language_model_learner(...,
pretrained=False)``, then ``text_classifier_learner`` on its encoder). Test accuracy on the 500 test
questions.

What stays fastai's own, as a user of fastai would run it: ``fit_one_cycle`` (cosine warm-up and
annealing with momentum cycling 0.8–0.7–0.8) where our recipe uses slanted triangular rates with a
fixed β₁ = 0.8; fastai's tokenizer rules (ours re-implements them); its Adam (eps 1e-5) and data loaders
(run in-process, ``num_workers=0``, as ours). Both sides use 2 torch threads.

Our side is ``bench/results/trec_recipe.json`` (``bench/trec_recipe.py``, same config and seeds), which
``bench/report.py`` reads when it renders the comparison; ``--run-ours`` trains ours here instead.

    bench/.peers-venv/bin/python bench/accuracy_vs_fastai.py --seeds 0 1 2     # ~20+ minutes a seed on 2 cores
    python bench/accuracy_vs_fastai.py --smoke      # seconds: tiny model on a slice; fastai's side only if importable
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # noqa: E402
from common import RESULTS, ROOT, SHARED_DATASETS, command_history, earlier_result, runs_of_other_seeds, write_result  # noqa: E402

SMOKE_OVERRIDES = ["model.preset=tiny", "data.max_train_rows=300", "lm.epochs=1", "classifier.epochs=2",
                   "classifier.unfreeze=[1]", "lm.bptt=20", "classifier.bptt=20"]


def load_cfg(config: str, overrides: list[str], seed: int):
    from ulmfit_core.config import load_recipe

    # fastai's run starts its LM from random weights here, so ours does too (no general-domain start)
    return load_recipe(config, ["lm.pretrained=null"] + overrides + [f"seed={seed}", "device=cpu"])


def trec_frames(cfg, data_dir: Path):
    """(classifier df with is_valid, LM df with is_valid, test df): ours' splits, as pandas frames."""
    import pandas as pd

    from ulmfit_core.corpus import subsample
    from ulmfit_core.data import read_labeled, split_validation

    d = cfg.data
    train = read_labeled(data_dir / "trec" / "train.csv", d.text_cols, d.label_col)
    test = read_labeled(data_dir / "trec" / "test.csv", d.text_cols, d.label_col)
    keep = subsample(len(train.texts), d.max_train_rows, cfg.seed)  # as prepare_corpus slices
    texts = [train.texts[i] for i in keep]
    labels = [train.labels[i] for i in keep]
    tr, va = split_validation(labels, d.valid_pct, cfg.seed)
    is_valid = [False] * len(texts)
    for i in va:
        is_valid[i] = True
    clas = pd.DataFrame({"text": texts, "label": labels, "is_valid": is_valid})
    lm_texts = [texts[i] for i in tr]  # the LM reads the classifier's training texts only
    _, lm_va = split_validation([0] * len(lm_texts), cfg.lm.valid_pct, cfg.seed)
    lm_valid = [False] * len(lm_texts)
    for i in lm_va:
        lm_valid[i] = True
    lm = pd.DataFrame({"text": lm_texts, "is_valid": lm_valid})
    return clas, lm, pd.DataFrame({"text": test.texts, "label": test.labels})


def run_fastai(cfg, data_dir: Path, workdir: Path) -> dict[str, Any]:
    """One seed of fastai's ULMFiT with ``cfg``'s settings; returns accuracies and stage times."""
    import torch
    from fastai.text.all import (
        AWD_LSTM,
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        GradientClip,
        Perplexity,
        ProgressCallback,
        TextBlock,
        accuracy,
        awd_lstm_clas_config,
        awd_lstm_lm_config,
        language_model_learner,
        set_seed,
        text_classifier_learner,
    )

    t_start = time.perf_counter()
    set_seed(cfg.seed)
    clas_df, lm_df, test_df = trec_frames(cfg, data_dir)
    m, lmc, cc, tx = cfg.model, cfg.lm, cfg.classifier, cfg.text
    sizes = dict(emb_sz=m.emb_sz, n_hid=m.n_hid, n_layers=m.n_layers)
    lm_drop, clas_drop = lmc.dropouts, cc.dropouts  # unscaled: fastai multiplies by drop_mult itself
    lm_config = dict(awd_lstm_lm_config, **sizes, **{f"{k}": getattr(lm_drop, k) for k in
                                                     ("output_p", "hidden_p", "input_p", "embed_p", "weight_p")})
    clas_config = dict(awd_lstm_clas_config, **sizes, **{f"{k}": getattr(clas_drop, k) for k in
                                                         ("output_p", "hidden_p", "input_p", "embed_p", "weight_p")})

    t0 = time.perf_counter()
    lm_block = DataBlock(blocks=TextBlock.from_df("text", is_lm=True, seq_len=lmc.bptt, min_freq=tx.min_freq,
                                                  max_vocab=tx.max_vocab, n_workers=0),
                         get_x=ColReader("text"), splitter=ColSplitter("is_valid"))
    dls_lm = lm_block.dataloaders(lm_df, bs=lmc.bs, seq_len=lmc.bptt, num_workers=0, path=workdir)
    data_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    learn_lm = language_model_learner(dls_lm, AWD_LSTM, config=lm_config, drop_mult=lmc.drop_mult, pretrained=False,
                                      metrics=[accuracy, Perplexity()], wd=lmc.wd, path=workdir,
                                      cbs=[GradientClip(lmc.clip)] if lmc.clip else None)
    learn_lm.remove_cb(ProgressCallback)  # per-epoch lines through learn.logger (print) instead of bars
    n_lm_groups = len(learn_lm.opt.param_lists) if learn_lm.opt else 1 + m.n_layers
    learn_lm.fit_one_cycle(lmc.epochs, lr_max=slice(lmc.lr / lmc.lrm ** (n_lm_groups - 1), lmc.lr))
    lm_valid = [float(v) for v in learn_lm.validate()]  # loss, accuracy, perplexity
    learn_lm.save_encoder("ft_enc")
    lm_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    clas_block = DataBlock(blocks=(TextBlock.from_df("text", vocab=dls_lm.vocab, seq_len=cc.bptt, n_workers=0),
                                   CategoryBlock),
                           get_x=ColReader("text"), get_y=ColReader("label"), splitter=ColSplitter("is_valid"))
    dls = clas_block.dataloaders(clas_df, bs=cc.bs, num_workers=0, path=workdir)
    learn = text_classifier_learner(dls, AWD_LSTM, seq_len=cc.bptt, config=clas_config, drop_mult=cc.drop_mult,
                                    pretrained=False, metrics=accuracy, wd=cc.wd, path=workdir,
                                    lin_ftrs=list(cc.lin_ftrs), ps=[cc.head_p] * len(cc.lin_ftrs), max_len=cc.max_seq,
                                    cbs=[GradientClip(cc.clip)] if cc.clip else None)
    learn.remove_cb(ProgressCallback)
    learn.load_encoder("ft_enc")
    n_groups = 2 + m.n_layers  # embedding, each LSTM, head (fastai's awd_lstm_clas_split)
    lrs = slice(cc.lr / cc.lrm ** (n_groups - 1), cc.lr)
    done = 0
    for k, n_ep in enumerate(cc.unfreeze):  # gradual unfreezing: top 1 group, then 2, then 3, ...
        if done >= cc.epochs or n_ep == 0:
            continue
        learn.freeze_to(-(k + 1))
        n_ep = min(n_ep, cc.epochs - done)
        learn.fit_one_cycle(n_ep, lrs)
        done += n_ep
    if done < cc.epochs:
        learn.unfreeze()
        learn.fit_one_cycle(cc.epochs - done, lrs)
    valid = [float(v) for v in learn.validate()]  # loss, accuracy
    clas_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    test_dl = learn.dls.test_dl(test_df, with_labels=True)
    preds, targs = learn.get_preds(dl=test_dl)
    test_acc = float((preds.argmax(1) == targs).float().mean())
    test_s = time.perf_counter() - t0
    return {"seed": cfg.seed, "test_accuracy": test_acc, "valid_accuracy": valid[1], "lm_valid_loss": lm_valid[0],
            "lm_valid_accuracy": lm_valid[1], "lm_valid_perplexity": lm_valid[2], "vocab_size": len(dls_lm.vocab),
            "n_train": int((~clas_df.is_valid).sum()), "n_valid": int(clas_df.is_valid.sum()),
            "lm_docs": len(lm_df), "data_seconds": data_s, "lm_seconds": lm_s, "classifier_seconds": clas_s,
            "test_seconds": test_s, "total_seconds": time.perf_counter() - t_start,
            "torch_threads": torch.get_num_threads()}


def run_ours(cfg, data_dir: Path, workdir: Path) -> dict[str, Any]:
    from ulmfit_core import stages

    t0 = time.perf_counter()
    res = stages.run_recipe(cfg, workdir / "ours", data_dir=data_dir, cache_dir=workdir / "cache")
    res["total_seconds"] = time.perf_counter() - t0
    res["seed"] = cfg.seed
    return res


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = [r["test_accuracy"] for r in runs]
    return {"test_accuracy_mean": statistics.mean(acc), "test_accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "valid_accuracy_mean": statistics.mean(r["valid_accuracy"] for r in runs),
            "lm_seconds_mean": statistics.mean(r.get("lm_seconds", 0.0) for r in runs),
            "classifier_seconds_mean": statistics.mean(r["classifier_seconds"] for r in runs),
            "total_seconds_mean": statistics.mean(r["total_seconds"] for r in runs), "n_seeds": len(runs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "trec_small.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-dir", type=Path, default=SHARED_DATASETS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-ours", action="store_true", help="train ours here instead of reading trec_recipe.json")
    ap.add_argument("--ours-only", action="store_true", help="skip fastai even when it is importable")
    ap.add_argument("--add", action="store_true",
                    help="merge into the existing result: keep its runs of other seeds, record this command too")
    ap.add_argument("--smoke", action="store_true", help="tiny model on a slice, one seed: checks the script runs")
    ap.add_argument("--out", help="result JSON (default bench/results/accuracy_vs_fastai.json; smoke writes only with --out)")
    args = ap.parse_args(argv)
    overrides: list[str] = []
    if args.smoke:
        overrides, args.seeds, args.run_ours = list(SMOKE_OVERRIDES), args.seeds[:1], True
    with_fastai = not args.ours_only and peers.importable("fastai.text.all")
    if not with_fastai and not (args.smoke or args.ours_only):
        sys.exit("fastai is not importable here and bench/.peers-venv is missing: run `python bench/peers.py` "
                 "first (or pass --smoke / --ours-only)")

    import torch

    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    payload: dict[str, Any] = {"smoke": args.smoke, "config": os.path.relpath(args.config, ROOT), "overrides": overrides,
                               "seeds": args.seeds, "threads": args.threads, "with_fastai": with_fastai,
                               "python": peers.python_label(), "versions": peers.versions(), "load_average_start": load_start}
    out_path = Path(args.out) if args.out else RESULTS / "accuracy_vs_fastai.json"
    # Checked before any training, so a mismatch costs nothing.
    old = earlier_result(out_path, lambda o: None if (o["config"], o["overrides"]) == (payload["config"], overrides)
                         else "was made with another config") if args.add else None
    fastai_runs, our_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = load_cfg(args.config, overrides, seed)
            if with_fastai:
                r = run_fastai(cfg, args.data_dir, Path(tmp) / f"fastai{seed}")
                r["load_average"] = list(os.getloadavg())
                fastai_runs.append(r)
                print(f"fastai seed {seed}: test accuracy {r['test_accuracy']:.4f}  valid {r['valid_accuracy']:.4f}  "
                      f"LM {r['lm_seconds']:.0f} s  classifier {r['classifier_seconds']:.0f} s  "
                      f"(load {r['load_average'][0]:.2f})", flush=True)
            if args.run_ours:
                r = run_ours(cfg, args.data_dir, Path(tmp) / f"ours{seed}")
                r["load_average"] = list(os.getloadavg())
                our_runs.append(r)
                print(f"ours   seed {seed}: test accuracy {r['test_accuracy']:.4f}  valid {r['valid_accuracy']:.4f}  "
                      f"LM {r.get('lm_seconds', 0):.0f} s  classifier {r['classifier_seconds']:.0f} s", flush=True)
    if old:  # runs of other seeds from earlier invocations (same config)
        if old.get("fastai"):
            fastai_runs = runs_of_other_seeds(old["fastai"]["runs"], args.seeds) + fastai_runs
        if old.get("ours") and old["ours"].get("source") == "this run":
            our_runs = runs_of_other_seeds(old["ours"]["runs"], args.seeds) + our_runs
        payload["earlier_commands"] = command_history(old)
        payload["seeds"] = sorted({r["seed"] for r in fastai_runs + our_runs})
    fastai_runs.sort(key=lambda r: r["seed"])
    our_runs.sort(key=lambda r: r["seed"])
    if fastai_runs:
        payload["fastai"] = {"runs": fastai_runs, "summary": _summary(fastai_runs)}
    else:
        payload["fastai"] = None
        payload["fastai_skipped"] = "fastai not importable here (it lives in bench/.peers-venv)" if not args.ours_only else "--ours-only"
    # Without --run-ours, our side is bench/results/trec_recipe.json, read when the report is rendered.
    payload["ours"] = {"source": "this run", "runs": our_runs, "summary": _summary(our_runs)} if our_runs else None
    payload["load_average_end"] = list(os.getloadavg())
    for name in ("ours", "fastai"):
        if payload.get(name):
            s = payload[name]["summary"]
            print(f"{name:6s}: test accuracy {s['test_accuracy_mean']:.4f} ± {s['test_accuracy_sd']:.4f} over "
                  f"{s['n_seeds']} seed(s); {s['total_seconds_mean']:.0f} s a seed")
    if not args.smoke or args.out:
        write_result("accuracy_vs_fastai", payload, args.out)
    return payload


if __name__ == "__main__":
    if not {"--ours-only", "-h", "--help"} & set(sys.argv[1:]) and not peers.importable("fastai.text.all"):
        peers.reexec_in_peer_venv(__file__, sys.argv[1:])  # returns only when there is no peer venv
    main()
