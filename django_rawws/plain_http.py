"""Plain HTTP on the WebSocket port, through Django's own development handler.

The server's I/O thread has already read the request head (with its limits
and its deadline) when it finds a request that is not an upgrade; it hands
the socket and the bytes read so far to this module on a thread of the HTTP
pool. Django's ``WSGIRequestHandler`` — the one ``runserver`` uses — then
serves it, keep-alive included, reading the bytes already read first and the
socket after them. No second HTTP/1.1 parser of ours: the HTTP side has
``runserver``'s quality, and a site in production sends HTTP to a WSGI server
and only WebSockets here.

Keep-alive and the bounded pool: ``runserver`` gives every connection a
thread of its own, so an idle keep-alive connection costs nothing there.
Here the HTTP pool has a fixed number of threads, and a connection waiting
for its next request holds one; a browser opens up to six connections per
host, so a page's requests could queue behind idle connections until they
time out. An idle connection therefore gives its thread up (it is closed,
as any keep-alive connection may be) as soon as every thread of the pool is
taken; otherwise it waits for its next request up to the socket timeout (the
server sets ``HANDSHAKE_TIMEOUT``).

Limits: the first request's head was read by the I/O thread, within
``HANDSHAKE_TIMEOUT`` and the head limits. A keep-alive request's head gets
the same: from its first byte, the whole head must arrive within the socket
timeout (a client trickling a byte at a time would otherwise hold a thread of
the pool for ever), and its lines are held to ``MAX_REQUEST_LINE``,
``MAX_HEADERS`` and ``MAX_HEAD`` as they are read (414 or 431, then the
connection is closed), before Django's handler parses them.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

from django.core.servers.basehttp import WSGIRequestHandler

from .exceptions import HandshakeError, HeadersTooLarge, RequestLineTooLong
from .protocol.handshake import build_reject

__all__ = ["serve_http"]

#: Django's logger for runserver's request lines.
server_logger = logging.getLogger("django.server")

#: Seconds between two looks at the pool while a connection waits, idle,
#: for its next request: the longest a queued connection waits for it.
IDLE_CHECK_INTERVAL = 0.05


class _Occupancy:
    """How many connections the HTTP handlers of this process are holding.

    Counted per process, not per server: with two servers in one process
    (tests), idle connections give way a little early, never late.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def enter(self) -> None:
        with self._lock:
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


_occupancy = _Occupancy()


class _HeadRefused(Exception):
    """A keep-alive request's head broke a limit: answer ``error`` and close."""

    def __init__(self, error: HandshakeError) -> None:
        super().__init__(error.reason)
        self.error = error


class _PrefixedReader(io.RawIOBase):
    """A raw stream that yields ``prefix`` first, then what the socket receives.

    Between two requests of a keep-alive connection (``awaiting_request``),
    a read first waits for the socket to become readable, and ends the input
    instead when the wait is over: after the socket timeout, or at once when
    ``crowded()`` says another connection needs the thread. Within a request,
    the socket timeout raises ``TimeoutError``; so does ``head_deadline``
    while the head of a keep-alive request arrives (set when its first byte
    does, cleared by the handler once the head is parsed).
    """

    def __init__(self, prefix: bytes, sock: socket.socket, crowded: Any) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._sock = sock
        self._crowded = crowded
        self.awaiting_request = False
        self.head_deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        if self.awaiting_request:
            if not self._next_request_arrives():
                return 0
            self.awaiting_request = False
            timeout = self._sock.gettimeout()
            if timeout is not None:
                self.head_deadline = time.monotonic() + timeout
        if self.head_deadline is not None:
            return self._read_head(buffer, self.head_deadline)
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            # Mid-request: an error, never an early end, which would hand the
            # view a truncated body as if it were whole.
            raise
        except OSError:
            return 0  # a reset: end of input

    def _read_head(self, buffer: Any, deadline: float) -> int:
        """Read while a keep-alive request's head arrives: within its deadline."""
        sock = self._sock
        timeout = sock.gettimeout()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request head not complete in time")
        sock.settimeout(remaining if timeout is None else min(timeout, remaining))
        try:
            return sock.recv_into(buffer)
        except TimeoutError:
            raise
        except OSError:
            return 0
        finally:
            sock.settimeout(timeout)


    def _next_request_arrives(self) -> bool:
        sock = self._sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes the descriptor no longer signals
        timeout = sock.gettimeout()
        deadline = None if timeout is None else time.monotonic() + timeout
        poller = select.poll()
        try:
            poller.register(sock, select.POLLIN)
        except (OSError, ValueError):
            return False
        wait = 0.0  # first a look without waiting: a request may be there already
        while True:
            try:
                if poller.poll(wait * 1000):
                    # Bytes, or the end. Peeked below TLS: a TLS read of a bare
                    # EOF (a client gone, the server's shutdown) would answer it
                    # with an alert instead of a quiet close.
                    return bool(socket.socket.recv(sock, 1, socket.MSG_PEEK))
            except OSError:
                return False
            if self._crowded():
                return False
            wait = IDLE_CHECK_INTERVAL
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)


class _HeadLimiter:
    """The buffered input while a keep-alive request's head is read: the server's head limits, line by line.

    Django's handler reads the head with ``readline()`` (request line, then
    header lines up to the empty one); each line is checked as it is read,
    the same way the I/O thread's parser checks a first request: a line over
    ``max_line`` bytes (CRLF excluded), more than ``max_headers`` header
    lines or a head over ``max_head`` bytes. Anything else goes to the
    reader underneath.
    """

    def __init__(self, reader: io.BufferedReader, *, max_line: int, max_headers: int, max_head: int) -> None:
        self.reader = reader
        self._max_line = max_line
        self._max_headers = max_headers
        self._max_head = max_head
        self._lines = 0
        self._size = 0

    def readline(self, size: int = -1) -> bytes:
        room = self._max_line + 3  # the line, CRLF, and one byte to tell it was longer
        line = self.reader.readline(room if size is None or size < 0 else min(size, room))
        length = len(line) - (2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0)
        first = self._lines == 0
        self._lines += 1
        self._size += len(line)
        if length > self._max_line:
            if first:
                raise _HeadRefused(RequestLineTooLong(f"request line longer than {self._max_line} bytes"))
            raise _HeadRefused(HeadersTooLarge(f"header line longer than {self._max_line} bytes"))
        if self._size > self._max_head:
            raise _HeadRefused(HeadersTooLarge(f"request head larger than {self._max_head} bytes"))
        if self._lines - 1 > self._max_headers and length > 0:
            raise _HeadRefused(HeadersTooLarge(f"more than {self._max_headers} header fields"))
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reader, name)


class _RequestHandler(WSGIRequestHandler):
    prefix = b""
    workers: int | None = None
    #: The server's head limits (``max_line``, ``max_headers``, ``max_head``).
    limits: dict[str, int] = {}

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket reader; the socket itself stays open
        size = self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE
        self._reader = _PrefixedReader(self.prefix, self.connection, self._crowded)
        self.rfile = io.BufferedReader(self._reader, size)
        self._requests = 0

    def handle_one_request(self) -> None:
        # Only the reads before a keep-alive request's first byte may give up early.
        keep_alive = self._requests > 0
        self._reader.awaiting_request = keep_alive
        self._requests += 1
        if keep_alive and self.limits:
            self.rfile = _HeadLimiter(self.rfile, **self.limits)  # type: ignore[assignment]
        try:
            super().handle_one_request()
        except TimeoutError:
            # A head that stopped coming (a body that did is the view's
            # UnreadablePostError, answered by Django).
            server_logger.info("request from %s timed out", self.client_address[0])
            self.close_connection = True
        except _HeadRefused as refused:
            server_logger.info(
                "request from %s refused with %d: %s",
                self.client_address[0],
                refused.error.status_code,
                refused.error.reason,
            )
            self.close_connection = True
            try:
                self.wfile.write(build_reject(refused.error))
                self.wfile.flush()
                _linger(self.connection)
            except OSError:
                pass
        finally:
            self._end_of_head()

    def parse_request(self) -> bool:
        try:
            return super().parse_request()
        finally:
            # The head is read: the body is the view's, with the socket timeout only.
            self._end_of_head()

    def _end_of_head(self) -> None:
        self._reader.head_deadline = None
        if isinstance(self.rfile, _HeadLimiter):
            self.rfile = self.rfile.reader

    def _crowded(self) -> bool:
        return self.workers is not None and _occupancy.count >= self.workers


def _linger(sock: socket.socket, timeout: float = 1.0, limit: int = 1 << 16) -> None:
    """Stop writing, then read and discard briefly, so the client reads the refusal, not a reset."""
    socket.socket.shutdown(sock, socket.SHUT_WR)
    deadline = time.monotonic() + timeout
    received = 0
    while received < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        try:
            data = sock.recv(limit)
        except TimeoutError:
            return
        if not data:
            return
        received += len(data)


class _ServerShim(socketserver.ThreadingMixIn):
    """What the request handler asks of its server: the WSGI app and a base environ.

    A ThreadingMixIn, because Django's handler keeps connections alive only
    for a threading server.
    """

    def __init__(self, application: Any, server_name: str, server_port: int, secure: bool) -> None:
        self.application = application
        self.base_environ = {
            "SERVER_NAME": server_name,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PORT": str(server_port),
            "REMOTE_HOST": "",
            "CONTENT_LENGTH": "",
            "SCRIPT_NAME": "",
        }
        if secure:
            # wsgiref derives wsgi.url_scheme ("https") from it.
            self.base_environ["HTTPS"] = "on"

    def get_app(self) -> Any:
        return self.application


def serve_http(
    sock: socket.socket,
    client_address: Any,
    prefix: bytes,
    application: Any,
    *,
    secure: bool = False,
    workers: int | None = None,
) -> None:
    """Serve the HTTP requests of ``sock`` (the first one's bytes in ``prefix``) with ``application``.

    ``workers`` is the number of threads serving HTTP: once that many
    connections are held, one waiting idle for a next request is closed so
    that a queued connection gets its thread. ``None``: never closed early.
    """
    from .conf import get_config

    config = get_config()
    limits = {
        "max_line": config["MAX_REQUEST_LINE"],
        "max_headers": config["MAX_HEADERS"],
        "max_head": config["MAX_HEAD"],
    }
    local = sock.getsockname()
    server = _ServerShim(application, str(local[0]), int(local[1]), secure)
    handler_class = type(
        "PrefixedRequestHandler", (_RequestHandler,), {"prefix": prefix, "workers": workers, "limits": limits}
    )
    _occupancy.enter()
    try:
        handler_class(sock, client_address, server)
    finally:
        _occupancy.leave()
