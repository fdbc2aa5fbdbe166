"""The guides in docs/ stay true: the README links each one, their links resolve, the quickstart's config
files read real CSV files, and the Python API examples run (with the tiny settings they show)."""
from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import pytest
from conftest_search import ray_environment, run_to_completion

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ["QUICKSTART_CSV.md", "CONFIGURATION.md", "RESULTS.md", "PYTHON_API.md", "GPU.md"]


def marked_blocks(doc: Path, marker: str) -> list[str]:
    """The fenced code blocks that follow an ``<!-- MARKER -->`` line, in order."""
    return re.findall(rf"<!-- {re.escape(marker)} -->\n```\w*\n(.*?)```", doc.read_text(), flags=re.S)


def test_the_readme_links_every_guide():
    readme = (ROOT / "README.md").read_text()
    for guide in GUIDES:
        assert f"(docs/{guide})" in readme, guide


@pytest.mark.parametrize("guide", GUIDES)
def test_links_in_the_guides_resolve(guide):
    text = (DOCS / guide).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (DOCS / target).exists(), f"{guide} links to {target}, which does not exist"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def test_the_quickstart_configs_read_real_csv_files(tmp_path, datasets_dir, monkeypatch):
    """TREC-6 rewritten with the quickstart's own column names (review, sentiment) and file names."""
    from search.settings import load_search_config
    from ulmfit_core.config import load_recipe
    from ulmfit_core.corpus import prepare_corpus

    with (datasets_dir / "trec" / "train.csv").open(encoding="utf-8") as f:
        trec = [(r["text"], r["label"]) for r in csv.DictReader(f)]
    write_csv(tmp_path / "my_data" / "train.csv", ["review", "sentiment"], [[t, y] for t, y in trec[:300]])
    write_csv(tmp_path / "my_data" / "test.csv", ["review", "sentiment"], [[t, y] for t, y in trec[300:400]])
    (tmp_path / "my_data" / "unlabeled.txt").write_text("\n".join(t for t, _ in trec[400:600]) + "\n")
    recipe, search = marked_blocks(DOCS / "QUICKSTART_CSV.md", "guide: recipe") + \
        marked_blocks(DOCS / "QUICKSTART_CSV.md", "guide: search")
    (tmp_path / "my_recipe.yaml").write_text(recipe)
    (tmp_path / "my_search.yaml").write_text(search)
    monkeypatch.chdir(tmp_path)

    cfg = load_recipe("my_recipe.yaml")
    corpus = prepare_corpus(cfg, cache_dir=tmp_path / "cache")
    assert corpus.label_names == sorted({y for _, y in trec[:300]})
    assert len(corpus.train.ids) + len(corpus.valid.ids) == 300 and len(corpus.test.ids) == 100
    assert corpus.stats["n_unlabeled"] == 200
    assert cfg.lm.pretrained == "general-en-small-fwd" and cfg.model.preset == "small"

    scfg = load_search_config("my_search.yaml")
    assert scfg.search.name == "my_search" and scfg.search.num_samples == 24
    assert scfg.recipe["data"]["train"] == str(tmp_path / "my_data" / "train.csv")  # relative to where you run


def run_examples(code: str, cwd: Path, data: Path, timeout: float) -> str:
    """Run documentation code as a user would: a fresh interpreter in a folder holding ``data`` and ``configs``."""
    (cwd / "data").symlink_to(data)
    (cwd / "configs").symlink_to(ROOT / "configs")
    (cwd / "example.py").write_text(code)
    return run_to_completion([sys.executable, "example.py"], cwd, dict(os.environ), timeout)


@pytest.mark.timeout(600)
def test_the_python_api_recipe_examples_run(tmp_path, datasets_dir):
    blocks = marked_blocks(DOCS / "PYTHON_API.md", "example: recipe")
    assert len(blocks) == 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(ROOT))
        out = run_examples("\n".join(blocks), tmp_path, datasets_dir, timeout=540)
    assert re.search(r"^epoch 2: valid_accuracy 0\.\d{3}$", out, flags=re.M), out[-3000:]
    assert re.search(r"^test accuracy 0\.\d{3}$", out, flags=re.M)
    assert re.search(r"^valid accuracy 0\.\d{3}$", out, flags=re.M)
    assert "(1, 6)" in out  # TREC-6's six classes
    assert (tmp_path / "runs" / "api" / "classifier").is_dir()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_python_api_search_example_runs(tmp_path, datasets_dir):
    block, = marked_blocks(DOCS / "PYTHON_API.md", "example: search")
    with ray_environment():
        out = run_examples(block, tmp_path, datasets_dir, timeout=540)
    best_yaml = re.search(r"^retrain with: python launch.py retrain --config (\S+)$", out, flags=re.M)
    assert best_yaml and Path(best_yaml.group(1)).is_file(), out[-3000:]
    assert re.search(r"^2 of 2 done", out, flags=re.M)  # the progress table, from Python too
    assert (tmp_path / "mlflow.db").is_file()
