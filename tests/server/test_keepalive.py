"""Keepalive over real sockets: pings after silence, the pong timeout, and backpressure exempt from it."""

from __future__ import annotations

import select
import time
from typing import Any

from websockets.sync.client import connect

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.events import Ping, Pong, TextMessage

from .helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    masked_frame,
    running_server,
    wait_closed,
    ws_url,
)


def test_server_pings_after_ping_interval_of_silence(app: RecordingApp) -> None:
    with running_server(app, ping_interval=0.2, ping_timeout=TIMEOUT) as server:
        client = RawClient.connect(server)
        with client.sock:
            start = time.monotonic()
            event = client.next_event(TIMEOUT)
            elapsed = time.monotonic() - start
            assert isinstance(event, Ping)
            assert 0.1 < elapsed < TIMEOUT


def test_client_answering_pings_stays_connected_across_several_intervals(app: RecordingApp) -> None:
    with running_server(app, ping_interval=0.1, ping_timeout=0.2) as server:
        client = RawClient.connect(server)
        with client.sock:
            pings = 0
            while pings < 5:  # each one answered by the client role; ~0.5 s in all
                event = client.next_event(TIMEOUT)
                assert isinstance(event, Ping), event
                pings += 1
            client.send_text("still here")
            while True:
                event = client.next_event(TIMEOUT)
                if not isinstance(event, Ping):
                    break
            assert event == TextMessage("still here")
        assert app.wait_disconnects() == [1006]  # our drop, not the keepalive


def test_websockets_client_answering_pings_is_kept_over_many_pong_timeouts(app: RecordingApp) -> None:
    with running_server(app, ping_interval=0.05, ping_timeout=0.1) as server:
        with connect(ws_url(server), ping_interval=None) as ws:
            # The client answers pings on its own thread. Waiting (on the socket)
            # for a message that never comes lets ten pong timeouts go by.
            try:
                ws.recv(1.0)
            except TimeoutError:
                pass
            ws.send("alive")
            assert ws.recv(TIMEOUT) == "alive"
        assert app.wait_disconnects() == [1000]


def test_client_that_never_answers_pings_is_closed_and_disconnect_gets_1006(app: RecordingApp) -> None:
    with running_server(app, ping_interval=0.2, ping_timeout=0.2) as server:
        client = RawClient.connect(server)
        with client.sock:
            start = time.monotonic()
            assert isinstance(client.next_event(TIMEOUT, reply=False), Ping)
            events, code = client.events_until_close(TIMEOUT, reply=False)
            assert events == []
            assert code == 1011  # what the client reads: the server's internal reason
            assert wait_closed(client.sock, TIMEOUT) is not None
            assert 0.3 < time.monotonic() - start < TIMEOUT
        assert app.wait_disconnects() == [1006]  # what the app gets: no close handshake happened
    assert app.disconnect_codes() == [1006]


def test_pong_without_a_ping_is_accepted_and_ignored(server: Any) -> None:
    client = RawClient.connect(server)
    with client.sock:
        client.send_raw(masked_frame(Opcode.PONG, b"unsolicited"))
        client.send_text("after")
        assert client.next_event() == TextMessage("after")


def test_ping_from_the_client_gets_a_pong_with_the_same_payload(server: Any) -> None:
    client = RawClient.connect(server)
    with client.sock:
        client.send_raw(masked_frame(Opcode.PING, b"payload \x00\xff"))
        assert client.next_event() == Pong(b"payload \x00\xff")


def test_time_paused_by_our_backpressure_does_not_count_against_the_pong_timeout() -> None:
    """Reading stops while the worker is behind; a pong we can't read is not a missing pong."""
    app = BlockingApp()
    with running_server(app, ping_interval=0.1, ping_timeout=0.1, max_pending_messages=2) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")
            app.wait_entered()
            for index in range(8):  # the inbox fills: the server stops reading us
                client.send_text(f"queued {index}")
            # Ten ping timeouts go by, waited on the socket: no close may come.
            deadline = time.monotonic() + 1.0
            while (remaining := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([client.sock], [], [], remaining)
                if not readable:
                    break
                event = client.next_event(TIMEOUT)
                assert isinstance(event, Ping), f"expected nothing but pings while paused, got {event}"
            app.release.set()
            texts: list[str] = []
            while len(texts) < 9:
                event = client.next_event(TIMEOUT)
                assert event is not None, "the server closed the connection"
                if isinstance(event, TextMessage):
                    texts.append(event.text)
            assert texts == ["released block"] + [f"queued {index}" for index in range(8)]
        assert app.wait_disconnects() == [1006]
