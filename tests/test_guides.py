"""The guides in docs/ are linked from the README and their links resolve (tests/test_docs_run.py runs
every command and example in them)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = ["QUICKSTART_CSV.md", "CONFIGURATION.md", "RESULTS.md", "PYTHON_API.md", "GPU.md"]


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
