"""best.yaml is checked against what its trial ran: a file cut short or edited by hand is refused, naming the
keys, unless --allow-edits (search/best_record.py); nothing here trains (the refusals come before training)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import best_record
from search.export import read_best, write_best
from ulmfit_core.config import ConfigError, default_recipe


def _export(tmp_path: Path) -> Path:
    recipe = default_recipe()
    recipe["data"] = {**recipe["data"], "dataset": "trec"}
    recipe["classifier"] = {**recipe["classifier"], "lr": 0.01038, "drop_mult": 0.6}
    doc = {"recipe": recipe, "result": {"metric": "valid_accuracy", "mode": "max", "value": 0.8125,
                                        "trial_id": "abc_00003"}, "project_root": str(tmp_path)}
    return write_best(doc, tmp_path / "best.yaml")


def _leaves(doc: dict, sections: tuple[str, ...]) -> int:
    def count(v):
        return sum(count(x) for x in v.values()) if isinstance(v, dict) else 1
    return sum(count(doc[s]) for s in sections)


def test_an_exported_file_reads_back_unedited(tmp_path):
    path = _export(tmp_path)
    assert next(iter(yaml.safe_load(path.read_text()))) == "record"  # first: a file cut short still has it
    cfg, meta = read_best(path)
    assert cfg.classifier.lr == 0.01038 and meta["value"] == 0.8125
    assert meta["check"].intact and meta["check"].edits == {}
    assert meta["check"].tags() == {"best_yaml_check": "matches the exported trial"}


def test_an_edited_value_is_refused_by_name_and_allowed_with_allow_edits(tmp_path):
    path = _export(tmp_path)
    path.write_text(path.read_text().replace("drop_mult: 0.6", "drop_mult: 0.3"))
    with pytest.raises(ConfigError, match=r"recipe\.classifier\.drop_mult is 0\.3 \(the trial's: 0\.6\).*--allow-edits"):
        read_best(path)
    cfg, meta = read_best(path, allow_edits=True)
    assert cfg.classifier.drop_mult == 0.3
    assert meta["check"].tags() == {"best_yaml_check": "1 edit(s) allowed (--allow-edits)",
                                    "edit.recipe.classifier.drop_mult": "0.6 -> 0.3"}


def test_a_file_cut_inside_a_number_is_refused(tmp_path):
    text = _export(tmp_path).read_text()
    cut = text[:text.index("lr: 0.01038") + len("lr: 0.010")]  # cut mid-number: YAML reads 0.01
    (tmp_path / "cut.yaml").write_text(cut)
    with pytest.raises(ConfigError) as e:
        read_best(tmp_path / "cut.yaml")
    message = str(e.value)
    assert "recipe.classifier.lr is 0.01 (the trial's: 0.01038)" in message
    after_the_cut = _leaves(yaml.safe_load(text), ("recipe", "result")) - _leaves(yaml.safe_load(cut), ("recipe",))
    assert f"{after_the_cut} key(s) missing: recipe.classifier.alpha, " in message  # named up to eight...
    assert f"and {after_the_cut - 8} more" in message and "added" not in message


def test_a_damaged_or_absent_record_is_refused_unless_allowed(tmp_path):
    path = _export(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["record"]["exported"] = doc["record"]["exported"].replace("0.6", "0.9")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError, match="record: section is damaged"):
        read_best(path)
    del doc["record"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ConfigError, match="has no record: section .*export it again.*--allow-edits"):
        read_best(path)
    _, meta = read_best(path, allow_edits=True)
    assert not meta["check"].intact and meta["check"].tags()["best_yaml_check"].startswith("not checked")


def test_a_plain_recipe_is_not_a_best_yaml_and_is_not_checked(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: {dataset: trec}\nclassifier: {lr: 0.02}\n")
    cfg, meta = read_best(path)
    assert cfg.classifier.lr == 0.02 and meta == {}


def test_a_boolean_is_not_the_number_one(tmp_path):
    was = {"recipe": {"x": 1}, "result": {}}
    now = {"recipe": {"x": True}, "result": {}, best_record.RECORD: best_record.make_record(was)}
    assert best_record.check(now).edits == {"recipe.x": (1, True)}
