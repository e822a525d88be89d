"""Run the real server with the Django application in a test, and talk to it.

``running_server()`` binds port 0, attaches the group backend, yields the
:class:`~django_rawws.server.Server` and stops it in ``finally``. Enter any
``override_settings(RAWWS=...)`` *before* it: the application and the group
backend read the settings current when they are used.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

#: Generous upper bound for anything a test waits for.
TIMEOUT = 5.0


@contextlib.contextmanager
def running_server(app: Any = None, **config_overrides: Any) -> Iterator[Any]:
    """Serve ``app`` (default: a ``DjangoApplication``) on 127.0.0.1, port 0.

    ``config_overrides`` are ``ServerConfig`` fields winning over ``RAWWS``;
    keepalive is off and the lingering close short unless given.
    """
    from django_rawws.conf import server_config
    from django_rawws.groups import get_backend
    from django_rawws.handler import DjangoApplication
    from django_rawws.server import Server

    overrides = {"ping_interval": None, "linger_timeout": 0.2, "close_timeout": 2.0, **config_overrides}
    server = Server(
        app if app is not None else DjangoApplication(), "127.0.0.1", 0, server_config(**overrides)
    )
    server.start()
    backend = get_backend()
    backend.attach(server)
    try:
        yield server
    finally:
        server.stop(grace=TIMEOUT)
        backend.detach(server)


def ws_url(server: Any, path: str = "/") -> str:
    host, port = server.address
    return f"ws://{host}:{port}{path}"


def origin_of(server: Any, scheme: str = "http") -> str:
    host, port = server.address
    return f"{scheme}://{host}:{port}"


def raw_handshake(
    server: Any, path: str, headers: list[tuple[str, str]] | None = None, *, host: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send a handshake over a plain socket; return ``(status, headers, body)`` of the answer.

    ``host`` replaces the Host header (default: the server's address), so a
    test controls exactly what Django's ``get_host()`` sees.
    """
    address = server.address
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host if host is not None else f'{address[0]}:{address[1]}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers or []),
    ]
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        response_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if status != 101:
            length = int(response_headers.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
    return status, response_headers, body


# ----------------------------------------------------- without a server


class FakeConnection:
    """Stands in for a ServerConnection in unit tests: records what the Django side asks of it."""

    def __init__(
        self, handshake: Any = None, *, remote_address: Any = ("127.0.0.1", 50000), ident: str = "c1"
    ) -> None:
        self.id = ident
        self.handshake = handshake
        self.request = handshake.request if handshake is not None else None
        self.remote_address = remote_address
        self.subprotocol: str | None = None
        self.app_state: Any = None
        self.accepted: dict[str, Any] | None = None
        self.rejected: Any = None
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.failed: int | None = None
        self.events: list[Any] = []
        self.is_open = False
        self.buffered_amount = 0

    def accept(
        self,
        *,
        subprotocol: str | None = None,
        headers: Any = (),
        deflate: Any = None,
        max_message_size: Any = None,
    ) -> None:
        from django_rawws.exceptions import InvalidState

        if self.accepted is not None or self.rejected is not None:
            raise InvalidState("already decided")
        self.accepted = {
            "subprotocol": subprotocol,
            "headers": list(headers),
            "deflate": deflate,
            "max_message_size": max_message_size,
        }
        self.subprotocol = subprotocol
        self.is_open = True

    def reject(self, error: Any) -> None:
        from django_rawws.exceptions import InvalidState

        if self.accepted is not None or self.rejected is not None:
            raise InvalidState("already decided")
        self.rejected = error

    def send(self, message: str | bytes) -> bool:
        if not self.is_open:
            return False
        self.sent.append(message)
        return True

    def send_shared(self, shared: Any) -> bool:
        return self.send(shared.message)

    def deliver_event(self, event: Any) -> bool:
        self.events.append(event)
        return self.is_open

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.is_open = False

    def fail(self, code: int, reason: str = "") -> None:
        self.failed = code
        self.is_open = False


def make_handshake(
    target: str = "/ws/echo/", headers: list[tuple[str, str]] | None = None, host: str = "testserver"
) -> Any:
    """A validated HandshakeRequest, parsed from bytes as the server would."""
    from django_rawws.protocol.handshake import validate_request
    from django_rawws.protocol.http import RequestParser

    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers or []),
    ]
    request = RequestParser().feed(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    assert request is not None
    return validate_request(request)


def make_request(
    target: str = "/ws/echo/", headers: list[tuple[str, str]] | None = None, **kwargs: Any
) -> tuple[FakeConnection, Any]:
    """A FakeConnection and the WSGIRequest the Django side builds for its handshake."""
    from django.core.handlers.wsgi import WSGIRequest

    from django_rawws.handler import build_environ

    host = kwargs.pop("host", "testserver")
    conn = FakeConnection(make_handshake(target, headers, host), **kwargs)
    return conn, WSGIRequest(build_environ(conn, conn.handshake))
