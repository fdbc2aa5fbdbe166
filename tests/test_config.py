"""Configuration: validation errors name the key (and the YAML line) and the fix."""
import pytest

from ulmfit_core.config import ConfigError, apply_overrides, load_recipe, recipe_from_dict, to_dict


def test_defaults_follow_fastai_and_the_paper():
    cfg = recipe_from_dict({"data": {"dataset": "trec"}})
    assert (cfg.model.emb_sz, cfg.model.n_hid, cfg.model.n_layers) == (200, 512, 3)
    assert cfg.classifier.lrm == 2.6 and cfg.lm.betas == (0.8, 0.99)
    assert cfg.classifier.scaled_dropouts.output_p == pytest.approx(0.4 * 0.5)
    paper = recipe_from_dict({"data": {"dataset": "trec"}, "model": {"preset": "paper"}})
    assert (paper.model.emb_sz, paper.model.n_hid) == (400, 1152)


def test_round_trip_through_dict():
    cfg = recipe_from_dict({"data": {"dataset": "trec"}, "classifier": {"use_clr": [16, 5]}})
    again = recipe_from_dict(to_dict(cfg))
    assert again == cfg and again.classifier.use_clr == (16.0, 5.0)


@pytest.mark.parametrize("values, key", [
    ({"classifier": {"lrr": 1}}, "classifier.lrr"),
    ({"classifier": {"lrm": 0.5}}, "classifier.lrm"),
    ({"classifier": {"use_clr": [32]}}, "classifier.use_clr"),
    ({"lm": {"dropouts": {"embed_p": 1.5, "input_p": 0, "weight_p": 0, "hidden_p": 0, "output_p": 0}}}, "lm.dropouts.embed_p"),
    ({"model": {"preset": "huge"}}, "model.preset"),
    ({"classifier": {"max_seq": 10}}, "classifier.max_seq"),
    ({"lm": {"backwards": True}, "classifier": {"backwards": False}}, "classifier.backwards"),
    ({"classifier": {"unfreeze": ["a"]}}, "classifier.unfreeze[0]"),
    ({"classifier": {"lin_ftrs": [50.5]}}, "classifier.lin_ftrs[0]"),
    ({"classifier": {"use_clr": ["fast", 3]}}, "classifier.use_clr[0]"),
])
def test_bad_values_name_their_key(values, key):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"data": {"dataset": "trec"}, **values})
    assert str(e.value).startswith(key)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean classifier.drop_mult"):
        recipe_from_dict({"data": {"dataset": "trec"}, "classifier": {"dropmult": 1}})


def test_missing_data_says_what_to_give():
    with pytest.raises(ConfigError, match="data.dataset"):
        recipe_from_dict({})


def test_overrides_parse_yaml_values():
    values = apply_overrides({}, ["classifier.use_clr=[8,3]", "lm.lr=1e-3", "data.dataset=trec"])
    cfg = recipe_from_dict(values)
    assert cfg.classifier.use_clr == (8.0, 3.0) and cfg.lm.lr == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["classifier.lr"])


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  dataset: trec\nclassifier:\n  epochs: 2\n  lrm: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:5: classifier.lrm"):
        load_recipe(path)
    path.write_text("data:\n  dataset: [trec\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_recipe(tmp_path / "missing.yaml")


def test_scalar_types_checked_and_yaml11_floats_accepted():
    cfg = recipe_from_dict({"data": {"dataset": "trec"}, "lm": {"lr": "1e-3", "epochs": 2.0}})
    assert cfg.lm.lr == pytest.approx(1e-3) and cfg.lm.epochs == 2
    with pytest.raises(ConfigError, match="lm.lr: must be a number"):
        recipe_from_dict({"data": {"dataset": "trec"}, "lm": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="classifier.epochs: must be an integer"):
        recipe_from_dict({"data": {"dataset": "trec"}, "classifier": {"epochs": 1.5}})
    with pytest.raises(ConfigError, match="classifier.backwards: must be true or false"):
        recipe_from_dict({"data": {"dataset": "trec"}, "classifier": {"backwards": "yes please"}})


def test_load_recipe_leaves_the_callers_base_unchanged():
    # A benchmark builds many recipes from one base; an override must not leak into the next recipe.
    base = {"data": {"dataset": "trec"}, "classifier": {"lr": 0.02, "epochs": 3}}
    scratch = load_recipe(None, ["classifier.from_scratch=true", "classifier.epochs=5"], base=base)
    assert scratch.classifier.from_scratch and scratch.classifier.epochs == 5
    assert base == {"data": {"dataset": "trec"}, "classifier": {"lr": 0.02, "epochs": 3}}
    again = load_recipe(None, [], base=base)
    assert not again.classifier.from_scratch and again.classifier.epochs == 3


def test_one_dropout_can_be_set_alone_and_indexed_keys_start_from_the_default_list():
    cfg = load_recipe(None, ["data.dataset=trec", "classifier.dropouts.input_p=0.3", "classifier.use_clr[1]=5"])
    assert cfg.classifier.dropouts.input_p == 0.3 and cfg.classifier.dropouts.weight_p == 0.5  # the rest: defaults
    assert cfg.classifier.use_clr == (8.0, 5.0)
    with pytest.raises(ConfigError, match=r"classifier.use_clr\[2\]: classifier.use_clr is not a list with an element 2"):
        load_recipe(None, ["data.dataset=trec", "classifier.use_clr[2]=5"])
