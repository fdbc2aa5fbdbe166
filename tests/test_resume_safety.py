"""Resume only what matches: a rerun into a finished ``--out`` resumes with the same settings, refuses
(naming the key, changing nothing) with different ones, and ``--restart`` starts over."""
from __future__ import annotations

import hashlib
from pathlib import Path

import launch

COMMON = ["--set", "data.dataset=trec", "--set", "data.max_train_rows=300", "--set", "model.preset=tiny",
          "--set", "lm.epochs=1", "--set", "lm.bptt=20", "--set", "lm.bs=16", "--set", "classifier.epochs=1",
          "--set", "classifier.bptt=20", "--set", "classifier.unfreeze=[]", "--no-progress"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_resumes_the_same_run_and_refuses_another(tmp_path, datasets_dir, capsys):
    out = tmp_path / "run"
    args = ["run", *COMMON, "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert launch.main(args) == 0
    first = _digest(out)
    capsys.readouterr()

    # the same settings: resumed at the end, no epoch runs again and the weights stay what they were
    assert launch.main(args) == 0
    assert "] epoch" not in capsys.readouterr().out
    again = _digest(out)
    for name in ("classifier/model.pt", "lm/lm.pt", "classifier/checkpoint/checkpoint.pt"):
        assert again[name] == first[name]
    first = again

    # another learning rate: refused before anything is written, the key named, the fix given
    assert launch.main([*args, "--set", "classifier.lr=0.05"]) == 2
    err = capsys.readouterr().err
    assert "classifier.lr: 0.03 -> 0.05" in err or "classifier.lr:" in err
    assert "--restart" in err and "--out" in err
    assert _digest(out) == first

    # other training text: refused too (the LM's checkpoint names the data)
    assert launch.main([*args[:-2], "--set", "data.max_train_rows=350", "--out", str(out)]) == 2
    assert "the training text or labels differ" in capsys.readouterr().err
    assert _digest(out) == first

    # --restart trains the new settings from scratch in the same folder
    assert launch.main([*args, "--set", "classifier.lr=0.05", "--restart"]) == 0
    assert _digest(out) != first

    # train-classifier on another language model (--lm) into a finished folder: refused, as other settings are
    import shutil

    import torch

    other_lm = tmp_path / "other_lm"
    shutil.copytree(out / "lm", other_lm, ignore=shutil.ignore_patterns("checkpoint"))
    state = torch.load(other_lm / "encoder.pt", weights_only=True)
    tensors = state["state_dict"] if "state_dict" in state else state
    name = next(k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point())
    tensors[name] = tensors[name] + 0.01
    torch.save(state, other_lm / "encoder.pt")
    clf = ["train-classifier", *COMMON, "--data-dir", str(datasets_dir), "--cache-dir", str(tmp_path / "cache"),
           "--out", str(tmp_path / "clf")]
    assert launch.main([*clf, "--lm", str(out / "lm")]) == 0
    trained = _digest(tmp_path / "clf")
    capsys.readouterr()
    assert launch.main([*clf, "--lm", str(other_lm)]) == 2
    assert "the language model it starts from (--lm, its encoder.pt) differ" in capsys.readouterr().err
    assert _digest(tmp_path / "clf") == trained


def test_a_resumed_trial_takes_the_newest_complete_checkpoint_in_its_folder(tmp_path):
    """After a driver kill, Tune's saved state can name an older checkpoint than the trial had reported;
    the trial's own folder has them all. The newest that loads wins; one cut short by the kill does not."""
    import json

    import torch

    from search.trainable import newest_checkpoint
    from ulmfit_core.train import CHECKPOINT_FILE, save_checkpoint

    def checkpoint(name: str, epoch: int, truncated: bool = False) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / ".metadata.json").write_text(json.dumps({"epoch": epoch, "metrics": {"epoch": epoch}}))
        save_checkpoint(folder / CHECKPOINT_FILE, {"epoch": epoch, "weights": torch.zeros(1000)})
        if truncated:
            data = (folder / CHECKPOINT_FILE).read_bytes()
            (folder / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])

    checkpoint("checkpoint_000000", 1)
    checkpoint("checkpoint_000001", 2)
    checkpoint("checkpoint_000002", 3, truncated=True)  # the kill came while it was being written
    (tmp_path / "checkpoint_000003").mkdir()  # no metadata: not a finished checkpoint
    path, meta = newest_checkpoint(tmp_path, after_epoch=1)
    assert path.name == "checkpoint_000001" and meta["epoch"] == 2
    assert newest_checkpoint(tmp_path, after_epoch=2) is None  # Tune's own checkpoint is as new: it is used
