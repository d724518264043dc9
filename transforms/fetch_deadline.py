"""One deadline for a whole HTTP fetch: connecting, the status line, the headers, every redirect.

A socket timeout bounds one wait, not a fetch: a server that sends its status line or headers a
byte at a time, or a chain of redirects each answered just in time, holds a row as long as it
likes. :class:`FetchDeadline` gives urllib connections that draw their connect timeout from the
time left, and a watchdog that shuts every socket of the fetch down when the time is up, so any
read blocked in ``http.client`` (status line, headers, body, the next hop's handshake) returns at
once. The caller then reports the row as timed out (:attr:`FetchDeadline.expired`).

Resolving a host name is a wait of its own that no socket timeout covers (``getaddrinfo`` asks
the system resolver, whose retries can take tens of seconds): it runs on a thread of its own, and
the fetch waits for it only as long as the time left (:meth:`FetchDeadline.resolve`). A
connection then goes to each resolved address in turn, as ``socket.create_connection`` does.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.request
from typing import Any

__all__ = ["FetchDeadline"]


class FetchDeadline:
    """The time left to one fetch, and the sockets to cut when it runs out.

    Use as a context manager around the whole fetch (opening and reading the response); pass
    :meth:`handlers` to ``urllib.request.build_opener``.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expires = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> FetchDeadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def remaining(self) -> float:
        """Seconds left; raises ``TimeoutError`` when none are."""
        left = self.expires - time.monotonic()
        if left <= 0 or self.expired:
            self.expired = True
            raise TimeoutError(f"the fetch took more than {self.seconds:g} s")
        return left

    def watch(self, sock: socket.socket) -> socket.socket:
        """Registers a new connection's socket to be shut down at the deadline; returns it.

        A duplicate of the descriptor is kept: shutting it down ends the connection even after
        TLS has wrapped (and detached) the original socket object.
        """
        duplicate = sock.dup()
        with self._lock:
            if not self.expired:
                self._sockets.append(duplicate)
                return sock
        duplicate.close()
        sock.close()
        raise TimeoutError(f"the fetch took more than {self.seconds:g} s")

    def resolve(self, host: str, port: int) -> list[tuple]:
        """``getaddrinfo(host, port)`` for a stream socket, within the time left.

        Raises:
            TimeoutError: the resolver did not answer in time (its thread is left to finish).
            OSError: the resolver's own failure (``socket.gaierror``).
        """
        answer: dict[str, Any] = {}
        done = threading.Event()

        def ask() -> None:
            try:
                answer["addresses"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
            except OSError as exc:
                answer["error"] = exc
            finally:
                done.set()

        threading.Thread(target=ask, name="clipbeam-resolve", daemon=True).start()
        if not done.wait(self.remaining()):
            self.expired = True
            raise TimeoutError(f"the fetch took more than {self.seconds:g} s")
        if "error" in answer:
            raise answer["error"]
        return answer["addresses"]

    def connect(self, address: tuple[str, int], source: Any = None) -> socket.socket:
        """A connection to ``address`` (host, port), resolved and connected within the time
        left, registered with :meth:`watch`."""
        host, port = address
        failure: OSError | None = None
        for family, kind, proto, _, target in self.resolve(host, port):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.remaining())
                if source is not None:
                    sock.bind(source)
                sock.connect(target)
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError) or self.expired:
                    raise
                failure = exc
                continue
            return self.watch(sock)
        raise failure if failure is not None else OSError("the host name resolved to nothing")

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed by the server or the client
                sock.shutdown(socket.SHUT_RDWR)

    def handlers(self) -> list[urllib.request.BaseHandler]:
        """urllib handlers for http and https whose connections keep to this deadline."""
        return [
            _HTTPHandler(_connection(http.client.HTTPConnection, self)),
            _HTTPSHandler(_connection(http.client.HTTPSConnection, self)),
        ]


def _connection(base: type[http.client.HTTPConnection], deadline: FetchDeadline) -> type:
    class Connection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            self.timeout = deadline.remaining()  # the connect (and each wait) gets what is left

            def create(address: Any, timeout: Any = None, source: Any = None) -> socket.socket:
                return deadline.connect(address, source)

            self._create_connection = create
            super().connect()

    return Connection


class _DeadlineConnections:
    """Mixin for urllib's handlers: every connection is of the deadline's class."""

    def __init__(self, connection: type):
        super().__init__()
        self._connection = connection

    def do_open(self, http_class: Any, req: urllib.request.Request, **kwargs: Any) -> Any:
        return super().do_open(self._connection, req, **kwargs)  # type: ignore[misc]


class _HTTPHandler(_DeadlineConnections, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_DeadlineConnections, urllib.request.HTTPSHandler):
    pass
