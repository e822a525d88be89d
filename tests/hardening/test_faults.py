"""Clients that vanish, handlers that raise: ``disconnect()`` once, and every resource back.

A client may disappear at any byte: mid-handshake, mid-frame header, mid-
payload, between the fragments of a message, with a FIN or a reset. Each
time the application's ``disconnect(1006)`` runs exactly once (once the
handshake reached it), and the descriptor count of the process returns to
what it was (polled until a deadline: the kernel frees nothing on our cue).
Handler exceptions are contained: the worker survives, the connection fails
with 1011 (or the handshake gets 500), and the pool keeps its size. The
Django side's exception handling (logging with the request,
``got_request_exception``) is tested in tests/test_handler.py (``TestExceptions``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest
from websockets.sync.client import connect

from django_rawws.protocol.codes import Opcode
from tests.server.helpers import (
    TIMEOUT,
    RawClient,
    RecordingApp,
    handshake_request,
    masked_frame,
    open_socket,
    read_http_response,
    rst_close,
    running_server,
    ws_url,
)

from .measure import fd_count, needs_proc, poll_until

_TEXT = masked_frame(Opcode.TEXT, b"x" * 1000)


def _mid_header(client: RawClient) -> None:
    client.send_raw(_TEXT[:3])  # two of the four bytes of a 16-bit length header


def _mid_mask(client: RawClient) -> None:
    client.send_raw(_TEXT[:6])


def _mid_payload(client: RawClient) -> None:
    client.send_raw(_TEXT[:500])


def _between_fragments(client: RawClient) -> None:
    client.send_raw(masked_frame(Opcode.TEXT, b"first half ", fin=False))


def _mid_compressed_message(client: RawClient) -> None:
    client.send_raw(
        masked_frame(Opcode.BINARY, b"x" * 100, fin=False) + masked_frame(Opcode.CONTINUATION, b"y")[:4]
    )


def _after_a_message(client: RawClient) -> None:
    client.send_text("complete")


MIDWAY: list[tuple[str, Callable[[RawClient], None]]] = [
    ("mid-frame-header", _mid_header),
    ("mid-masking-key", _mid_mask),
    ("mid-payload", _mid_payload),
    ("between-fragments", _between_fragments),
    ("mid-continuation-header", _mid_compressed_message),
    ("after-a-message", _after_a_message),
]


@needs_proc
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
@pytest.mark.parametrize(("where", "midway"), MIDWAY, ids=[name for name, _ in MIDWAY])
def test_a_client_vanishing_midway_gets_one_disconnect_1006_and_its_descriptor_back(
    where: str, midway: Callable[[RawClient], None], reset: bool
) -> None:
    app = RecordingApp()
    with running_server(app) as server, connect(ws_url(server)) as bystander:
        bystander.send("warm")
        assert bystander.recv(TIMEOUT) == "warm"
        baseline = fd_count()
        client = RawClient.connect(server)
        midway(client)
        if reset:
            rst_close(client.sock)
        else:
            client.sock.close()
        assert app.wait_disconnects() == [1006]
        assert poll_until(lambda: len(server.connections()) == 1, TIMEOUT)
        assert poll_until(lambda: fd_count() <= baseline, TIMEOUT), (fd_count(), baseline)
        bystander.send("still here")
        assert bystander.recv(TIMEOUT) == "still here"
        expected = ["complete"] if where == "after-a-message" else []
        assert [message for conn, message in app.messages if conn is app.handshakes[1]] == expected
    assert app.disconnect_codes() == [1006, 1000]  # the vanished client's, then the bystander's


@needs_proc
@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_client_vanishing_mid_handshake_never_reaches_the_app_and_frees_its_descriptor(reset: bool) -> None:
    app = RecordingApp()
    with running_server(app) as server:
        baseline = fd_count()
        sock = open_socket(server)
        sock.sendall(handshake_request()[:40])
        # accept() takes connections in order: once a later one is answered, ours was accepted.
        with open_socket(server) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_http_response(probe).status == 200
        if reset:
            rst_close(sock)
        else:
            sock.close()
        assert poll_until(lambda: not server.connections(), TIMEOUT)
        assert poll_until(lambda: fd_count() <= baseline, TIMEOUT), (fd_count(), baseline)
    assert app.handshakes == [] and app.disconnects == []


# ------------------------------------------------------------- exceptions


class RaisingApp(RecordingApp):
    """Raises where the path says: ``/raise-handshake``, ``/raise-message``, ``/raise-disconnect``."""

    def on_handshake(self, conn: Any, handshake: Any) -> None:
        if handshake.path == "/raise-handshake":
            raise RuntimeError("handshake handler broke")
        conn.accept()

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if conn.path == "/raise-message":
            raise RuntimeError("message handler broke")
        conn.send(message)

    def websocket_disconnect(self, conn: Any, code: int) -> None:
        super().websocket_disconnect(conn, code)
        if conn.path == "/raise-disconnect":
            raise RuntimeError("disconnect handler broke")


@needs_proc
def test_exceptions_in_every_handler_are_contained_and_leave_workers_and_descriptors_intact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RaisingApp()
    workers = 2
    with caplog.at_level(logging.ERROR, "django_rawws.server"):
        with running_server(app, workers=workers) as server:
            baseline = fd_count()
            for _ in range(3):  # more times than there are workers: none was lost
                with open_socket(server) as sock:
                    sock.sendall(handshake_request("/raise-handshake"))
                    assert read_http_response(sock).status == 500
                client = RawClient.connect(server, "/raise-message")
                with client.sock:
                    client.send_text("boom")
                    assert client.events_until_close() == ([], 1011)
                with connect(ws_url(server, "/raise-disconnect")) as ws:
                    ws.send("fine")
                    assert ws.recv(TIMEOUT) == "fine"
            with connect(ws_url(server, "/after")) as ws:
                ws.send("served")
                assert ws.recv(TIMEOUT) == "served"
            assert app.wait_disconnects(10)
            assert all(thread.is_alive() for thread in server.pool._threads)
            assert len(server.pool._threads) == workers
            assert poll_until(lambda: not server.connections(), TIMEOUT)
            assert poll_until(lambda: fd_count() <= baseline, TIMEOUT), (fd_count(), baseline)
    codes = app.disconnect_codes()
    assert sorted(codes) == sorted([1006] * 3 + [1011] * 3 + [1000] * 4)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert sum("deciding the handshake" in message for message in errors) == 3
    assert sum("in the message handler" in message for message in errors) == 3
    assert sum("in the disconnect handler" in message for message in errors) == 3


def test_a_peer_that_reads_nothing_and_resets_while_the_server_writes_is_dropped_cleanly() -> None:
    """The write side fails (EPIPE/ECONNRESET) in a worker's send(): the read side ends the connection."""
    app = RecordingApp()
    with running_server(app) as server:
        client = RawClient.connect(server, rcvbuf=4096)
        client.send_binary(b"y" * 100_000)  # echoed into a window too small to take it
        assert app.wait_messages()
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.sock.close()
        assert app.wait_disconnects() == [1006]
        assert poll_until(lambda: not server.connections(), TIMEOUT)
