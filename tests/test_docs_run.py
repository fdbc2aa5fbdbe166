"""Every command and snippet of the guides runs, literally as written, in a fresh project on small real data.

``tests/docs_runner.py`` reads the fenced blocks of the guides below in order and runs them as a new user
would, one guide after the other in one fresh project: a copy of this checkout's files, its virtual
environment (set up: ``make`` finds nothing to install), ``../shared`` beside it, and the user's data (the only thing put in by hand): TREC-6 cut to a few
hundred questions in ``data/trec/``, a labeled CSV of real IMDb reviews in ``my_data/``, and ``corpus.txt`` of
general English for ``pretrain``. A guide command that fails, prints a traceback or names a placeholder the
runner cannot fill fails this test, naming the guide and line.
"""
from __future__ import annotations

import csv
import gzip
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from docs_runner import Runner, block_commands, fenced_blocks

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
#: In the order a user reads them: the README's demo search is what RESULTS.md then reads.
GUIDES = ["README.md", "docs/QUICKSTART_CSV.md", "docs/PYTHON_API.md", "docs/MODELS.md", "docs/RESULTS.md",
          "docs/SUBWORDS.md"]

#: Commands that cannot run on a test machine, each with why. Every other command of the guides runs.
SKIP = {
    "make test": "the test suite itself, which this test is part of",
    "ray get-auth-token --generate": "cluster.yaml needs an AWS account (tests/test_cluster_yaml.py checks the file)",
    "ray up cluster.yaml": "needs an AWS account",
    "ray rsync-up cluster.yaml ../shared/datasets/ /mnt/shared/datasets/": "needs a cluster made by ray up",
    "ray submit cluster.yaml launch.py search --config configs/search_trec_cluster.yaml --address auto":
        "needs a cluster made by ray up (tests/test_search_cluster.py runs a search on a two-node cluster)",
    "ray attach cluster.yaml -p 5000": "needs a cluster made by ray up",
    "ray down cluster.yaml": "needs a cluster made by ray up",
    "python launch.py models fetch wt103-fwd": "downloads from fastai's S3 bucket; only package registries are "
                                              "reachable here (tests/test_zoo.py fetches from a local HTTP mirror)",
    "python launch.py models fetch wt103-bwd --mirror http://files.example.org/ulmfit-models/ --dest /data/models":
        "an example address of the user's own mirror",
    "python launch.py finetune-lm --config configs/trec_small.yaml "
    "--set lm.pretrained=fastai/lstm_wt103.pth --set lm.pretrained_vocab=fastai/itos_wt103.pkl --out runs/lm":
        "needs fastai's WikiText-103 files (tests/test_pretrained.py loads a real fastai model file)",
    "python launch.py search --config configs/search_trec_demo.yaml --data-dir data":
        "the search `make demo` runs, which ran just before",
}


def sample_csv(source: Path, dest: Path, n_per_label: int, columns: dict[str, str], seed: int = 0,
               max_chars: int = 10**9) -> None:
    """``n_per_label`` rows of each label of a real CSV (short ones where ``max_chars`` asks), columns renamed."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if len(r["text"]) <= max_chars]
    by_label: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    rng = random.Random(seed)
    picked = [r for group in by_label.values() for r in rng.sample(group, min(n_per_label, len(group)))]
    rng.shuffle(picked)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns.values()))
        writer.writerows([[r[old] for old in columns] for r in picked])


def user_data(project: Path) -> None:
    """The data a user brings: small, real, and the only thing the runner substitutes."""
    trec = SHARED / "datasets" / "trec"
    sample_csv(trec / "train.csv", project / "data" / "trec" / "train.csv", 25, {"label": "label", "text": "text"})
    sample_csv(trec / "test.csv", project / "data" / "trec" / "test.csv", 6, {"label": "label", "text": "text"})
    imdb = SHARED / "datasets" / "imdb"
    review = {"text": "review", "label": "sentiment"}
    sample_csv(imdb / "train.csv.gz", project / "my_data" / "train.csv", 30, review, max_chars=200)
    sample_csv(imdb / "test.csv.gz", project / "my_data" / "test.csv", 8, review, max_chars=200)
    with gzip.open(imdb / "unsup.csv.gz", "rt", encoding="utf-8", newline="") as f:
        unlabeled = [r["text"].replace("\n", " ") for _, r in zip(range(200), csv.DictReader(f))]
    (project / "my_data" / "unlabeled.txt").write_text("\n".join(t for t in unlabeled if len(t) < 300) + "\n")
    with gzip.open(SHARED / "corpora" / "general-en" / "valid.txt.gz", "rt", encoding="utf-8") as f:
        general = [line for _, line in zip(range(40), f) if len(line) < 3000]
    (project / "corpus.txt").write_text("".join(general), encoding="utf-8")


def fresh_project(tmp: Path) -> Path:
    """This checkout's files (committed and new, not ignored ones) in ``tmp/project``, with its virtual
    environment and ``../shared`` beside it, as a clone next to the shared folder has them."""
    project = tmp / "project"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, project / name)
    link_venv(Path(sys.prefix), project / ".venv")
    (tmp / "shared").symlink_to(SHARED)
    return project


def link_venv(venv: Path, into: Path) -> None:
    """``into`` as the project's virtual environment after ``make setup``: each entry a link into this test's
    environment, and a set-up stamp of its own, newer than the copied pyproject.toml, so ``make`` finds it
    installed and never reinstalls into the linked one (whose editable install must keep naming this
    checkout)."""
    into.mkdir()
    for entry in venv.iterdir():
        if entry.name != ".installed":
            (into / entry.name).symlink_to(entry)
    (into / ".installed").touch()


def environment(project: Path, ray_tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ULMFIT_MODELS", "ULMFIT_DATA",
                                                             "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    bin_dir = str(project / ".venv" / "bin")
    env.update({"PATH": bin_dir + os.pathsep + env.get("PATH", ""), "VIRTUAL_ENV": str(project / ".venv"),
                "RAY_TMPDIR": ray_tmp, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"})
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(var, None)
    return env


def test_every_skipped_command_is_still_in_a_guide():
    commands = {c.key for g in GUIDES for b in fenced_blocks(ROOT / g) if b.lang == "bash" for c in block_commands(b)}
    assert set(SKIP) <= commands, set(SKIP) - commands


def test_commands_live_in_bash_blocks():
    """A command shown in an unmarked block would escape the runner."""
    for guide in GUIDES:
        for block in fenced_blocks(ROOT / guide):
            if block.lang in ("", "text", "sh", "shell", "console"):
                starts = [ln for ln in block.text.splitlines() if ln.startswith(("python ", "mlflow ", "make ", "$ "))]
                assert not starts, f"{guide}:{block.line}: commands in a block that is not ```bash: {starts}"


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_guides_run_as_written(tmp_path):
    if not (SHARED / "datasets" / "trec" / "train.csv").exists() or not (SHARED / "pretrained").is_dir():
        pytest.skip(f"the shared datasets and pretrained models are not at {SHARED}")
    project = fresh_project(tmp_path)
    user_data(project)
    ray_tmp = tempfile.mkdtemp(prefix="rd", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    runner = Runner(project, environment(project, ray_tmp), SKIP)
    try:
        for guide in GUIDES:
            runner.run_doc(ROOT / guide)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        print("\n".join(runner.log))
    assert runner.skipped == set(SKIP), set(SKIP) - runner.skipped


def test_the_runner_stops_at_a_failing_command_naming_its_guide_and_line(tmp_path):
    """What makes the guides test fail when a guide's command breaks: here `ls` of a folder that is not there."""
    import pytest

    guide = tmp_path / "GUIDE.md"
    guide.write_text("# A guide\n\n<!-- file: hello.txt -->\n```\nhello\n```\n\n```bash\ncat hello.txt\n"
                     "mkdir -p runs/search/demo-20261206-101010\nls runs/search/demo-<time>\n"
                     "ls runs/no-such-folder   # broken\necho never\n```\n")
    runner = Runner(tmp_path, dict(os.environ), {})
    with pytest.raises(AssertionError, match=r"GUIDE\.md:12: `ls runs/no-such-folder   # broken` failed \(exit 2\)"):
        runner.run_doc(guide)
    assert (tmp_path / "hello.txt").read_text() == "hello\n"
    ran = "\n".join(runner.log)
    assert "rc=0" in ran and "ls runs/search/demo-20261206-101010" in ran and "echo never" not in ran
