"""django_rawws.testing as users meet it: the live-server fixture and mixin, and the test client.

This module is also the WebSocket URLconf of its tests (``urlpatterns``
below), the way a project's own tests would point ``RAWWS["URLCONF"]`` at
their routes. The test database is in-memory SQLite (tests/settings.py), so
the server's workers must get the test's connection to see any data.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from django.contrib.auth.models import User
from django.test import TransactionTestCase, override_settings
from django.urls import path

from django_rawws.consumers import JsonWebSocketConsumer, WebSocketConsumer
from django_rawws.exceptions import ConnectionClosed, InvalidResponse
from django_rawws.groups import push
from django_rawws.testing import (
    LiveWebSocketServer,
    WebSocketLiveServerMixin,
    WebSocketTestClient,
)
from django_rawws.testing import rawws_live_server as _fixture

# The fixture, made visible here as a project's conftest.py would import it.
rawws_live_server = _fixture

TEST_RAWWS = {"URLCONF": "tests.test_testing", "SHUTDOWN_GRACE": 2}


class EchoConsumer(WebSocketConsumer):
    groups = ("testing",)

    def receive(self, text=None, bytes=None):
        self.send(text=text, bytes=bytes)


class UsersConsumer(WebSocketConsumer):
    """Reads and writes the database from the server's workers."""

    def receive(self, text=None, bytes=None):
        if text == "count":
            self.send(text=str(User.objects.count()))
        elif text and text.startswith("create "):
            User.objects.create(username=text.split(" ", 1)[1])
            self.send(text="created")


class RequestConsumer(JsonWebSocketConsumer):
    """Tells what the handshake carried."""

    def connect(self):
        self.accept(self.subprotocols[0] if self.subprotocols else None)

    def receive_json(self, content):
        request = self.request
        self.send_json(
            {
                "echo": content,
                "cookie": request.COOKIES.get("flavour"),
                "header": request.headers.get("X-Test"),
                "origin": request.headers.get("Origin"),
                "room": self.kwargs.get("room"),
            }
        )


class ClosingConsumer(WebSocketConsumer):
    def receive(self, text=None, bytes=None):
        self.close(4001, "bye")


class RefusingConsumer(WebSocketConsumer):
    def connect(self):
        self.reject(403, "no entry")


urlpatterns = [
    path("ws/echo/", EchoConsumer.as_consumer()),
    path("ws/users/", UsersConsumer.as_consumer()),
    path("ws/request/<slug:room>/", RequestConsumer.as_consumer()),
    path("ws/closing/", ClosingConsumer.as_consumer()),
    path("ws/refuse/", RefusingConsumer.as_consumer()),
]


@pytest.fixture(autouse=True)
def _rawws_settings(settings):  # type: ignore[no-untyped-def]
    settings.RAWWS = TEST_RAWWS


# ------------------------------------------------------------- the pytest fixture


def test_fixture_serves_the_urlconf_on_a_free_port_of_127_0_0_1(
    rawws_live_server: LiveWebSocketServer,
) -> None:
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+", rawws_live_server.url)
    assert rawws_live_server.ws_url("/ws/echo/") == rawws_live_server.url + "/ws/echo/"
    with rawws_live_server.connect("/ws/echo/") as ws:
        ws.send("hello")
        assert ws.receive() == "hello"
        ws.send(b"\x00\x01")
        assert ws.receive() == b"\x00\x01"


def test_fixture_workers_see_the_test_database_both_ways(rawws_live_server: LiveWebSocketServer) -> None:
    User.objects.create(username="made-by-the-test")
    with rawws_live_server.connect("/ws/users/") as ws:
        ws.send("count")
        assert ws.receive() == "1"
        ws.send("create made-by-a-consumer")
        assert ws.receive() == "created"
    assert sorted(User.objects.values_list("username", flat=True)) == [
        "made-by-a-consumer",
        "made-by-the-test",
    ]


def test_fixture_server_is_attached_to_the_group_backend(rawws_live_server: LiveWebSocketServer) -> None:
    with rawws_live_server.connect("/ws/echo/") as ws:
        ws.send("joined?")  # its handlers ran in order: connect (joined the group) first
        assert ws.receive() == "joined?"
        assert push("testing", "pushed from the test") == 1
        assert ws.receive() == "pushed from the test"


# ------------------------------------------------------------------- the client


def test_client_sends_headers_cookies_origin_and_subprotocols(rawws_live_server: LiveWebSocketServer) -> None:
    with rawws_live_server.connect(
        "/ws/request/lobby/",
        headers={"X-Test": "yes"},
        cookies={"flavour": "chocolate"},
        origin=rawws_live_server.url.replace("ws://", "http://"),
        subprotocols=["chat.v2", "chat.v1"],
    ) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.status == 101
        ws.send_json({"n": 1})
        assert ws.receive_json() == {
            "echo": {"n": 1},
            "cookie": "chocolate",
            "header": "yes",
            "origin": rawws_live_server.url.replace("ws://", "http://"),
            "room": "lobby",
        }


def test_client_takes_django_test_client_cookies(rawws_live_server: LiveWebSocketServer, client) -> None:  # type: ignore[no-untyped-def]
    client.cookies["flavour"] = "vanilla"
    with rawws_live_server.connect("/ws/request/r1/", cookies=client.cookies) as ws:
        ws.send_json(None)
        assert ws.receive_json()["cookie"] == "vanilla"


def test_client_offers_and_uses_compression(rawws_live_server: LiveWebSocketServer) -> None:
    with rawws_live_server.connect("/ws/echo/", compression=True) as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ws.send("z" * 10_000)
        assert ws.receive() == "z" * 10_000


def test_client_reports_the_servers_close_code_and_reason(rawws_live_server: LiveWebSocketServer) -> None:
    ws = rawws_live_server.connect("/ws/closing/")
    ws.send("please close")
    assert ws.assert_closed(4001) == 4001
    assert ws.close_reason == "bye"
    with pytest.raises(ConnectionClosed) as excinfo:
        ws.receive()
    assert excinfo.value.code == 4001


def test_assert_closed_fails_on_another_code(rawws_live_server: LiveWebSocketServer) -> None:
    ws = rawws_live_server.connect("/ws/closing/")
    ws.send("please close")
    with pytest.raises(AssertionError, match="closed with 4001 'bye', expected 1000"):
        ws.assert_closed(1000)


def test_client_close_returns_the_code_the_server_echoed(rawws_live_server: LiveWebSocketServer) -> None:
    ws = rawws_live_server.connect("/ws/echo/")
    assert ws.close(4321, "done") == 4321
    assert ws.closed


def test_receive_times_out_with_timeout_error(rawws_live_server: LiveWebSocketServer) -> None:
    with rawws_live_server.connect("/ws/echo/") as ws:
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.05)
        assert ws.receive_nothing(timeout=0.05)
        ws.send("still open")
        assert ws.receive() == "still open"


def test_refused_returns_the_status_and_body(rawws_live_server: LiveWebSocketServer) -> None:
    refused = WebSocketTestClient.refused(rawws_live_server.ws_url("/ws/refuse/"))
    assert refused.status == 403
    assert refused.text == "no entry\n"
    assert WebSocketTestClient.refused(rawws_live_server.ws_url("/ws/missing/")).status == 404


def test_refused_fails_when_the_server_accepts(rawws_live_server: LiveWebSocketServer) -> None:
    with pytest.raises(AssertionError, match="accepted the handshake"):
        WebSocketTestClient.refused(rawws_live_server.ws_url("/ws/echo/"))


def test_client_rejects_urls_that_are_not_websocket_urls() -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        WebSocketTestClient("http://127.0.0.1:1/")


# --------------------------------------------------------- the server on its own


@pytest.mark.django_db(transaction=True)
def test_stopping_the_live_server_closes_clients_with_1001_and_frees_the_port() -> None:
    with LiveWebSocketServer() as server:
        ws = WebSocketTestClient(server.ws_url("/ws/echo/"))
        address = server.server.address  # type: ignore[union-attr]
        # The server waits for the close reply, which the client sends as it reads.
        stopped: list[bool] = []
        stopper = threading.Thread(target=lambda: stopped.append(server.stop()))
        stopper.start()
        ws.assert_closed(1001)
        stopper.join(10)
        assert stopped == [True]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5).close()


# ---------------------------------------------------------------- the mixin


@override_settings(RAWWS=TEST_RAWWS)
class MixinTests(WebSocketLiveServerMixin, TransactionTestCase):
    def test_live_server_url_is_a_ws_url_of_127_0_0_1(self) -> None:
        self.assertRegex(self.ws_live_server_url, r"^ws://127\.0\.0\.1:\d+$")
        self.assertEqual(self.ws_url("ws/echo/"), self.ws_live_server_url + "/ws/echo/")

    def test_echo_through_ws_connect(self) -> None:
        ws = self.ws_connect("/ws/echo/")
        ws.send("from a TestCase")
        self.assertEqual(ws.receive(), "from a TestCase")

    def test_workers_see_the_test_database(self) -> None:
        User.objects.create(username="alice")
        User.objects.create(username="bob")
        with self.ws_connect("/ws/users/") as ws:
            ws.send("count")
            self.assertEqual(ws.receive(), "2")


def test_a_client_left_open_does_not_delay_the_live_servers_stop(
    rawws_live_server: LiveWebSocketServer,
) -> None:
    ws = rawws_live_server.connect("/ws/echo/")
    ws.send("left open")
    assert ws.receive() == "left open"
    started = time.monotonic()
    assert rawws_live_server.stop() is True
    assert time.monotonic() - started < 5  # well under CLOSE_TIMEOUT (10 s) + grace
    assert ws.closed


def test_refusal_raises_invalid_response_naming_the_status_and_reason(
    rawws_live_server: LiveWebSocketServer,
) -> None:
    with pytest.raises(InvalidResponse, match="HTTP 403 Forbidden: no entry$"):
        rawws_live_server.connect("/ws/refuse/")
