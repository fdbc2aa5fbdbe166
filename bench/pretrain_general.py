"""General-domain language models: what each cost to make and how well it predicts held-out text.

For every model folder given (``launch.py pretrain`` output, e.g. the zoo's ``general-en-*`` models),
the perplexity and next-token accuracy on the general-en corpus's ``valid.txt.gz`` (the same held-out
documents for every model, read in the model's own direction and units; perplexity also per word, so word
and subword models compare), and from its ``metrics.json`` the
training time, tokens seen and tokens/s. ``--train`` first pretrains the preset in each direction with
``configs/pretrain_general_<preset>.yaml`` (long: about an hour an epoch for ``small`` on 2 CPU cores).

    python bench/pretrain_general.py --models models/general-en-small-fwd models/general-en-small-bwd ...
    python bench/pretrain_general.py --train --preset small --directions fwd bwd --out-dir models
    python bench/pretrain_general.py --train --preset tiny --subwords --directions fwd --out-dir models
    python bench/pretrain_general.py --train --preset tiny --subwords --subword-vocab 8000 --directions fwd --add
    python bench/pretrain_general.py --models models/general-en-small-bwd --add   # one more, the others kept
    python bench/pretrain_general.py --smoke      # seconds: a tiny model on a slice of the corpus
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import math
import time
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT, command_history, earlier_result, write_result

from ulmfit_core.config import TextConfig

CORPUS = ROOT.parent / "shared" / "corpora" / "general-en"
DEFAULT_OUT = RESULTS / "pretrain_general.json"
#: The recipe's default number of units, which configs/pretrain_general_*_subwords.yaml also set: the zoo's ``-sp-`` models.
DEFAULT_SUBWORD_VOCAB = next(f.default for f in dataclasses.fields(TextConfig) if f.name == "subword_vocab")


def valid_texts(limit: int | None = None) -> list[str]:
    with gzip.open(CORPUS / "valid.txt.gz", "rt", encoding="utf-8") as f:
        docs = [line.strip() for line in f if line.strip()]
    return docs[:limit] if limit else docs


def evaluate(model_dir: Path, texts: list[str], cache: Path, bptt: int = 70, bs: int = 32) -> dict[str, Any]:
    """Perplexity and next-token accuracy of the language model in ``model_dir`` on ``texts``."""
    import torch

    from ulmfit_core.artifacts import load_language_model, read_subwords
    from ulmfit_core.awd_lstm import build_language_model
    from ulmfit_core.config import Dropouts, LMConfig, ModelConfig
    from ulmfit_core.pretrained import infer_sizes
    from ulmfit_core.tasks import LanguageModelTask
    from ulmfit_core.text import SubwordTokenizer, Tokenizer, Vocab, tokenize_cached

    state, itos, config = load_language_model(model_dir)
    backwards = bool((config.get("lm") or {}).get("backwards"))
    vocab = Vocab(itos)
    units = read_subwords(model_dir)  # a subword model reads the text in its own units
    tokenizer = SubwordTokenizer(units) if units else Tokenizer()
    ids = [vocab.numericalize(t) for t in tokenize_cached(texts, tokenizer, cache)]
    no_drop = Dropouts(embed_p=0, input_p=0, weight_p=0, hidden_p=0, output_p=0)
    model = build_language_model(len(itos), ModelConfig(**infer_sizes(state)), no_drop)
    model.load_state_dict(state)
    model.eval()
    lm_cfg = LMConfig(bs=bs, bptt=bptt, backwards=backwards)
    task = LanguageModelTask(ids[:1], ids, lm_cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    with torch.no_grad():
        m = task.evaluate(model)
    tokens = sum(len(x) for x in ids)
    # Per word (whitespace-separated words of the same documents), so word and subword models compare: the
    # text's total negative log-likelihood is the same whatever the units, the count it is divided by is not.
    words = sum(len(t.split()) for t in texts)
    per_word = math.exp(math.log(m["valid_perplexity"]) * tokens / words)
    return {"valid_perplexity": m["valid_perplexity"], "valid_perplexity_per_word": per_word,
            "valid_accuracy": m["valid_accuracy"], "units": "subwords" if units else "words",
            "valid_tokens": tokens, "valid_words": words, "direction": "bwd" if backwards else "fwd",
            "unknown_share": float(sum(int((x == 0).sum()) for x in ids) / max(tokens, 1)),
            "eval_seconds": time.perf_counter() - t0}


def training_cost(model_dir: Path) -> dict[str, Any]:
    """What ``metrics.json`` of a pretrained folder says about its training."""
    import json

    path = model_dir / "metrics.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    history = m.get("history", [])
    tokens = (m.get("corpus") or {}).get("lm_tokens")
    seconds = float(m.get("seconds") or 0.0)
    return {"training_minutes": seconds / 60, "epochs": len(history), "tokens_per_epoch": tokens,
            "tokens_per_second": (tokens * len(history) / seconds) if tokens and seconds else None,
            "own_valid_perplexity": (m.get("final") or {}).get("valid_perplexity")}


def model_name(preset: str, direction: str, subwords: bool = False, subword_vocab: int | None = None) -> str:
    """The zoo's names (``general-en-tiny-sp-fwd``: the config's 15,000 units), with the size in the name for
    another number of units (``general-en-tiny-sp8k-fwd``), so a vocabulary sweep's models sit side by side."""
    units = ""
    if subwords:
        v = subword_vocab or DEFAULT_SUBWORD_VOCAB
        units = "sp-" if v == DEFAULT_SUBWORD_VOCAB else f"sp{v // 1000}k-" if v % 1000 == 0 else f"sp{v}-"
    return f"general-en-{preset}-{units}{direction}"


def pretrain(preset: str, direction: str, out_dir: Path, overrides: list[str], subwords: bool = False,
             subword_vocab: int | None = None) -> Path:
    import launch

    target = out_dir / model_name(preset, direction, subwords, subword_vocab)
    if subword_vocab is not None:
        overrides = [*overrides, f"text.subword_vocab={subword_vocab}"]
    config = ROOT / "configs" / f"pretrain_general_{preset}{'_subwords' if subwords else ''}.yaml"
    args = ["pretrain", "--config", str(config), "--out", str(target),
            "--no-progress", "--set", f"lm.backwards={'true' if direction == 'bwd' else 'false'}",
            # the config names the corpus relative to the project root; this script may run from anywhere
            "--set", f"data.unlabeled={CORPUS / 'train.txt.gz'}", "--set", f"data.unlabeled_valid={CORPUS / 'valid.txt.gz'}"]
    for o in overrides:
        args += ["--set", o]
    if launch.main(args) != 0:
        raise SystemExit(f"pretraining {target} failed")
    return target


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=[], help="pretrained model folders to measure")
    ap.add_argument("--train", action="store_true", help="pretrain --preset in each of --directions first")
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "paper"])
    ap.add_argument("--directions", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    ap.add_argument("--subwords", action="store_true",
                    help="--train with configs/pretrain_general_<preset>_subwords.yaml (subword units)")
    ap.add_argument("--subword-vocab", type=int,
                    help=f"--subwords with this many units instead of {DEFAULT_SUBWORD_VOCAB:,} (the model's name says so)")
    ap.add_argument("--out-dir", default=str(ROOT / "models"), help="where --train writes its models")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help=f"result JSON (default {DEFAULT_OUT})")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on a slice of the corpus")
    ap.add_argument("--add", action="store_true",
                    help="keep the earlier result's other models (a model measured again replaces its row)")
    args = ap.parse_args(argv)
    out_path = Path(args.out or DEFAULT_OUT)
    old = earlier_result(out_path, lambda o: None if o.get("corpus") == str(CORPUS.relative_to(ROOT.parent))
                         else f"measured another corpus ({o.get('corpus')})") if args.add else None

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    models = [Path(m) for m in args.models]
    with tempfile.TemporaryDirectory(prefix="pretrain-general-") as tmp:
        overrides = list(args.overrides)
        if args.smoke:
            overrides += ["model.preset=tiny", "data.max_unlabeled_rows=300", "lm.bs=16", "text.max_vocab=2000"]
        if args.train or args.smoke:
            out_dir = Path(tmp) if args.smoke else Path(args.out_dir)
            # the smoke run shrinks the small config (the tiny one for subwords: the only subword config)
            preset = ("tiny" if args.subwords else "small") if args.smoke else args.preset
            if args.smoke and args.subwords:
                overrides += ["text.subword_vocab=300"]
            models += [pretrain(preset, d, out_dir, overrides, args.subwords, args.subword_vocab)
                       for d in args.directions]
        texts = valid_texts(limit=40 if args.smoke else None)
        if old and old.get("valid_documents") != len(texts):
            raise SystemExit(f"--add: {out_path} measured {old.get('valid_documents')} held-out documents, this run "
                             f"{len(texts)}; rerun without --add")
        rows = []
        for model in models:
            row = {"model": model.name, **evaluate(model, texts, Path(tmp) / "cache"), **training_cost(model)}
            rows.append(row)
            unit = "subword unit" if row["units"] == "subwords" else "word token"
            print(f"{model.name}: valid perplexity {row['valid_perplexity']:.1f} per {unit} "
                  f"({row['valid_perplexity_per_word']:.1f} per whitespace word), next-token accuracy "
                  f"{row['valid_accuracy']:.3f}" + (f", {row['training_minutes']:.0f} min of training at "
                  f"{row['tokens_per_second']:.0f} tokens/s" if row.get("tokens_per_second") else ""), flush=True)
    payload = {"corpus": str(CORPUS.relative_to(ROOT.parent)), "valid_documents": len(texts), "models": rows,
               "threads": args.threads}
    if old:  # earlier models first, in their order; the ones measured now replace theirs
        measured = {r["model"] for r in rows}
        payload["models"] = [r for r in old["models"] if r["model"] not in measured] + rows
        payload["earlier_commands"] = command_history(old)
    if not args.smoke or args.out:
        write_result("pretrain_general", payload, out_path)
    assert all(math.isfinite(r["valid_perplexity"]) for r in payload["models"])
    return payload


if __name__ == "__main__":
    main()
