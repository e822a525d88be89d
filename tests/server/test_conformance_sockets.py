"""The conformance table of tests/conformance/cases.py, run over TCP against the real server.

:class:`SocketTransport` does a real opening handshake with the server (an
echo app), writes each case's bytes in the case's chunking, one ``send()``
per chunk, and reads back what the server sends. Segmenting and timing are
the kernel's now, so a case passes with its exact outcome or one of the
outcomes Autobahn also accepts (``Case.accepts``).

**Settling.** The driver's barrier is a ping whose pong proves the server
*read* everything before it. Here pongs come from the I/O thread while
echoes come from a worker, so a pong can overtake the echo of a message
written before it (and a close written next would then find the echo
refused, as it should be). Before writing a ping, the transport therefore
waits until the server has read every byte written so far and its worker
has handled them (``call_soon`` runs after what is queued): the echoes are
then on the wire ahead of the pong, as with the in-memory transport. A
ping in the same write as a message may still be answered before the echo;
the table's cases allow for that order.

One server serves every case: the per-case message size limit travels in the
query string and the app passes it to ``accept(max_message_size=...)``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from django_rawws.protocol.handshake import accept_key
from django_rawws.server import Phase, Server, ServerConnection
from tests.conformance.cases import CASES, Case, run_case

from .helpers import KEY, TIMEOUT, RecordingApp, join_rawws_threads, read_http_response, running_server

# How long a read waits before the driver calls the server silent. Every
# action ends with a barrier ping, so a conforming server answers at once.
SILENCE = 3.0


class EchoApp(RecordingApp):
    """Echo, with the message size limit the client asked for in ``?max_message_size=``."""

    def on_handshake(self, conn: Any, handshake: Any) -> None:
        name, _, value = handshake.query_string.partition("=")
        assert name == "max_message_size", handshake.query_string
        conn.accept(max_message_size=int(value))


def _is_one_ping_frame(data: bytes) -> bool:
    """Whether ``data`` is exactly one masked ping frame (what the driver's barrier writes)."""
    return len(data) >= 6 and data[0] == 0x89 and data[1] & 0x80 != 0 and len(data) == 6 + (data[1] & 0x7F)


class SocketTransport:
    """The conformance driver's Transport over a TCP connection to ``server``."""

    def __init__(self, server: Server, app: EchoApp, read_happened: threading.Condition) -> None:
        self.address = server.address
        self.app = app
        self.read_happened = read_happened
        self.sock: socket.socket | None = None
        self.conn: ServerConnection | None = None
        self._written = 0
        self._pending = b""
        self._eof = False

    def connect(self, *, max_message_size: int, extensions: str | None) -> str | None:
        sock = socket.create_connection(self.address, timeout=SILENCE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._eof = False
        lines = [
            f"GET /?max_message_size={max_message_size} HTTP/1.1",
            f"Host: {self.address[0]}:{self.address[1]}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock.sendall(request)
        self._written = len(request)
        reply = read_http_response(sock, read_body=False)
        assert reply.status == 101, reply
        assert reply.headers.get("Sec-WebSocket-Accept") == accept_key(KEY)
        port = sock.getsockname()[1]
        # The newest handshake from this port: an ephemeral port may be reused
        # by a later case once an earlier connection is gone.
        self.conn = [conn for conn in self.app.handshakes if conn.remote_address[1] == port][-1]
        self._pending = reply.rest  # frames that came with the 101
        return reply.headers.get("Sec-WebSocket-Extensions")

    def _settle(self) -> None:
        """Wait until the server has read all we wrote and handled it on its worker."""
        conn = self.conn
        assert conn is not None
        with self.read_happened:
            settled = self.read_happened.wait_for(
                lambda: conn.bytes_in >= self._written or conn.phase is Phase.CLOSED, TIMEOUT
            )
        assert settled, f"the server read {conn.bytes_in} of {self._written} bytes"
        handled = threading.Event()
        if conn.call_soon(handled.set):
            assert handled.wait(TIMEOUT), "the worker never got to this connection"

    def write(self, data: bytes) -> None:
        assert self.sock is not None
        if self._eof:
            return
        if _is_one_ping_frame(data):
            self._settle()
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server is gone; the reads will tell how it left
        self._written += len(data)

    def read(self) -> bytes | None:
        assert self.sock is not None
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._eof:
            return b""
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return None
        if not data:
            self._eof = True
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[Server, EchoApp, threading.Condition]]:
    """One server for the module, whose reads are announced on a Condition (for settling)."""
    read_happened = threading.Condition()
    on_readable = ServerConnection.on_readable

    def announcing_on_readable(self: ServerConnection) -> None:
        on_readable(self)
        with read_happened:
            read_happened.notify_all()

    app = EchoApp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ServerConnection, "on_readable", announcing_on_readable)
        # Outgoing buffer above the largest echo (4 MiB): one message never counts as a slow reader.
        with running_server(app, workers=4, max_outgoing_buffer=64 << 20) as server:
            yield server, app, read_happened
    assert join_rawws_threads() == []


@pytest.fixture(autouse=True)
def no_server_threads_left() -> None:
    """Overrides the package's per-test check: this module's server lives for the whole module."""


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_echo_server_over_tcp_shows_an_accepted_behaviour(
    case: Case, echo_server: tuple[Server, EchoApp, threading.Condition]
) -> None:
    outcome = run_case(case, SocketTransport(*echo_server))
    assert case.accepts(outcome), f"{case}: got {outcome}, expected {case.expect}"
