"""The README's examples stay true: its search config parses and validates, its configs load."""
from pathlib import Path

import yaml

from search.settings import search_config_from_dict
from ulmfit_core.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_readme_search_config_example_is_valid():
    text = (ROOT / "README.md").read_text()
    block = text.split("A search config has four sections")[1].split("```yaml")[1].split("```")[0]
    cfg = search_config_from_dict(yaml.safe_load(block))
    cfg.space.validate(yaml.safe_load(block)["recipe"], search_lm=False)
    assert "classifier.use_clr[0]" in cfg.space.keys


def test_readme_commands_name_real_subcommands_and_configs():
    import launch

    text = (ROOT / "README.md").read_text()
    commands = set(launch.build_parser()._subparsers._group_actions[0].choices)
    used = {line.split("launch.py ")[1].split()[0] for line in text.splitlines() if "python launch.py " in line}
    used.discard("COMMAND`,")
    assert used and used <= commands, used - commands
    for name in ("trec_tiny", "trec_small"):
        load_recipe(ROOT / "configs" / f"{name}.yaml")
    assert (ROOT / "configs" / "search_trec_demo.yaml").exists()
