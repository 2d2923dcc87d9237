"""A local HTTP server that speaks the Hugging Face Hub's file download protocol.

``huggingface_hub.hf_hub_download`` first sends ``HEAD /{repo}/resolve/{revision}/{file}`` and reads
``X-Repo-Commit``, ``X-Linked-Etag`` (the LFS sha256) and ``X-Linked-Size``; then it ``GET``s the
same URL, with ``Range`` when resuming. Point ``HF_ENDPOINT`` at ``FakeHub.url`` to use it.

Like the Hub, it can require a token (401 without one or with an unknown one, 403 for a known
token without access to a gated repo), and for tests of bad networks it can cut the connection
partway through a file and send slowly.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
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
    headers: dict[str, str]  # names in lower case

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class FakeHub:
    """The files it serves, by (repo, filename), and the requests it saw."""

    files: dict[tuple[str, str], Path]
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    # Tokens the Hub knows; when set, a request needs one of them (see ``granted``).
    tokens: set[str] | None = None
    # Of those, the ones with access to the (gated) repositories; the others get a 403.
    granted: set[str] = field(default_factory=set)
    # Bytes after which the next GETs end the connection early, one entry per cut.
    cuts: list[int] = field(default_factory=list)
    # Seconds to pause after each MiB sent.
    pause_per_mib: float = 0.0
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

        def _refuse(self, status: int, code: str | None, message: str) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, *, body: bool) -> None:
            hub.requests.append(
                Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            )
            if hub.tokens is not None:
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not token:
                    self._refuse(401, None, "Access to this repository is restricted.")
                    return
                if token not in hub.tokens:
                    self._refuse(401, None, "Invalid credentials in Authorization header")
                    return
                if token not in hub.granted:
                    self._refuse(403, "GatedRepo", "Access to this model is restricted.")
                    return
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
            revision = match["revision"]
            commit = revision if re.fullmatch(r"[0-9a-f]{40}", revision) else COMMIT
            self.send_response(206 if ranged else 200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hub.sha256(path)}"')
            self.send_header("X-Linked-Etag", f'"{hub.sha256(path)}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            if not body:
                return
            cut = hub.cuts.pop(0) if hub.cuts else None
            sent = 0
            with path.open("rb") as f:
                f.seek(start)
                for block in iter(lambda: f.read(1 << 20), b""):
                    if cut is not None and sent + len(block) > cut:
                        self.wfile.write(block[: cut - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)  # the connection drops mid-file
                        return
                    self.wfile.write(block)
                    sent += len(block)
                    if hub.pause_per_mib:
                        time.sleep(hub.pause_per_mib)

    return Handler


@contextmanager
def serve_hub(files: dict[tuple[str, str], Path], **options: object) -> Iterator[FakeHub]:
    """Runs a fake Hub (``FakeHub(files, **options)``) on a free loopback port for the block."""
    hub = FakeHub(files, **options)  # type: ignore[arg-type]
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
