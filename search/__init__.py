"""The distributed search: Ray Tune + Optuna (TPE) + ASHA around ``ulmfit_core``, tracked in MLflow.

Ray reads several settings from the environment when it is first imported, so the defaults that
keep a search quiet are set here, before any submodule imports ``ray``. Every one is a
``setdefault``: a value the user exported wins. Nothing here touches Ray's security settings
(``RAY_AUTH_MODE``): importing this package must not switch token auth off for the user's other Ray
work. A local search's own instance is made safe where it starts, and its node kept on 127.0.0.1 by Ray's
clusters switch, set here because Ray reads it once, at import (``search.local_ray.prefer_loopback``).
"""
import os

from search.local_ray import prefer_loopback

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reporting from a search service
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # tracking.py is the logger; no CSV/JSON/TBX duplicates
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # experiment state at most 5 s stale when the driver dies
}.items():
    os.environ.setdefault(_key, _value)
prefer_loopback()
