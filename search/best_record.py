"""``best.yaml``'s record: what the exported trial ran, kept in the file itself, and the check ``retrain`` makes.

``export`` writes the document twice: once as YAML a person reads (``recipe:``, ``result:``) and once, first
in the file, as one canonical JSON string with its SHA-256 (``record:``). ``retrain`` compares the two key by
key, so a file cut short (keys missing, ``1.038`` cut to ``1.0``) or edited by hand is named before any
training instead of retraining defaults or the edit as if it were the trial. ``--allow-edits`` accepts the
differences; they are then logged on the retrain's MLflow run. The digest catches damage to the record
itself; it is not a signature (anyone who can edit the file can write a new record).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search.tracking import flatten  # dotted keys to leaf values; a list is one value
from ulmfit_core.config import ConfigError

#: The record's section in best.yaml.
RECORD = "record"
#: The sections the record covers.
SECTIONS = ("recipe", "result")
#: How many differing keys an error names before "and N more".
SHOWN = 8


def _canonical(body: Mapping[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_record(doc: Mapping[str, Any]) -> dict[str, str]:
    """The ``record:`` section for a best.yaml document holding :data:`SECTIONS`."""
    text = _canonical({k: doc.get(k) for k in SECTIONS})
    return {"sha256": _digest(text), "exported": text}


@dataclass
class Check:
    """What ``retrain`` found: ``edits`` maps each dotted key that differs from the record to
    ``(recorded, in the file)`` (:data:`MISSING` where absent); ``intact`` is false without a usable record."""

    intact: bool
    edits: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    problem: str = ""

    def tags(self) -> dict[str, str]:
        """MLflow tags for the retrain's run: the check's outcome and each edit."""
        if not self.intact:
            return {"best_yaml_check": f"not checked: {self.problem} (--allow-edits)"}
        tags = {"best_yaml_check": f"{len(self.edits)} edit(s) allowed (--allow-edits)" if self.edits
                else "matches the exported trial"}
        for key, (was, now) in self.edits.items():
            tags[f"edit.{key}"] = f"{_show(was)} -> {_show(now)}"[:4000]
        return tags


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


MISSING = _Missing()


def _show(value: Any) -> str:
    return repr(value) if value is MISSING else json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def check(doc: Mapping[str, Any]) -> Check:
    """Compare a best.yaml document (as read) with its record."""
    record = doc.get(RECORD)
    if record is None:
        return Check(False, problem="it has no record: section (cut short, or written by an older export)")
    if not isinstance(record, Mapping) or not isinstance(record.get("exported"), str) \
            or _digest(record["exported"]) != record.get("sha256"):
        return Check(False, problem="its record: section is damaged (its sha256 does not match)")
    exported = json.loads(record["exported"])
    was = flatten({k: exported.get(k) or {} for k in SECTIONS})
    now = flatten({k: doc.get(k) or {} for k in SECTIONS})
    edits = {key: (was.get(key, MISSING), now.get(key, MISSING))
             for key in sorted(set(was) | set(now))
             if key not in was or key not in now or not _same(was[key], now[key])}
    return Check(True, edits)


def _describe(edits: Mapping[str, tuple[Any, Any]]) -> str:
    """The differences in one clause each: changed values first (the likelier surprise), then the keys
    missing (a file cut short misses a run of them), then the keys added."""
    changed = [f"{k} is {_show(now)} (the trial's: {_show(was)})" for k, (was, now) in edits.items()
               if was is not MISSING and now is not MISSING]
    missing = [k for k, (_, now) in edits.items() if now is MISSING]
    added = [k for k, (was, _) in edits.items() if was is MISSING]
    parts = changed[:SHOWN]
    if len(changed) > SHOWN:
        parts.append(f"{len(changed) - SHOWN} more values changed")
    for what, keys in (("missing", missing), ("added", added)):
        if keys:
            parts.append(f"{len(keys)} key(s) {what}: {', '.join(keys[:SHOWN])}"
                         + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""))
    return "; ".join(parts)


def require_unedited(path: Any, result: Check) -> None:
    """Refuse a best.yaml that is not what its trial ran, naming the keys and the two ways on."""
    again = "export it again (`python launch.py export --search DIR`)"
    allow = "or pass --allow-edits to retrain it as it is (the differences are logged as MLflow tags)"
    if not result.intact:
        raise ConfigError(f"{path}: {result.problem}, so it cannot be checked against the trial it came from; "
                          f"{again} {allow}")
    if result.edits:
        raise ConfigError(f"{path}: differs from the trial it was exported from: {_describe(result.edits)}; "
                          f"{again} {allow}")
