"""A CPU training process reuses the memory it frees (ulmfit_core/memory.py): fewer page faults per step."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One epoch of a language model whose logits are ~100 MB a batch (bs 32 x bptt 40 x 20k words), then the
# process's minor page faults during the epoch: every one is a fresh page the kernel had to hand over.
TRAIN_AND_COUNT_FAULTS = r"""
import json, resource, sys
import numpy as np, torch
from ulmfit_core import memory
from ulmfit_core.awd_lstm import build_language_model, lm_layer_groups
from ulmfit_core.config import LMConfig, ModelConfig
from ulmfit_core.schedule import unfreeze_phases
from ulmfit_core.tasks import LanguageModelTask
from ulmfit_core.train import Trainer, seed_everything

torch.set_num_threads(1)
V = 20_000
seed_everything(0)
rng = np.random.default_rng(0)
docs = [rng.integers(2, V, size=200) for _ in range(32 * 2)]
cfg = LMConfig(epochs=1, bs=32, bptt=40, lr=0.01)
model = build_language_model(V, ModelConfig(preset="tiny"), cfg.scaled_dropouts)
task = LanguageModelTask(docs, docs[:32], cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
groups = lm_layer_groups(model)
trainer = Trainer(model, groups, cfg, unfreeze_phases(len(groups), [], 1), task, device=torch.device("cpu"), precision="fp32")
constructed = memory.keep_freed_memory.cache_info().currsize  # a Trainer alone changes nothing
tuned = memory.for_training_on("cpu")  # what launch.py and a search trial call
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
trainer.fit()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "tuned": tuned, "by_the_trainer": constructed}))
"""


def _faults(keep: str) -> dict:
    env = {**os.environ, "ULMFIT_KEEP_FREED_MEMORY": keep, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TRAIN_AND_COUNT_FAULTS], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_training_on_cpu_reuses_freed_memory_and_the_switch_turns_it_off():
    default, off = _faults("1"), _faults("0")
    assert default["tuned"] is True and off["tuned"] is False
    assert default["by_the_trainer"] == 0  # not a side effect of constructing a Trainer
    # Without it every batch maps its logits and their gradients afresh; with it mostly the first does.
    assert default["faults"] < 0.5 * off["faults"], (default, off)
