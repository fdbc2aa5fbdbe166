"""How a trial ended, in the user's words: an errored trial's summary line is its own exception."""
from __future__ import annotations

import traceback

import torch

from search.outcome import error_line
from ulmfit_core import artifacts


class _RunsCode:
    def __reduce__(self):
        return print, ("unpickled",)


def test_an_errored_trial_is_summed_up_by_its_innermost_exception(tmp_path):
    from ray.exceptions import RayTaskError

    weights = tmp_path / "model.pt"
    torch.save({"state_dict": _RunsCode()}, weights)  # a file refused inside a trial
    try:
        artifacts.load_tensors(weights)
    except artifacts.ArtifactError as e:
        wrapped = RayTaskError("ImplicitFunc.train", traceback.format_exc(), e)  # how Ray hands it to the driver
        message = str(e)
    line = error_line(wrapped)
    assert line == f"ArtifactError: {message.splitlines()[0].strip()}"
    assert "refused" in line and str(weights) in line
    assert error_line(None) is None
    assert error_line("the worker died\n") == "the worker died"  # no exception line: the last line
