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
