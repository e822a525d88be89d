"""Plain test apps, a server context manager and raw-socket clients for the server tests.

The apps implement the server's application interface directly (no Django):
they record every call and let a test wait for what it expects with a
``threading.Condition`` instead of sleeping. The raw clients do what
well-behaved clients won't: trickle a head, send garbage, skip pongs, drop TCP.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.connection import Connection, Role
from django_rawws.protocol.deflate import DeflateOptions, PerMessageDeflate
from django_rawws.protocol.events import CloseReceived, ConnectionFailed, Event, Ping
from django_rawws.protocol.frames import encode_close_payload, encode_frame
from django_rawws.protocol.handshake import ClientHandshake
from django_rawws.protocol.http import Headers, ResponseParser
from django_rawws.server import Server, ServerConfig

#: Generous upper bound for anything a test waits for; deadlines under test are much smaller.
TIMEOUT = 5.0

#: A valid Sec-WebSocket-Key (the RFC 6455 §1.3 example) and its accept value.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# Defaults for the server under test: few workers, short close and linger
# timeouts so that a test's teardown never waits for the production values.
TEST_DEFAULTS: dict[str, Any] = {
    "workers": 4,
    "close_timeout": 1.0,
    "linger_timeout": 1.0,
    "handshake_timeout": 5.0,
}


# --------------------------------------------------------------------- apps


class RecordingApp:
    """An echo app that records every call; subclasses override ``on_*`` hooks.

    ``on_handshake`` accepts (with ``accept_kwargs``); ``on_message`` echoes.
    Each record is ``(conn, value)``; ``wait_until(predicate)`` blocks until a
    predicate over the app holds, without sleeping.
    """

    def __init__(self, **accept_kwargs: Any) -> None:
        self.accept_kwargs = accept_kwargs
        self.handshakes: list[Any] = []
        self.messages: list[tuple[Any, str | bytes]] = []
        self.events: list[tuple[Any, Any]] = []
        self.disconnects: list[tuple[Any, int]] = []
        self.worker_exits: list[str] = []
        self.changed = threading.Condition()

    # The server interface: record, then run the hook.

    def websocket_handshake(self, conn: Any, handshake: Any) -> None:
        self._record(self.handshakes, conn)
        self.on_handshake(conn, handshake)

    def websocket_message(self, conn: Any, message: str | bytes) -> None:
        self._record(self.messages, (conn, message))
        self.on_message(conn, message)

    def websocket_event(self, conn: Any, event: Any) -> None:
        self._record(self.events, (conn, event))

    def websocket_disconnect(self, conn: Any, code: int) -> None:
        self._record(self.disconnects, (conn, code))

    def worker_exit(self) -> None:
        self._record(self.worker_exits, threading.current_thread().name)

    # Hooks.

    def on_handshake(self, conn: Any, handshake: Any) -> None:
        conn.accept(**self.accept_kwargs)

    def on_message(self, conn: Any, message: str | bytes) -> None:
        conn.send(message)

    # Waiting.

    def _record(self, target: list[Any], value: Any) -> None:
        with self.changed:
            target.append(value)
            self.changed.notify_all()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def wait_disconnects(self, count: int = 1, timeout: float = TIMEOUT) -> list[int]:
        """Wait for ``count`` disconnect calls; return the codes so far."""
        assert self.wait_until(lambda: len(self.disconnects) >= count, timeout), (
            f"expected {count} disconnect call(s), got {self.disconnect_codes()}"
        )
        return self.disconnect_codes()

    def wait_messages(self, count: int = 1, timeout: float = TIMEOUT) -> list[str | bytes]:
        assert self.wait_until(lambda: len(self.messages) >= count, timeout), (
            f"expected {count} message(s), got {len(self.messages)}"
        )
        return [message for _, message in self.messages]

    def disconnect_codes(self) -> list[int]:
        with self.changed:
            return [code for _, code in self.disconnects]


class BlockingApp(RecordingApp):
    """Echo app whose handler blocks on ``release`` for messages starting with ``block``.

    ``entered`` counts handlers that reached the block; once released, each
    sends ``released <message>``. ``unblock()`` is what ``running_server``
    calls when a test fails, so a stuck handler never outlives it.
    """

    def __init__(self, **accept_kwargs: Any) -> None:
        super().__init__(**accept_kwargs)
        self.release = threading.Event()
        self.entered = 0

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("block"):
            with self.changed:
                self.entered += 1
                self.changed.notify_all()
            assert self.release.wait(30.0), "the test never released the handler"
            conn.send(f"released {message}")
            return
        conn.send(message)

    def unblock(self) -> None:
        self.release.set()

    def wait_entered(self, count: int = 1, timeout: float = TIMEOUT) -> None:
        assert self.wait_until(lambda: self.entered >= count, timeout), f"{self.entered} handler(s) entered"


# ------------------------------------------------------------------- server


@contextlib.contextmanager
def running_server(app: Any, *, grace: float = 5.0, **config: Any) -> Iterator[Server]:
    """Run ``Server(app)`` on 127.0.0.1, port 0, with ``config`` over the test defaults.

    The server is stopped in ``finally`` (a no-op when the test stopped it);
    when the test fails, ``app.unblock()`` (if any) runs first.
    """
    server = Server(app, "127.0.0.1", 0, ServerConfig(**{**TEST_DEFAULTS, **config}))
    server.start()
    try:
        yield server
    except BaseException:
        # A failing test must not leave a handler blocked for the whole grace.
        unblock = getattr(app, "unblock", None)
        if unblock is not None:
            unblock()
        raise
    finally:
        server.stop(grace)


def ws_url(server: Server, path: str = "/") -> str:
    host, port = server.address
    return f"ws://{host}:{port}{path}"


def rawws_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("rawws-")]


def join_rawws_threads(timeout: float = TIMEOUT) -> list[str]:
    """Join the server's threads (bounded); return the names of those still alive."""
    deadline = time.monotonic() + timeout
    for thread in rawws_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    return [thread.name for thread in rawws_threads()]


# -------------------------------------------------------------- raw sockets


def open_socket(server: Server, *, rcvbuf: int | None = None, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to ``server`` (``rcvbuf`` set before connecting, so the window stays small)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(server.address)
    return sock


def handshake_request(
    path: str = "/",
    *,
    method: str = "GET",
    http_version: str = "HTTP/1.1",
    key: str = KEY,
    version: str = "13",
    headers: list[tuple[str, str]] | tuple[()] = (),
    omit: tuple[str, ...] = (),
) -> bytes:
    """A handshake request, byte for byte; ``omit`` drops headers by (lowercase) name."""
    fields = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", version),
        *headers,
    ]
    lines = [f"{method} {path} {http_version}"]
    lines += [f"{name}: {value}" for name, value in fields if name.lower() not in omit]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class HttpReply:
    status: int
    headers: Headers
    body: bytes
    rest: bytes = b""


def read_http_response(sock: socket.socket, *, read_body: bool = True) -> HttpReply:
    """Read one response head and its ``Content-Length`` body; fail on EOF before the end."""
    parser = ResponseParser()
    response = None
    while response is None:
        data = sock.recv(65536)
        assert data, "connection closed before the response head was complete"
        response = parser.feed(data)
    buffered = parser.trailing
    length = int(response.headers.get("Content-Length") or 0) if read_body else 0
    while len(buffered) < length:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(buffered)} of {length} body bytes"
        buffered += data
    return HttpReply(response.status, response.headers, buffered[:length], buffered[length:])


def read_to_eof(sock: socket.socket, limit: int = 1 << 26) -> bytes:
    """Read until the peer's FIN; a reset raises ``ConnectionResetError`` (the test then fails)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        total += len(data)
        assert total <= limit, "the server kept sending"


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Wait (on the socket, bounded) for the peer to close; return the seconds it took, None if not."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([sock], [], [], remaining)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return time.monotonic() - start


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def masked_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=os.urandom(4))


def close_frame(code: int | None = 1000, reason: str = "") -> bytes:
    return masked_frame(Opcode.CLOSE, encode_close_payload(code, reason))


@dataclass
class RawClient:
    """A WebSocket client on a plain blocking socket, driven by the core's client role."""

    sock: socket.socket
    proto: Connection
    response_headers: Headers
    received: list[Event] = field(default_factory=list)

    @classmethod
    def connect(
        cls,
        server: Server,
        path: str = "/",
        *,
        headers: list[tuple[str, str]] | tuple[()] = (),
        first_bytes: bytes = b"",
        deflate: DeflateOptions | None = None,
        rcvbuf: int | None = None,
        max_message_size: int = 1 << 26,
    ) -> RawClient:
        """Handshake; ``first_bytes`` go in the same ``send()`` as the request."""
        sock = open_socket(server, rcvbuf=rcvbuf)
        host, port = server.address
        handshake = ClientHandshake(f"{host}:{port}", path, headers=headers, deflate_options=deflate)
        sock.sendall(handshake.request_bytes() + first_bytes)
        result = None
        while result is None:
            data = sock.recv(65536)
            assert data, "connection closed during the handshake"
            result = handshake.receive_data(data)
        codec = None
        if result.deflate_params is not None:
            codec = PerMessageDeflate(result.deflate_params, is_server=False)
        proto = Connection(Role.CLIENT, max_message_size=max_message_size, deflate=codec)
        client = cls(sock, proto, result.response.headers)
        if handshake.trailing:
            client.received.extend(proto.receive_data(handshake.trailing))
        return client

    def send_text(self, text: str) -> None:
        self.proto.send_text(text)
        self.sock.sendall(self.proto.data_to_send())

    def send_binary(self, data: bytes) -> None:
        self.proto.send_binary(data)
        self.sock.sendall(self.proto.data_to_send())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_event(self, timeout: float = TIMEOUT, *, reply: bool = True) -> Event | None:
        """Return the next event, or None at EOF. ``reply=False`` never answers pings or closes."""
        self.sock.settimeout(timeout)
        while not self.received:
            data = self.sock.recv(65536)
            if not data:
                self.proto.receive_eof()
                return None
            self.received.extend(self.proto.receive_data(data))
            out = self.proto.data_to_send()
            if out and reply:
                try:
                    self.sock.sendall(out)
                except OSError:
                    pass  # the server already shut down; what was read still counts
        return self.received.pop(0)

    def events_until_close(
        self, timeout: float = TIMEOUT, *, reply: bool = True
    ) -> tuple[list[Event], int | None]:
        """Read until the server's close frame; return the events before it and its code.

        The code is None when the server dropped TCP without a close frame.
        """
        deadline = time.monotonic() + timeout
        events: list[Event] = []
        while True:
            event = self.next_event(max(0.01, deadline - time.monotonic()), reply=reply)
            if event is None:
                return events, None
            if isinstance(event, CloseReceived):
                return events, event.code
            assert not isinstance(event, ConnectionFailed), f"the server broke the protocol: {event}"
            if not isinstance(event, Ping):
                events.append(event)

    def close(self) -> None:
        self.sock.close()
