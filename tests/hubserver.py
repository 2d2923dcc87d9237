"""A local HTTP server that speaks the Hugging Face Hub's file download protocol.

``huggingface_hub.hf_hub_download`` first sends ``HEAD /{repo}/resolve/{revision}/{file}`` and reads
``X-Repo-Commit``, ``X-Linked-Etag`` (the LFS sha256) and ``X-Linked-Size``; then it ``GET``s the
same URL, with ``Range`` when resuming. Point ``HF_ENDPOINT`` at ``FakeHub.url`` to use it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)$")


@dataclass
class Request:
    """One request the fake Hub received."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """The files it serves, by (repo, filename), and the requests it saw."""

    files: dict[tuple[str, str], Path]
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    _sha256: dict[Path, str] = field(default_factory=dict)

    def downloads(self) -> list[Request]:
        """The GET requests: actual file transfers."""
        return [r for r in self.requests if r.method == "GET"]

    def sha256(self, path: Path) -> str:
        if path not in self._sha256:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._sha256[path] = digest.hexdigest()
        return self._sha256[path]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, *, body: bool) -> None:
            hub.requests.append(Request(self.command, self.path, dict(self.headers.items())))
            match = _RESOLVE.match(self.path.split("?", 1)[0])
            path = hub.files.get((match["repo"], match["file"])) if match else None
            if match is None or path is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound" if match else "RepoNotFound")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = path.stat().st_size
            start = 0
            ranged = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged[1])
            self.send_response(206 if ranged else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hub.sha256(path)}"')
            self.send_header("X-Linked-Etag", f'"{hub.sha256(path)}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if body:
                with path.open("rb") as f:
                    f.seek(start)
                    for block in iter(lambda: f.read(1 << 20), b""):
                        self.wfile.write(block)

    return Handler


@contextmanager
def serve_hub(files: dict[tuple[str, str], Path]) -> Iterator[FakeHub]:
    """Runs a fake Hub on a free loopback port for the duration of the block."""
    hub = FakeHub(files)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
