"""Downloading and checking files for :mod:`ulmfit_core.datasets` and :mod:`ulmfit_core.zoo`.

- :func:`download` streams a URL to ``DEST.part`` and renames it to ``DEST`` only when every byte
  has arrived, so a present ``DEST`` is always complete. An interrupted download keeps its
  ``.part``; the next call continues it with an HTTP ``Range`` request (or starts again when the
  server answers with the whole file).
- ``SHA256SUMS`` files (``sha256sum`` output: ``HASH  PATH`` per line) are read from a folder or a
  base URL, and :func:`verify` checks a file against its line.

Errors are :class:`FetchError`; the callers turn them into their own error types.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .artifacts import copy_file

#: Seconds to wait for a server to answer or to send the next chunk.
TIMEOUT = 60
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+|\*)$")


class FetchError(ValueError):
    """A file cannot be downloaded or does not match its checksum; the message says how to fix it."""


#: The most a fetch downloads, and the most an archive may unpack to: above the largest file any dataset or zoo
#: model here needs (IMDb's archive is 84 MB and unpacks to 0.5 GB, wt103's to 0.5 GB), so a wrong URL or an
#: archive bomb stops instead of filling the disk. ULMFIT_MAX_FETCH_GB raises (or lowers) it.
MAX_FETCH_GB_ENV = "ULMFIT_MAX_FETCH_GB"
DEFAULT_MAX_FETCH_GB = 4.0


def max_fetch_bytes() -> int:
    value = os.environ.get(MAX_FETCH_GB_ENV, "")
    try:
        gb = float(value) if value else DEFAULT_MAX_FETCH_GB
    except ValueError:
        raise FetchError(f"{MAX_FETCH_GB_ENV}={value!r}: not a number of gigabytes (e.g. 8)") from None
    return int(gb * 1e9)


def too_large(what: str, size: int) -> str:
    """The message for ``what`` holding ``size`` bytes, more than :func:`max_fetch_bytes`."""
    return (f"{what} is {size / 1e9:.2f} GB, more than the {max_fetch_bytes() / 1e9:g} GB a fetch accepts (a wrong "
            f"file, or an archive that unpacks to far more than it holds?); check its source, or raise the limit "
            f"with {MAX_FETCH_GB_ENV}")


def check_unpacked_size(what: str, sizes: list[int]) -> None:
    """Refuse an archive whose files add up to more than the limit, before anything is unpacked."""
    total = sum(sizes)
    if total > max_fetch_bytes():
        raise FetchError(too_large(f"{what} unpacked", total))


def is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file", "ftp")


# --- download --------------------------------------------------------------------------------


def download(url: str, dest: Path, progress: bool) -> None:
    """Stream ``url`` to ``dest.part``, then rename it to ``dest``: an interrupted download leaves no
    ``dest``. A ``dest.part`` left by an earlier try is continued where the server supports byte
    ranges (HTTP 206), else downloaded again from the start (HTTP 200)."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    try:
        resp, offset = _open_resuming(url, part)
        with resp, open(part, "r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            total = _total_size(resp, offset)
            limit = max_fetch_bytes()
            if total is not None and total > limit:  # said before a byte is written
                raise _TooLarge(too_large(url, total))
            with tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name,
                      disable=not progress) as bar:
                _copy_stream(resp, out, bar.update, limit)
            received = out.tell()
        if total is not None and received != total:
            raise _Incomplete(f"the connection closed after {received:,} of {total:,} bytes")
    except _TooLarge as e:
        part.unlink(missing_ok=True)
        raise FetchError(str(e)) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, cut connections
        raise FetchError(_download_failure(url, part, e)) from None
    os.replace(part, dest)


class _Incomplete(OSError):
    """The server sent fewer bytes than it announced."""


class _TooLarge(Exception):
    """The file is larger than a fetch accepts (:func:`max_fetch_bytes`)."""


def _open_resuming(url: str, part: Path) -> tuple[http.client.HTTPResponse, int]:
    """The response for ``url`` and the offset its body starts at: the size of ``part`` when the
    server sent the rest of the file (206), else 0 (it sent the whole file)."""
    have = part.stat().st_size if part.is_file() else 0
    if have == 0:
        return urllib.request.urlopen(url, timeout=TIMEOUT), 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"})
    try:
        resp = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: the range does not fit the file (it changed?): start again
            raise
        e.close()
        return urllib.request.urlopen(url, timeout=TIMEOUT), 0
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
    if resp.status == 206 and m and int(m.group(1)) == have:
        return resp, have
    if resp.status == 206:  # a range we did not ask for: no way to tell what it holds
        resp.close()
        return urllib.request.urlopen(url, timeout=TIMEOUT), 0
    return resp, 0  # 200: the server ignores ranges and sends everything


def _total_size(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """The whole file's size in bytes, when the server says it."""
    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
    if m and m.group(2) != "*":
        return int(m.group(2))
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length else None


def _copy_stream(src: http.client.HTTPResponse, out: BinaryIO, advance: Callable[[int], object], limit: int) -> None:
    while chunk := src.read(_CHUNK):
        out.write(chunk)
        advance(len(chunk))
        if out.tell() > limit:  # a server that announced no size (or a smaller one)
            raise _TooLarge(too_large(src.geturl() or "the download", out.tell()))


def _download_failure(url: str, part: Path, e: BaseException) -> str:
    reason = getattr(e, "reason", None) or str(e) or type(e).__name__
    kept = part.stat().st_size if part.is_file() else 0
    if kept:
        resume = f"; the {kept:,} bytes received are kept in {part} and the next try continues from there"
    else:
        part.unlink(missing_ok=True)
        resume = ""
    return (f"cannot download {url}: {reason}{resume}; check the network, "
            "or pass a mirror (a folder or URL holding the file)")


# --- checksums -------------------------------------------------------------------------------


def read_sums(folder: Path) -> dict[str, str]:
    """``folder/SHA256SUMS`` as {PATH: HASH}; {} when there is none."""
    f = folder / "SHA256SUMS"
    return parse_sums(f.read_text(encoding="utf-8")) if f.is_file() else {}


def fetch_sums(base_url: str) -> dict[str, str]:
    """The SHA256SUMS a mirror URL serves (``base_url`` ends in ``/``); {} when it has none."""
    try:
        with urllib.request.urlopen(base_url + "SHA256SUMS", timeout=TIMEOUT) as resp:
            return parse_sums(resp.read().decode("utf-8"))
    except OSError:
        return {}


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` output: ``HASH  PATH`` (or ``HASH *PATH``) per line -> {PATH: HASH}."""
    sums = {}
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(.+)$", line.strip())
        if m:
            sums[m.group(2).strip()] = m.group(1).lower()
    return sums


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str | None, shown: str | None = None) -> None:
    """Raise :class:`FetchError` unless ``path`` has sha256 ``expected`` (nothing to check when None).
    ``shown``: how the message names the file (default: its path)."""
    if expected is None:
        return
    actual = sha256(path)
    if actual != expected:
        raise FetchError(f"{shown or path}: sha256 {actual} does not match SHA256SUMS ({expected}); "
                         "the file is damaged or was replaced: fetch it again")


def copy_atomic(src: Path, dest: Path) -> None:
    """Copy to a temporary name beside ``dest``, then rename: a present ``dest`` is a whole copy."""
    copy_file(src, dest)
