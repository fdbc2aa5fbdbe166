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
    used = {line.split("launch.py ")[1].split()[0].strip("`,.;:()") for line in text.splitlines()
            if "python launch.py " in line}
    used.discard("COMMAND")
    assert used and used <= commands, used - commands
    for name in ("trec_tiny", "trec_small"):
        load_recipe(ROOT / "configs" / f"{name}.yaml")
    assert (ROOT / "configs" / "search_trec_demo.yaml").exists()


def _parsers(parser, path=("ulmfit",)):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_of_every_command_has_help_and_no_markup():
    import launch

    parser = launch.build_parser()
    commands = list(_parsers(parser))
    assert len(commands) > 15
    for path, sub in commands:
        for action in sub._actions:
            assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}: no help text"
        text = sub.format_help()
        assert "``" not in text and ":func:" not in text, f"{' '.join(path)} --help shows reST markup"


def test_version(capsys):
    import pytest

    import launch

    with pytest.raises(SystemExit) as exit_:
        launch.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("ulmfit ")
