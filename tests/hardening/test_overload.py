"""Overload: slow handlers, every worker busy, slow readers.

The I/O thread never runs application code, so while workers are busy it
still accepts, answers pings, completes closing handshakes and reads what
backpressure allows. When work has waited ``overload_delay`` for a worker,
the server sheds load: handshakes waiting that long, and new ones, get 503;
connections whose inbox is full get 1013 and their waiting messages are
dropped. The slow-handler warning (``SLOW_HANDLER_WARNING``) is tested with
the Django side in tests/test_handler.py (``TestSlowHandlers``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from websockets.sync.client import connect

from django_rawws.protocol.events import Ping, Pong, TextMessage
from tests.server.helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    close_frame,
    handshake_request,
    open_socket,
    read_http_response,
    read_to_eof,
    running_server,
    wait_closed,
    ws_url,
)

from .measure import LogWaiter, needs_proc, rss_bytes

#: The bound on an echo round trip while all but one worker are held by slow handlers.
ECHO_BOUND = 0.25


class SlowApp(RecordingApp):
    """``slow`` holds the worker for one second, then answers; anything else is echoed."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = 0
        self.finished = 0

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if message == "slow":
            with self.changed:
                self.entered += 1
                self.changed.notify_all()
            time.sleep(1.0)  # the slow handler under test, not synchronisation
            with self.changed:
                self.finished += 1
                self.changed.notify_all()
        conn.send(message)


def test_w_minus_1_slow_connections_leave_the_others_echo_latency_under_250_ms() -> None:
    app = SlowApp()
    workers = 4
    with running_server(app, workers=workers) as server:
        with contextlib.ExitStack() as stack:
            slow = [stack.enter_context(connect(ws_url(server))) for _ in range(workers - 1)]
            fast = stack.enter_context(connect(ws_url(server)))
            for ws in slow:
                ws.send("slow")
                ws.send("slow")  # two seconds of work each
            assert app.wait_until(lambda: app.entered == workers - 1)
            round_trips = []
            for index in range(50):
                start = time.monotonic()
                fast.send(f"echo {index}")
                assert fast.recv(TIMEOUT) == f"echo {index}"
                round_trips.append(time.monotonic() - start)
            assert app.finished == 0  # every round trip happened while three workers were held
            assert max(round_trips) < ECHO_BOUND, max(round_trips)
            for ws in slow:
                assert [ws.recv(TIMEOUT), ws.recv(TIMEOUT)] == ["slow", "slow"]


def test_with_every_worker_busy_handshakes_get_503_after_overload_delay_and_control_frames_flow() -> None:
    app = BlockingApp()
    delay = 0.3
    with LogWaiter("django_rawws.server") as log:
        with running_server(
            app, workers=2, overload_delay=delay, ping_interval=0.2, ping_timeout=5
        ) as server:
            idle = RawClient.connect(server)
            closer = RawClient.connect(server)
            with idle.sock, closer.sock, connect(ws_url(server)) as first, connect(ws_url(server)) as second:
                first.send("block 1")
                second.send("block 2")
                app.wait_entered(2)  # both workers are held from here on

                # A handshake now waits for a worker, then is refused once it has waited too long.
                with open_socket(server) as waiting:
                    start = time.monotonic()
                    waiting.sendall(handshake_request())
                    reply = read_http_response(waiting)
                    waited = time.monotonic() - start
                    assert reply.rest + read_to_eof(waiting) == b""
                assert (reply.status, reply.headers.get("Retry-After")) == (503, "5")
                assert reply.body == b"Service Unavailable: the server is overloaded\n"
                assert delay <= waited < delay + 1.0

                # While overloaded, a new handshake is refused as soon as its head is read.
                with open_socket(server) as newcomer:
                    start = time.monotonic()
                    newcomer.sendall(handshake_request())
                    assert read_http_response(newcomer).status == 503
                    assert time.monotonic() - start < delay

                # Pings from the server, the client's pongs and the client's pings all flow.
                assert isinstance(idle.next_event(reply=True), Ping)
                idle.sock.sendall(idle.proto.data_to_send())
                idle.proto.send_ping(b"still there?")
                idle.sock.sendall(idle.proto.data_to_send())
                for _ in range(10):
                    event = idle.next_event()
                    if not isinstance(event, Ping):
                        break
                assert event == Pong(b"still there?")

                # The health check is answered by the I/O thread.
                with open_socket(server) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert read_http_response(probe).status == 200

                # A closing handshake completes without a worker.
                closer.send_raw(close_frame(4001))
                assert closer.events_until_close(reply=False)[1] == 4001
                assert wait_closed(closer.sock, TIMEOUT) is not None

                assert len(app.handshakes) == 4  # neither refused handshake reached the app
                app.release.set()
                assert first.recv(TIMEOUT) == "released block 1"
                assert second.recv(TIMEOUT) == "released block 2"
                # Workers are free again: handshakes complete.
                with connect(ws_url(server)) as later:
                    later.send("served again")
                    assert later.recv(TIMEOUT) == "served again"
                assert log.wait_for("no longer overloaded", TIMEOUT)
            assert app.wait_disconnects(5)
    assert log.count("overloaded: work has waited") == 1
    assert (
        log.count("overloaded: refused 1 waiting handshake(s) with 503; closed 0 connection(s) with 1013")
        == 1
    )
    assert log.count("no longer overloaded") == 1


def test_overloaded_connections_with_a_full_inbox_get_1013_and_their_waiting_messages_are_dropped() -> None:
    app = BlockingApp()
    with running_server(app, workers=1, overload_delay=0.3, max_pending_messages=4) as server:
        with connect(ws_url(server)) as blocker:
            flooder = RawClient.connect(server)
            polite = RawClient.connect(server)
            with flooder.sock, polite.sock:
                blocker.send("block")
                app.wait_entered()
                polite.send_text("one message")
                for index in range(50):
                    flooder.send_text(f"flood {index}")
                events, code = flooder.events_until_close(reply=False)
                assert (events, code) == ([], 1013)
                assert wait_closed(flooder.sock, TIMEOUT) is not None
                app.release.set()
                assert blocker.recv(TIMEOUT) == "released block"
                # A connection with one message waiting is not what overloads the server: kept.
                assert polite.next_event() == TextMessage("one message")
        flooder_conn = app.handshakes[1]
        assert app.wait_until(lambda: any(conn is flooder_conn for conn, _ in app.disconnects))
    assert [code for conn, code in app.disconnects if conn is flooder_conn] == [1013]
    assert [message for conn, message in app.messages if conn is flooder_conn] == []


def test_with_overload_delay_off_waiting_handshakes_wait_for_a_worker() -> None:
    app = BlockingApp()
    with running_server(app, workers=1, overload_delay=None) as server:
        with connect(ws_url(server)) as blocker, open_socket(server) as waiting:
            blocker.send("block")
            app.wait_entered()
            waiting.sendall(handshake_request())
            waiting.settimeout(0.6)
            with pytest.raises(TimeoutError):
                waiting.recv(65536)
            app.release.set()
            waiting.settimeout(TIMEOUT)
            assert read_http_response(waiting, read_body=False).status == 101
            assert blocker.recv(TIMEOUT) == "released block"


# ------------------------------------------------------------ slow readers


class FloodingApp(RecordingApp):
    """On ``flood``, sends 64 KiB messages until ``send()`` says the connection is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.floods_over = 0

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if message != "flood":
            conn.send(message)
            return
        try:
            for _ in range(1000):  # 64 MiB each if nothing stopped it
                if not conn.send(b"x" * 65536):
                    break
        finally:
            with self.changed:
                self.floods_over += 1
                self.changed.notify_all()


@needs_proc
def test_ten_clients_that_stop_reading_cost_about_their_buffer_bound_in_memory_and_delay_no_one() -> None:
    """Extends tests/server/test_backpressure.py (one slow reader) to ten, measured in resident memory.

    Unbounded, ten floods of 1000 x 64 KiB would buffer 640 MiB; bounded at
    1 MiB each, the server holds about 10 MiB for them.
    """
    app = FloodingApp()
    limit = 1 << 20
    with running_server(app, workers=4, max_outgoing_buffer=limit, linger_timeout=TIMEOUT) as server:
        with connect(ws_url(server)) as bystander:
            bystander.send("warm-up")
            assert bystander.recv(TIMEOUT) == "warm-up"
            before = rss_bytes()
            readers = [RawClient.connect(server, rcvbuf=4096) for _ in range(10)]
            try:
                for reader in readers:
                    reader.send_text("flood")
                round_trips = []
                for index in range(20):
                    start = time.monotonic()
                    bystander.send(f"echo {index}")
                    assert bystander.recv(TIMEOUT) == f"echo {index}"
                    round_trips.append(time.monotonic() - start)
                assert app.wait_until(lambda: app.floods_over == 10)
                grown = rss_bytes() - before
                assert app.wait_disconnects(10) == [1008] * 10
            finally:
                for reader in readers:
                    reader.close()
            assert max(round_trips) < 0.5, max(round_trips)
            assert grown < 64 << 20, f"resident memory grew by {grown >> 20} MiB"
