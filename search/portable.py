"""Paths a search writes down (``search.json``, ``best.yaml``), kept relative to the project it ran in, so a
search folder copied or rsynced to another folder or machine exports and retrains there.

The *project* is the folder the search ran from (relative paths in configs are relative to it, as for every
command). What is written under it is stored relative to it; what lies outside it (a dataset on shared
storage, ``/data/models``) stays absolute. A reader finds the project again from where the file is now: a
search folder recorded as ``runs/search/NAME-TIME`` that now sits at ``/new/place/runs/search/NAME-TIME``
belongs to the project ``/new/place``; a file that no longer sits where its project had it (``best.yaml``
copied on its own) is read against the current directory, as any config is.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SQLITE = "sqlite:///"
#: Search-config keys holding paths (``section.key``); list values hold one path per element.
SEARCH_PATH_KEYS = (
    ("search", "storage"), ("search", "lm_root"), ("search", "cache_dir"), ("search", "data_dir"),
    ("search", "models_dir"), ("search", "warm_start"), ("mlflow", "artifact_location"),
)
RECIPE_PATH_KEYS = (("data", "train"), ("data", "valid"), ("data", "test"), ("data", "unlabeled"),
                    ("data", "unlabeled_valid"), ("lm", "pretrained"), ("lm", "pretrained_vocab"),
                    ("lm", "pretrained_backwards"))


def relative(path: str | None, root: Path) -> str | None:
    """``path`` relative to ``root`` when it lies under it (a relative path is taken as relative to ``root``
    already); else as it is. Names that are not paths (a zoo name, an MLflow experiment) are left alone
    by the callers, which know which keys hold paths."""
    if not path or "://" in path:
        return path
    p = Path(path).expanduser()
    if not p.is_absolute():
        return path
    try:
        return Path(os.path.relpath(p, root)).as_posix() if p.is_relative_to(root) else path
    except ValueError:
        return path


def shown(path: str | Path) -> str:
    """``path`` as a command to type here would name it: relative to the current directory when under it."""
    return str(relative(str(Path(path).expanduser().resolve()), Path.cwd().resolve()))


def absolute(path: str | None, root: Path) -> str | None:
    """``path`` made absolute against ``root`` (an absolute one stays as it is)."""
    if not path or "://" in path:
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (root / p).resolve())


def relative_uri(uri: str | None, root: Path) -> str | None:
    """A SQLite tracking URI with its file relative to ``root`` (``sqlite:///mlflow.db``); others as they are."""
    if not uri or not uri.startswith(SQLITE):
        return uri
    return SQLITE + str(relative(uri[len(SQLITE):], root))


def absolute_uri(uri: str | None, root: Path) -> str | None:
    """A SQLite tracking URI with its file made absolute against ``root``; others as they are."""
    if not uri or not uri.startswith(SQLITE) or uri.startswith(SQLITE + "/"):
        return uri
    return SQLITE + str(absolute(uri[len(SQLITE):], root))


def _map_paths(values: Mapping[str, Any], keys: tuple[tuple[str, str], ...], fn) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()}
    for section, key in keys:
        node = out.get(section)
        if not isinstance(node, dict) or key not in node:
            continue
        value = node[key]
        if isinstance(value, list):
            node[key] = [fn(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            node[key] = fn(value)
    return out


def _is_path(value: str) -> bool:
    from ulmfit_core import zoo

    return not zoo.is_zoo_name(value)


def recipe_paths(recipe: Mapping[str, Any], fn) -> dict[str, Any]:
    """The nested recipe with ``fn`` applied to each of its file paths (zoo names left as they are)."""
    return _map_paths(recipe, RECIPE_PATH_KEYS, lambda v: fn(v) if _is_path(v) else v)


def search_config_paths(config: Mapping[str, Any], fn, uri_fn) -> dict[str, Any]:
    """The search config (as ``SearchConfig.to_dict`` writes it) with ``fn`` applied to every path, and
    ``uri_fn`` to the tracking URI. A warm-start entry that names an MLflow experiment is not a path:
    it only changes when it is one (it names a folder, which ``settings`` made absolute)."""
    out = _map_paths(config, SEARCH_PATH_KEYS, lambda v: fn(v) if _looks_like_path(v) else v)
    if isinstance(out.get("recipe"), Mapping):
        out["recipe"] = recipe_paths(out["recipe"], fn)
    if isinstance(out.get("mlflow"), dict):
        out["mlflow"]["tracking_uri"] = uri_fn(out["mlflow"].get("tracking_uri"))
    return out


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.startswith(".")


def project_root(here: Path, recorded: str | None) -> Path:
    """The project that the folder ``here`` belongs to now: ``here`` with its recorded place in the project
    (``runs/search/NAME-TIME``) taken off its end when it still ends so; else the current directory."""
    here = here.expanduser().resolve()
    if recorded and not Path(recorded).is_absolute():
        parts = Path(recorded).parts
        if here.parts[-len(parts):] == parts:
            return Path(*here.parts[:-len(parts)])
    return Path.cwd().resolve()
