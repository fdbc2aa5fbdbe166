"""Render docs/BENCHMARKS.md from the raw results in bench/results/*.json.

Every figure in the page comes from one of those files, which keep the command, machine, date and
versions that produced it. ``make bench`` runs the benchmarks and then this script.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RESULTS, ROOT

DOC = ROOT / "docs" / "BENCHMARKS.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _provenance(r: dict[str, Any], name: str) -> str:
    m = r["machine"]
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ""
    return (f"`{r['command']}` · {m['date']} · {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads){gpu} · raw: [`bench/results/{name}.json`](../bench/results/{name}.json)")


def _load_avg(machine: dict[str, Any]) -> str:
    load = machine.get("loadavg_1_5_15min")
    return " / ".join(f"{v:.1f}" for v in load) if load else "n/a"


def _repo_path(path: str) -> str:
    """A recorded file path as it reads inside the repository (the run may have been in another checkout)."""
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        parts = p.parts
        return str(Path(*parts[parts.index("configs"):])) if "configs" in parts else p.name


def lm_throughput(r: dict[str, Any]) -> list[str]:
    rows = ["| preset | emb/hid/layers | vocab | bs × bptt | loss | tokens/s |", "| --- | --- | --- | --- | --- | --- |"]
    for p in r["presets"]:
        rows.append(f"| {p['preset']} | {p['emb_sz']}/{p['n_hid']}/{p['n_layers']} | {p['vocab']:,} | "
                    f"{p['bs']} × {p['bptt']} | {p.get('loss', '')} | {p['tokens_per_s']:,.0f} |")
    load = r.get("loadavg_1min_before_after") or r["machine"].get("loadavg_1_5_15min")
    if load:
        rows += ["", f"1-minute load average around the run: {load} on {r['machine']['cores']} cores "
                 "(above ~2, other work shared the cores and these figures are low; the alternating "
                 "comparison with fastai below is robust to that)."]
    return rows


def trec_recipe(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    rows = [f"Config: `{_repo_path(r['config'])}`"
            f"{' with ' + ', '.join(r['overrides']) if r['overrides'] else ''}; {r['threads']} torch threads; "
            f"1/5/15-minute load average at the end {_load_avg(r['machine'])} on {r['machine']['cores']} cores.", "",
            "| seed | test accuracy | valid accuracy | LM stage (s) | classifier stage (s) | total (s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for run in r["runs"]:
        rows.append(f"| {run['seed']} | {run['test_accuracy']:.4f} | {run['valid_accuracy']:.4f} | "
                    f"{run.get('lm_seconds', 0):.0f} | {run['classifier_seconds']:.0f} | {run['total_seconds']:.0f} |")
    rows.append(f"| **mean** | **{s['test_accuracy_mean']:.4f} ± {s['test_accuracy_sd']:.4f}** | "
                f"{1 - s['valid_error_mean_pct'] / 100:.4f} | {s['lm_seconds_mean']:.0f} | "
                f"{s['classifier_seconds_mean']:.0f} | {s['total_seconds_mean']:.0f} |")
    rows += ["", f"Test error {100 - 100 * s['test_accuracy_mean']:.1f} % (mean over {len(r['runs'])} seeds), the "
             f"whole recipe in {s['total_seconds_mean'] / 60:.1f} minutes a seed on this 2-core CPU (the aim was "
             f"at least 90 % test accuracy within 30 minutes). Test accuracy is measured once, after training; "
             f"the configuration's classifier learning rate (2e-2 over 1e-2) was chosen on validation accuracy."]
    return rows


def gpu_check(r: dict[str, Any]) -> list[str]:
    c, mp = r["correctness"], r["mixed_precision"]
    rows = [f"Device: {r['device']} (torch {r['torch']}).", "",
            f"- fp32 logits, CUDA vs CPU, same weights: relative error {c['lm_logits_rel_err']:.1e} (language model), "
            f"{c['classifier_logits_rel_err']:.1e} (classifier over 300-token documents, several BPTT chunks); "
            f"with cuDNN's default TF32 {c['lm_logits_rel_err_tf32_default']:.1e}.",
            f"- Mixed precision ({mp['autocast_dtype']} autocast) through the shared Trainer: LM valid loss "
            f"{mp['lm_history'][0]['valid_loss']:.3f} → {mp['lm_history'][-1]['valid_loss']:.3f}, all losses finite: "
            f"{'yes' if mp['ok'] else 'NO'}.", "",
            "| preset | LM training tokens/s (bs 64 × 70, vocab 30k) | classifier training docs/s (bs 32 × 230) | classifier inference docs/s |",
            "| --- | --- | --- | --- |"]
    for s in r["speed"]:
        rows.append(f"| {s['preset']} | {s['lm_tokens_per_s']:,.0f} | {s['classifier_train_docs_per_s']:,.0f} | "
                    f"{s['classifier_infer_docs_per_s']:,.0f} |")
    return rows


def _spread(m: dict[str, Any], key: str) -> str:
    return f"{m[key + '_median']:.2f} ({m[key + '_min']:.2f}–{m[key + '_max']:.2f})"


#: Labels of the sides speed_vs_fastai.py compares ours with (older results hold only "fastai").
_FASTAI_SIDES = {"fastai": "fastai fp32", "fastai_bf16": "fastai bf16 autocast"}


def _ratio_key(kind: str, side: str) -> str:
    return kind if side == "fastai" else f"{kind}_{side}"


def _sides(p: dict[str, Any], key: str) -> list[str]:
    m = p[key]
    if "sides" in m:
        return [s for s in [*m["sides"], *m.get("failed", {})] if s != "ours"]
    return ["fastai"] if "ratio_median" in m else []


def speed_vs_fastai(r: dict[str, Any]) -> list[str]:
    names = {"lm_train_tokens": "LM training, tokens/s", "classifier_train_docs": "classifier training, docs/s",
             "classifier_infer_docs": "classifier inference, docs/s"}
    others = list(dict.fromkeys(s for p in r["presets"] for k in names for s in _sides(p, k)))
    header = ["preset", "measurement", "ours (median)"]
    for side in others:
        # Results made before --fastai-precisions ran fastai at the same precision as ours: plain "fastai".
        label = _FASTAI_SIDES.get(side, side) if "ours_precision" in r else side
        header += [f"{label} (median)", f"ours / {label}, wall time: median (min–max)",
                   f"ours / {label}, CPU time: median (min–max)"]
    rows = ["| " + " | ".join(header + ["rounds × steps"]) + " |", "| " + " | ".join(["---"] * (len(header) + 1)) + " |"]
    for p in r["presets"]:
        for key, label in names.items():
            m = p[key]
            cells = [p["preset"], label, f"{m['ours_per_s_median']:,.1f}"]
            for side in others:
                if side in m.get("failed", {}):
                    cells += [f"cannot run: {m['failed'][side][:70]}", "", ""]
                elif f"{side}_per_s_median" in m:
                    cells += [f"{m[side + '_per_s_median']:,.1f}", f"**{_spread(m, _ratio_key('ratio', side))}**",
                              _spread(m, _ratio_key("cpu_ratio", side))]
                else:
                    cells += ["not measured", "", ""]
            rows.append("| " + " | ".join(cells + [f"{len(m['rounds'])} × {m['steps']}"]) + " |")
    v = r.get("versions", {})
    loads = []
    for p in r["presets"]:
        ls = [rd["load_before"][0] for k in names for rd in p[k]["rounds"]]
        loads.append(f"{p['preset']} {min(ls):.1f}–{max(ls):.1f}")
    busy = "; above ~2, other processes shared the cores and the wall-time spread widens" if r["device"] == "cpu" else ""
    prec = r.get("ours_precision")
    ours = (f"Ours at `precision: {prec['asked']}` ({prec['resolved']} on this machine). " if prec
            else "Both sides under bf16 autocast. " if r.get("amp") else "")
    first = r["presets"][0]
    rows += ["", ours + f"Same parameter counts on both sides (e.g. {first['preset']}: "
                 f"{first['params_lm']['ours']:,} vs {first['params_lm'].get('fastai', first['params_lm'].get('fastai_bf16', 0)):,} "
                 f"in the LM). fastai {v.get('fastai')}, torch {v.get('torch')}, {r['threads']} threads, device "
                 f"{r.get('device_name') or r['device']}. 1-minute load average during the rounds on "
                 f"{r['machine']['cores']} cores: {', '.join(loads)}{busy}. Whole run {r['total_seconds'] / 60:.0f} min."]
    return rows


def _acc(s: dict[str, Any]) -> str:
    return f"{100 * s['test_accuracy_mean']:.1f} ± {100 * s['test_accuracy_sd']:.1f}"


def imdb_lowshot_subwords(r: dict[str, Any]) -> list[str]:
    # The word-level forward run made beside it for the ensembles (same threads) where there is one
    words = _load("imdb_lowshot_words_fwd") or _load("imdb_lowshot") or {}
    sides = {"words": words, "subwords": r}
    by = {(name, x["budget"]): x for name, res in sides.items() for x in res.get("summary", [])
          if x["method"] == "general"}
    rows = ["| labeled training reviews | words: test accuracy % | subwords: test accuracy % | seeds | "
            "learning rate chosen on validation (words / subwords) |", "| --- | --- | --- | --- | --- |"]
    for budget in r["budgets"]:
        w, sw = by.get(("words", budget)), by.get(("subwords", budget))
        if sw is None:
            continue
        lrs = " / ".join(f"{res.get('chosen_lr', {}).get(f'general/{budget}', float('nan')):g}" for res in sides.values())
        rows.append(f"| {budget:,} | {_acc(w) if w else '–'} | {_acc(sw)} | {sw['n_seeds']} | {lrs} |")
    rows += ["", "General-domain LM fine-tuned on the IMDb text (its unlabeled reviews and the labeled pool):", ""]
    for name, res in sides.items():
        g, c = res.get("general_lm"), res.get("corpus", {})
        if g:
            rows.append(f"- {name}: `{Path(g['pretrained']).name}`, {c.get('lm_tokens', 0):,} tokens an epoch in "
                        f"{c.get('vocab_size', 0):,} units, {g['seconds'] / 60:.0f} min, valid perplexity "
                        f"{g['metrics'].get('valid_perplexity', float('nan')):.1f} per unit")
    if not r.get("complete", True):
        rows += ["", "_This run was cut short; the rows above are the budgets it finished._"]
    return rows


def imdb_ensembles(r: dict[str, Any]) -> list[str]:
    budgets = sorted({s["budget"] for s in r["summary"]})
    names = list(dict.fromkeys(s["name"] for s in r["summary"]))
    by = {(s["budget"], s["name"]): s for s in r["summary"]}
    rows = ["| model | " + " | ".join(f"{b:,} labeled reviews: test accuracy %" for b in budgets) + " | seeds |",
            "| --- | " + " | ".join("---" for _ in budgets) + " | --- |"]
    for name in names:
        cells = [_acc(by[(b, name)]) if (b, name) in by else "–" for b in budgets]
        ensemble = by[(budgets[0], name)]["ensemble"]
        label = f"**{name.replace('+', ' + ')}**" if ensemble else name
        rows.append(f"| {label} | {' | '.join(cells)} | {by[(budgets[0], name)]['n_seeds']} |")
    rows += ["", "Members: " + ", ".join(f"{n} `{_repo_path(p)}`" for n, p in r["members"].items()) + "."]
    missing = [f"{t}-{d}" for t in ("words", "subwords") for d in ("fwd", "bwd") if f"{t}-{d}" not in r["members"]]
    if missing:
        rows += ["", f"_Not measured yet: {', '.join(missing)}, and the ensembles with {'it' if len(missing) == 1 else 'them'}._"]
    return rows


def accuracy_vs_fastai(r: dict[str, Any]) -> list[str]:
    rows = ["| method | test accuracy % (mean ± sd) | seeds | LM stage (s) | classifier stage (s) | total per seed (s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    ours = r.get("ours") or _ours_from_trec_recipe(r["config"])
    if ours:
        s = ours["summary"]
        rows.append(f"| ULMFiT, ours (`ulmfit_core`) | **{_acc(s)}** | {s['n_seeds']} | {s['lm_seconds_mean']:.0f} | "
                    f"{s['classifier_seconds_mean']:.0f} | {s['total_seconds_mean']:.0f} |")
    else:
        rows.append("| ULMFiT, ours | not measured yet: run `python bench/trec_recipe.py` | | | | |")
    if r.get("fastai"):
        s = r["fastai"]["summary"]
        rows.append(f"| ULMFiT, fastai {r['versions'].get('fastai')} | **{_acc(s)}** | {s['n_seeds']} | "
                    f"{s['lm_seconds_mean']:.0f} | {s['classifier_seconds_mean']:.0f} | {s['total_seconds_mean']:.0f} |")
    b = _load("baselines")
    labels = {"tfidf": "TF-IDF (1–2-grams) + logistic regression", "minilm": "MiniLM sentence embeddings + logistic regression"}
    for key, label in labels.items():
        if b and key in b["results"]:
            s = b["results"][key]
            setup = f" (+ {s['embed_seconds']:.0f} s embedding all texts once)" if key == "minilm" else ""
            rows.append(f"| {label} | {_acc(s)} | {len(s['runs'])} | – | {s['fit_seconds_mean']:.0f} "
                        f"({len(b['C_grid'])} fits: C chosen on validation){setup} | |")
    notes = [""]
    if ours and r.get("fastai"):
        fa = {x["seed"]: x for x in r["fastai"]["runs"]}
        both = [(x["seed"], x["test_accuracy"], fa[x["seed"]]["test_accuracy"]) for x in ours["runs"] if x["seed"] in fa]
        if both:
            notes.append("Same seed, same split, ours / fastai test accuracy: " + "; ".join(
                f"seed {sd}: {100 * a:.1f} % / {100 * b:.1f} %" for sd, a, b in both) + ".")
    if r.get("fastai"):
        loads = [x["load_average"][0] for x in r["fastai"]["runs"]]
        busy = max(loads) > r["machine"]["cores"] + 0.5  # the run itself keeps `cores` threads busy
        notes.append(f"fastai's runs ended with a 1-minute load average of {', '.join(f'{v:.1f}' for v in loads)} on "
                     f"{r['machine']['cores']} cores" + (" (other work shared the machine, so its times are upper "
                                                         "bounds)." if busy else ": the run alone on the machine."))
    if ours and ours.get("source") != "this run":
        notes.append(f"Our row is read from `{ours['source']}` (`{ours['source_command']}`, {ours['source_date']}).")
    if b:
        notes.append(f"Baselines: `{b['command']}` · {b['machine']['date']} · raw: "
                     "[`bench/results/baselines.json`](../bench/results/baselines.json).")
    return rows + notes


def _ours_from_trec_recipe(config: str) -> dict[str, Any] | None:
    """Our side of the TREC-6 comparison from bench/results/trec_recipe.json, when made with the same config."""
    t = _load("trec_recipe")
    if not t or Path(t["config"]).name != Path(config).name or t.get("overrides"):
        return None
    s = t["summary"]
    return {"source": "bench/results/trec_recipe.json", "source_command": t["command"],
            "source_date": t["machine"]["date"], "runs": t["runs"],
            "summary": {"test_accuracy_mean": s["test_accuracy_mean"], "test_accuracy_sd": s["test_accuracy_sd"],
                        "n_seeds": len(t["runs"]), "lm_seconds_mean": s["lm_seconds_mean"],
                        "classifier_seconds_mean": s["classifier_seconds_mean"],
                        "total_seconds_mean": s["total_seconds_mean"]}}


def baselines(r: dict[str, Any]) -> list[str]:
    rows = ["| baseline | seed | C (chosen on validation) | valid accuracy | test accuracy |", "| --- | --- | --- | --- | --- |"]
    for key, res in r["results"].items():
        for run in res["runs"]:
            rows.append(f"| {key} | {run['seed']} | {run['C']:g} | {run['valid_accuracy']:.4f} | {run['test_accuracy']:.4f} |")
    for key, why in r.get("skipped", {}).items():
        rows.append(f"| {key} | skipped: {why} | | | |")
    return rows


def imdb_lowshot(r: dict[str, Any]) -> list[str]:
    sz = r["sizes"]
    by = {(s["method"], s["budget"]): s for s in r["summary"]}
    chosen = r.get("chosen_lr", {})
    acc = lambda x: _acc(x) if x["n_seeds"] > 1 else f"{100 * x['test_accuracy_mean']:.1f}"  # noqa: E731
    general = r.get("general_lm")
    methods = (["general"] if general else []) + ["ulmfit", "scratch"]
    names = {"general": f"general LM (`{general['pretrained']}`) + IMDb fine-tuning" if general else "",
             "ulmfit": "IMDb-only LM", "scratch": "from scratch"}
    rows = [f"| labeled training reviews | {' | '.join(names[m] + ': test accuracy %' for m in methods)} | seeds | "
            f"classifier epochs | learning rate chosen on validation ({' / '.join(methods)}) |",
            "| " + " | ".join(["---"] * (len(methods) + 4)) + " |"]
    for budget in r["budgets"]:
        found = [by.get((m, budget)) for m in methods]
        if found[0] is None:
            continue
        epochs = next(x["epochs"] for x in r["runs"] if x["budget"] == budget)
        label = f"{budget:,}" + (' ("all", capped)' if budget == sz["all"] else "")
        lrs = " / ".join(f"{chosen[k]:g}" if k in chosen else "–" for k in (f"{m}/{budget}" for m in methods))
        cells = [acc(x) if x else "–" for x in found]
        cells[0] = f"**{cells[0]}**"
        rows.append(f"| {label} | {' | '.join(cells)} | {found[0]['n_seeds']} | {epochs} | {lrs} |")
    if not r.get("complete", True):
        rows += ["", "_This run was cut short; the rows above are the budgets it finished._"]
    lm, c = r["lm"], r["corpus"]
    grid = ", ".join(f"{x:g}" for x in r.get("lr_grid", []))
    rows += ["", f"Model `{r['preset']}`. Language model: {c['n_unlabeled']:,} unlabeled reviews + the {sz['all']:,} labeled "
                 f"training reviews of the pool, {lm['tokens_per_epoch']:,} tokens an epoch, "
                 f"{r['config']['lm']['epochs']} epochs (lr {r['config']['lm']['lr']:g}) in {lm['seconds'] / 60:.1f} min, "
                 f"valid perplexity {lm['metrics'].get('valid_perplexity', float('nan')):.1f}, next-word accuracy "
                 f"{lm['metrics'].get('valid_accuracy', float('nan')):.3f}; vocabulary {c['vocab_size']:,}. "
                 f"Test: {sz['test']:,} reviews drawn (seeded) from the {sz['test_of']:,} test reviews. Validation: "
                 f"{sz['valid']:,} other training reviews, on which each method's learning rate was chosen per budget "
                 f"from {{{grid}}} (first seed; the other seeds reuse it)."
                 + ("" if r.get("earlier_commands") else f" Whole run {r['total_seconds'] / 60:.0f} min"
                    + (", the language model reused from an earlier run with the same settings (`--cache-dir`)."
                       if lm.get("reused") else "."))]
    if r.get("earlier_commands"):
        rows += ["", "Merged from several runs (`--add`, which checks that the draws, the tokenized corpus and the "
                     "recipe are the same, float32 included): " + "; ".join(
                         f"`{c['command']}` ({c['date']})" for c in r["earlier_commands"])
                 + f"; then `{r['command']}` ({r['machine']['date']}, {r['total_seconds'] / 60:.0f} min)."]
    if general:
        g = general["metrics"]
        rows += ["", f"General-domain start: `{general['pretrained']}` fine-tuned on the same IMDb text (lr 0.01, one frozen "
                     f"epoch, then {r['config']['lm']['epochs']}) in {general['seconds'] / 60:.1f} min: valid perplexity "
                     f"{g.get('valid_perplexity', float('nan')):.1f}, next-word accuracy {g.get('valid_accuracy', float('nan')):.3f}."]
    top = max(r.get("lr_grid") or [0])
    at_top = sorted(k for k, v in chosen.items() if v == top)
    if at_top:
        rows += ["", f"Chosen at the top of the grid ({top:g}): {', '.join(at_top)}; a wider grid might move those rows."]
    return rows


def _pct(s: dict[str, float]) -> str:
    """A ``{"mean", "sd"}`` accuracy summary as ``93.7 ± 0.7`` (percent)."""
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def transfer_trec(r: dict[str, Any]) -> list[str]:
    starts = {"random": "random weights (LM trained on TREC-6 only)", "general": f"the general-domain `{r['model']}`"}
    rows = ["| language model starts from | forward: test accuracy % | backward | forward + backward ensemble | seeds | "
            "minutes a seed (both directions) |", "| --- | --- | --- | --- | --- | --- |"]
    for start, s in r["summary"].items():
        cells = [_pct(s[v]) for v in ("fwd", "bwd", "ensemble")]
        cells[2] = f"**{cells[2]}**"
        rows.append(f"| {starts.get(start, start)} | {' | '.join(cells)} | {len(s['seeds'])} | {s['minutes_per_seed']:.0f} |")
    if r.get("jobs", 1) > 1:
        rows += ["", f"{r['jobs']} runs (a start and a seed, both directions) went at a time, each on {r['threads']} "
                 "thread(s) (`--jobs`), so the minutes are those of a machine the runs shared."]
    rows += ["", "Per seed (test accuracy %, forward / backward / ensemble):", ""]
    for run in sorted(r["runs"], key=lambda x: (x["start"], x["seed"])):
        a = run["test_accuracy"]
        rows.append(f"- {run['start']}, seed {run['seed']}: {100 * a['fwd']:.1f} / {100 * a['bwd']:.1f} / "
                    f"{100 * a['ensemble']:.1f}")
    return rows


def subwords_trec(r: dict[str, Any]) -> list[str]:
    rows = ["| tokenizer | language model starts from | units in the vocabulary | forward: test accuracy % | backward | "
            "forward + backward | seeds | minutes a seed (all directions) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    summary, pretrained = r["summary"], r.get("pretrained") or {}
    for tok in ("words", "subwords"):
        if tok in summary:
            s = summary[tok]
            start = f"`{Path(pretrained[tok]).name}`" if pretrained.get(tok) else "random weights"
            cells = [_pct(s[v]) if v in s else "–" for v in ("fwd", "bwd", "ensemble")]
            rows.append(f"| {tok} | {start} | {s['vocab_size']:,} | {' | '.join(cells)} | {len(s['seeds'])} | "
                        f"{s['minutes_per_seed']:.0f} |")
    both = next(((k, v) for k, v in summary.items() if k.startswith("words+subwords")), None)
    if both:
        members = 2 * len(both[0].split(" ", 1)[1].split("+"))
        rows.append(f"| **words + subwords**, {members} members | – | – | – | – | **{_pct(both[1])}** "
                    f"| {len(both[1]['seeds'])} | – |")
    if r.get("jobs", 1) > 1:
        rows += ["", f"{r['jobs']} runs went at a time, each on {r['threads']} thread(s), so the minutes are those of a "
                 "machine the runs shared."]
    rows += ["", "Per seed (test accuracy %, " + " / ".join(r["runs"][0]["test_accuracy"])
             + "; then the word + subword ensemble):", ""]
    for run in sorted(r["runs"], key=lambda x: (x["tokenizer"], x["seed"])):
        rows.append(f"- {run['tokenizer']}, seed {run['seed']}: "
                    + " / ".join(f"{100 * v:.1f}" for v in run["test_accuracy"].values()))
    for seed, acc in sorted(r.get("four_member_test_accuracy", {}).items()):
        rows.append(f"- words + subwords, seed {seed}: {100 * acc:.1f}")
    return rows


def subword_vocab_trec(r: dict[str, Any]) -> list[str]:
    general = {m["model"]: m for m in (_load("pretrain_general") or {}).get("models", [])}
    rows = ["| units learnt (general-en) | units in the vocabulary | general LM: held-out perplexity per whitespace word "
            "| forward: test accuracy % | seeds | minutes a seed |", "| --- | --- | --- | --- | --- | --- |"]
    for vocab, s in sorted(r["summary"].items(), key=lambda kv: int(kv[0])):
        ppl = general.get(s["pretrained"], {}).get("valid_perplexity_per_word")
        rows.append(f"| {int(vocab):,} (`{s['pretrained']}`) | {s['vocab_size']:,} | "
                    f"{f'{ppl:,.0f}' if ppl else '–'} | {_pct(s['fwd'])} | {len(s['seeds'])} | "
                    f"{s['minutes_per_seed']:.0f} |")
    words = ((_load("subwords_trec_pretrained") or {}).get("summary") or {}).get("words")
    if words:
        ppl = general.get("general-en-tiny-fwd", {}).get("valid_perplexity_per_word")
        rows.append(f"| words (`general-en-tiny-fwd`) | {words['vocab_size']:,} | {f'{ppl:,.0f}' if ppl else '–'} | "
                    f"{_pct(words['fwd'])} | {len(words['seeds'])} | – |")
    rows += ["", "Per seed (test accuracy %):", ""]
    for run in r["runs"]:
        rows.append(f"- {run['subword_vocab']:,} units, seed {run['seed']}: {100 * run['test_accuracy']['fwd']:.1f}")
    return rows


def pretrain_general(r: dict[str, Any]) -> list[str]:
    rows = ["| model | units | direction | held-out perplexity per unit | per whitespace word | next-token accuracy | "
            "training | tokens/s (2 CPU threads) | tokens per epoch × epochs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in r["models"]:
        train = f"{m['training_minutes']:.0f} min" if m.get("training_minutes") else "–"
        speed = f"{m['tokens_per_second']:,.0f}" if m.get("tokens_per_second") else "–"
        tokens = f"{m['tokens_per_epoch']:,} × {m['epochs']}" if m.get("tokens_per_epoch") else "–"
        per_word = f"{m['valid_perplexity_per_word']:.0f}" if m.get("valid_perplexity_per_word") else "–"
        rows.append(f"| `{m['model']}` | {m.get('units', 'words')} | {m['direction']} | {m['valid_perplexity']:.1f} | "
                    f"{per_word} | {m['valid_accuracy']:.3f} | {train} | {speed} | {tokens} |")
    rows += ["", f"Held-out text: the {r['valid_documents']} documents of `{r['corpus']}/valid.txt.gz` (never trained on), "
                 "each model reading them in its own direction with its own vocabulary (words a word model lacks count "
                 "as `xxunk`, which makes its perplexity look better than it is: it never has to spell out a rare "
                 "word, which a subword model does). Per whitespace word: the same total log-likelihood divided by the "
                 "documents' whitespace-separated words, so word and subword models compare (a word model's token "
                 "also counts punctuation and fastai's markers); measured for the models run since that column existed."]
    return rows


SEARCH_LABELS = {
    "random_fifo": "random search, no early stopping", "tpe_fifo": "TPE, no early stopping",
    "tpe_asha": "TPE + ASHA (Ray's rungs; the default)", "tpe_asha_unfreeze": "TPE + ASHA at the unfreezing rungs",
    "tpe_asha_warm": "TPE + ASHA, warm-started from another seed's search", "tpe_hyperband": "TPE + HyperBand",
}


def search_efficiency(r: dict[str, Any]) -> list[str]:
    label = SEARCH_LABELS
    rows = ["| search | seed | best valid accuracy | test accuracy of the best config (retrained) | trial-epochs "
            "(of all-run) | trials stopped early | wall time (min) | LM trainings | LM compute saved by sharing (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["runs"]:
        best = x.get("best_valid_accuracy")
        test = x.get("best_test_accuracy")
        rows.append(f"| {label.get(x['variant'], x['variant'])} | {x['search_seed']} | "
                    f"{_num(best)} | {_num(test)} | {x['trial_epochs']} ({x['trial_epochs_if_all_ran']}) | "
                    f"{x['trials_stopped_by_asha']} | {x['wall_seconds'] / 60:.1f} | {x['lm_trainings']} | "
                    f"{x['lm_seconds_saved']:.0f} |")
    summary = r.get("summary")
    if summary:
        rows += ["", "Over the search seeds (means): \"to random's best\" is the share of random search's trial-epochs a "
                 "search needed before its best completed trial matched random search's final best on the same seed "
                 "(averaged over the seeds where it did; \"reached\" counts them).", "",
                 "| search | seeds | best valid accuracy | test accuracy (retrained) | trial-epochs | minutes | "
                 "reached random's best | trial-epochs to random's best (share of random's) |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for variant, m in summary.items():
            rows.append(f"| {label.get(variant, variant)} | {m['seeds']} | {_num(m['best_valid_accuracy_mean'])} | "
                        f"{_num(m['best_test_accuracy_mean'])} | {_num(m['trial_epochs_mean'], '.0f')} | "
                        f"{_num(m['minutes_mean'], '.1f')} | {m['reached_random_best']} | "
                        f"{_num(m['epochs_to_random_best_share_mean'], '.2f')} |")
        if r.get("plot"):
            rows += ["", f"![best-so-far validation accuracy against trial-epochs and wall time](../bench/results/{r['plot']})"]
    else:
        rows += _search_efficiency_means(r, label)
    rows += ["", f"{r['num_samples']} trials per search, 2 at a time (1 CPU each). \"LM compute saved\": for each "
             "trial that reused the search's fine-tuned LM, the seconds that LM took to train (it would otherwise "
             "have trained its own). A warm-started search's trial-epochs leave out those of the search it started "
             "from. One TREC-6 test score has a standard error of ~1.5 points; each search seed is one draw (the "
             "seed also picks the validation split, so validation figures differ between seeds)."]
    return rows


def _num(value: Any, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _search_efficiency_means(r: dict[str, Any], label: dict[str, str]) -> list[str]:
    """Mean rows for a result written before summaries (two variants, no curves)."""
    rows: list[str] = []
    seeds = sorted({x["search_seed"] for x in r["runs"]})
    if len(seeds) > 1:
        for variant in dict.fromkeys(x["variant"] for x in r["runs"]):
            xs = [x for x in r["runs"] if x["variant"] == variant and x.get("best_test_accuracy") is not None]
            if len(xs) == len(seeds):
                def mean(k: str, xs: list = xs) -> float:
                    return sum(float(x[k]) for x in xs) / len(xs)
                rows.append(f"| **{label.get(variant, variant)}, mean** | {len(xs)} seeds | "
                            f"**{mean('best_valid_accuracy'):.4f}** | **{mean('best_test_accuracy'):.4f}** | "
                            f"{mean('trial_epochs'):.0f} | {mean('trials_stopped_by_asha'):.0f} | "
                            f"{mean('wall_seconds') / 60:.1f} | | {mean('lm_seconds_saved'):.0f} |")
    return rows


def space_evidence(r: dict[str, Any]) -> list[str]:
    rows = ["| parameter | importance (pooled) | best trials span (share of the searched range) | best trials at an edge |",
            "| --- | --- | --- | --- |"]
    region = r["best_region"]
    for key, share in sorted(r["pooled_importances"].items(), key=lambda kv: -kv[1]):
        best = region.get(key, {})
        span = (f"{best['min']:.3g} – {best['max']:.3g} (median {best['median']:.3g}; {best['share_of_range']:.0%})"
                if "min" in best else ", ".join(f"{c}: {n}" for c, n in best.get("counts", {}).items()))
        rows.append(f"| `{key}` | {share:.0%} | {span} | {', '.join(best.get('at_edge', [])) or '–'} |")
    per = ", ".join(f"{label} ({s['trials']})" for label, s in r["per_search"].items())
    rows += ["", f"{r['trials_completed']} completed trials from: {per}. Importance: Optuna's fANOVA over the pooled "
             f"completed trials; \"best trials\": the top {r['top']:.0%} by validation accuracy (counts per choice for "
             "the STLR ratio and cut). docs/SEARCH.md says what the default space takes from this."]
    return rows


def search_scaling(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    names = {"direct": "the same trials without the service (stage calls in a loop in a fresh process, 2 threads)",
             "workers_1": "search, 1 trial at a time (2 CPUs each)",
             "workers_2": "search, 2 trials at a time (1 CPU each)"}
    rounds, trials, per_trial = r["rounds"], r["trials"], s["direct_seconds_per_trial"]
    rows = ["| mode | round | trials | wall time (s) | trials per hour |", "| --- | --- | --- | --- | --- |"]
    for m in r["modes"]:
        rows.append(f"| {names.get(m['mode'], m['mode'])} | {m['round']} | {m['trials']} | "
                    f"{m['wall_seconds']:.0f} | {m['trials_per_hour']:.0f} |")
    w1 = [m for m in r["modes"] if m["mode"] == "workers_1"]
    parts, stderr, timed = s["overhead_parts"], s["overhead_share_stderr"], s["timed_in_search_seconds_per_trial"]
    rows += ["", f"The service's own cost (Ray scheduling and trial processes, MLflow logging, a checkpoint every "
             f"epoch, plots): **{s['overhead_seconds_per_trial']:.2f} s per trial, {100 * s['overhead_share']:.1f} %** "
             + (f"(± {100 * stderr:.1f} points, standard error over the rounds) " if stderr is not None else "")
             + f"of a {per_trial:.1f} s trial (1-worker search against direct, both 2 threads per trial"
             + (f"; mean of {rounds} rounds: " + ", ".join(f"{100 * x:.1f} %" for x in s["overhead_share_by_round"])
                if rounds > 1 else "") + ")."
             f" The parts timed within the search itself, which the machine's drift barely moves: "
             f"{parts['per_search'] * trials:.1f} s once per search and {parts['between_trials']:.2f} s between "
             f"trials, **{timed:.2f} s per trial ({100 * timed / per_trial:.1f} %)** at {trials} trials per search; "
             f"the rest (a trial's setup, its epochs beside the driver) is a difference against the direct run and "
             f"carries the drift."
             f" Two workers: **{s['speedup_2_workers']:.2f}x** the trials per hour of one. Starting the local Ray: "
             f"{statistics.mean([m['ray_start_seconds'] for m in w1]):.1f} s, once per search. The shared LM was trained "
             f"once up front ({s['lm_seconds_once']:.0f} s) and the MLflow store's database created once "
             f"({s['store_create_seconds_once']:.1f} s); neither is in these times. Every mode ran the same {trials} "
             f"configurations (seeded random sampler, no early stopping)."
             + (" Round 1 is the driver process's first search, as every `launch.py search` is: it also starts the "
                "plot helper process and imports what the search's plots need." if rounds > 1 else "")]
    part_labels = {"per_search": "once per search, outside the trials (parent run, LM lookup, the first trial "
                                 "process's start, export, plots)",
                   "between_trials": "a worker slot idle between trials (scheduling, actor reuse)",
                   "in_trial": "inside a trial, outside its epochs (corpus and LM loading, checkpoint reports)",
                   "slower_epochs": "the epochs themselves slower than direct (driver, Ray, MLflow and the plot "
                                    "helper share the cores; the machine's drift)"}
    parts_by_round = s["overhead_parts_by_round"]
    rows += ["", "Where the overhead goes (1 worker), seconds per trial, mean of the rounds; the parts add up to "
             "the total:", "", "| part | s per trial | share of a direct trial | by round (s) |",
             "| --- | --- | --- | --- |"]
    rows += [f"| {part_labels.get(k, k)} | {v:.2f} | {100 * v / per_trial:.1f} % | "
             + ", ".join(f"{p[k]:.2f}" for p in parts_by_round) + " |" for k, v in parts.items()]
    rows += [f"| **total** | **{s['overhead_seconds_per_trial']:.2f}** | **{100 * s['overhead_share']:.1f} %** | |"]
    # The phases bench/search_scaling.py's per_search_phases splits the once-per-search part into.
    phase_labels = {"setup": "setup: validation, MLflow check, data and LM lookup, parent run, Tune's setup",
                    "first_trial_process": "the first trial's process: start, imports (Ray Tune, torch), set-up",
                    "tune_end": "after the last trial: Tune stops the trial process, saves its state",
                    "search_plots": "the search's plots (Optuna's, drawn by the plot helper)",
                    "finish": "leaderboard, best config export, MLflow parent run's summary"}
    phases, phases_by_round = s["per_search_seconds"], s["per_search_seconds_by_round"]
    rows += ["", "The once-per-search part, seconds per search (1 worker, mean of the rounds):", "",
             "| phase | s per search | by round (s) |", "| --- | --- | --- |"]
    rows += [f"| {phase_labels.get(k, k)} | {v:.2f} | {', '.join(f'{b[k]:.2f}' for b in phases_by_round)} |"
             for k, v in phases.items()]
    rows += [f"| **total** | **{sum(phases.values()):.2f}** | "
             f"{', '.join(f'{sum(b.values()):.2f}' for b in phases_by_round)} |"]
    cpu = s["service_cpu_seconds_per_trial"]
    if cpu:  # None without Linux /proc
        rows += ["", f"CPU seconds per trial (1 worker, mean of the rounds): the whole machine was busy "
                 f"{cpu['machine_extra']:.2f} s more per trial than for the same trials run directly; the driver "
                 f"process used {cpu['driver']:.2f} s per trial and the plot helper process (niced) "
                 f"{cpu['plot_helper']:.2f} s."]
    return rows


def profile_step(r: dict[str, Any]) -> list[str]:
    fp32 = max(p["gflops"] for p in r["peaks"] if p["dtype"] == "float32")
    bf16 = max(p["gflops"] for p in r["peaks"] if p["dtype"] == "bfloat16")
    when = "the better of before and after the steps" if len(r["peaks"]) > 2 else "before the steps"
    rows = [f"Matmul peak measured in the run ({r['threads']} threads, {when}): float32 **{fp32:,.0f} GFLOP/s**, bfloat16 "
            f"**{bf16:,.1f} GFLOP/s** ({'native' if r['native_cpu_bf16'] else 'emulated: this CPU has no AVX512_BF16/AMX'}). "
            f"FLOPs: {r['flops_formula']}.", "",
            "| preset | precision | stage | s / step | throughput | GFLOP/s | MFU vs fp32 peak | MFU vs bf16 peak |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        for stage, unit in (("lm", "tokens/s"), ("classifier", "docs/s")):
            x = row[stage]
            rows.append(f"| {row['preset']} | {row['precision']} ({row['resolved_precision']}) | {stage} | "
                        f"{x['step_seconds_median']:.3f} | {x['items_per_s']:,.1f} {unit} | {x['gflops']:,.1f} | "
                        f"{100 * x['mfu_vs_fp32_peak']:.1f} % | {100 * x['mfu_vs_bf16_peak']:.1f} % |")
    buckets = [b for b in r["rows"][0]["lm"]["breakdown_share"]
               if any(row[st]["breakdown_share"].get(b, 0) >= 0.005 for row in r["rows"] for st in ("lm", "classifier"))]
    rows += ["", "Share of the profiled step time (self time of every op, backward ops counted with the forward op "
             "that made them):", "",
             "| preset | precision | stage | " + " | ".join(buckets) + " |", "| " + " | ".join(["---"] * (len(buckets) + 3)) + " |"]
    for row in r["rows"]:
        for stage in ("lm", "classifier"):
            share = row[stage]["breakdown_share"]
            rows.append(f"| {row['preset']} | {row['precision']} | {stage} | "
                        + " | ".join(f"{100 * share.get(b, 0):.0f} %" for b in buckets) + " |")
    for probe in r.get("lstm_autocast_probe", []):
        verdict = (f"runs, {probe['bf16_speedup']:.2f}x the float32 speed, gradients finite: "
                   f"{'yes' if probe['bf16_grads_finite'] else 'NO'}" if probe["bf16_runs"]
                   else f"does not run: `{probe['bf16_error'][:120]}`")
        rows += ["", f"oneDNN's fused LSTM (`torch.lstm`, {probe['preset']} first layer, forward + backward) under CPU "
                     f"bf16 autocast: {verdict}. Our model runs it in bf16 under autocast on CPUs with native bf16 and in "
                     "float32 on others (docs/RECIPE.md)."]
    load = r.get("load_average_start_end")
    if load:
        rows += ["", f"1-minute load average at the start / end: {load[0][0]:.1f} / {load[1][0]:.1f} on "
                     f"{r['machine']['cores']} cores (above the thread count, other work shared the cores: absolute "
                     "times are then low, the shares less affected)."]
    return rows + _malloc_comparison(r)


def _malloc_comparison(tuned: dict[str, Any]) -> list[str]:
    """The same steps with glibc's default malloc (profile_step_default_malloc.json), against ``tuned``."""
    default = _load("profile_step_default_malloc")
    if not default or not tuned.get("keep_freed_memory") or default.get("keep_freed_memory"):
        return []
    steps = {(row["preset"], row["precision"], st): row[st]["step_seconds_median"]
             for row in default["rows"] for st in ("lm", "classifier")}
    rows = ["", "**Reusing freed memory** (`ulmfit_core/memory.py`): the Trainer on a CPU raises glibc's mmap and trim "
            "thresholds, so each step's large tensors come from memory the last step freed instead of fresh pages. The "
            "same steps with glibc's default malloc (`ULMFIT_KEEP_FREED_MEMORY=0 python bench/profile_step.py --out "
            "bench/results/profile_step_default_malloc.json`, run right after):", "",
            "| preset | precision | stage | s / step, default malloc | s / step, freed memory reused | speedup |",
            "| --- | --- | --- | --- | --- | --- |"]
    for row in tuned["rows"]:
        for st in ("lm", "classifier"):
            before = steps.get((row["preset"], row["precision"], st))
            if before:
                after = row[st]["step_seconds_median"]
                rows.append(f"| {row['preset']} | {row['precision']} | {st} | {before:.3f} | {after:.3f} | "
                            f"**{before / after:.2f}x** |")
    if "minor_page_faults" in default and "minor_page_faults" in tuned:
        rows += ["", f"Minor page faults over the whole run: {default['minor_page_faults']:,} with the default, "
                     f"{tuned['minor_page_faults']:,} reusing freed memory. The two runs are sequential, minutes apart, on a "
                     "machine whose speed drifts 10-15 % over minutes: read a single ratio with that margin."]
    return rows


def tokenize_speed(r: dict[str, Any]) -> list[str]:
    rows = [f"| reviews | characters | one process, docs/s | {r['workers']} processes, docs/s | speedup | same tokens |",
            "| --- | --- | --- | --- | --- | --- |"]
    for x in r["sizes"]:
        rows.append(f"| {x['docs']:,} | {x['chars'] / 1e6:.1f} M | {x['single_docs_per_s']:,.0f} | "
                    f"{x['pool_docs_per_s']:,.0f} | **{x['speedup']:.2f}x** | {'yes' if x['identical'] else 'NO'} |")
    wins = r.get("smallest_winning_chars")
    loads = ", ".join(f"{x['load_after'][0]:.1f}" for x in r["sizes"])
    found = (f"in this run several processes were faster from {wins / 1e6:.1f} M characters" if wins
             else "in this run one process was faster at every size")
    rows += ["", f"The recipe splits tokenizing among processes from `PARALLEL_MIN_CHARS` = "
                 f"{r['parallel_min_chars'] / 1e6:.0f} M characters up (ulmfit_core/text.py); {found}. 1-minute load "
                 f"average after each size: {loads} on {r['machine']['cores']} cores."]
    return rows


def trials_per_gpu(r: dict[str, Any]) -> list[str]:
    rows = [f"Device: {r['gpu'] or r['device']}" + (" (smoke run on CPU)" if r["smoke"] else "") + ".", "",
            "| preset | trials at once | trials | wall time (s) | trials per hour | vs the first level | "
            "median trial time (s) | most trials seen at once |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for preset, p in r["presets"].items():
        for x in p["levels"]:
            median = sorted(x["trial_time_total_s"])[len(x["trial_time_total_s"]) // 2] if x["trial_time_total_s"] else 0
            rows.append(f"| {preset} | {x['concurrent']} | {x['trials']} | {x['wall_seconds']:.0f} | "
                        f"**{x['trials_per_hour']:.0f}** | {x['throughput_vs_first']:.2f}x | {median:.0f} | "
                        f"{x['max_trials_at_once']} |")
    lm = ", ".join(f"{k} {p['lm_seconds_once']:.0f} s" for k, p in r["presets"].items())
    rows += ["", f"The shared language model was trained once per preset before the searches ({lm}) and is not in "
                 "these times. Overrides: " + ", ".join(f"`{o}`" for o in r["overrides"]) + "."]
    return rows


def precision_accuracy(r: dict[str, Any]) -> list[str]:
    rows = ["| seed | precision | LM valid perplexity | valid accuracy | test accuracy | LM stage (s) | classifier stage (s) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for x in sorted(r["runs"], key=lambda x: (x["seed"], x["precision"])):
        rows.append(f"| {x['seed']} | {x['precision']} | {x['lm_valid_perplexity']:.2f} | {x['valid_accuracy']:.4f} | "
                    f"{x['test_accuracy']:.4f} | {x['lm_seconds']:.0f} | {x['classifier_seconds']:.0f} |")
    s = r["summary"]
    for prec in ("fp32", "bf16"):
        if prec in s:
            x = s[prec]
            rows.append(f"| **mean** | **{prec}** | {x['lm_valid_perplexity_mean']:.2f} | | "
                        f"**{100 * x['test_accuracy_mean']:.1f} ± {100 * x['test_accuracy_sd']:.1f} %** | "
                        f"{x['lm_seconds_mean']:.0f} | {x['classifier_seconds_mean']:.0f} |")
    if s.get("paired"):
        rows += ["", "Same seed, bf16 − fp32 test accuracy: " + "; ".join(
            f"seed {p['seed']}: {100 * p['test_accuracy_bf16_minus_fp32']:+.1f} points (perplexity ratio "
            f"{p['lm_perplexity_bf16_over_fp32']:.3f})" for p in s["paired"]) + "."]
    rows += ["", f"Device {r['device']}, {'native' if r['native_bf16'] else 'EMULATED'} bf16; config `{_repo_path(r['config'])}`"
                 + (f" with {', '.join(r['overrides'])}" if r["overrides"] else "") + ". 1/5/15-minute load average "
                 f"at the end {_load_avg(r['machine'])} on {r['machine']['cores']} cores: the stage times are for "
                 "comparing the two precisions within this run, not speed figures."]
    return rows


def suite_time(r: dict[str, Any]) -> list[str]:
    rows = ["| run | command | wall time | pytest's time | passed | skipped | failed |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for x in r["runs"]:
        c = x.get("counts", {})
        rows.append(f"| {x['label']} | `{x['command']}` | **{x['wall_seconds'] / 60:.1f} min** | "
                    f"{x.get('pytest_seconds', 0) / 60:.1f} min | {c.get('passed', 0)} | {c.get('skipped', 0)} | "
                    f"{c.get('failed', 0) + c.get('errors', 0) + c.get('error', 0)} |")
    loads = ", ".join(f"{x['loadavg_after'][0]:.1f}" for x in r["runs"])
    rows += ["", f"1-minute load average after each run: {loads} on {r['machine']['cores']} cores (the suite itself "
                 "fills both). The CPU behind this machine varies from day to day: compare runs of one day only."]
    return rows


SECTIONS: list[tuple[str, str, str, Callable[[dict[str, Any]], list[str]]]] = [
    ("lm_throughput", "Language-model training speed",
     "Forward + backward + AdamW step on random token ids. fastai's AWD-LSTM measured ~1,750 (small) and "
     "~750 (paper) tokens/s on this kind of machine with the same batch, BPTT, vocabulary and threads; machines of "
     "this kind differ from day to day, so the like-for-like figure is the same-process comparison with fastai "
     "below (run on the same day: fastai's small LM trained ~1,210 tokens/s there).",
     lm_throughput),
    ("profile_step", "Where a training step's time goes, and MFU (CPU)",
     "One language-model step (bs 64 × bptt 70, vocabulary 30k) and one classifier step (32 documents of 230 "
     "tokens) of the real `Trainer.train_step`, profiled with `torch.profiler` after a warm-up step "
     "(`python bench/profile_step.py`); throughput from separate unprofiled steps. MFU: the model's analytic matmul "
     "FLOPs per second over the machine's measured matmul peak.",
     profile_step),
    ("tokenize_speed", "Tokenizing IMDb in one process and in several",
     "IMDb's train, unlabeled and test reviews, tokenized with our rules and spaCy in one process, and split between "
     "this process and worker processes (fresh interpreters returning token ids; their start-up included) "
     "(`python bench/tokenize_speed.py`); both outputs compared.",
     tokenize_speed),
    ("trec_recipe", "The whole recipe on TREC-6 (CPU, no general-domain pretraining)",
     "LM fine-tuned on TREC-6's training questions only (no test text), then the classifier with gradual "
     "unfreezing; test accuracy on the 500 official test questions. The paper's ablation without "
     "pretraining reports 10.67 % validation error; one TREC-6 test score has a standard error of ~1.5 points.",
     trec_recipe),
    ("precision_accuracy", "bf16 against fp32: language-model perplexity and TREC-6 accuracy",
     "The whole recipe (`configs/trec_small.yaml`) once with `precision: fp32` and once with `precision: bf16` per "
     "seed (`python bench/precision_accuracy.py`); the same seed draws the same split and initial weights. Under bf16 "
     "on a CPU with native bf16 the LSTM kernel runs in bf16 too (oneDNN's, as fastai's; docs/RECIPE.md). A change "
     "of thread count changes float32 summation order and with it a seed's result: float32 with 1 thread (an earlier "
     "run) scored 93.2 ± 0.2 %, with 2 threads (this run) 92.3 ± 0.2 %.",
     precision_accuracy),
    ("gpu_check", "On a GPU: agreement with the CPU, mixed precision, speed",
     "Run on a lent GPU machine with `python bench/gpu_check.py --out bench/results/gpu_check.json`. Same batch "
     "shapes as the CPU figures; not tuned for the GPU (larger batches would raise throughput).",
     gpu_check),
    ("speed_vs_fastai", "Speed against fastai's AWD-LSTM (CPU)",
     "Our AWD-LSTM at the default `precision: auto` (bf16 autocast where the CPU has AVX512_BF16/AMX, else float32) "
     "against fastai's in float32 and under the same bf16 autocast "
     "(`fastai.text.all`: `get_language_model` / `get_text_classifier` with `AWD_LSTM`), "
     "same sizes, dropouts, random batches, step code (cross-entropy + AR/TAR, backward, clipping, AdamW) and threads, "
     "timed alternately in one process (`bench/.peers-venv/bin/python bench/speed_vs_fastai.py`). LM: bs 64 × bptt 70, "
     "vocabulary 30k; classifier: 32 documents of 230 tokens, BPTT chunks of 70. A ratio above 1 means ours is faster. "
     "Each round times one side then the other (order alternating); the spread is over rounds. Inference is the "
     "eval-mode forward under each side's precision, as validation during training runs it; `predict`, `evaluate` "
     "and serving run float32.",
     speed_vs_fastai),
    ("speed_vs_fastai_gpu", "Speed against fastai's AWD-LSTM on a GPU, float32",
     "The same comparison on a lent GPU machine, fastai carried there as wheels: `python bench/speed_vs_fastai.py "
     "--device cuda --name speed_vs_fastai_gpu` (12 rounds × 10 steps per side, 20 for inference). float32 weights and "
     "activations (cuDNN's TF32 default for the LSTM).",
     speed_vs_fastai),
    ("speed_vs_fastai_gpu_bf16", "Speed against fastai's AWD-LSTM on a GPU, bfloat16 autocast",
     "As above with `--amp`: both sides under bf16 autocast, as our Trainer runs on CUDA.",
     speed_vs_fastai),
    ("accuracy_vs_fastai", "TREC-6 accuracy against fastai's ULMFiT and simple baselines (CPU)",
     "No general-domain pretraining on either side: each language model reads TREC-6's training questions only "
     "(never test text), then the classifier is trained with gradual unfreezing. fastai's run takes every setting "
     "from `configs/trec_small.yaml` (sizes 200/512/3, dropouts, epochs, rates, `lrm`, batch, BPTT, clipping, "
     "unfreezing) and the same train/validation split, but keeps fastai's own `fit_one_cycle` schedule and tokenizer "
     "(`bench/accuracy_vs_fastai.py`). The baselines train on the same questions and pick C on the same validation "
     "split (`bench/baselines.py`). Test accuracy on the 500 test questions; one score has a standard error of ~1.5 points.",
     accuracy_vs_fastai),
    ("baselines", "TREC-6 baselines, per seed",
     "The seed picks the validation split (as for our recipe); the fits themselves are deterministic.",
     baselines),
    ("imdb_lowshot", "Low-resource ULMFiT on IMDb (CPU)",
     "The paper's low-shot experiment (its Figure 3), scaled to a CPU: one language model trained on unlabeled reviews "
     "plus the labeled pool (never validation or test text), then classifiers from 100, 1,000 and all labeled reviews "
     "of the pool, against the same classifier trained from scratch on the same reviews "
     "(`python bench/imdb_lowshot.py`). Three language models: this project's general-domain `general-en-tiny-fwd` "
     "fine-tuned on the reviews (the paper's recipe; its model was WikiText-103's, which cannot be downloaded here), "
     "one trained on the reviews alone from random weights (the paper's \"without pretraining\" ablation), and none "
     "(from scratch). The model is the `tiny` preset with a 10,000-word vocabulary trained for a few epochs, and "
     "\"all\" is a capped pool rather than 25,000 reviews, so that the run fits a working session on 2 cores. Each method's learning rate is chosen per budget on "
     "the validation reviews, so neither side is judged at a rate that suits only the other. One score on 3,000 test "
     "reviews has a standard error under one point; seeds also draw different labeled reviews, and at 100 reviews "
     "that draw moves the score by several points.",
     imdb_lowshot),
    ("imdb_lowshot_subwords", "Low-resource IMDb with subword units (CPU)",
     "The `general` method of the section above (a general-domain LM fine-tuned on the reviews, then classifiers "
     "from 100 and 1,000 labeled reviews, the learning rate chosen on validation per budget) with subword units: "
     "the general LM is `general-en-tiny-sp-fwd` (15,000 unigram units learnt from general-en; fine-tuning keeps "
     "them), against the word-level `general-en-tiny-fwd` run again beside it for the ensembles below "
     "(`bench/results/imdb_lowshot_words_fwd.json`); same draws, seeds, rate grid, epochs and float32, one thread "
     "per run (`python bench/imdb_lowshot.py --methods general --budgets 100 1000 --skip-all --threads 1 "
     "--pretrained models/general-en-tiny-sp-fwd --set text.tokenizer=subwords --set "
     "lm.pretrained=models/general-en-tiny-sp-fwd --set precision=fp32 --out bench/results/imdb_lowshot_subwords.json`). "
     "Forward models only. The subword LM was reused from this section's first run (its minutes include a "
     "25-minute pause; its epochs took 11 minutes each alone); the word LM's minutes are with up to four runs sharing "
     "the 2 cores. That first run, 2 threads per run, chose the rate 0.3 at both budgets and scored 68.0 ± 1.9 % "
     "(100) and 80.9 ± 0.3 % (1,000) (`bench/results/imdb_lowshot_subwords_2threads.json`); with one thread the "
     "arithmetic differs in its last bits, the 500 validation reviews preferred 0.1, and 1,000 labels scored 2.4 "
     "points more: at these sizes the rate chosen on validation is itself noisy. Perplexity per unit does not "
     "compare across units.",
     imdb_lowshot_subwords),
    ("imdb_ensembles", "Low-resource IMDb: forward + backward, words + subwords ensembles (CPU)",
     "The `general` method of the two sections above in each direction and tokenizer, each member a separate "
     "`bench/imdb_lowshot.py` run with the same draws, budgets, seeds, rate grid and one thread per run (words "
     "forward: `--pretrained general-en-tiny-fwd --out bench/results/imdb_lowshot_words_fwd.json`; a backward "
     "member: `--pretrained general-en-tiny-bwd --set lm.backwards=true`, or the `-sp-bwd` model with "
     "`--set text.tokenizer=subwords`; docs/SUBWORDS.md has the commands). Every kept run records its test "
     "probabilities, and `python bench/imdb_ensembles.py --member words-fwd=... --member words-bwd=... "
     "--member subwords-fwd=... --member subwords-bwd=...` averages them per budget and seed (fixed combinations, "
     "none chosen on test accuracy); each member chose its own rate on validation. At 100 labels each seed draws "
     "other reviews, which moves every row by several points together: compare rows seed by seed "
     "(`rows` in the raw file).",
     imdb_ensembles),
    ("transfer_trec", "Transfer on TREC-6: a general-domain start, forward, backward and their ensemble (CPU)",
     "The whole recipe (`configs/trec_small.yaml`, the `small` model) per seed, its language model starting from random "
     "weights or from this project's general-domain model, in both directions (`stages.run_recipe` with `directions "
     "fwd bwd`; a zoo name's backward counterpart for the backward run): each LM is fine-tuned on TREC-6's training "
     "questions only, never test text; the ensemble averages the two classifiers' probabilities "
     "(`python bench/transfer_trec.py --jobs 2 --threads 1`). The paper reports 96.4 % (3.6 % error) with WikiText-103 and the ensemble. One "
     "TREC-6 test score has a standard error of ~1.5 points. Measured with the earlier 1-epoch `general-en-small-fwd` "
     "and its 1-epoch backward twin; the shared mirror has held 3-epoch small models since 2026-12-06, measured in the "
     "small-preset subword section below.",
     transfer_trec),
    ("transfer_trec_tiny", "Transfer on TREC-6 with the tiny model (CPU)",
     "The same comparison with `configs/trec_tiny.yaml` (the `tiny` model the demo search uses) and the "
     "general-domain `general-en-tiny-fwd` / `general-en-tiny-bwd` pair (`python bench/transfer_trec.py --config "
     "configs/trec_tiny.yaml --model general-en-tiny-fwd --out bench/results/transfer_trec_tiny.json`; the backward "
     "model was made with the `launch.py pretrain` command docs/MODELS.md gives, and is the one the shared mirror holds).",
     transfer_trec),
    ("subwords_trec", "Words against subword units on TREC-6, and their ensemble (CPU)",
     "The whole recipe (`configs/trec_tiny.yaml`, the `tiny` model, 8 + 8 epochs) per seed with word tokens and with "
     "SentencePiece units (`text.tokenizer: subwords`, unigram, at most 4,000 units learnt from TREC-6's training "
     "questions, never test text), both directions, **both from random weights**, so the units are compared "
     "without pretraining (the next section starts each from a general-domain LM of its own units). The last row averages the four classifiers of a seed "
     "(`python bench/subwords_trec.py`; docs/SUBWORDS.md).",
     subwords_trec),
    ("subwords_trec_pretrained", "Words against subword units on TREC-6, each from a general-domain LM of its own units (CPU)",
     "As above, but each tokenizer's language models start from a general-domain model of its own units: the word "
     "pair `general-en-tiny-fwd` / `-bwd` (2 epochs on general-en) and the subword pair `general-en-tiny-sp-fwd` / "
     "`-sp-bwd` (1 epoch on the same corpus in 15,000 unigram units, `configs/pretrain_general_tiny_subwords.yaml`; "
     "the subword members then use those units, not TREC-6's). `python bench/subwords_trec.py --pretrained-words "
     "... --pretrained-subwords ... --out bench/results/subwords_trec_pretrained.json`.",
     subwords_trec),
    ("subwords_trec_small", "Words against subword units on TREC-6, the small preset (CPU)",
     "As the section above with the `small` model (`configs/trec_small.yaml`): words from `general-en-small-fwd` / "
     "`-bwd` (the shared mirror's, three epochs of general-en), subwords from `general-en-small-sp-fwd` / `-sp-bwd` (one "
     "epoch of the same corpus in 15,000 unigram units, a third of the words' pretraining: `python "
     "bench/pretrain_general.py --train --preset small --subwords`); each fine-tuned on TREC-6's training questions only. `python bench/subwords_trec.py --config "
     "configs/trec_small.yaml --pretrained-words general-en-small-fwd --pretrained-subwords general-en-small-sp-fwd "
     "--out bench/results/subwords_trec_small.json`.",
     subwords_trec),
    ("subword_vocab_trec", "Subword vocabulary size on TREC-6 (CPU)",
     "The forward subword classifier of `configs/trec_tiny.yaml` with its language model starting from a general-domain "
     "subword LM of 8,000, 15,000 (the default, MultiFiT's size) or 30,000 unigram units, each "
     "`configs/pretrain_general_tiny_subwords.yaml` trained one epoch on general-en with `text.subword_vocab` set "
     "(`python bench/pretrain_general.py --train --preset tiny --subwords --subword-vocab N --directions fwd`); "
     "fine-tuning keeps the general model's units. Only the forward direction, to fit the sweep in a session "
     "(`python bench/subword_vocab_trec.py`). The last row is the word-level forward model of the section above, "
     "for reference.",
     subword_vocab_trec),
    ("pretrain_general", "General-domain language models: cost and held-out perplexity",
     "The models `lm.pretrained` can name from the zoo, made by this project's `launch.py pretrain` on the general-en "
     "corpus (5.07M words, mixed genres; `configs/pretrain_general_*.yaml`), measured on the corpus's held-out "
     "documents (`python bench/pretrain_general.py --models ...`). The models were made in different sessions; "
     "training minutes compare only where nothing else shared the machine (`general-en-tiny-sp-fwd` trained while "
     "a test run did: its backward twin, alone, ran at 12,154 tokens/s; the shared mirror's 3-epoch small pair trained "
     "side by side, one thread each, on another machine, by its README). The small subword pair had one epoch, a third "
     "of the small word pair's.",
     pretrain_general),
    ("search_efficiency", "Search efficiency on TREC-6: ways to search against random search",
     "The demo search as it runs by default (`configs/search_trec_demo.yaml`: tiny model, its language model "
     "starting from `general-en-tiny-fwd`, the default space, 8 classifier epochs per trial, `precision: auto`, "
     "which is bf16 autocast on this CPU) with the same number of trials and seeds: Optuna's random sampler without "
     "early stopping, TPE without early stopping, TPE + ASHA at Ray's rungs, TPE + ASHA at the unfreezing rungs, "
     "TPE + ASHA warm-started from the previous seed's TPE + ASHA search, and TPE + HyperBand "
     "(`python bench/search_efficiency.py --seeds 0 1 2`; docs/SEARCH.md explains each). Each search's best "
     "configuration (by validation accuracy) is exported and retrained, then tested on the 500 test questions. "
     "Wall times are rough: other work shared the 2 cores during part of the run (trial-epochs are not affected).",
     search_efficiency),
    ("space_evidence", "Which parameters of the default search space matter",
     "Optuna's fANOVA importances and the region of the best trials, over the completed trials of the search "
     "efficiency benchmark's searches (`python bench/space_evidence.py`; rerun it after that benchmark).",
     space_evidence),
    ("search_scaling", "Search throughput and the service's overhead (CPU)",
     "A fixed set of demo-recipe trials run directly, then as a search with 1 and with 2 workers on this 2-core "
     "machine (`python bench/search_scaling.py`).",
     search_scaling),
    ("suite_time", "How long the test suite takes",
     "The README's test command, `make test` (lint, then the whole suite on two pytest-xdist workers, each test "
     "file on one), timed as a whole; `--serial` adds the suite on one worker for comparison "
     "(`python bench/suite_time.py`).",
     suite_time),
    ("trials_per_gpu", "Trials per hour on one GPU",
     "The demo search with the `small` and `paper` presets on CUDA, 1, 2, 4 and 8 trials sharing one GPU "
     "(`search.resources.gpu` = 1/n), random sampler, no early stopping (`python bench/trials_per_gpu.py` on a GPU "
     "machine).",
     trials_per_gpu),
]


def render() -> str:
    out = ["# Benchmarks", "",
           "Generated by `python bench/report.py` from the raw results in `bench/results/`; each section names the "
           "command that produced it. Benchmarks measure; nothing here is asserted by tests.", ""]
    for name, title, blurb, table in SECTIONS:
        r = _load(name)
        out += [f"## {title}", "", blurb, ""]
        if r is None:
            script = Path(__file__).resolve().parent / f"{name}.py"
            out += [f"_Not measured yet: run `python bench/{name}.py`._" if script.exists()
                    else "_Not measured yet: run the command above._", ""]
            continue
        out += table(r) + ["", _provenance(r, name), ""]
    return "\n".join(out)


def main() -> None:
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
