"""The distributed search: Ray Tune + Optuna (TPE) + ASHA around ``ulmfit_core``, tracked in MLflow.

Ray reads several settings from the environment when it is first imported, so the defaults that
keep a search quiet and local are set here, before any submodule imports ``ray``. Every one is a
``setdefault``: a value the user exported wins.
"""
import os

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reporting from a search service
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # tracking.py is the logger; no CSV/JSON/TBX duplicates
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "5",  # experiment state at most 5 s stale when the driver dies
    "RAY_AUTH_MODE": "disabled",  # STACK_NOTES: a stale token file otherwise switches auth on for some nodes
}.items():
    os.environ.setdefault(_key, _value)
