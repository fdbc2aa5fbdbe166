"""Subword units (``text.tokenizer: subwords``): learnt from the language model's own text only, part of every
fingerprint, saved with each model folder, and ensembled with word models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import launch
from ulmfit_core import artifacts, stages
from ulmfit_core.config import ConfigError, load_recipe
from ulmfit_core.corpus import prepare_corpus
from ulmfit_core.inference import Predictor
from ulmfit_core.text import SPECIAL_TOKENS, SubwordTokenizer, learn_subwords

ROOT = Path(__file__).resolve().parents[1]
#: The tiny recipe on 300 TREC-6 questions, one epoch per stage.
TINY = ["data.dataset=trec", "data.max_train_rows=300", "model.preset=tiny", "lm.epochs=1", "lm.bptt=20",
        "lm.bs=16", "classifier.epochs=1", "classifier.bptt=20", "classifier.unfreeze=[]"]
SUBWORDS = ["text.tokenizer=subwords", "text.subword_vocab=400"]
QUESTIONS = ["Who wrote Hamlet ?", "How far is the moon from Earth ?", "What does NASA stand for ?"]


def _planted_dataset(folder: Path, datasets_dir: Path) -> dict[str, Path]:
    """400 TREC-6 training questions; one made-up word planted often in each of the other files only."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with open(datasets_dir / "trec" / "train.csv", encoding="utf-8") as f:
        rows = [(r["label"], r["text"]) for r in csv.DictReader(f)][:400]

    def labeled(name: str, body: list[tuple[str, str]]) -> Path:
        path = folder / name
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "text"])
            writer.writerows(body)
        return path

    def planted(word: str) -> list[tuple[str, str]]:
        return [(lab, f"{text} {word} ?") for lab, text in rows[:60]]

    unlabeled = folder / "unlabeled.txt"
    unlabeled.write_text("".join(f"{text} lakeshoreword ?\n" for _, text in rows[:60]), encoding="utf-8")
    return {"train": labeled("train.csv", rows), "valid": labeled("valid.csv", planted("valleymountainword")),
            "test": labeled("test.csv", planted("testplanetword")), "unlabeled": unlabeled}


def _recipe(files: dict[str, Path], *sets: str):
    return load_recipe(None, [*(f"data.{k}={v}" for k, v in files.items()), "model.preset=tiny", *sets])


def test_units_are_learnt_from_the_language_models_text_only(tmp_path, datasets_dir):
    files = _planted_dataset(tmp_path / "a", datasets_dir)
    settings = ("text.tokenizer=subwords", "text.subword_vocab=400")
    corpus = prepare_corpus(_recipe(files, *settings), cache_dir=tmp_path / "cache")
    # other validation and test text: the same units
    other = dict(files, **{k: _rewrite(files[k], tmp_path / "b" / files[k].name, "otherword") for k in ("valid", "test")})
    assert prepare_corpus(_recipe(other, *settings), cache_dir=tmp_path / "cache").tokenizer.model == \
        corpus.tokenizer.model
    # the test's word in the unlabeled text instead: other units, and that word now takes fewer of them
    told = dict(files, unlabeled=_rewrite(files["unlabeled"], tmp_path / "c" / "unlabeled.txt", "testplanetword"))
    seen = prepare_corpus(_recipe(told, *settings), cache_dir=tmp_path / "cache").tokenizer
    assert seen.model != corpus.tokenizer.model
    assert len(seen.tokenize(["testplanetword"])[0]) < len(corpus.tokenizer.tokenize(["testplanetword"])[0])
    assert corpus.vocab.itos[:len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and len(corpus.vocab) % 8 == 0
    assert corpus.stats["vocab_size"] == len(corpus.vocab) <= 400 + 8
    assert all(corpus.vocab.stoi.get(u, 0) != 0 for u in corpus.tokenizer.tokenize(["testplanetword"])[0])


def _rewrite(path: Path, to: Path, word: str) -> Path:
    """``path`` with its planted word replaced by ``word``, written to ``to``."""
    to.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8")
    for planted in ("lakeshoreword", "valleymountainword", "testplanetword"):
        text = text.replace(planted, word)
    to.write_text(text, encoding="utf-8")
    return to


def test_fingerprints_follow_the_subword_model_and_word_keys_stay_as_they_were(tmp_path, datasets_dir):
    files = _planted_dataset(tmp_path / "data", datasets_dir)
    small = prepare_corpus(_recipe(files, "text.tokenizer=subwords", "text.subword_vocab=200"), cache_dir=tmp_path)
    large = prepare_corpus(_recipe(files, "text.tokenizer=subwords", "text.subword_vocab=300"), cache_dir=tmp_path)
    assert small.tokenizer.model != large.tokenizer.model
    assert small.fingerprint != large.fingerprint and small.lm_fingerprint != large.lm_fingerprint
    words = _recipe(files)
    assert stages.lm_key(words, "data") == stages.lm_key(_recipe(files, "text.subword_vocab=999"), "data")
    assert stages.lm_key(words, "data") != stages.lm_key(_recipe(files, *SUBWORDS), "data")
    # the same text gives the same units, so a rerun finds its cached model and checkpoints
    assert learn_subwords(["one two three", "two three four"] * 20, "unigram", 40) == \
        learn_subwords(["one two three", "two three four"] * 20, "unigram", 40)


def test_a_word_level_zoo_model_with_subwords_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match=r"text\.tokenizer: subwords with lm\.pretrained 'wt103-fwd', a word-level "
                                          r"zoo model"):
        load_recipe(None, ["data.dataset=trec", "text.tokenizer=subwords", "lm.pretrained=wt103-fwd"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, datasets_dir):
    """Words and subwords, each forward and backward: four tiny classifiers on 300 TREC-6 questions, from one
    ``run --tokenizers words subwords --directions fwd bwd``. Returns the run's folder and each member's."""
    root = tmp_path_factory.mktemp("subwords")
    out = root / "four"
    args = ["run", *[a for s in [*TINY, SUBWORDS[1]] for a in ("--set", s)], "--tokenizers", "words", "subwords",
            "--directions", "fwd", "bwd", "--data-dir", str(datasets_dir), "--cache-dir", str(root / "cache"),
            "--out", str(out), "--no-progress"]
    assert launch.main(args) == 0
    return {"four": out, "words": {"classifier": out / "classifier", "classifier_bwd": out / "classifier_bwd"},
            "subwords": {"classifier": out / "classifier_subwords_fwd", "classifier_bwd": out / "classifier_subwords_bwd",
                         "lm": out / "lm_subwords_fwd"}}


def test_one_run_trains_every_tokenizer_and_direction_and_tests_their_ensemble(trained, datasets_dir):
    """The ensemble's test score is what `evaluate` gets from the raw test file, each member in its own units."""
    from ulmfit_core import inference

    out = trained["four"]
    ran = artifacts.read_json(out / artifacts.METRICS_FILE)
    assert ran["members"] == ["fwd", "bwd", "subwords_fwd", "subwords_bwd"] and ran["tokenizers"] == ["words", "subwords"]
    final = ran["final"]
    for prefix in ("", "bwd_", "subwords_fwd_", "subwords_bwd_", "ensemble_"):
        assert 0.0 < final[f"{prefix}test_accuracy"] <= 1.0, prefix
    assert [Path(m).name for m in inference.classifier_dirs(out)] == \
        ["classifier", "classifier_bwd", "classifier_subwords_fwd", "classifier_subwords_bwd"]
    got = inference.evaluate(out, datasets_dir / "trec" / "test.csv", device="cpu")
    assert got["accuracy"] == pytest.approx(final["ensemble_test_accuracy"], abs=1e-9)
    assert got["loss"] == pytest.approx(final["ensemble_test_loss"], rel=1e-4)


def test_a_pretrained_word_model_does_not_start_the_subword_members_unless_told_it_may_not(tmp_path):
    """A word LM folder has no subword twin: the subword members would start from random weights."""
    from ulmfit_core import stages

    cfg = load_recipe(None, ["data.dataset=trec", f"lm.pretrained={tmp_path / 'my-word-lm'}"])
    with pytest.raises(ValueError, match=r"--tokenizers words subwords: lm\.pretrained .*my-word-lm holds words "
                                         r"units.*set lm\.pretrained_required: false"):
        stages.plan_members(cfg, ["fwd"], ["words", "subwords"])
    relaxed = load_recipe(None, ["data.dataset=trec", "lm.pretrained=general-en-tiny-fwd", "lm.pretrained_required=false"])
    plans = stages.plan_members(relaxed, ["fwd"], ["subwords", "words"], models_dir="/nonexistent")
    assert [name for name, _, _ in plans] == ["fwd", "subwords_fwd"]  # the config's own tokenizer first
    # a zoo model's subword twin takes its place, dropped here like any start not fetched (not required)
    assert plans[1][1].lm.pretrained is None and plans[1][1].text.tokenizer == "subwords"


def test_a_pretrained_subword_model_is_fine_tuned_with_its_own_units(trained, tmp_path, datasets_dir, capsys):
    pretrained = trained["subwords"]["lm"]  # a subword LM (pretrain writes the same folder layout)
    out = tmp_path / "fine-tuned"
    args = [*[a for s in [*TINY, "text.tokenizer=subwords", "text.subword_vocab=100", f"lm.pretrained={pretrained}"]
              for a in ("--set", s)], "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--no-progress"]
    assert launch.main(["run", *args]) == 0
    assert f"starting from {pretrained}" in capsys.readouterr().out
    # the pretrained model's units and vocabulary, not 100 units learnt anew
    assert (out / "classifier" / artifacts.SUBWORD_FILE).read_bytes() == (pretrained / artifacts.SUBWORD_FILE).read_bytes()
    assert artifacts.read_vocab(out / "lm" / "vocab.json") == artifacts.read_vocab(pretrained / "vocab.json")


def test_a_subword_zoo_model_is_fetched_with_its_units_and_starts_the_subword_members(trained, tmp_path, datasets_dir,
                                                                                      capsys):
    """``general-en-tiny-sp-fwd`` from a mirror (here: the tiny subword LM trained above, in its place): fetch
    needs its subwords.model; a subword recipe fine-tunes it with those units; ``--tokenizers words subwords``
    starts the subword members from it when the words start from ``general-en-tiny-fwd``."""
    import shutil

    from ulmfit_core import stages, zoo

    mirror = tmp_path / "mirror" / "general-en-tiny-sp-fwd"
    shutil.copytree(trained["subwords"]["lm"], mirror, ignore=shutil.ignore_patterns("checkpoint"))
    models = tmp_path / "models"
    (mirror / artifacts.SUBWORD_FILE).rename(tmp_path / "units.model")
    with pytest.raises(zoo.ZooError, match=r"subwords\.model missing"):
        zoo.fetch("general-en-tiny-sp-fwd", models, mirror=mirror.parent, progress=False)
    (tmp_path / "units.model").rename(mirror / artifacts.SUBWORD_FILE)
    zoo.fetch("general-en-tiny-sp-fwd", models, mirror=mirror.parent, progress=False)

    with pytest.raises(ConfigError, match=r"words with lm\.pretrained 'general-en-tiny-sp-fwd', a subword zoo model"):
        load_recipe(None, ["data.dataset=trec", "lm.pretrained=general-en-tiny-sp-fwd"])
    out = tmp_path / "from-zoo"
    args = [*[a for s in [*TINY, "text.tokenizer=subwords", "lm.pretrained=general-en-tiny-sp-fwd"] for a in ("--set", s)],
            "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"), "--models-dir", str(models),
            "--out", str(out), "--no-progress"]
    assert launch.main(["run", *args]) == 0
    assert "starting from general-en-tiny-sp-fwd" in capsys.readouterr().out
    assert (out / "classifier" / artifacts.SUBWORD_FILE).read_bytes() == (mirror / artifacts.SUBWORD_FILE).read_bytes()

    words = load_recipe(None, [*TINY, "lm.pretrained=general-en-tiny-fwd", "lm.pretrained_required=false"])
    plans = stages.plan_members(words, ["fwd"], ["words", "subwords"], models_dir=models)
    assert [(n, c.lm.pretrained) for n, c, _ in plans] == [("fwd", None), ("subwords_fwd", "general-en-tiny-sp-fwd")]


def test_a_subword_classifier_folder_holds_its_units_and_predicts_the_same_in_a_fresh_process(trained):
    folder = trained["subwords"]["classifier"]
    units = (folder / artifacts.SUBWORD_FILE).read_bytes()
    assert units == (trained["subwords"]["lm"] / artifacts.SUBWORD_FILE).read_bytes()  # the LM's units
    here = Predictor.from_dirs(folder, device="cpu")
    assert isinstance(here.classifiers[0].tokenizer, SubwordTokenizer)
    probs = here.predict_proba(QUESTIONS)
    done = subprocess.run([sys.executable, "launch.py", "predict", "--model", str(folder), "--device", "cpu", "--json",
                           *QUESTIONS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fresh = np.array([[row["probabilities"][label] for label in here.labels] for row in json.loads(done.stdout)])
    np.testing.assert_allclose(fresh, probs, rtol=0, atol=1e-6)


def test_a_classifier_folder_with_another_runs_subword_model_is_refused(trained, tmp_path):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(trained["subwords"]["classifier"], mixed, ignore=shutil.ignore_patterns("checkpoint"))
    (mixed / artifacts.SUBWORD_FILE).write_bytes(learn_subwords(["other text entirely"] * 50, "unigram", 40))
    with pytest.raises(artifacts.ArtifactError, match=r"subwords\.model: not the subword model model\.pt was trained "
                                                      r"with; copy the classifier folder whole"):
        Predictor.from_dirs(mixed)


def test_a_word_and_subword_forward_and_backward_ensemble_is_the_mean_of_its_members(trained):
    members = [trained[name][sub] for name in ("words", "subwords") for sub in ("classifier", "classifier_bwd")]
    assert all((m / artifacts.MODEL_FILE).is_file() for m in members)
    ensemble = Predictor.from_dirs(members, device="cpu")
    tokenizers = {type(c.tokenizer).__name__ for c in ensemble.classifiers}
    assert tokenizers == {"Tokenizer", "SubwordTokenizer"}  # each member tokenizes its own way
    each = [Predictor.from_dirs(m, device="cpu").predict_proba(QUESTIONS) for m in members]
    np.testing.assert_allclose(ensemble.predict_proba(QUESTIONS), np.mean(each, axis=0), rtol=0, atol=1e-6)
    assert not np.allclose(each[0], each[2], atol=1e-3)  # the members differ: the mean is not one of them


def test_the_served_model_of_a_word_and_subword_ensemble_tokenizes_each_member_its_own_way(trained, tmp_path,
                                                                                          monkeypatch):
    import mlflow
    import pandas as pd

    from search import serving

    members = [trained["words"]["classifier"], trained["subwords"]["classifier"]]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("subwords", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    info = serving.log_classifier_model(run_id, members, tracking_uri=uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
    assert not (local / "artifacts" / "classifier_0" / artifacts.SUBWORD_FILE).exists()  # the word member
    assert (local / "artifacts" / "classifier_1" / artifacts.SUBWORD_FILE).read_bytes() == \
        (members[1] / artifacts.SUBWORD_FILE).read_bytes()
    served = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({serving.TEXT_COLUMN: QUESTIONS}))
    here = Predictor.from_dirs(members, device="cpu")
    probs = here.predict_proba(QUESTIONS)
    got = np.array([[row[f"{serving.PROB_PREFIX}{label}"] for label in here.labels] for _, row in served.iterrows()])
    np.testing.assert_allclose(got, probs, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("search_lm", [True, False])
def test_a_search_over_the_tokenizer_trains_and_records_both(tmp_path, search_lm):
    """With search_lm true the trials train their LMs (one per tokenizer, shared); with false one LM per
    tokenizer is trained before the trials, which only load theirs."""
    from conftest_search import child_runs, ray_environment, smoke_config

    from search import tuner

    overrides = ["search.num_samples=2", "search.name=tokenizers", f"search.search_lm={str(search_lm).lower()}",
                 "search.scheduler={type: fifo}", "recipe.classifier.epochs=1", "recipe.classifier.unfreeze=[]",
                 "recipe.text.subword_vocab=400",
                 "space={text.tokenizer: [words, subwords], classifier.lr: {type: loguniform, low: 0.01, high: 0.05}}",
                 "search.points_to_evaluate=[{text.tokenizer: words}, {text.tokenizer: subwords}]"]
    with ray_environment():
        cfg = smoke_config(tmp_path, overrides)
        outcome = tuner.run_search(cfg)
    board = outcome.leaderboard
    assert sorted(row["text.tokenizer"] for row in board) == ["subwords", "words"]
    assert all(row["status"] == "completed" for row in board)
    assert len({row["lm_key"] for row in board}) == 2  # one language model per tokenizer
    runs = child_runs(cfg.mlflow.tracking_uri, cfg.experiment)
    assert sorted(r.data.params["text.tokenizer"] for r in runs) == ["subwords", "words"]
    assert "text.tokenizer" in (outcome.search_dir / "leaderboard.csv").read_text().splitlines()[0]
    assert outcome.summary["lm_trainings"] == 2
    if not search_lm:  # trained up front, one per tokenizer; no trial trained one
        up_front = json.loads((outcome.search_dir / "search.json").read_text())["shared_lm"]
        assert sorted(i["lm_key"] for i in up_front) == sorted(row["lm_key"] for row in board)
        assert all(i["trained"] for i in up_front) and not any(row["lm_trained"] for row in board)


#: Two tiny labeled samples in languages spaCy's English rules do not serve: German (weather vs. food) and
#: Chinese (weather vs. food, no spaces between words), each with unlabeled text of its own language.
LANGUAGES = {
    "de": {"weather": ["Morgen regnet es den ganzen Tag", "Die Sonne scheint über München", "Heute ist es kalt und "
                       "windig", "Im Winter schneit es oft in den Bergen", "Das Gewitter kommt am Abend"],
           "food": ["Ich esse gern Brot mit Käse", "Die Suppe schmeckt sehr gut", "Zum Frühstück gibt es Müsli",
                    "Wir kochen heute Nudeln mit Soße", "Der Kuchen ist süß und frisch"]},
    "zh": {"weather": ["明天全天下雨", "北京今天阳光明媚", "今天又冷又有风", "冬天山里经常下雪", "晚上会有雷雨"],
           "food": ["我喜欢吃面包和奶酪", "这个汤非常好喝", "早餐有粥和包子", "我们今天做面条", "蛋糕又甜又新鲜"]},
}


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_any_language_end_to_end_from_a_subword_model_pretrained_on_its_own_text(lang, tmp_path, capsys):
    import csv

    samples = LANGUAGES[lang]
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "train.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows((label, f"{text} {i}") for i in range(8) for label, texts in samples.items() for text in texts)
    unlabeled = data / "unlabeled.txt"
    unlabeled.write_text("".join(f"{t} {t}\n" for _ in range(6) for texts in samples.values() for t in texts),
                         encoding="utf-8")
    common = ["--set", "model.preset=tiny", "--set", "lm.bptt=10", "--set", "lm.bs=8", "--set", "text.tokenizer=subwords",
              "--set", "text.subword_vocab=200", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    lm = tmp_path / "pretrained"
    assert launch.main(["pretrain", "--set", f"data.unlabeled={unlabeled}", "--set", "lm.epochs=1", *common,
                        "--out", str(lm)]) == 0
    assert (lm / artifacts.SUBWORD_FILE).is_file()
    out = tmp_path / "run"
    assert launch.main(["run", "--set", f"data.train={data / 'train.csv'}", "--set", f"lm.pretrained={lm}",
                        "--set", "lm.epochs=1", "--set", "classifier.epochs=1", "--set", "classifier.unfreeze=[]",
                        "--set", "classifier.bptt=10", "--set", "classifier.bs=8", *common, "--out", str(out)]) == 0
    assert (out / "classifier" / artifacts.SUBWORD_FILE).read_bytes() == (lm / artifacts.SUBWORD_FILE).read_bytes()
    capsys.readouterr()
    texts = [samples["weather"][0], samples["food"][0]]
    assert launch.main(["predict", "--model", str(out), "--json", *texts]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["text"] for a in answers] == texts  # non-ASCII text round-trips
    assert all(a["label"] in samples for a in answers)
    # the units are this language's: its words fall into few units, not one per byte or character
    tok = SubwordTokenizer((lm / artifacts.SUBWORD_FILE).read_bytes())
    units = tok.tokenize([samples["food"][1]])[0]
    assert "xxunk" not in units and len(units) < len(samples["food"][1])


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_the_subword_pretraining_configs_make_the_zoos_subword_models(preset):
    from ulmfit_core.zoo import ZOO

    cfg = load_recipe(ROOT / "configs" / f"pretrain_general_{preset}_subwords.yaml")
    assert (cfg.text.tokenizer, cfg.text.subword_vocab, cfg.model.preset) == ("subwords", 15000, preset)
    assert ZOO[f"general-en-{preset}-sp-fwd"].preset == preset and ZOO[f"general-en-{preset}-sp-fwd"].units == "subwords"
