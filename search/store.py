"""The layout of one search folder, ``<search.storage>/<search.name>-<YYYYmmdd-HHMMSS>``, and its readers.

Ray writes its experiment state and the trials' checkpoints there; this project adds:

* ``search.json``: the resolved search config and its MLflow ids: all a resume, an export or a
  retrain needs (:func:`write_search_json`, :func:`read_search_json`);
* ``leaderboard.csv``: one row per trial, best first;
* ``best.yaml``: the exported best configuration (``search/export.py``);
* ``optuna.db``: the Optuna study (SQLite; one study named after the folder), which the searcher
  writes as trials end and a resumed search continues: ``optuna-dashboard sqlite:///DIR/optuna.db``.

Both ``tuner.py`` and ``export.py`` import this module (and not each other's internals).
"""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import portable
from search.errors import SearchConfigError
from search.settings import SearchConfig, search_config_from_dict
from ulmfit_core import artifacts

SEARCH_JSON = "search.json"
LEADERBOARD_CSV = "leaderboard.csv"
BEST_YAML = "best.yaml"
OPTUNA_DB = "optuna.db"

if TYPE_CHECKING:
    import optuna


def study_url(search_dir: str | Path) -> str:
    """The SQLAlchemy URL of a search's Optuna study database (absolute: trials run elsewhere)."""
    return f"sqlite:///{Path(search_dir).expanduser().resolve() / OPTUNA_DB}"


def study_name(search_dir: str | Path) -> str:
    """A search's study is named after its folder (``NAME-YYYYmmdd-HHMMSS``)."""
    return Path(search_dir).name


def study_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``. Only the driver writes, but a dashboard may read alongside:
    SQLite then waits for its lock (30 s) instead of failing at once."""
    import optuna

    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def load_study(search_dir: str | Path) -> optuna.Study | None:
    """The search's study from its ``optuna.db``; None for a folder without one (a search stopped before its
    study was created)."""
    if not (Path(search_dir) / OPTUNA_DB).exists():
        return None
    import optuna

    storage = study_storage(study_url(search_dir))
    names = optuna.get_all_study_names(storage)
    name = study_name(search_dir)
    return optuna.load_study(study_name=name if name in names or len(names) != 1 else names[0], storage=storage)


def open_study_checked(search_dir: str | Path, *, required: bool = False) -> optuna.Study | None:
    """:func:`load_study`, with one clear line for a study that cannot be read (a damaged or foreign
    ``optuna.db``) or, when ``required`` (a resume continues it), one that is missing."""
    path = Path(search_dir) / OPTUNA_DB
    try:
        study = load_study(search_dir)
    except Exception as e:  # noqa: BLE001 (SQLAlchemy's and Optuna's errors alike: the file is unusable)
        raise SearchConfigError(f"{path}: damaged or not this search's Optuna study ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); copy it again from the search's machine, or "
                                f"start a new search (export from MLflow with --experiment)") from None
    if study is None and required:
        raise SearchConfigError(f"{search_dir}: no {OPTUNA_DB} (the search's Optuna study, which a resume "
                                f"continues); copy the whole search folder, or start a new search")
    return study


def new_search_dir(cfg: SearchConfig) -> Path:
    """A fresh folder name under the storage (not created): ``NAME-YYYYmmdd-HHMMSS[-N]``."""
    storage = Path(cfg.search.storage).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = storage / f"{cfg.search.name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = storage / f"{cfg.search.name}-{stamp}-{n}"
    return path


def write_search_json(search_dir: Path, meta: dict[str, Any], root: Path | None = None) -> Path:
    """Write ``search.json``: ``meta`` (``config``: ``SearchConfig.to_dict()``; ``tracking_uri``; MLflow ids)
    with every path under the project ``root`` (default: the current directory, where the search runs)
    stored relative to it, and the search folder's own place in the project, so the folder can move
    (``search/portable.py``). ``project_root`` records where it ran, for the reader's messages."""
    root = (root or Path.cwd()).resolve()
    out = dict(meta)
    if isinstance(out.get("config"), dict):
        out["config"] = portable.search_config_paths(out["config"], lambda v: portable.relative(v, root),
                                                     lambda u: portable.relative_uri(u, root))
    out["tracking_uri"] = portable.relative_uri(out.get("tracking_uri"), root)
    out["search_dir"] = portable.relative(str(Path(search_dir).resolve()), root)
    out["project_root"] = str(root)
    return artifacts.write_json(Path(search_dir) / SEARCH_JSON, out)


def read_search_json(search_dir: str | Path) -> tuple[SearchConfig, dict[str, Any]]:
    """``(search config, metadata)`` of a search folder, its paths made absolute against the project the
    folder belongs to now (``portable.project_root``); clear errors for a wrong or damaged folder.
    ``meta["project_root"]`` is that project; ``meta["recorded_project_root"]`` where the search ran."""
    path = Path(search_dir) / SEARCH_JSON
    if not path.exists():
        raise FileNotFoundError(f"{search_dir} is not a search folder (no {SEARCH_JSON}); give the folder "
                                f"`search` printed, e.g. runs/search/NAME-YYYYmmdd-HHMMSS")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("it holds no search config")
        root = portable.project_root(Path(search_dir), meta.get("search_dir"))
        config = portable.search_config_paths(meta["config"], lambda v: portable.absolute(v, root),
                                              lambda u: portable.absolute_uri(u, root))
        meta.update(tracking_uri=portable.absolute_uri(meta.get("tracking_uri"), root),
                    recorded_project_root=meta.get("project_root"), project_root=str(root))
        return search_config_from_dict(config), meta
    except json.JSONDecodeError as e:
        problem: Exception | str = f"not valid JSON: {e}"
    # ValueError: not UTF-8, no config, or a config that does not validate (SearchConfigError, ConfigError)
    except (OSError, ValueError, TypeError) as e:
        problem = e
    raise SearchConfigError(f"{path}: damaged ({problem}); the search cannot be resumed or exported from it. "
                            "Start a new search, or export from MLflow with --experiment") from None


def leaderboard_csv(board: list[dict[str, Any]]) -> str:
    """The leaderboard rows as CSV text (columns in first-seen order)."""
    columns = list(dict.fromkeys(k for row in board for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(board)
    return buf.getvalue()


def write_leaderboard(search_dir: Path, board: list[dict[str, Any]]) -> Path | None:
    if not board:
        return None
    return artifacts.write_text(Path(search_dir) / LEADERBOARD_CSV, leaderboard_csv(board))
