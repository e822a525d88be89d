"""Shutdown over real sockets: in-flight work first, then the close code, then the threads.

``stop()`` must: stop accepting, let handlers in flight and messages already
read finish and send, close every connection (1001, or 1012 before a
reload), run ``disconnect`` once each, run ``worker_exit`` in each worker,
join every ``rawws-*`` thread — and say False, with the stuck stacks logged,
when a handler outlives the grace.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.events import TextMessage

from .helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    join_rawws_threads,
    masked_frame,
    rawws_threads,
    running_server,
    wait_closed,
    ws_url,
)


def _stop_in_thread(server: Any, grace: float, **kwargs: Any) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(server.stop(grace, **kwargs)), name="test-stopper")
    thread.start()
    return thread, result


def _signal_when_grace_wait_starts(monkeypatch: pytest.MonkeyPatch, server: Any) -> threading.Event:
    """An Event set when stop() starts waiting for the handlers in flight (after it stopped reading)."""
    waiting = threading.Event()
    wait_idle = server.pool.wait_idle

    def signalling_wait_idle(timeout: float) -> bool:
        waiting.set()
        return wait_idle(timeout)

    monkeypatch.setattr(server.pool, "wait_idle", signalling_wait_idle)
    return waiting


def test_handler_in_flight_finishes_and_its_message_goes_out_before_the_1001(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = BlockingApp()
    with running_server(app) as server:
        client = RawClient.connect(server)
        with client.sock:
            # One packet: the handler blocks on the first message; the others are read and queued.
            (conn,) = app.handshakes
            received_before = conn.bytes_in
            packet = b"".join(masked_frame(Opcode.TEXT, text) for text in (b"block", b"one", b"two"))
            client.send_raw(packet)
            app.wait_entered()
            assert conn.bytes_in - received_before == len(packet)  # all read before stop() begins
            grace_wait = _signal_when_grace_wait_starts(monkeypatch, server)
            stopper, result = _stop_in_thread(server, TIMEOUT)
            assert grace_wait.wait(TIMEOUT)
            app.release.set()
            events, code = client.events_until_close()
            assert events == [TextMessage("released block"), TextMessage("one"), TextMessage("two")]
            assert code == 1001
            assert wait_closed(client.sock, TIMEOUT) is not None
        stopper.join(TIMEOUT)
        assert result == [True]
    assert app.disconnect_codes() == [1001]
    assert rawws_threads() == []


def test_stop_closes_every_connection_with_1001_runs_disconnect_and_joins_every_thread() -> None:
    app = RecordingApp()
    with running_server(app, workers=3) as server:
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(connect(ws_url(server))) for _ in range(5)]
            for index, ws in enumerate(clients):
                ws.send(f"hello {index}")
                assert ws.recv(TIMEOUT) == f"hello {index}"
            assert len(rawws_threads()) == 4  # the I/O thread and three workers
            address = server.address
            assert server.stop(TIMEOUT) is True
            for ws in clients:
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert rawws_threads() == []  # joined by stop() itself
        assert sorted(app.worker_exits) == ["rawws-worker-0", "rawws-worker-1", "rawws-worker-2"]
        assert app.disconnect_codes() == [1001] * 5
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=TIMEOUT)
        assert server.stop(TIMEOUT) is True  # again: nothing to do
    assert app.disconnect_codes() == [1001] * 5


def test_stop_with_close_code_1012_is_what_a_reload_sends(app: RecordingApp) -> None:
    with running_server(app) as server, connect(ws_url(server)) as ws:
        ws.send("x")
        ws.recv(TIMEOUT)
        assert server.stop(TIMEOUT, close_code=1012) is True
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(TIMEOUT)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1012
    assert app.disconnect_codes() == [1012]


def test_client_that_never_answers_the_close_is_dropped_after_close_timeout(app: RecordingApp) -> None:
    with running_server(app, close_timeout=0.3) as server:
        client = RawClient.connect(server)
        with client.sock:
            start = time.monotonic()
            assert server.stop(TIMEOUT) is True  # the client reads nothing, answers nothing
            assert 0.2 < time.monotonic() - start < TIMEOUT
            events, code = client.events_until_close(reply=False)
            assert (events, code) == ([], 1001)
            assert wait_closed(client.sock, TIMEOUT) is not None
    assert app.disconnect_codes() == [1001]


def test_handler_stuck_after_the_grace_makes_stop_return_false_and_logs_its_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = BlockingApp()
    try:
        with running_server(app, workers=2, close_timeout=0.5) as server:
            with connect(ws_url(server)) as ws:
                ws.send("block forever")
                app.wait_entered()
                start = time.monotonic()
                assert server.stop(0.3) is False
                assert time.monotonic() - start < 10.0
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(TIMEOUT)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            stuck = [
                record.getMessage()
                for record in caplog.records
                if record.levelno == logging.ERROR and "still running after the" in record.getMessage()
            ]
            assert len(stuck) == 1
            assert (
                "rawws-worker-" in stuck[0]
                and "in on_message" in stuck[0]
                and "self.release.wait" in stuck[0]
            )
            assert app.disconnects == []  # its disconnect waits behind the stuck handler
    finally:
        app.release.set()
    assert join_rawws_threads() == []
    assert app.disconnect_codes() == [1001]  # the stuck worker got to it once released


def test_messages_arriving_after_stop_begins_are_not_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    app = BlockingApp()
    with running_server(app) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")
            app.wait_entered()
            grace_wait = _signal_when_grace_wait_starts(monkeypatch, server)
            stopper, result = _stop_in_thread(server, TIMEOUT)
            assert grace_wait.wait(TIMEOUT)
            client.send_text("too late")  # reading is paused for the shutdown
            app.release.set()
            events, code = client.events_until_close()
            assert (events, code) == ([TextMessage("released block")], 1001)
        stopper.join(TIMEOUT)
        assert result == [True]
    assert [message for _, message in app.messages] == ["block"]


def test_stop_is_prompt_every_time_no_wake_up_of_the_io_thread_is_lost() -> None:
    """Each stop() step is a command for the I/O thread; a lost wake-up stalls it for seconds.

    Close and linger timeouts are long here, so no timer can cover for a lost wake-up.
    """
    for _ in range(30):
        app = RecordingApp()
        config = {"close_timeout": TIMEOUT, "linger_timeout": TIMEOUT}
        with running_server(app, **config) as server, connect(ws_url(server)) as ws:
            ws.send("x")
            assert ws.recv(TIMEOUT) == "x"
            start = time.monotonic()
            assert server.stop(TIMEOUT) is True
            assert time.monotonic() - start < 2.0
        assert app.disconnect_codes() == [1001]
