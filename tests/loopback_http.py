"""A file server on 127.0.0.1 for the download tests (imported by tests/test_datasets.py, test_zoo.py;
use it with the ``no_proxy`` fixture of conftest.py).

It serves a folder's files, answers ``Range: bytes=N-`` with 206 (or ignores it, as servers
without range support do), can cut a response short to imitate a dropped connection, and
records every request.
"""
from __future__ import annotations

import contextlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Hit:
    path: str
    range: str | None  # the Range header sent, if any
    status: int


@dataclass
class Loopback:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    www: Path
    hits: list[Hit] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # the paths of the hits, as they come
    ranges: bool = True  # answer Range requests with 206
    cut_after: int | None = None  # send only this many body bytes, then close (for every response)

    def record(self, path: str, requested: str | None, status: int) -> None:
        self.hits.append(Hit(path, requested, status))
        self.requests.append(path)


def _handler(server: Loopback) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requested = self.headers.get("Range")
            path = server.www / urllib.parse.unquote(urllib.parse.urlparse(self.path).path).lstrip("/")
            if not path.is_file():
                server.record(self.path, requested, 404)
                self.send_error(404)
                return
            data = path.read_bytes()
            m = re.fullmatch(r"bytes=(\d+)-", requested or "")
            start = int(m.group(1)) if m and server.ranges else 0
            if start >= len(data) > 0:
                server.record(self.path, requested, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            status = 206 if m and server.ranges else 200
            server.record(self.path, requested, status)
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            # HTTP/1.0: the connection closes after the response, so a short body is a dropped connection
            self.wfile.write(body if server.cut_after is None else body[:server.cut_after])

        def log_message(self, *args):  # keep test output quiet
            pass

    return Handler


@contextlib.contextmanager
def serve(www: Path) -> Iterator[Loopback]:
    """Serve ``www`` on a free port of 127.0.0.1 while the block runs."""
    server = Loopback(url="", www=www)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
