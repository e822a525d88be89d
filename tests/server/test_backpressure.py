"""Load over real sockets: slow readers, fast writers, busy workers.

A client that stops reading costs the server at most ``max_outgoing_buffer``
before it is failed with 1008; one that writes faster than its handler runs
is paused, not buffered without bound; and the I/O thread keeps accepting,
answering pings and health checks while every worker is busy.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from websockets.sync.client import connect

from django_rawws.protocol.events import BinaryMessage, TextMessage

from .helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    handshake_request,
    open_socket,
    read_http_response,
    running_server,
    wait_closed,
    ws_url,
)

KIB = 1024
CHUNK = 64 * KIB


class FloodingApp(RecordingApp):
    """On ``flood``, sends 64 KiB messages until ``send()`` says the connection is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.largest_buffer = 0
        self.flood_over = threading.Event()

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if message != "flood":
            conn.send(message)
            return
        try:
            for _ in range(1000):  # 64 MiB at most: far past any kernel buffer
                if not conn.send(b"x" * CHUNK):
                    break
                self.sent += 1
                self.largest_buffer = max(self.largest_buffer, conn.buffered_amount)
        finally:
            self.flood_over.set()


def test_client_that_stops_reading_is_failed_with_1008_and_others_keep_their_latency() -> None:
    app = FloodingApp()
    limit = 256 * KIB
    # A long linger: the slow client reads what is left, the close frame included, after the fact.
    with running_server(app, max_outgoing_buffer=limit, linger_timeout=TIMEOUT) as server:
        slow = RawClient.connect(server, rcvbuf=4 * KIB)
        with slow.sock, connect(ws_url(server)) as other:
            slow.send_text("flood")  # and read nothing
            assert app.flood_over.wait(TIMEOUT)
            assert app.wait_disconnects() == [1008]
            # Past the limit by at most the message that crossed it (plus its header and the close frame).
            assert limit < app.largest_buffer <= limit + CHUNK + 64
            assert app.sent < 1000  # stopped by the failure, not by the loop bound

            # Another client, meanwhile, is served as usual.
            round_trips = []
            for index in range(20):
                start = time.monotonic()
                other.send(f"ping {index}")
                assert other.recv(TIMEOUT) == f"ping {index}"
                round_trips.append(time.monotonic() - start)
            assert max(round_trips) < 0.5

            # The slow client finally reads: what was buffered, then the 1008 close frame.
            events, code = slow.events_until_close(TIMEOUT)
            assert code == 1008
            assert all(event == BinaryMessage(b"x" * CHUNK) for event in events)
            assert app.sent - len(events) <= 1  # the send that overflowed may be cut by the close
            assert wait_closed(slow.sock, TIMEOUT) is not None
    slow_conn = app.handshakes[0]
    assert [code for conn, code in app.disconnects if conn is slow_conn] == [1008]
    assert app.disconnect_codes() == [1008, 1000]


def test_fast_writer_is_paused_while_its_handler_is_busy_and_every_message_is_handled_in_order() -> None:
    app = BlockingApp()
    # 201 messages at once is past the default burst of the rate limit
    # (tests/hardening/test_rate_limit.py): off here, where only the pause counts.
    with running_server(app, max_pending_messages=4, message_rate=None) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")
            app.wait_entered()
            for index in range(200):
                client.send_text(f"{index:04d}" + "." * 1000)
            assert len(app.messages) == 1  # nothing else handled while blocked
            app.release.set()
            texts: list[str] = []
            while len(texts) < 201:
                event = client.next_event(TIMEOUT)
                assert isinstance(event, TextMessage), event
                texts.append(event.text)
        assert texts == ["released block"] + [f"{index:04d}" + "." * 1000 for index in range(200)]


def test_io_thread_accepts_answers_pings_and_health_checks_while_every_worker_is_busy() -> None:
    app = BlockingApp()
    with running_server(app, workers=2) as server:
        with (
            connect(ws_url(server)) as idle,
            connect(ws_url(server)) as first,
            connect(ws_url(server)) as second,
        ):
            first.send("block 1")
            second.send("block 2")
            app.wait_entered(2)  # both workers are now stuck in handlers

            with open_socket(server) as newcomer:
                # Accepted by the I/O thread, but the handshake needs a worker.
                newcomer.sendall(handshake_request())
                newcomer.settimeout(0.3)
                try:
                    data = newcomer.recv(65536)
                except TimeoutError:
                    data = None
                assert data is None, f"a handshake completed without a worker: {data!r}"

                # Pings are answered by the I/O thread.
                pong = idle.ping(b"are you there")
                assert pong.wait(TIMEOUT)

                # So is the health check.
                with open_socket(server) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert read_http_response(probe).status == 200

                app.release.set()
                newcomer.settimeout(TIMEOUT)
                assert read_http_response(newcomer, read_body=False).status == 101
            assert first.recv(TIMEOUT) == "released block 1"
            assert second.recv(TIMEOUT) == "released block 2"
            idle.send("after")
            assert idle.recv(TIMEOUT) == "after"
        assert app.wait_disconnects(4) and len(app.disconnect_codes()) == 4
