"""An invalid search space and an unreachable tracking server fail fast, before any trial runs."""
from __future__ import annotations

import socket
import time

import pytest
from conftest_search import SMOKE, free_port

from search.cli import main


def _no_search_started(tmp_path) -> None:
    import ray

    assert not ray.is_initialized()  # Ray never started
    assert not (tmp_path / "runs").exists()  # no search folder, no trial


def test_invalid_space_fails_before_anything_starts(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("classifier.drop_mult:", "classifier.dropmult:"))
    t0 = time.perf_counter()
    rc = main(["search", "--config", str(bad), "--storage", str(tmp_path / "runs"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "space.classifier.dropmult" in err and "did you mean classifier.drop_mult" in err
    assert str(bad) in err
    assert time.perf_counter() - t0 < 30  # seconds (mostly importing torch), not minutes
    _no_search_started(tmp_path)
    assert not (tmp_path / "mlflow.db").exists()  # not even the tracking store was touched


def test_unreachable_tracking_server_fails_in_seconds(tmp_path, capsys):
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    rc = main(["search", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"),
               "--tracking-uri", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err
    assert time.perf_counter() - t0 < 30
    _no_search_started(tmp_path)


def test_silent_tracking_server_times_out_instead_of_retrying_for_minutes(tmp_path, capsys):
    """A port that accepts connections but never answers (a hung server): the short health-check
    timeout ends it, not MLflow's default retries (7 retries, 120 s timeout)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        port = hung.getsockname()[1]
        t0 = time.perf_counter()
        rc = main(["search", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"),
                   "--tracking-uri", f"http://127.0.0.1:{port}"])
        elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert rc == 2 and "unreachable" in err
    assert elapsed < 15
    _no_search_started(tmp_path)


@pytest.mark.parametrize("flag, value, message", [
    ("--set", "search.resources.cpu=0", "search.resources.cpu: must be >= 1"),
    ("--set", "recipe.classifier.epochs=0", "recipe.classifier.epochs: must be >= 1"),
])
def test_invalid_settings_fail_before_anything_starts(tmp_path, capsys, flag, value, message):
    rc = main(["search", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"), flag, value])
    assert rc == 2 and message in capsys.readouterr().err
    _no_search_started(tmp_path)


def test_unreachable_ray_address_fails_in_seconds(tmp_path, capsys, datasets_dir):
    t0 = time.perf_counter()
    rc = main(["search", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"), "--data-dir", str(datasets_dir),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--address", f"127.0.0.1:{free_port()}"])
    assert rc == 2 and "no Ray cluster answers there" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # seconds, not the minutes ray.init would retry for
    import ray

    assert not ray.is_initialized()
    assert not list((tmp_path / "runs").glob("smoke-*"))  # no search folder (the token cache may exist)
