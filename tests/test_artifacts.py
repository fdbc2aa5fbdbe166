"""Artifact I/O: atomic writes, weights read as data only, tied weights kept as one tensor."""
from __future__ import annotations

import pytest
import torch

from ulmfit_core.artifacts import (
    ArtifactError,
    atomic_write,
    cpu_state_dict,
    load_language_model,
    load_tensors,
    save_language_model,
    save_tensors,
)
from ulmfit_core.awd_lstm import build_language_model
from ulmfit_core.config import Dropouts, ModelConfig

NO_DROP = Dropouts(embed_p=0, input_p=0, weight_p=0, hidden_p=0, output_p=0)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_tied_weights_stay_one_tensor_when_moving_to_the_cpu_copies(tmp_path):
    lm = build_language_model(40, ModelConfig(preset="tiny"), NO_DROP)
    # A copying move, as tensor.cpu() is for a CUDA tensor: naive per-key moves untie the weights.
    state = cpu_state_dict(lm, move=lambda t: t.clone())
    tied = ["encoder.embedding.weight", "encoder.embedding_dp.emb.weight", "decoder.weight"]
    assert all(state[k] is state[tied[0]] for k in tied)
    assert state["encoder.rnns.0.weight_ih"] is not state[tied[0]]
    save_tensors(tmp_path / "lm.pt", {"state_dict": state})
    loaded = load_tensors(tmp_path / "lm.pt")["state_dict"]
    assert loaded["decoder.weight"].data_ptr() == loaded["encoder.embedding.weight"].data_ptr()


def test_language_model_round_trip_and_damaged_files_name_the_file(tmp_path):
    lm = build_language_model(40, ModelConfig(preset="tiny"), NO_DROP)
    itos = [f"w{i}" for i in range(40)]
    save_language_model(tmp_path, lm, itos, {"seed": 1})
    state, got_itos, config = load_language_model(tmp_path)
    assert got_itos == itos and config == {"seed": 1}
    assert torch.equal(state["decoder.weight"], lm.decoder.weight.detach())
    data = (tmp_path / "lm.pt").read_bytes()
    (tmp_path / "lm.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"lm\.pt: cannot be read .*truncated"):
        load_language_model(tmp_path)
