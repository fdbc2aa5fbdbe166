"""A local MLflow store (SQLite) that moves with its project.

MLflow records artifact locations as absolute paths (``file:///home/me/proj/mlartifacts/...``) when an
experiment or run is created, so a store copied to another folder or machine still points at the old one:
new runs would write their artifacts there, and the UI would show the old files, or none. Each experiment
this project creates is tagged with the database it was created in (:data:`STORE_TAG`); a search or retrain
that finds its store elsewhere stops with one line naming ``launch.py relocate-store``, which rewrites the
artifact locations under the old folder to the same place under the new one.

MLflow has no API to change an artifact location, so :func:`relocate` updates its database's location
columns directly (``experiments.artifact_location``, ``runs.artifact_uri``, ``model_versions.storage_location``
and ``source``, ``logged_models.artifact_location``), in one transaction, after checking that those columns
exist; ``tests/test_store_location.py`` checks the result through MLflow's public API (artifacts download, a
registered model loads).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

#: Experiment tag: the SQLite database file the experiment was created in.
STORE_TAG = "ulmfit.store"
SQLITE = "sqlite:///"
#: (table, column) holding artifact locations in MLflow's SQL schema.
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("model_versions", "storage_location"), ("model_versions", "source"),
                    ("logged_models", "artifact_location"))


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (absolute), or None for another store."""
    if not uri.startswith(SQLITE):
        return None
    return Path(uri[len(SQLITE):]).expanduser().resolve()


def relocate_command(uri: str) -> str:
    return f"python launch.py relocate-store --tracking-uri {uri}"


def moved_from(client: Any, uri: str, experiment: Any) -> Path | None:
    """The folder of the database the experiment was created in, when that is not this store's folder and
    its artifacts were put under it (so they did not move with the store); else None."""
    db = sqlite_file(uri)
    recorded = experiment.tags.get(STORE_TAG)
    if db is None or not recorded or Path(recorded) == db:
        return None
    old = Path(recorded).parent
    location = _path_of(experiment.artifact_location or "")
    return old if location and _under(location, old) else None


def _path_of(location: str) -> str:
    return location[len("file://"):] if location.startswith("file://") else location


def _under(path: str, folder: Path) -> bool:
    return path == str(folder) or path.startswith(str(folder).rstrip("/") + "/")


def relocate(uri: str, old_folder: str | Path | None = None) -> dict[str, int]:
    """Point the artifact locations of the SQLite store ``uri`` that lie under the folder it was created in
    (or ``old_folder``) at the same places under the store's own folder. Returns rows changed per column."""
    from mlflow.tracking import MlflowClient

    db = sqlite_file(uri)
    if db is None:
        raise ValueError(f"--tracking-uri {uri}: only a SQLite store (sqlite:///PATH) is relocated; a tracking "
                         "server keeps its own artifacts")
    if not db.is_file():
        raise FileNotFoundError(f"--tracking-uri {uri}: no database {db}")
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    olds = {Path(old_folder).expanduser().resolve()} if old_folder else \
        {Path(e.tags[STORE_TAG]).parent for e in experiments if e.tags.get(STORE_TAG) and Path(e.tags[STORE_TAG]) != db}
    new = db.parent
    changed: dict[str, int] = {}
    with sqlite3.connect(db) as con:
        _check_schema(con, db)
        for old in olds - {new}:
            for table, column in LOCATION_COLUMNS:
                for prefix_old, prefix_new in ((f"file://{old}/", f"file://{new}/"), (f"{old}/", f"{new}/")):
                    cur = con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                                      f"WHERE {column} LIKE ? ESCAPE '\\'",
                                      (prefix_new, len(prefix_old) + 1, _like_prefix(prefix_old)))
                    changed[f"{table}.{column}"] = changed.get(f"{table}.{column}", 0) + cur.rowcount
    for e in experiments:
        if e.tags.get(STORE_TAG):
            client.set_experiment_tag(e.experiment_id, STORE_TAG, str(db))
    return changed


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _check_schema(con: sqlite3.Connection, db: Path) -> None:
    for table, column in LOCATION_COLUMNS:
        columns = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            raise ValueError(f"{db}: MLflow's table {table} has no column {column} in this MLflow version; "
                             "relocate-store knows MLflow 3's schema: move the store back to its folder instead")
