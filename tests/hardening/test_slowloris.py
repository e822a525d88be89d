"""Slow and oversized request heads: dropped at the deadline or refused at the limit, WebSocket or HTTP.

A client that trickles its head a byte at a time (slowloris) is dropped when
``handshake_timeout`` runs out, counted from its first byte: progress never
extends the deadline. The first request of a connection is read by the I/O
thread; a keep-alive request on the HTTP pool gets the same deadline and the
same head limits (before this work it only had a per-read timeout, so a
trickle could hold a thread of the pool for ever).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import connect

from django_rawws.handler import DjangoApplication
from django_rawws.server import Server
from tests.server.helpers import (
    TIMEOUT,
    RecordingApp,
    handshake_request,
    open_socket,
    read_http_response,
    read_to_eof,
    running_server,
    wait_closed,
    ws_url,
)

from .measure import fd_count, needs_proc, poll_until

DEADLINE = 0.5


def trickle(sockets: list[socket.socket], head: bytes, until: float) -> dict[socket.socket, float]:
    """Send ``head`` one byte per socket every 20 ms, never finishing it; return when each was dropped."""
    start = time.monotonic()
    dropped: dict[socket.socket, float] = {}
    position = 0
    while len(dropped) < len(sockets) and time.monotonic() < until:
        for sock in sockets:
            if sock in dropped:
                continue
            try:
                sock.sendall(head[position % (len(head) - 1) : position % (len(head) - 1) + 1])
            except (BrokenPipeError, ConnectionResetError):
                dropped[sock] = time.monotonic() - start
        position += 1
        readable, _, _ = select.select([sock for sock in sockets if sock not in dropped], [], [], 0.02)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                data = b""
            assert data == b"", f"a trickling client got an answer: {data[:60]!r}"
            dropped[sock] = time.monotonic() - start
    return dropped


@needs_proc
def test_twenty_trickling_handshakes_are_dropped_at_the_deadline_while_others_are_served() -> None:
    app = RecordingApp()
    with running_server(app, handshake_timeout=DEADLINE) as server:
        baseline = fd_count()
        sockets = [open_socket(server) for _ in range(20)]
        try:
            with connect(ws_url(server)) as ws:  # served while the trickle goes on
                ws.send("served")
                assert ws.recv(TIMEOUT) == "served"
            dropped = trickle(sockets, handshake_request(), time.monotonic() + TIMEOUT)
        finally:
            for sock in sockets:
                sock.close()
        assert len(dropped) == 20, "some trickling clients were never dropped"
        assert all(DEADLINE * 0.8 <= after <= DEADLINE + 1.0 for after in dropped.values()), dropped
        assert poll_until(lambda: not server.connections(), TIMEOUT)
        assert poll_until(lambda: fd_count() <= baseline, TIMEOUT), (fd_count(), baseline)
    assert len(app.handshakes) == 1


# --------------------------------------------------------------- plain HTTP


def _wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def http_server() -> Iterator[Server]:
    """A server whose plain HTTP goes to a tiny WSGI app on a pool of two threads."""
    with running_server(
        DjangoApplication(wsgi_application=_wsgi), handshake_timeout=DEADLINE, http_workers=2
    ) as server:
        yield server


def get(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def test_a_trickling_first_request_is_dropped_at_the_deadline(http_server: Server) -> None:
    with open_socket(http_server) as sock:
        head = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 400
        dropped = trickle([sock], head, time.monotonic() + TIMEOUT)
    assert DEADLINE * 0.8 <= dropped[sock] <= DEADLINE + 1.0


def test_trickling_keep_alive_requests_are_dropped_at_the_deadline_and_free_the_http_pool(
    http_server: Server,
) -> None:
    """Two keep-alive connections trickle their next request, holding both HTTP threads to the deadline."""
    tricklers = [open_socket(http_server) for _ in range(2)]
    try:
        for sock in tricklers:
            get(sock, "/first")
            reply = read_http_response(sock)
            assert (reply.status, reply.body) == (200, b"/first")
        start = time.monotonic()
        for sock in tricklers:
            sock.sendall(b"GET /second HTTP/1.1\r\n")  # the head begins: each holds a thread now
        with open_socket(http_server) as waiting:
            get(waiting, "/queued")
            dropped = trickle(tricklers, b"X-Slow: " + b"z" * 1000, time.monotonic() + TIMEOUT)
            reply = read_http_response(waiting)
            served_after = time.monotonic() - start
        assert (reply.status, reply.body) == (200, b"/queued")
    finally:
        for sock in tricklers:
            sock.close()
    assert len(dropped) == 2
    assert all(after <= DEADLINE + 1.0 for after in dropped.values()), dropped
    assert served_after <= DEADLINE + 1.5


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"X-H: v\r\n" * 200 + b"\r\n", 431),
        (
            b"GET /x HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-Big%d: %s\r\n" % (n, b"v" * 4000) for n in range(5))
            + b"\r\n",
            431,
        ),
    ],
    ids=["request-line-over-8-KiB", "more-than-128-headers", "head-over-16-KiB"],
)
@pytest.mark.parametrize("keep_alive", [False, True], ids=["first-request", "keep-alive-request"])
def test_oversized_heads_get_414_or_431_on_the_first_and_on_keep_alive_requests(
    http_server: Server, head: bytes, status: int, keep_alive: bool
) -> None:
    with open_socket(http_server) as sock:
        if keep_alive:
            get(sock, "/first")
            assert read_http_response(sock).status == 200
        sock.sendall(head)
        reply = read_http_response(sock)
        assert reply.status == status
        assert reply.rest + read_to_eof(sock) == b""  # then a clean close
    with open_socket(http_server) as sock:  # and the pool still serves
        get(sock, "/after")
        assert read_http_response(sock).body == b"/after"


def test_a_keep_alive_request_within_the_limits_is_served_as_usual(http_server: Server) -> None:
    with open_socket(http_server) as sock:
        for index in range(3):
            # (Django's request handler takes at most 100 headers: under both limits.)
            sock.sendall(f"GET /n{index} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-H: v\r\n" * 90 + b"\r\n")
            assert read_http_response(sock).body == f"/n{index}".encode()
        sock.shutdown(socket.SHUT_WR)
        assert wait_closed(sock, TIMEOUT) is not None


def test_a_pipelined_keep_alive_request_split_across_reads_is_served(http_server: Server) -> None:
    """The limits apply to the lines of the head, wherever a read boundary falls."""
    with open_socket(http_server) as sock:
        second = b"GET /second HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n" + second[:20])  # half a head, pipelined
        assert read_http_response(sock).body == b"/first"
        sock.sendall(second[20:])
        assert read_http_response(sock).body == b"/second"
