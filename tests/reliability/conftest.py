"""A misbehaving image server on loopback, for the URL cases of the reliability tests.

Routes (``GET``):

- ``/img/NAME``: the bytes registered as ``server.files[NAME]``, with a Content-Length; 404 when
  nothing is registered under that name.
- ``/private/NAME``: the same, only with HTTP Basic credentials ``alice`` / :data:`PASSWORD`
  (401 without them).
- ``/status/CODE``: an empty response with that status (404, 500...).
- ``/hang``: accepts the request and never answers.
- ``/forever``: answers 200 and streams bytes until the client hangs up (no Content-Length).
- ``/trickle``: announces a small body, then sends one byte every 0.1 s, forever.
- ``/redirect/file``: redirects to ``file:///etc/passwd``; ``/redirect/NAME`` to ``/img/NAME``.
- ``/reason/NAME``: status 500 whose reason phrase is ``server.files[NAME]``, with an HTML body.
- ``/garbage/NAME``: a status line that is not HTTP, made of ``server.files[NAME]``.

Every request's path and headers are recorded in ``server.requests``.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

PASSWORD = "s3cret-pw-7f3a"
USER = "alice"


@dataclass
class ImageServer:
    """The running server: its base URL, the files it serves, and what it was asked."""

    url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def _handler(state: ImageServer) -> type[http.server.BaseHTTPRequestHandler]:
    expected_auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers.items())))
            path = self.path.split("?", 1)[0]
            # The client of a timeout or size-cap case has hung up by the time we write.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._route(path)

        def _route(self, path: str) -> None:
            if path.startswith("/img/"):
                self._serve(path.removeprefix("/img/"))
            elif path.startswith("/private/"):
                if self.headers.get("Authorization") != expected_auth:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="images"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._serve(path.removeprefix("/private/"))
            elif path.startswith("/status/"):
                self.send_response(int(path.removeprefix("/status/")))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/hang":
                state.stop.wait(120)
            elif path == "/forever":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                chunk = b"\xff" * 65536
                while not state.stop.is_set():
                    self.wfile.write(chunk)
            elif path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                while not state.stop.wait(0.1):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
            elif path.startswith("/reason/"):
                reason = state.files[path.removeprefix("/reason/")].decode()
                self.send_response(500, reason)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(reason)))
                self.end_headers()
                self.wfile.write(reason.encode())
            elif path.startswith("/garbage/"):
                self.wfile.write(b"HTTP/1.1 2x0 " + state.files[path.removeprefix("/garbage/")])
                self.wfile.write(b"\r\n\r\n")
                self.close_connection = True
            elif path == "/redirect/file":
                self._redirect("file:///etc/passwd")
            elif path.startswith("/redirect/"):
                self._redirect("/img/" + path.removeprefix("/redirect/"))
            else:
                self.send_error(404)

        def _serve(self, name: str) -> None:
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    """The misbehaving image server (see the module docstring), on 127.0.0.1 only."""
    state = ImageServer(url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()  # releases the hanging and streaming handlers
        server.shutdown()
        server.server_close()
