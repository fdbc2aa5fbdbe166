"""The search layer's configuration errors, and the one helper that raises them."""
from __future__ import annotations

from typing import NoReturn


class SearchConfigError(ValueError):
    """The search config is invalid; the message names the key and the fix."""


class SpaceError(SearchConfigError):
    """The search space is invalid; the message names ``space.KEY`` and the fix."""


def fail(key: str, message: str, error: type[SearchConfigError] = SearchConfigError) -> NoReturn:
    """Raise ``error("KEY: message")``."""
    raise error(f"{key}: {message}")


class StorageError(ValueError):
    """The search's storage filled up or turned read-only; the message names the folder and the resume command."""


#: What a full or read-only disk looks like in an error: Python's, SQLite's, and the text of a trial's
#: error that Ray passes on.
_STORAGE_SIGNS = {"No space left on device": "the disk is full", "database or disk is full": "the disk is full",
                  "Disk quota exceeded": "the disk quota is used up", "Read-only file system": "it is read-only",
                  "attempt to write a readonly database": "it is read-only"}


def storage_problem(error: BaseException | str | None) -> str | None:
    """``"the disk is full (No space left on device)"`` when ``error`` (or an error it was raised from) is a
    full or read-only disk; else None."""
    texts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts.append(str(error))
        error = None if isinstance(error, str) else (error.__cause__ or error.__context__)
    text = "\n".join(texts)
    return next((f"{meaning} ({sign})" for sign, meaning in _STORAGE_SIGNS.items() if sign in text), None)


def storage_error(search_dir: object, problem: str) -> StorageError:
    return StorageError(f"{search_dir}: {problem} while the search wrote there; what ended is kept. Free space "
                        f"(or make it writable), then continue with `python launch.py search --resume {search_dir}`")
