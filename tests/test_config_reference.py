"""docs/CONFIGURATION.md is generated from the configuration dataclasses: current, complete, and its
help text is the fields' own comments."""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import config_reference  # noqa: E402

from search.settings import SearchSettings, TrackingSettings  # noqa: E402
from search.tracking import flatten  # noqa: E402
from ulmfit_core.config import ClassifierConfig, LMConfig, StageConfig, default_recipe, to_dict  # noqa: E402

DOC = ROOT / "docs" / "CONFIGURATION.md"


def listed_keys(section_heading: str) -> set[str]:
    """The keys in the tables of one top-level part of the committed document."""
    part = DOC.read_text().split(section_heading, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", part, flags=re.M))


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == config_reference.render(), \
        "docs/CONFIGURATION.md is stale: python tools/config_reference.py > docs/CONFIGURATION.md"


def test_every_key_has_help_text():
    assert config_reference.undocumented() == []


def test_every_recipe_key_is_listed():
    assert listed_keys("## The recipe") == set(flatten(default_recipe()))


def test_every_search_and_mlflow_key_is_listed():
    expected = {f"search.{k}" for k in flatten(to_dict(SearchSettings()))}
    expected |= {f"mlflow.{k}" for k in flatten(to_dict(TrackingSettings()))}
    assert listed_keys("## The search config") == expected


def test_help_text_is_the_fields_own_comment():
    assert config_reference.help_text(StageConfig, "lrm").startswith("discriminative rates: layer group k below")
    # `#:` lines above a field, joined
    assert config_reference.help_text(LMConfig, "pretrained").startswith("A zoo name (``launch.py models list``; it")
    # an overriding subclass adds its own comment after the base class's
    assert config_reference.help_text(ClassifierConfig, "drop_mult") == (
        "multiplies all five dropouts (the section's dropouts.*); "
        "fastai's ULMFiT notebooks train the classifier at 0.5")
    assert "`[8.0, 3.0]`" in DOC.read_text().split("`classifier.use_clr`", 1)[1].split("\n", 1)[0]
