"""The model zoo: named pretrained AWD-LSTM language models, fetching them, and finding their files.

``lm.pretrained`` takes a zoo name (``wt103-fwd``, ``general-en-small-fwd``, ...) as well as a
path. :func:`fetch` puts a model into ``MODELS_DIR/NAME/`` (``MODELS_DIR``: ``$ULMFIT_MODELS``,
else ``./models``), and only once it is complete and loads; :func:`resolve` turns a name into
those files. A model comes in one of two layouts:

- ``fastai``: fastai's model-zoo archive, a ``.tgz`` holding one folder with one ``.pth`` (the
  weights, a state dict) and one ``.pkl`` (the vocabulary, a pickled ``list[str]``): what
  fastai's ``language_model_learner`` untars, taking the first ``*.pth`` and ``*.pkl`` in it;
- ``ulmfit``: a folder as ``launch.py pretrain --out`` writes it (``lm.pt``, ``encoder.pt``,
  ``vocab.json``; optionally ``metrics.json``, ``pretrain.yaml``, ``SHA256SUMS``), or a ``.tgz``
  of that folder.

Nothing is unpickled as code: weights load with ``torch.load(weights_only=True)`` and fastai's
vocabulary with :func:`ulmfit_core.lm_weights.read_fastai_vocab`, which refuses every class.
torch is imported only when a model is checked, so that the registry and :func:`resolve` stay
cheap where configs are validated (the search driver). The registry itself (:data:`ZOO`,
:class:`ZooEntry`, :func:`is_zoo_name`, :func:`get`, ...) is :mod:`ulmfit_core.zoo_registry`, a leaf
module that :mod:`ulmfit_core.config` imports; every name of it is re-exported here. See docs/MODELS.md.
"""
from __future__ import annotations

import gzip
import os
import shlex
import shutil
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from filelock import FileLock

from .artifacts import ENCODER_FILE, LM_FILE, VOCAB_FILE, ArtifactError, check_writable_folder, staged_folder
from .fetching import FetchError, check_unpacked_size, download, fetch_sums, is_url, read_sums, verify

# The registry (names, entries, lookups) lives in a leaf module that config.py imports; re-exported here,
# so that `from ulmfit_core.zoo import ZOO, ZooEntry, ZooError, is_zoo_name, get, ...` works as before.
from .zoo_registry import ZOO, ZooEntry, ZooError, get, is_zoo_name
from .zoo_registry import for_direction as for_direction
from .zoo_registry import of_preset as of_preset

#: Environment variable naming the models directory (default ``./models``).
MODELS_ENV = "ULMFIT_MODELS"
DEFAULT_MODELS_DIR = Path("models")

#: The files of the ``ulmfit`` layout.
ULMFIT_FILES = (LM_FILE, ENCODER_FILE, VOCAB_FILE)
SUMS_FILE = "SHA256SUMS"


def default_models_dir() -> Path:
    """``$ULMFIT_MODELS``, else ``./models``."""
    return Path(os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)


def _models_dir(models_dir: str | Path | None) -> Path:
    return Path(models_dir) if models_dir is not None else default_models_dir()


def fetch_command(name: str, models_dir: str | Path | None = None) -> str:
    """The command that fetches ``name`` into ``models_dir`` (``--dest`` unless it is ``./models``)."""
    root = _models_dir(models_dir)
    command = f"python launch.py models fetch {name}"
    return command if root == DEFAULT_MODELS_DIR else f"{command} --dest {shlex.quote(str(root))}"


def fetched(name: str, models_dir: str | Path | None = None) -> Path | None:
    """``MODELS_DIR/NAME`` when it is there (it only ever appears complete and checked), else None."""
    folder = _models_dir(models_dir) / get(name).name
    return folder if folder.is_dir() else None


# --- resolve ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalModel:
    """Where a pretrained language model's files are."""

    path: Path  # fastai layout: the .pth weights; ulmfit layout: the folder
    vocab: Path | None  # fastai's vocabulary pickle (None: the folder's vocab.json, or not known for a path)
    layout: str  # "fastai" or "ulmfit"
    name: str | None = None  # the zoo name; None when given a path


def resolve(value: str, models_dir: str | Path | None = None) -> LocalModel:
    """The local files of ``lm.pretrained``: a zoo name's fetched files under ``models_dir``
    (default :func:`default_models_dir`), or a path as is (a folder saved by this project, or a
    fastai ``.pth`` whose vocabulary is ``lm.pretrained_vocab``).

    Raises :class:`ZooError`, with the command that fetches it, for a zoo name not fetched yet.
    """
    if not is_zoo_name(value):
        path = Path(value)
        return LocalModel(path=path, vocab=None, layout="fastai" if path.suffix == ".pth" else "ulmfit")
    entry = ZOO[value]
    root = _models_dir(models_dir)
    folder = root / entry.name
    if not folder.is_dir():
        command = fetch_command(entry.name, root) + ("" if entry.url else " --mirror DIR")
        mirror = "" if entry.url else \
            f" (DIR: a folder or URL holding {entry.name}/ or {entry.archive}, e.g. ../shared/pretrained)"
        raise ZooError(f"lm.pretrained: zoo model {entry.name!r} is not fetched yet ({folder} does not exist); "
                       f"run `{command}`{mirror}")
    if entry.layout == "ulmfit":
        return LocalModel(path=folder, vocab=None, layout="ulmfit", name=entry.name)
    try:
        weights, vocab = _fastai_files(folder)
    except ZooError as e:
        raise ZooError(f"{e}; delete {folder} and fetch it again: `{fetch_command(entry.name, root)}`") from None
    return LocalModel(path=weights, vocab=vocab, layout="fastai", name=entry.name)


# --- fetch -----------------------------------------------------------------------------------


def fetch(name: str, dest: str | Path | None = None, mirror: str | Path | None = None,
          progress: bool = True) -> Path:
    """Download (or copy from ``mirror``) zoo model ``name`` into ``dest/NAME``; returns that folder.

    ``dest``: default :func:`default_models_dir`. ``mirror``: a local directory holding ``NAME/``
    (a model folder, copied) or ``NAME.tgz``, or a base URL serving ``NAME.tgz``; a ``SHA256SUMS``
    in the mirror (paths relative to it) and one inside the model folder are checked. The model is
    staged in a temporary folder inside ``dest``, checked (:func:`check`), then renamed to
    ``dest/NAME`` in one step: a damaged or wrong source raises :class:`ZooError` and leaves no
    ``dest/NAME``. Nothing is done when ``dest/NAME`` exists; an interrupted download is continued
    by the next call. Safe to run from several processes.
    """
    entry = get(name)
    if entry.url is None and mirror is None:
        raise ZooError(f"{name} has no public download ({entry.source}): pass --mirror DIR|URL, a folder "
                       f"holding {name}/ or {entry.archive} (e.g. --mirror ../shared/pretrained) or a URL serving "
                       f"{entry.archive}")
    dest = _models_dir(dest)
    target = dest / name
    if target.is_dir():  # renamed into place only when complete and checked
        return target
    check_writable_folder(dest, "--dest")  # before any download: it would have nowhere to go
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest / f".{name}.lock")):
        if target.is_dir():  # another process fetched it while we waited
            return target
        for stale in dest.glob(f".{name}.*.tmp"):  # left by a killed process; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with staged_folder(target) as staging:  # renamed into place only when complete and checked
                _stage(entry, staging, dest, mirror, progress)
        except FetchError as e:  # a download or a mirror's checksum
            raise ZooError(f"{name}: {e}") from None
    return target


def _stage(entry: ZooEntry, staging: Path, dest: Path, mirror: str | Path | None, progress: bool) -> None:
    """Fill ``staging`` with the model and check it; raises ZooError/FetchError naming the source."""
    folder = Path(mirror) / entry.name if mirror is not None and not is_url(str(mirror)) else None
    if folder is not None and folder.is_dir():
        for f in folder.iterdir():  # top-level files: a pretrain run's checkpoint/ is not part of the model
            if f.is_file():
                shutil.copyfile(f, staging / f.name)
        try:  # the copies are checked: against the mirror's SHA256SUMS (NAME/FILE lines) and the folder's own
            _check_staged(entry, staging, _sub_sums(read_sums(folder.parent), entry.name))
        except (ZooError, FetchError) as e:
            raise _unusable(entry, str(folder), staging, e, from_public_url=False) from None
        return
    archive, origin, downloaded = _obtain_archive(entry, dest, mirror, progress)
    try:
        _unpack(archive, staging)
        _check_staged(entry, staging, {})
    except (ZooError, FetchError) as e:
        if downloaded:  # not kept: the next try downloads it again
            archive.unlink(missing_ok=True)
        raise _unusable(entry, f"{entry.archive} from {origin}", staging, e, from_public_url=origin == entry.url) \
            from None
    if downloaded:
        archive.unlink()


def _unusable(entry: ZooEntry, what: str, staging: Path, e: Exception, from_public_url: bool) -> ZooError:
    """The error for a source that gave no usable model: ``what`` (the source) and the files in it
    by name, since the staging folder is about to vanish; and the fix."""
    problem = str(e).removeprefix(f"{staging}: ").replace(f"{staging}{os.sep}", "")
    fix = "fetch again (the bad download was not kept), or from a --mirror" if from_public_url else \
        f"put a good copy of {entry.name} on the mirror (or use another mirror) and fetch again"
    return ZooError(f"{what}: {problem}. Nothing was installed; fix: {fix}")


def _obtain_archive(entry: ZooEntry, dest: Path, mirror: str | Path | None,
                    progress: bool) -> tuple[Path, str, bool]:
    """``(local archive, where it came from, whether it was downloaded here)``, its mirror checksum checked."""
    if mirror is not None and not is_url(str(mirror)):
        path = Path(mirror) / entry.archive
        if not path.is_file():
            public = f", or leave out --mirror to download {entry.url}" if entry.url else \
                f" ({entry.name} comes from {entry.source}: docs/MODELS.md says how to make it)"
            raise ZooError(f"mirror {mirror} has neither a {entry.name}/ folder nor {entry.archive}; "
                           f"put one of them there{public}")
        verify(path, read_sums(Path(mirror)).get(entry.archive))
        return path, str(mirror), False
    base = str(mirror).rstrip("/") + "/" if mirror is not None else None
    url = base + entry.archive if base is not None else entry.url
    assert url is not None  # fetch() refuses an entry without URL when there is no mirror
    local = dest / f".{entry.archive}"  # hidden: not a model folder; .part beside it while downloading
    if not local.is_file():
        download(url, local, progress)
    if base is not None:
        try:
            verify(local, fetch_sums(base).get(entry.archive), shown=url)
        except FetchError:
            local.unlink()
            raise
    return local, url, True


def _sub_sums(sums: Mapping[str, str], name: str) -> dict[str, str]:
    """A mirror's ``NAME/FILE`` lines, as ``FILE``."""
    prefix = f"{name}/"
    return {path[len(prefix):]: h for path, h in sums.items() if path.startswith(prefix)}


def _check_sums(folder: Path, sums: Mapping[str, str], listed_by: str) -> None:
    for fname, expected in sums.items():
        path = folder / fname
        if not path.is_file():
            raise ZooError(f"{fname} is listed in {listed_by} but missing")
        verify(path, expected, shown=fname)


def _check_staged(entry: ZooEntry, staging: Path, mirror_sums: Mapping[str, str]) -> None:
    """Checksums (the mirror's for this model, then the model's own), then :func:`check`."""
    _check_sums(staging, mirror_sums, "the mirror's SHA256SUMS")
    _check_sums(staging, read_sums(staging), f"the model's own {SUMS_FILE}")
    _check_model(entry, staging)


# --- archives --------------------------------------------------------------------------------


def _unpack(archive: Path, into: Path) -> None:
    """The files of a ``.tgz`` into ``into``, without its one top folder when it has one (fastai's
    archives hold ``wt103-fwd/...``). Links, devices and paths leading out of ``into`` are refused."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads to the end: a cut-short archive fails here
            check_unpacked_size(archive.name, [m.size for m in members if m.isfile()])
            top = _top_folder(members)
            for m in members:
                rel = _safe_relative(m)
                if m.isdir():
                    continue
                out = into.joinpath(*(rel.relative_to(top) if top else rel).parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None  # a regular file
                with src, open(out, "wb") as f:
                    shutil.copyfileobj(src, f)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ZooError(f"not a complete .tgz archive ({e}): the file is cut short or damaged") from None


def _safe_relative(member: tarfile.TarInfo) -> PurePosixPath:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise ZooError(f"refusing {member.name!r}, a path outside the archive's folder")
    if not (member.isfile() or member.isdir()):
        raise ZooError(f"refusing {member.name!r}, which is not a regular file (a link or device); "
                       "a model archive holds only files and folders")
    return path


def _top_folder(members: list[tarfile.TarInfo]) -> PurePosixPath | None:
    """The one folder every member is in, if there is one."""
    paths = [PurePosixPath(m.name) for m in members if PurePosixPath(m.name).parts]
    tops = {p.parts[0] for p in paths}
    files = [PurePosixPath(m.name) for m in members if m.isfile()]
    if len(tops) == 1 and files and all(len(p.parts) > 1 for p in files):
        return PurePosixPath(tops.pop())
    return None


# --- checks ----------------------------------------------------------------------------------


def check(name: str, folder: str | Path) -> None:
    """Raise :class:`ZooError` unless ``folder`` holds a usable model ``name``: its layout's files,
    weights that load (weights only) and as many embedding rows as vocabulary words; for the
    ``ulmfit`` layout also the registered preset's sizes and direction."""
    _check_model(get(name), Path(folder))


def _check_model(entry: ZooEntry, folder: Path) -> None:
    try:
        if entry.layout == "fastai":
            _check_fastai(folder)
        else:
            _check_ulmfit(entry, folder)
    except ArtifactError as e:  # includes lm_weights.PretrainedError
        raise ZooError(str(e)) from None


def _fastai_files(folder: Path) -> tuple[Path, Path]:
    weights, vocab = sorted(folder.glob("*.pth")), sorted(folder.glob("*.pkl"))
    if len(weights) != 1 or len(vocab) != 1:
        found = ", ".join(p.name for p in weights + vocab) or "neither"
        raise ZooError(f"{folder}: a fastai model holds exactly one .pth (the weights) and one .pkl "
                       f"(the vocabulary); found {found}")
    return weights[0], vocab[0]


def _check_fastai(folder: Path) -> None:
    from .lm_weights import load_fastai_lm

    weights, vocab = _fastai_files(folder)
    load_fastai_lm(weights, vocab)  # also refuses weights whose rows do not match the vocabulary


def _check_ulmfit(entry: ZooEntry, folder: Path) -> None:
    from .artifacts import SUBWORD_FILE, load_language_model
    from .config import MODEL_PRESETS
    from .lm_weights import infer_sizes

    needed = (*ULMFIT_FILES, SUBWORD_FILE) if entry.units == "subwords" else ULMFIT_FILES
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ZooError(f"{folder}: {', '.join(missing)} missing; a model of this project is a folder with "
                       f"{', '.join(needed)} (what launch.py pretrain --out writes)")
    state, itos, config = load_language_model(folder)
    embedding = state.get("encoder.embedding.weight") if isinstance(state, dict) else None
    if getattr(embedding, "ndim", None) != 2:
        raise ZooError(f"{folder / ULMFIT_FILES[0]}: not a language model's state (no encoder.embedding.weight)")
    rows = embedding.shape[0]
    if rows != len(itos):
        raise ZooError(f"{folder}: lm.pt has {rows} embedding rows but vocab.json holds {len(itos)} words: "
                       "the weights and the vocabulary do not belong together")
    sizes = infer_sizes(state)
    expected = dict(zip(("emb_sz", "n_hid", "n_layers"), MODEL_PRESETS[entry.preset]))
    if sizes != expected:
        raise ZooError(f"{folder}: sizes {sizes} are not the {entry.preset!r} preset's {expected}")
    lm_config = config.get("lm") if isinstance(config, dict) else None
    if isinstance(lm_config, dict) and "backwards" in lm_config:
        direction = "bwd" if lm_config["backwards"] else "fwd"
        if direction != entry.direction:
            raise ZooError(f"{folder}: trained {direction} (lm.backwards={lm_config['backwards']}), "
                           f"but {entry.name} is {entry.direction}")
