"""The opening handshake over real sockets: every status the server answers, and how it answers.

Each error response must reach the client in full before the FIN: the server
lingers (reads and discards) after answering, so even a client that keeps
sending — here, 100 KiB of garbage after the request, which a plain
``close()`` would turn into a reset — reads the status line and the body.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from django_rawws.exceptions import Forbidden, NotFound, TooManyRequests
from django_rawws.protocol.codes import Opcode

from .helpers import (
    ACCEPT,
    TIMEOUT,
    RecordingApp,
    close_frame,
    handshake_request,
    masked_frame,
    open_socket,
    read_http_response,
    read_to_eof,
    running_server,
    wait_closed,
    ws_url,
)

GARBAGE = b"\x00garbage\xff" * 10_000  # ~100 KiB: more than one recv() of the server


class DecidingApp(RecordingApp):
    """Records the handshake call, then runs ``decide(conn)`` instead of accepting."""

    def __init__(self, decide: Any) -> None:
        super().__init__()
        self.decide = decide

    def on_handshake(self, conn: Any, handshake: Any) -> None:
        self.decide(conn)


def _return_without_deciding(conn: Any) -> None:
    pass


def _raise_not_found(conn: Any) -> None:
    raise NotFound("no route for this path")


def _raise_runtime_error(conn: Any) -> None:
    raise RuntimeError("the application broke")


def _reject_forbidden(conn: Any) -> None:
    conn.reject(Forbidden("origin not allowed"))


def _close_while_deciding(conn: Any) -> None:
    conn.close()


def _raise_too_many_requests(conn: Any) -> None:
    raise TooManyRequests(retry_after=7)


def _answer_with_garbage_after(server: Any, request: bytes) -> tuple[Any, bytes]:
    """Send ``request`` then garbage; return the response and what followed it up to a clean FIN."""
    with open_socket(server) as sock:
        sock.sendall(request + GARBAGE)
        reply = read_http_response(sock)
        after = reply.rest + read_to_eof(sock)
    return reply, after


# ----------------------------------------------------------- 101 Switching


def test_valid_handshake_gets_101_with_the_accept_key_of_rfc_6455_section_1_3(
    app: RecordingApp, server: Any
) -> None:
    with open_socket(server) as sock:
        sock.sendall(handshake_request("/chat?room=1"))
        reply = read_http_response(sock, read_body=False)
        assert reply.status == 101
        assert reply.headers.get("Upgrade") == "websocket"
        assert reply.headers.get("Connection") == "Upgrade"
        assert reply.headers.get("Sec-WebSocket-Accept") == ACCEPT
        assert "Sec-WebSocket-Extensions" not in reply.headers  # nothing offered, nothing agreed
        sock.sendall(close_frame(1000))
        assert read_to_eof(sock) == b"\x88\x02\x03\xe8"  # the close frame echoed, then FIN
    assert app.wait_disconnects() == [1000]
    (conn,) = app.handshakes
    assert conn.path == "/chat"
    assert conn.handshake.query_string == "room=1"


def test_websockets_client_handshake_succeeds(server: Any) -> None:
    with connect(ws_url(server)) as ws:
        assert ws.response is not None
        assert ws.response.status_code == 101


# --------------------------------------------------------- errors, by table

_PARSE_ERRORS = [
    # (id, request, status, headers the response must carry)
    ("malformed-request-line", b"NOT AN HTTP REQUEST\r\n\r\n", 400, {}),
    ("obs-fold", handshake_request().replace(b"\r\n\r\n", b"\r\nX-Folded: a\r\n  b\r\n\r\n"), 400, {}),
    ("bad-key-not-base64", handshake_request(key="not base64 at all!"), 400, {}),
    ("bad-key-wrong-length", handshake_request(key="c2hvcnQ="), 400, {}),
    ("missing-key", handshake_request(omit=("sec-websocket-key",)), 400, {}),
    ("missing-connection", handshake_request(omit=("connection",)), 400, {}),
    (
        "connection-without-upgrade-token",
        handshake_request(omit=("connection",), headers=[("Connection", "keep-alive")]),
        400,
        {},
    ),
    ("missing-host", handshake_request(omit=("host",)), 400, {}),
    ("http-1.0", handshake_request(http_version="HTTP/1.0"), 400, {}),
    ("request-body", handshake_request(headers=[("Content-Length", "5")]), 400, {}),
    ("post", handshake_request(method="POST"), 405, {"Allow": "GET"}),
    ("version-12", handshake_request(version="12"), 426, {"Sec-WebSocket-Version": "13"}),
    (
        "missing-version",
        handshake_request(omit=("sec-websocket-version",)),
        426,
        {"Sec-WebSocket-Version": "13"},
    ),
    # Without "Upgrade: websocket" it is plain HTTP, which this server does not serve.
    (
        "plain-get-without-upgrade",
        handshake_request(omit=("upgrade", "connection")),
        426,
        {"Upgrade": "websocket"},
    ),
    (
        "upgrade-to-another-protocol",
        handshake_request(omit=("upgrade",), headers=[("Upgrade", "h2c")]),
        426,
        {"Upgrade": "websocket"},
    ),
    ("request-line-over-8-kib", handshake_request("/" + "a" * 9000), 414, {}),
    ("header-line-over-8-kib", handshake_request(headers=[("X-Long", "a" * 9000)]), 431, {}),
    ("more-than-128-headers", handshake_request(headers=[(f"X-H{i}", "v") for i in range(130)]), 431, {}),
    ("head-over-16-kib", handshake_request(headers=[(f"X-H{i}", "v" * 1000) for i in range(20)]), 431, {}),
]


@pytest.mark.parametrize(
    ("request_bytes", "status", "headers"),
    [pytest.param(request, status, headers, id=name) for name, request, status, headers in _PARSE_ERRORS],
)
def test_request_refused_before_the_app_gets_its_status_in_full_before_fin(
    app: RecordingApp, server: Any, request_bytes: bytes, status: int, headers: dict[str, str]
) -> None:
    reply, after = _answer_with_garbage_after(server, request_bytes)
    assert reply.status == status
    for name, value in headers.items():
        assert reply.headers.get(name) == value
    assert reply.headers.get("Content-Type") == "text/plain; charset=utf-8"
    assert "close" in reply.headers.get_list("Connection")
    assert reply.body.endswith(b"\n") and len(reply.body) > 1  # a short plain-text reason
    assert after == b""  # nothing after the body, and a FIN rather than a reset
    assert app.handshakes == []
    assert app.disconnects == []


_APP_DECISIONS = [
    # (id, decide, status, headers, body)
    ("returns-without-accepting", _return_without_deciding, 403, {}, b"Forbidden\n"),
    ("rejects-with-forbidden", _reject_forbidden, 403, {}, b"origin not allowed\n"),
    ("closes-while-deciding", _close_while_deciding, 403, {}, b"Forbidden\n"),
    ("raises-not-found", _raise_not_found, 404, {}, b"no route for this path\n"),
    ("raises-too-many-requests", _raise_too_many_requests, 429, {"Retry-After": "7"}, b"Too Many Requests\n"),
    ("raises-another-exception", _raise_runtime_error, 500, {}, b"Internal Server Error\n"),
]


@pytest.mark.parametrize(
    ("decide", "status", "headers", "body"),
    [
        pytest.param(decide, status, headers, body, id=name)
        for name, decide, status, headers, body in _APP_DECISIONS
    ],
)
def test_app_refusal_gets_its_status_in_full_before_fin_and_one_disconnect(
    caplog: pytest.LogCaptureFixture, decide: Any, status: int, headers: dict[str, str], body: bytes
) -> None:
    app = DecidingApp(decide)
    with running_server(app) as server:
        reply, after = _answer_with_garbage_after(server, handshake_request())
        assert reply.status == status
        for name, value in headers.items():
            assert reply.headers.get(name) == value
        assert reply.body == body
        assert after == b""
        app.wait_disconnects()
    # The handshake call happened, so disconnect() runs, once, with 1006 (never opened).
    assert app.disconnect_codes() == [1006]
    assert len(app.handshakes) == 1
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    if status == 500:
        (record,) = errors
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    else:
        assert errors == []


def test_over_max_connections_gets_503_with_retry_after(app: RecordingApp) -> None:
    with running_server(app, max_connections=1) as server, connect(ws_url(server)) as ws:
        reply, after = _answer_with_garbage_after(server, handshake_request())
        assert reply.status == 503
        assert reply.headers.get("Retry-After") == "5"
        assert reply.body == b"Service Unavailable: too many connections\n"
        assert after == b""
        ws.send("still served")
        assert ws.recv(TIMEOUT) == "still served"
    assert len(app.handshakes) == 1  # the refused one never reached the app


def test_handshake_in_progress_when_stop_runs_gets_503(app: RecordingApp) -> None:
    with running_server(app) as server:
        sock = open_socket(server)
        with sock:
            request = handshake_request()
            sock.sendall(request[:20])
            # accept() takes connections in order: once a later one is answered,
            # ours was accepted and is in the middle of its handshake.
            with open_socket(server) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_http_response(probe).status == 200
            stopper = threading.Thread(target=server.stop, args=(5.0,))
            stopper.start()
            try:
                reply = read_http_response(sock)
                sock.sendall(request[20:])  # the rest trickles in after the answer: discarded
                assert reply.status == 503
                assert reply.headers.get("Retry-After") == "5"
                assert reply.body == b"Service Unavailable: the server is shutting down\n"
                assert reply.rest + read_to_eof(sock) == b""
            finally:
                sock.shutdown(socket.SHUT_WR)
                stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    assert app.handshakes == []


# ----------------------------------------------------------- health check


@pytest.mark.parametrize(("method", "body"), [("GET", b"ok\n"), ("HEAD", b"")])
def test_health_path_gets_200_ok_without_calling_the_app(
    app: RecordingApp, server: Any, method: str, body: bytes
) -> None:
    with open_socket(server) as sock:
        sock.sendall(f"{method} /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() + GARBAGE)
        reply = read_http_response(sock, read_body=method == "GET")
        assert reply.status == 200
        assert reply.headers.get("Content-Type") == "text/plain; charset=utf-8"
        assert reply.body == body
        assert reply.rest + read_to_eof(sock) == b""
    assert app.handshakes == []


def test_health_path_disabled_gets_426(app: RecordingApp) -> None:
    with running_server(app, health_path=None) as server:
        reply, after = _answer_with_garbage_after(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 426
    assert after == b""


# ---------------------------------------------------------- trailing bytes


def test_first_frame_in_the_same_packet_as_the_request_is_not_lost(app: RecordingApp, server: Any) -> None:
    with open_socket(server) as sock:
        sock.sendall(handshake_request() + masked_frame(Opcode.TEXT, b"early"))
        reply = read_http_response(sock, read_body=False)
        assert reply.status == 101
        echo = reply.rest
        while len(echo) < 7:
            data = sock.recv(65536)
            assert data, "closed before the echo"
            echo += data
        assert echo == b"\x81\x05early"
        sock.sendall(close_frame(4001))
        assert read_to_eof(sock) == b"\x88\x02\x0f\xa1"  # the close echoed, then FIN
    assert app.wait_messages() == ["early"]
    assert app.wait_disconnects() == [4001]


# ------------------------------------------------------- handshake deadline


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_client_that_never_finishes_its_head_is_dropped_after_handshake_timeout(
    app: RecordingApp, trickle: bool
) -> None:
    with running_server(app, handshake_timeout=0.3) as server:
        with open_socket(server) as sock:
            start = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\n")
            closed_after = None
            if trickle:
                # One byte of an endless header every 50 ms: progress must not extend the deadline.
                for _ in range(100):
                    closed_after = wait_closed(sock, 0.05)
                    if closed_after is not None:
                        break
                    try:
                        sock.sendall(b"x")
                    except (BrokenPipeError, ConnectionResetError):
                        break
            if closed_after is None:
                closed_after = wait_closed(sock, TIMEOUT)
            elapsed = time.monotonic() - start
        assert closed_after is not None, "the server never dropped the client"
        assert 0.2 < elapsed < TIMEOUT
    assert app.handshakes == []
