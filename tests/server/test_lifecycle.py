"""A connection's life over real sockets: messages both ways, then ``disconnect`` exactly once.

Every path that ends a connection is here (keepalive and shutdown have
their own modules). "Exactly once" is checked after the server has stopped,
when its workers are joined and no late call can still arrive.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.events import BinaryMessage, TextMessage
from django_rawws.protocol.frames import encode_frame

from .helpers import (
    TIMEOUT,
    RawClient,
    RecordingApp,
    close_frame,
    masked_frame,
    rst_close,
    running_server,
    wait_closed,
    ws_url,
)

MIB = 1 << 20


class ScriptedApp(RecordingApp):
    """Echoes, except for a few commands: ``close``, ``fail``, ``raise``."""

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if message == "close":
            conn.close(4000, "bye")
        elif message == "fail":
            conn.fail(1011, "handler error")
        elif message == "raise":
            raise ValueError("a handler bug the app did not catch")
        else:
            conn.send(message)


# ------------------------------------------------------------------ echo


@pytest.mark.parametrize("message", ["hello", "héllo ✓ 🎉", "", b"\x00\x01\xfe\xff", b""], ids=repr)
def test_websockets_client_gets_its_message_echoed_with_its_type(server: Any, message: str | bytes) -> None:
    with connect(ws_url(server)) as ws:
        ws.send(message)
        assert ws.recv(TIMEOUT) == message


def test_websocket_client_library_gets_text_and_binary_echoed(server: Any) -> None:
    ws = websocket.create_connection(ws_url(server), timeout=TIMEOUT)
    try:
        ws.send("text ✓")
        assert ws.recv() == "text ✓"
        ws.send_binary(b"\x00binary\xff")
        assert ws.recv() == b"\x00binary\xff"
    finally:
        ws.close()


def test_messages_of_one_connection_are_handled_one_at_a_time_in_order(
    app: RecordingApp, server: Any
) -> None:
    with connect(ws_url(server)) as ws:
        for index in range(200):
            ws.send(str(index))
        assert [ws.recv(TIMEOUT) for _ in range(200)] == [str(index) for index in range(200)]


def test_message_of_exactly_16_mib_is_echoed_when_the_limit_is_raised(app: RecordingApp) -> None:
    payload = os.urandom(16 * MIB)
    # One message above max_outgoing_buffer would count as a slow reader: raise that too.
    config = {"max_message_size": 16 * MIB, "max_outgoing_buffer": 40 * MIB}
    with (
        running_server(app, **config) as server,
        connect(ws_url(server), max_size=None, compression=None) as ws,
    ):
        ws.send(payload)
        assert ws.recv(TIMEOUT) == payload
        ws.send(payload.hex()[: 16 * MIB])
        assert ws.recv(TIMEOUT) == payload.hex()[: 16 * MIB]


def test_compression_is_negotiated_with_the_websockets_client_offer(app: RecordingApp, server: Any) -> None:
    text = "a compressible chat message " * 4000  # ~110 KB
    with connect(ws_url(server)) as ws:
        assert ws.response is not None
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        assert "server_no_context_takeover" in extensions
        ws.send(text)
        assert ws.recv(TIMEOUT) == text
        ws.send("short")
        assert ws.recv(TIMEOUT) == "short"
        (conn,) = app.handshakes
        assert conn.bytes_out < 4000  # the echo went out compressed
        assert conn.bytes_in < 4000


def test_compressed_message_of_a_mebibyte_round_trips(server: Any) -> None:
    text = "".join(f"line {index}: {index * index}\n" for index in range(60_000))[:MIB]
    with connect(ws_url(server)) as ws:
        ws.send(text)
        assert ws.recv(TIMEOUT) == text


def test_accept_with_a_subprotocol_and_extra_headers_reaches_the_client() -> None:
    class ChoosingApp(RecordingApp):
        def on_handshake(self, conn: Any, handshake: Any) -> None:
            conn.accept(subprotocol=handshake.subprotocols[-1], headers=[("Set-Cookie", "a=b")])

    app = ChoosingApp()
    offered = [Subprotocol("chat.v1"), Subprotocol("chat.v2")]
    with running_server(app) as server, connect(ws_url(server), subprotocols=offered) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        assert ws.response.headers["Set-Cookie"] == "a=b"
    assert app.handshakes[0].subprotocol == "chat.v2"


def test_events_and_calls_run_on_a_worker_in_the_connection_turn(app: RecordingApp, server: Any) -> None:
    with connect(ws_url(server)) as ws:
        ws.send("first")
        assert ws.recv(TIMEOUT) == "first"
        (conn,) = app.handshakes
        seen_by_call: list[Any] = []

        def call() -> None:
            seen_by_call.extend(event for _, event in app.events)  # the event, queued first, ran first
            conn.send("from call_soon")

        assert conn.deliver_event({"type": "chat.message", "text": "hi"})
        assert conn.call_soon(call)
        assert ws.recv(TIMEOUT) == "from call_soon"
        assert seen_by_call == [{"type": "chat.message", "text": "hi"}]
    assert [event for _, event in app.events] == [{"type": "chat.message", "text": "hi"}]


def test_closed_connection_refuses_sends_events_and_calls(app: RecordingApp, server: Any) -> None:
    with connect(ws_url(server)) as ws:
        ws.send("x")
        ws.recv(TIMEOUT)
    app.wait_disconnects()
    (conn,) = app.handshakes
    assert not conn.is_open
    assert conn.close_code == 1000
    assert conn.send("late") is False
    assert conn.deliver_event({"type": "late"}) is False
    assert conn.call_soon(lambda: None) is False


def test_access_log_line_names_client_path_status_close_code_and_bytes(
    caplog: pytest.LogCaptureFixture, app: RecordingApp, server: Any
) -> None:
    caplog.set_level(logging.INFO, logger="django_rawws.access")
    with connect(ws_url(server, "/room/7?x=1")) as ws:
        ws.send("x")
        ws.recv(TIMEOUT)
        ws.close(4001)
    with running_server(app) as other:  # a 4xx too
        websocket_error = None
        try:
            websocket.create_connection(
                ws_url(other, "/"), timeout=TIMEOUT, header=["Sec-WebSocket-Version: 12"]
            )
        except websocket.WebSocketBadStatusException as exc:
            websocket_error = exc
        assert websocket_error is not None and websocket_error.status_code == 426
    server.stop(TIMEOUT)
    lines = [record.getMessage() for record in caplog.records if record.name == "django_rawws.access"]
    assert any(
        re.fullmatch(r'127\.0\.0\.1:\d+ "/room/7\?x=1" 101 4001 \d+\.\d{3}s in=\d+ out=\d+', line)
        for line in lines
    ), lines
    assert any(
        re.fullmatch(r'127\.0\.0\.1:\d+ "/" 426 - \d+\.\d{3}s in=\d+ out=\d+', line) for line in lines
    ), lines


# ------------------------------------------------ disconnect exactly once


def _client_closes_with_its_code(client: RawClient) -> int | None:
    client.send_raw(close_frame(4001, "done"))
    return client.events_until_close()[1]


def _client_closes_without_a_code(client: RawClient) -> int | None:
    client.send_raw(close_frame(None))
    return client.events_until_close()[1]


def _client_drops_tcp(client: RawClient) -> int | None:
    client.sock.close()
    return None


def _client_resets_tcp(client: RawClient) -> int | None:
    rst_close(client.sock)
    return None


def _app_closes_with_4000(client: RawClient) -> int | None:
    client.send_text("close")
    return client.events_until_close()[1]


def _client_sends_an_unmasked_frame(client: RawClient) -> int | None:
    client.send_raw(encode_frame(Opcode.TEXT, b"unmasked", mask=None))
    return client.events_until_close()[1]


def _client_sends_invalid_utf8(client: RawClient) -> int | None:
    client.send_raw(masked_frame(Opcode.TEXT, b"bad \xff utf-8"))
    return client.events_until_close()[1]


def _client_sends_a_message_over_the_limit(client: RawClient) -> int | None:
    client.send_binary(b"x" * 2049)
    return client.events_until_close()[1]


def _app_fails_with_1011(client: RawClient) -> int | None:
    client.send_text("fail")
    return client.events_until_close()[1]


def _app_handler_raises(client: RawClient) -> int | None:
    client.send_text("raise")
    return client.events_until_close()[1]


_ENDINGS: list[tuple[str, Callable[[RawClient], int | None], int | None, int]] = [
    # (id, what happens, close code the client sees (None: none read), code disconnect() gets)
    ("client-closes-with-its-code", _client_closes_with_its_code, 4001, 4001),
    ("client-closes-without-a-code", _client_closes_without_a_code, 1005, 1005),
    ("client-drops-tcp", _client_drops_tcp, None, 1006),
    ("client-resets-tcp", _client_resets_tcp, None, 1006),
    ("app-closes", _app_closes_with_4000, 4000, 4000),
    ("client-protocol-error", _client_sends_an_unmasked_frame, 1002, 1002),
    ("client-invalid-utf8", _client_sends_invalid_utf8, 1007, 1007),
    ("client-message-over-limit", _client_sends_a_message_over_the_limit, 1009, 1009),
    ("app-fails-after-an-exception", _app_fails_with_1011, 1011, 1011),
    ("app-handler-raises", _app_handler_raises, 1011, 1011),
]


@pytest.mark.parametrize(
    ("ending", "client_sees", "disconnect_code"),
    [pytest.param(ending, seen, code, id=name) for name, ending, seen, code in _ENDINGS],
)
def test_every_ending_calls_disconnect_exactly_once_with_its_code(
    caplog: pytest.LogCaptureFixture,
    ending: Callable[[RawClient], int | None],
    client_sees: int | None,
    disconnect_code: int,
) -> None:
    app = ScriptedApp()
    with running_server(app, max_message_size=2048) as server:
        client = RawClient.connect(server)
        try:
            client.send_text("before")
            assert client.next_event() == TextMessage("before")
            assert ending(client) == client_sees
            if client_sees is not None:
                assert (
                    wait_closed(client.sock, TIMEOUT) is not None
                )  # the server closes TCP after the close frame
        finally:
            client.close()
        assert app.wait_disconnects() == [disconnect_code]
    assert app.disconnect_codes() == [disconnect_code]  # workers joined: no second call is coming
    assert app.handshakes[0].close_code == disconnect_code
    if disconnect_code == 1011 and app.messages[-1][1] == "raise":
        assert any(
            record.exc_info and isinstance(record.exc_info[1], ValueError) for record in caplog.records
        )


def test_websockets_client_close_code_reaches_disconnect(app: RecordingApp, server: Any) -> None:
    with connect(ws_url(server)) as ws:
        ws.close(4321, "client reason")
        assert ws.close_code == 4321  # echoed by the server
    assert app.wait_disconnects() == [4321]


def test_app_close_code_and_reason_reach_the_websockets_client() -> None:
    app = ScriptedApp()
    with running_server(app) as server:
        with connect(ws_url(server)) as ws:
            ws.send("close")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(TIMEOUT)
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (4000, "bye")
        assert app.wait_disconnects() == [4000]


def test_messages_after_a_client_close_are_not_handled(app: RecordingApp, server: Any) -> None:
    client = RawClient.connect(server)
    with client.sock:
        client.send_raw(
            masked_frame(Opcode.TEXT, b"one") + close_frame(1000) + masked_frame(Opcode.TEXT, b"after")
        )
        events, code = client.events_until_close()
        assert code == 1000
        assert wait_closed(client.sock, TIMEOUT) is not None
    assert app.wait_disconnects() == [1000]
    assert [message for _, message in app.messages] == ["one"]
    # The echo of "one" may or may not precede our close: the server stops sending once it has answered it.
    assert events in ([], [TextMessage("one")])


def test_binary_and_text_events_reach_a_raw_client_unmasked(server: Any) -> None:
    client = RawClient.connect(server)
    with client.sock:
        client.send_binary(b"\x00\xff")
        client.send_text("ok")
        assert client.next_event() == BinaryMessage(b"\x00\xff")
        assert client.next_event() == TextMessage("ok")
        client.send_raw(close_frame(1000))
        assert client.events_until_close() == ([], 1000)


class ForgetfulApp:
    """Accepts and echoes, keeping only a weak reference to each connection."""

    def __init__(self) -> None:
        self.freed = threading.Event()
        self.disconnected = threading.Event()
        self.finalizers: list[weakref.finalize] = []

    def websocket_handshake(self, conn: Any, handshake: Any) -> None:
        self.finalizers.append(weakref.finalize(conn, self.freed.set))
        conn.accept()

    def websocket_message(self, conn: Any, message: str | bytes) -> None:
        conn.send(message)

    def websocket_event(self, conn: Any, event: Any) -> None:
        pass

    def websocket_disconnect(self, conn: Any, code: int) -> None:
        self.disconnected.set()


def test_a_closed_connection_is_freed_at_once_not_when_its_timers_would_have_fired() -> None:
    """Memory under churn: a connection's pending deadlines (handshake, ping) do not keep it alive."""
    app = ForgetfulApp()
    deadlines = dict.fromkeys(("handshake_timeout", "ping_interval", "close_timeout", "linger_timeout"), 60.0)
    with running_server(app, **deadlines) as server:
        with connect(ws_url(server, "/")) as client:
            client.send("hello")
            assert client.recv(timeout=TIMEOUT) == "hello"
        assert app.disconnected.wait(TIMEOUT)
        gc.collect()
        # Long before any of its deadlines: freed once closed and forgotten.
        assert app.freed.wait(TIMEOUT)
