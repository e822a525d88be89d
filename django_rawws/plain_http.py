"""Plain HTTP on the WebSocket port, through Django's own development handler.

The server's I/O thread has already read the request head (with its limits)
when it finds a request that is not an upgrade; it hands the socket and the
bytes read so far to this module on a thread of the HTTP pool. Django's
``WSGIRequestHandler`` — the one ``runserver`` uses — then serves it, keep-alive
included, reading the bytes already read first and the socket after them. No
second HTTP/1.1 parser of ours: the HTTP side has ``runserver``'s quality, and
a site in production sends HTTP to a WSGI server and only WebSockets here.
"""

from __future__ import annotations

import io
import socket
import socketserver
from typing import Any

from django.core.servers.basehttp import WSGIRequestHandler

__all__ = ["serve_http"]


class _PrefixedReader(io.RawIOBase):
    """A raw stream that yields ``prefix`` first, then what the socket receives."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            size = min(len(buffer), len(self._prefix))
            buffer[:size] = self._prefix[:size]
            self._prefix = self._prefix[size:]
            return size
        try:
            return self._sock.recv_into(buffer)
        except (TimeoutError, ConnectionError, OSError):
            return 0  # an idle keep-alive client or a reset: end of input


class _RequestHandler(WSGIRequestHandler):
    prefix = b""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain socket reader; the socket itself stays open
        size = self.rbufsize if self.rbufsize > 0 else io.DEFAULT_BUFFER_SIZE
        self.rfile = io.BufferedReader(_PrefixedReader(self.prefix, self.connection), size)


class _ServerShim(socketserver.ThreadingMixIn):
    """What the request handler asks of its server: the WSGI app and a base environ.

    A ThreadingMixIn, because Django's handler keeps connections alive only
    for a threading server (each keep-alive connection holds a thread of the
    HTTP pool until it goes idle for the handshake timeout).
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
) -> None:
    """Serve the HTTP requests of ``sock`` (the first one's bytes in ``prefix``) with ``application``."""
    local = sock.getsockname()
    server = _ServerShim(application, str(local[0]), int(local[1]), secure)
    handler_class = type("PrefixedRequestHandler", (_RequestHandler,), {"prefix": prefix})
    handler_class(sock, client_address, server)
