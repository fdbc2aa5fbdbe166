"""The project uses only the public APIs of Ray, Optuna and MLflow: no private modules, names or attributes.

Their internals change between minor releases without notice (``pyproject.toml`` bounds them only to a
major), so a use of one breaks the service on an upgrade the bounds allow. Checked statically, with
``ast``, over ``ulmfit_core/``, ``search/`` and ``launch.py``; each use is reported as ``path:line: what``:

- an import of a module with a ``_`` component (``from ray._private import ray_constants``), or of a
  ``_`` name (``from ray.tune.schedulers.async_hyperband import _Bracket``), from those packages
  (``importlib.import_module("ray._private...")`` too);
- an attribute known to be one of their internals (:data:`INTERNAL_ATTRIBUTES`), on anything, ``self``
  included (a subclass of ``OptunaSearch`` reading ``self._ot_study`` reads Ray's internals), also as a
  literal ``getattr``/``hasattr``/``setattr``/``delattr`` name;
- any other ``_attribute`` (not ``__dunder__``) on a name imported from those packages or on what a call
  of one returns (``optuna._x``, ``OptunaSearch._y``, ``optuna.load_study(...)._z``).

The project's own private helpers (``self._cache``, a module's ``_load()``) are not theirs and pass.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The third-party packages whose private API the project must not use.
PACKAGES = ("ray", "optuna", "mlflow")

#: Attributes that are Ray's, Optuna's or MLflow's internals, wherever they are read.
INTERNAL_ATTRIBUTES = frozenset({
    "_ot_study", "_ot_trials", "_completed_trials",  # ray.tune.search.optuna.OptunaSearch
    "_rungs", "_brackets",  # ray.tune.schedulers: ASHA's and HyperBand's bookkeeping
    "_tune_controller", "_mark_trial_to_checkpoint",  # ray.tune's execution internals
    "_trial_id", "_storage", "_backend", "_study_id",  # optuna.Trial / Study / _CachedStorage
})

_ATTRIBUTE_BUILTINS = ("getattr", "hasattr", "setattr", "delattr")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_theirs(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in PACKAGES


def _private_part(dotted: str) -> str | None:
    return next((part for part in dotted.split(".") if _is_private(part)), None)


def _root_name(node: ast.expr) -> str | None:
    """The name an expression of attribute reads and calls starts from (``a`` in ``a.b(c).d``), if any."""
    while True:
        if isinstance(node, ast.Attribute):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _bound_from_their_imports(tree: ast.AST) -> set[str]:
    """Names the file binds by importing from ray/optuna/mlflow (anywhere in the file, functions included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_theirs(alias.name):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_theirs(node.module):
            names.update(alias.asname or alias.name for alias in node.names if alias.name != "*")
    return names


def private_api_uses(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """``(line, what)`` for each use of a private Ray/Optuna/MLflow API in ``source``, in line order."""
    tree = ast.parse(source, filename)
    theirs = _bound_from_their_imports(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                part = _private_part(alias.name)
                if _is_theirs(alias.name) and part:
                    found.append((node.lineno, f"imports private module {alias.name} ({part})"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_theirs(node.module):
            part = _private_part(node.module)
            if part:
                found.append((node.lineno, f"imports from private module {node.module} ({part})"))
            for alias in node.names:
                if _is_private(alias.name):
                    found.append((node.lineno, f"imports private name {alias.name} from {node.module}"))
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = _root_name(node.value)
            if node.attr in INTERNAL_ATTRIBUTES:
                found.append((node.lineno, f"uses internal attribute {_describe(node)}"))
            elif root in theirs:
                found.append((node.lineno, f"uses private attribute {_describe(node)} of {root} (imported from "
                                           f"{'/'.join(PACKAGES)})"))
        elif isinstance(node, ast.Call):
            found.extend(_call_uses(node, theirs))
    return sorted(set(found))


def _call_uses(node: ast.Call, theirs: set[str]) -> list[tuple[int, str]]:
    func = node.func
    literal = node.args[1].value if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) else None
    if isinstance(func, ast.Name) and func.id in _ATTRIBUTE_BUILTINS and isinstance(literal, str) \
            and _is_private(literal):
        root = _root_name(node.args[0])
        if literal in INTERNAL_ATTRIBUTES or root in theirs:
            return [(node.lineno, f"{func.id}(..., {literal!r}): internal attribute")]
    module = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
    is_import = (isinstance(func, ast.Name) and func.id == "__import__") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")
    if is_import and isinstance(module, str) and _is_theirs(module) and _private_part(module):
        return [(node.lineno, f"imports private module {module} ({_private_part(module)})")]
    return []


def _describe(node: ast.Attribute) -> str:
    """``obj._attr``, with a long ``obj`` expression shortened to ``(...)``."""
    value = ast.unparse(node.value)
    return f"{value if len(value) <= 40 else '(...)'}.{node.attr}"


def project_files() -> list[Path]:
    files = [p for d in ("ulmfit_core", "search") for p in sorted((ROOT / d).rglob("*.py"))]
    return [*files, ROOT / "launch.py"]


def violations() -> list[str]:
    out = []
    for path in project_files():
        rel = path.relative_to(ROOT).as_posix()
        out += [f"{rel}:{line}: {what}" for line, what in private_api_uses(path.read_text(), rel)]
    return out


# --- the checker itself ----------------------------------------------------------------------


def _whats(source: str) -> list[str]:
    return [f"{line}: {what}" for line, what in private_api_uses(source)]


def test_checker_flags_private_imports():
    found = _whats(
        "from ray._private import ray_constants\n"
        "import ray.autoscaler._private.util\n"
        "from ray.tune.schedulers.async_hyperband import _Bracket\n"
        "import mlflow._internal as mi\n"
        "import importlib\n"
        "m = importlib.import_module('optuna._imports')\n"
    )
    assert [f.split(":")[0] for f in found] == ["1", "2", "3", "4", "6"], found
    assert "_private" in found[0] and "_Bracket" in found[2]


def test_checker_flags_internal_and_private_attributes():
    source = (
        "import optuna\n"
        "from ray.tune.search.optuna import OptunaSearch\n"
        "class S(OptunaSearch):\n"
        "    def f(self):\n"
        "        return self._ot_study\n"  # 5: a listed internal, even on self
        "def g(study, t):\n"
        "    backend = getattr(study._storage, '_backend', None)\n"  # 7: twice
        "    optuna.Trial(study, t._trial_id)\n"  # 8
        "    optuna._imports\n"  # 9: any private attribute of an imported name
        "    return optuna.load_study(study_name='x', storage='y')._cached\n"  # 10: ... or of what it returns
        "OptunaSearch._private_helper\n"  # 11
    )
    lines = [line for line, _ in private_api_uses(source)]
    assert lines == [5, 7, 7, 8, 9, 10, 11], _whats(source)


def test_checker_passes_the_projects_own_private_names():
    source = (
        "import functools\n"
        "import optuna\n"
        "from ray import tune\n"
        "from . import _helpers\n"
        "from search.store import _load\n"
        "def _load_config(path):\n"
        "    return _load(path)\n"
        "class Cache:\n"
        "    __slots__ = ('_cache',)\n"
        "    def __init__(self):\n"
        "        self._cache = {}\n"
        "    def get(self, key):\n"
        "        _helpers._seen.add(key)\n"
        "        return self._cache.get(key) or getattr(self, '_lm_gate', None)\n"
        "def h():\n"
        "    study = optuna.create_study()\n"
        "    return study.trials, tune.Tuner, optuna.__version__, functools._lru_cache_wrapper, _load_config('x')\n"
    )
    assert private_api_uses(source) == []


# --- the project -----------------------------------------------------------------------------


def test_project_uses_only_public_ray_optuna_mlflow_apis():
    found = violations()
    assert not found, (f"{len(found)} use(s) of private Ray/Optuna/MLflow APIs (they change in minor releases; "
                       "use the public API):\n" + "\n".join(found))
