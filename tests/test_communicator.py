"""django_rawws.testing.WebSocketCommunicator: consumers driven in the test's thread, without sockets.

The same behaviours are checked from a plain ``django.test.TestCase`` and
from pytest-django ``db`` tests (both non-transactional: the consumer must
see, and write into, the test's transaction). This module is also the
WebSocket URLconf of its tests: its own consumers, then those of
tests/wsurls.py.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import sys
import threading
import types
import unittest
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db import connection, connections, transaction
from django.test import TestCase, override_settings
from django.urls import path

from django_rawws.consumers import JsonWebSocketConsumer, WebSocketConsumer
from django_rawws.exceptions import ConnectionClosed, InvalidState
from django_rawws.groups import get_backend, push
from django_rawws.testing import InProcessConnection, NothingReceived, WebSocketCommunicator
from tests import wsurls
from tests.wsconsumers import journal

RAWWS = {"URLCONF": "tests.test_communicator"}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "testing.md"


# ----------------------------------------------------- the examples in docs/testing.md


def docs_blocks(text: str) -> list[tuple[str, str]]:
    """``(module name, source)`` of each python block preceded by a ``<!-- tested -->`` comment.

    The block's first line names its file (``# profiles/tests.py``).
    """
    blocks = []
    for match in re.finditer(r"<!-- tested[^>]*-->\n```python\n(.*?)```", text, re.DOTALL):
        source = match.group(1)
        first = source.splitlines()[0]
        found = re.match(r"# ([\w/]+)\.py\b", first)
        assert found, f"a tested block must start with '# <module path>.py', not {first!r}"
        blocks.append((found.group(1).replace("/", "."), source))
    return blocks


def load_docs_examples() -> dict[str, types.ModuleType]:
    """Make each tested block of docs/testing.md the module it says it is, as a project would have it."""
    modules: dict[str, types.ModuleType] = {}
    for name, source in docs_blocks(DOCS.read_text()):
        for parent in _parents(name):
            if parent not in sys.modules:
                package = types.ModuleType(parent)
                package.__path__ = []
                sys.modules[parent] = package
        assert name not in sys.modules, f"docs/testing.md: module {name} exists already"
        module = types.ModuleType(name)
        module.__file__ = f"{DOCS}:{name}"
        sys.modules[name] = modules[name] = module
        exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own docs
    return modules


def _parents(name: str) -> list[str]:
    parts = name.split(".")[:-1]
    return [".".join(parts[: index + 1]) for index in range(len(parts))]


DOCS_EXAMPLES = load_docs_examples()


class ClosingConsumer(WebSocketConsumer):
    """Closes with the code it is sent ("4000"), or echoes."""

    def receive(self, text=None, bytes=None):
        if text and text.isdigit():
            self.close(int(text), "asked to")
        else:
            self.send(text=text, bytes=bytes)


class RoomConsumer(JsonWebSocketConsumer):
    """Writes a user row, then tells the room (deferred to the commit inside a transaction)."""

    groups = ("room",)

    def receive_json(self, content):
        get_user_model().objects.create(username=content["name"])
        sent = push("room", event={"type": "room.joined", "name": content["name"]}, exclude=self)
        if content.get("raw"):
            push("room", f"raw: {content['name']}")
        self.send_json({"created": content["name"], "push_returned": sent})

    def room_joined(self, event):
        self.send_json({"joined": event["name"]})


class CountConsumer(WebSocketConsumer):
    """Counts the users the consumer can see."""

    def receive(self, text=None, bytes=None):
        self.send(text=str(get_user_model().objects.count()))


class NotifyConsumer(WebSocketConsumer):
    """Registers a plain on_commit callback that sends: ``non-robust`` one raises."""

    def receive(self, text=None, bytes=None):
        def later():
            if text == "non-robust":
                raise RuntimeError("callback failed")
            self.send(text=f"committed {text}")

        transaction.on_commit(later, robust=text == "robust")
        self.send(text="registered")


class RobustFailureConsumer(WebSocketConsumer):
    def receive(self, text=None, bytes=None):
        def later():
            raise RuntimeError("robust callback failed")

        transaction.on_commit(later, robust=True)
        self.send(text="registered")


class CallSoonConsumer(WebSocketConsumer):
    def receive(self, text=None, bytes=None):
        self.connection.call_soon(lambda: self.send(text="later"))
        self.send(text="now")


class NoDecisionConsumer(WebSocketConsumer):
    def connect(self):
        pass  # neither accept nor reject: the server answers 403


urlpatterns = [
    path("ws/closing/", ClosingConsumer),
    path("ws/room/", RoomConsumer),
    path("ws/count/", CountConsumer),
    path("ws/notify/", NotifyConsumer),
    path("ws/robust-failure/", RobustFailureConsumer),
    path("ws/call-soon/", CallSoonConsumer),
    path("ws/undecided/", NoDecisionConsumer),
    *DOCS_EXAMPLES["profiles.wsurls"].urlpatterns,
    *wsurls.urlpatterns,
]


@pytest.fixture(autouse=True)
def _routes(settings):
    settings.RAWWS = RAWWS
    journal.clear()


def disconnects():
    return [entry[1:] for entry in journal.entries("disconnect")]


# ------------------------------------------------------------ a plain TestCase


@override_settings(RAWWS=RAWWS)
class CommunicatorInATestCase(TestCase):
    """Every handler runs inside the test's transaction: it sees the test's rows, the test sees its own."""

    @classmethod
    def setUpTestData(cls):
        cls.ada = get_user_model().objects.create_user("ada")

    def setUp(self):
        journal.clear()

    def test_echo_of_text_and_bytes(self):
        with WebSocketCommunicator("/ws/echo/") as ws:
            self.assertEqual(ws.connect(), (True, None))
            ws.send_text("hello")
            self.assertEqual(ws.receive(), "hello")
            ws.send_bytes(b"\x00\xff")
            self.assertEqual(ws.receive(), b"\x00\xff")

    def test_json_consumer_round_trip(self):
        with WebSocketCommunicator("/ws/json/") as ws:
            ws.connect()
            ws.send_json({"n": [1, 2]})
            self.assertEqual(ws.receive_json(), {"echo": {"n": [1, 2]}})

    def test_login_required_refuses_anonymous_with_403_and_accepts_a_logged_in_user(self):
        with WebSocketCommunicator("/ws/login/") as ws:
            self.assertEqual(ws.connect(), (False, 403))
        with WebSocketCommunicator("/ws/login/", user=AnonymousUser()) as ws:
            self.assertEqual(ws.connect(), (False, 403))
        with WebSocketCommunicator("/ws/login/", user=self.ada) as ws:
            self.assertEqual(ws.connect(), (True, None))
            self.assertEqual(ws.receive_json(), {"authenticated": True, "username": "ada"})

    def test_the_consumer_sees_the_tests_rows_and_the_test_sees_the_consumers(self):
        with WebSocketCommunicator("/ws/count/") as ws:
            ws.connect()
            ws.send_text("count")
            self.assertEqual(ws.receive(), "1")  # ada, from setUpTestData
        with WebSocketCommunicator("/ws/atomic/") as ws:
            ws.connect()
            ws.send_text("create:grace")
            self.assertEqual(ws.receive(), "created")
        self.assertTrue(get_user_model().objects.filter(username="grace").exists())
        self.assertTrue(connection.in_atomic_block)
        self.assertFalse(connection.needs_rollback)

    def test_raw_and_event_pushes_reach_the_consumer(self):
        with WebSocketCommunicator("/ws/group/") as ws:
            ws.connect()
            self.assertEqual(push("lobby", "raw hello", immediate=True), 1)
            self.assertEqual(
                push("lobby", event={"type": "chat.message", "text": "event hello"}, immediate=True), 1
            )
            self.assertEqual(ws.receive(), "raw hello")
            self.assertEqual(ws.receive(), "event hello")

    def test_a_push_deferred_by_the_tests_transaction_arrives_with_capture_on_commit_callbacks(self):
        with WebSocketCommunicator("/ws/group/") as ws:
            ws.connect()
            with self.captureOnCommitCallbacks(execute=True) as callbacks:
                self.assertIsNone(push("lobby", event={"type": "chat.message", "text": "after commit"}))
                self.assertTrue(ws.receive_nothing())
            self.assertEqual(len(callbacks), 1)
            self.assertEqual(ws.receive(), "after commit")

    def test_exclude_leaves_one_communicator_out(self):
        with WebSocketCommunicator("/ws/group/") as first, WebSocketCommunicator("/ws/group/") as second:
            first.connect()
            second.connect()
            self.assertEqual(push("lobby", "not to first", exclude=first.consumer, immediate=True), 1)
            self.assertEqual(second.receive(), "not to first")
            self.assertTrue(first.receive_nothing())

    def test_a_consumers_push_runs_when_its_handler_returns(self):
        with WebSocketCommunicator("/ws/room/") as alice, WebSocketCommunicator("/ws/room/") as bob:
            alice.connect()
            bob.connect()
            alice.send_json({"name": "alice"})
            self.assertEqual(alice.receive_json(), {"created": "alice", "push_returned": None})
            self.assertEqual(bob.receive_json(), {"joined": "alice"})
            self.assertTrue(alice.receive_nothing())
        self.assertTrue(get_user_model().objects.filter(username="alice").exists())

    def test_close_codes_from_the_consumer_and_from_an_exception(self):
        with WebSocketCommunicator("/ws/closing/") as ws:
            ws.connect()
            ws.send_text("4000")
            self.assertEqual(ws.assert_closed(4000), 4000)
            self.assertEqual(ws.close_reason, "asked to")
        with (
            self.assertLogs("django_rawws.consumers", logging.ERROR),
            WebSocketCommunicator("/ws/fail/") as ws,
        ):
            ws.connect()
            ws.send_text("boom")
            ws.assert_closed(1011)
        self.assertEqual(disconnects(), [("FailingConsumer", 1011)])

    def test_subprotocol_negotiation(self):
        with WebSocketCommunicator("/ws/subprotocol/", subprotocols=["v1", "chat.v2"]) as ws:
            self.assertEqual(ws.connect(), (True, "chat.v2"))
            self.assertEqual(ws.response.headers.get("Sec-WebSocket-Protocol"), "chat.v2")
        with WebSocketCommunicator("/ws/subprotocol/", subprotocols=["v1"]) as ws:
            self.assertEqual(ws.connect(), (False, 400))
            self.assertEqual(ws.refusal.text, "this endpoint speaks chat.v2\n")

    def test_disconnect_runs_the_consumers_disconnect_once(self):
        with WebSocketCommunicator("/ws/echo/") as ws:
            ws.connect()
            ws.disconnect(4321)
            ws.disconnect()
            self.assertTrue(ws.closed)
            self.assertEqual(ws.close_code, 4321)  # the consumer echoed it
        self.assertEqual(disconnects(), [("EchoConsumer", 4321)])


# --------------------------------------------------- pytest-django, db (non-transactional)


@pytest.mark.django_db
class TestInADbTest:
    def test_echo_of_text_and_bytes(self):
        with WebSocketCommunicator("/ws/echo/") as ws:
            assert ws.connect() == (True, None)
            ws.send_text("hello")
            assert ws.receive() == "hello"
            ws.send_bytes(b"\x00\xff")
            assert ws.receive_bytes() == b"\x00\xff"

    def test_json_consumer_round_trip(self):
        with WebSocketCommunicator("/ws/json/") as ws:
            ws.connect()
            ws.send_json({"n": [1, 2]})
            assert ws.receive_json() == {"echo": {"n": [1, 2]}}

    def test_login_required_refuses_anonymous_with_403_and_accepts_a_logged_in_user(self, django_user_model):
        with WebSocketCommunicator("/ws/login/") as ws:
            assert ws.connect() == (False, 403)
            assert ws.refusal.status == 403
        ada = django_user_model.objects.create_user("ada")
        with WebSocketCommunicator("/ws/login/", user=ada) as ws:
            assert ws.connect() == (True, None)
            assert ws.receive_json() == {"authenticated": True, "username": "ada"}
            ws.send_text("groups?")
            groups = ws.receive_json()
        assert f"user:{ada.pk}" in groups
        assert any(group.startswith("session:") for group in groups)

    def test_the_consumer_sees_the_tests_rows_and_the_test_sees_the_consumers(self, django_user_model):
        django_user_model.objects.create(username="made-by-the-test")
        with WebSocketCommunicator("/ws/count/") as ws:
            ws.connect()
            ws.send_text("count")
            assert ws.receive() == "1"
        with WebSocketCommunicator("/ws/atomic/") as ws:
            ws.connect()
            ws.send_text("create:made-by-the-consumer")
            assert ws.receive() == "created"
        assert django_user_model.objects.count() == 2
        assert connection.in_atomic_block and not connection.needs_rollback

    def test_raw_and_event_pushes_reach_the_consumer(self):
        with WebSocketCommunicator("/ws/group/") as ws:
            ws.connect()
            assert push("lobby", "raw hello", immediate=True) == 1
            assert push("lobby", event={"type": "chat.message", "text": "event hello"}, immediate=True) == 1
            assert ws.receive() == "raw hello"
            assert ws.receive() == "event hello"

    def test_a_push_deferred_by_the_tests_transaction_arrives_with_capture(
        self, django_capture_on_commit_callbacks
    ):
        with WebSocketCommunicator("/ws/group/") as ws:
            ws.connect()
            with django_capture_on_commit_callbacks(execute=True):
                assert push("lobby", "after commit") is None
                assert ws.receive_nothing()
            assert ws.receive() == "after commit"

    def test_exclude_takes_the_consumer_the_connection_or_its_id(self):
        with (
            WebSocketCommunicator("/ws/group/") as first,
            WebSocketCommunicator("/ws/group/") as second,
            WebSocketCommunicator("/ws/group/") as third,
        ):
            for ws in (first, second, third):
                ws.connect()
            excluded = [first.consumer, second.connection]
            assert push("lobby", "to third", exclude=excluded, immediate=True) == 1
            assert third.receive() == "to third"
            assert first.receive_nothing() and second.receive_nothing()
            assert push("lobby", "not third", exclude=third.connection.id, immediate=True) == 2
            assert first.receive() == second.receive() == "not third"

    def test_a_consumers_push_runs_when_its_handler_returns(self, django_user_model):
        with WebSocketCommunicator("/ws/room/") as alice, WebSocketCommunicator("/ws/room/") as bob:
            alice.connect()
            bob.connect()
            alice.send_json({"name": "alice", "raw": True})
            assert alice.receive_json() == {"created": "alice", "push_returned": None}
            assert alice.receive() == "raw: alice"  # after what the handler sent directly
            assert bob.receive() == "raw: alice"  # no consumer code: there at once
            assert bob.receive_json() == {"joined": "alice"}  # the event runs bob's handler first
        assert django_user_model.objects.filter(username="alice").exists()

    def test_close_codes_from_the_consumer_and_from_an_exception(self, caplog):
        with WebSocketCommunicator("/ws/closing/") as ws:
            ws.connect()
            ws.send_text("4000")
            assert ws.assert_closed(4000) == 4000
        with WebSocketCommunicator("/ws/fail/") as ws:
            ws.connect()
            ws.send_text("boom")
            ws.assert_closed(1011)
        assert disconnects() == [("FailingConsumer", 1011)]
        assert "boom from a consumer" in caplog.text

    def test_subprotocol_negotiation(self):
        with WebSocketCommunicator("/ws/subprotocol/", subprotocols=["v1", "chat.v2"]) as ws:
            assert ws.connect() == (True, "chat.v2")
            assert ws.subprotocol == "chat.v2"
            ws.send_text("which?")
            assert ws.receive() == "chat.v2"

    def test_disconnect_runs_the_consumers_disconnect_once(self):
        ws = WebSocketCommunicator("/ws/echo/")
        ws.connect()
        ws.disconnect()
        ws.disconnect()
        with ws:
            pass
        assert disconnects() == [("EchoConsumer", 1000)]


# ------------------------------------------------------------------ the handshake


def test_headers_cookies_origin_query_string_and_client_reach_the_request():
    with WebSocketCommunicator(
        "/ws/info/?a=1",
        query_string="b=2",
        headers={"X-Custom": "yes"},
        cookies={"flavour": "vanilla"},
        origin="http://testserver",
        client=("10.1.2.3", 4567),
    ) as ws:
        ws.connect()
        info = ws.receive_json()
    assert info["get"] == {"a": ["1"], "b": ["2"]}
    assert info["header_custom"] == "yes"
    assert info["cookies"] == {"flavour": "vanilla"}
    assert info["remote_addr"] == "10.1.2.3"
    assert info["host"] == "testserver"
    assert info["absolute_uri"] == "http://testserver/ws/info/?a=1&b=2"
    assert info["secure"] is False


def test_secure_means_a_wss_request_and_an_https_origin():
    with WebSocketCommunicator("/ws/info/", secure=True, origin="https://testserver") as ws:
        assert ws.connect() == (True, None)
        info = ws.receive_json()
    assert info["secure"] is True
    assert info["absolute_uri"] == "https://testserver/ws/info/"
    with WebSocketCommunicator("/ws/info/", secure=True, origin="http://testserver") as ws:
        assert ws.connect() == (False, 403)


def test_a_foreign_origin_gets_403_an_unknown_host_400_and_an_unknown_path_404(caplog):
    with WebSocketCommunicator("/ws/echo/", origin="https://evil.example") as ws:
        assert ws.connect() == (False, 403)
        assert ws.refusal.text == "Forbidden: origin not allowed\n"
    with WebSocketCommunicator("/ws/echo/", host="evil.example") as ws:
        assert ws.connect() == (False, 400)
    with WebSocketCommunicator("/ws/nowhere/") as ws:
        assert ws.connect() == (False, 404)
    assert "Invalid HTTP_HOST header" in caplog.text


def test_a_handshake_the_servers_parser_refuses_never_reaches_django():
    with WebSocketCommunicator("/ws/echo/", headers=[("Host", "twice")]) as ws:
        assert ws.connect() == (False, 400)
        assert ws.refusal.text == "duplicate Host header\n"
        assert ws.consumer is None


@pytest.mark.django_db
def test_the_django_test_clients_cookies_log_the_same_user_in(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("carol"))
    with WebSocketCommunicator("/ws/login/", cookies=client.cookies) as ws:
        assert ws.connect() == (True, None)
        assert ws.receive_json()["username"] == "carol"


def test_a_consumer_rejecting_or_raising_permission_denied_gets_its_disconnect_once():
    with WebSocketCommunicator("/ws/reject/429/") as ws:
        assert ws.connect() == (False, 429)
        assert ws.refusal.headers.get("Retry-After") == "5"
        assert ws.refusal.text == "refused with 429\n"
    with WebSocketCommunicator("/ws/denied/") as ws:
        assert ws.connect() == (False, 403)
    assert disconnects() == [("RejectConsumer", 1006), ("DeniedConsumer", 1006)]


def test_connect_deciding_nothing_is_403_and_raising_is_500(caplog):
    with WebSocketCommunicator("/ws/undecided/") as ws:
        assert ws.connect() == (False, 403)
    with WebSocketCommunicator("/ws/fail-connect/") as ws:
        assert ws.connect() == (False, 500)
    assert "boom in connect" in caplog.text


def test_messages_sent_in_connect_arrive_after_the_101():
    with WebSocketCommunicator("/ws/rooms/7/lobby/") as ws:
        assert ws.connect() == (True, None)
        assert ws.receive_json()["kwargs"] == {"room": 7, "name": "lobby"}
        assert ws.consumer.kwargs == {"room": 7, "name": "lobby"}


def test_compression_is_negotiated_and_used():
    with WebSocketCommunicator("/ws/echo/", compression=True) as ws:
        ws.connect()
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions")
        ws.send_text("z" * 10_000)
        assert ws.receive() == "z" * 10_000
    with WebSocketCommunicator("/ws/nodeflate/", compression=True) as ws:
        ws.connect()
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


def test_the_urlconf_argument_overrides_the_setting():
    with WebSocketCommunicator("/ws/echo/", urlconf="tests.test_testing") as ws:
        ws.connect()
        assert ws.consumer.__module__ == "tests.test_testing"


def test_connect_twice_is_invalid_and_so_is_receiving_before_connect():
    ws = WebSocketCommunicator("/ws/echo/")
    with pytest.raises(InvalidState, match="before connect"):
        ws.receive()
    with ws:
        ws.connect()
        with pytest.raises(InvalidState, match="already called"):
            ws.connect()


def test_a_path_without_a_leading_slash_is_refused():
    with pytest.raises(ValueError, match="starts with '/'"):
        WebSocketCommunicator("ws/echo/")


# -------------------------------------------------------------- receiving, closing


def test_receive_names_what_it_expected_when_nothing_comes():
    with WebSocketCommunicator("/ws/echo/") as ws:
        ws.connect()
        with pytest.raises(NothingReceived, match=r"expected a message from the consumer at /ws/echo/"):
            ws.receive(timeout=0)
        assert issubclass(NothingReceived, AssertionError) and issubclass(NothingReceived, TimeoutError)
        ws.send_text("still open")
        assert ws.receive() == "still open"


@pytest.mark.django_db
def test_receive_names_a_push_held_by_the_tests_transaction():
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        assert push("lobby", "held") is None
        with pytest.raises(
            NothingReceived, match=r"1 on_commit callback\(s\) wait for the test's transaction"
        ):
            ws.receive(timeout=0)


def test_receive_after_the_close_raises_connection_closed_with_the_code():
    with WebSocketCommunicator("/ws/closing/") as ws:
        ws.connect()
        ws.send_text("before")
        ws.send_text("4001")
        assert ws.receive() == "before"
        with pytest.raises(ConnectionClosed) as info:
            ws.receive()
        assert info.value.code == 4001
        with pytest.raises(ConnectionClosed):
            ws.send_text("too late")


def test_receiving_the_wrong_kind_of_message_fails():
    with WebSocketCommunicator("/ws/echo/") as ws:
        ws.connect()
        ws.send_bytes(b"binary")
        with pytest.raises(AssertionError, match="expected a text message, got 6 bytes"):
            ws.receive_text()
        ws.send_text("text")
        with pytest.raises(AssertionError, match="expected a binary message, got text 'text'"):
            ws.receive_bytes()


def test_receiving_after_a_refusal_says_it_was_refused():
    with WebSocketCommunicator("/ws/login/") as ws:
        ws.connect()
        with pytest.raises(AssertionError, match="refused with 403"):
            ws.receive()


def test_assert_closed_fails_while_open_on_another_code_and_with_unread_messages():
    with WebSocketCommunicator("/ws/closing/") as ws:
        ws.connect()
        with pytest.raises(
            AssertionError, match="expected the connection to close with 4000, it is still open"
        ):
            ws.assert_closed(4000)
        ws.send_text("unread")
        ws.send_text("4000")
        with pytest.raises(AssertionError, match="closed with 4000 'asked to', expected 1000"):
            ws.assert_closed(1000)
        with pytest.raises(AssertionError, match=r"closed with unread messages: \['unread'\]"):
            ws.assert_closed(4000)


def test_a_message_over_max_message_size_closes_with_1009():
    with WebSocketCommunicator("/ws/small/") as ws:
        ws.connect()
        ws.send_text("x" * 16)
        assert ws.receive() == "x" * 16
        ws.send_text("x" * 17)
        ws.assert_closed(1009)
    assert disconnects() == [("EchoConsumer", 1009)]


def test_json_consumer_closes_invalid_json_with_1007_and_binary_with_1003():
    with WebSocketCommunicator("/ws/json/") as ws:
        ws.connect()
        ws.send_text("{nope")
        ws.assert_closed(1007)
    with WebSocketCommunicator("/ws/json/") as ws:
        ws.connect()
        ws.send_bytes(b"{}")
        ws.assert_closed(1003)


def test_abort_is_a_dropped_connection_1006():
    with WebSocketCommunicator("/ws/echo/") as ws:
        ws.connect()
        ws.abort()
        assert ws.closed
    assert disconnects() == [("EchoConsumer", 1006)]


def test_messages_after_the_consumer_closed_are_not_delivered_and_disconnect_is_not_repeated():
    with WebSocketCommunicator("/ws/closing/") as ws:
        ws.connect()
        ws.send_text("4002")
        assert not ws.consumer.connection.is_open
        with pytest.raises(ConnectionClosed):
            ws.send_text("after")
        ws.disconnect()
    assert [entry[0] for entry in journal.entries()] == []  # ClosingConsumer records nothing
    assert ws.close_code == 4002


# ------------------------------------------------------------- groups and events


def test_events_are_handled_at_the_next_receive_or_flush_in_the_callers_thread():
    with WebSocketCommunicator("/ws/lang/") as ws:
        ws.connect()
        ws.send_text("get")
        assert json.loads(ws.receive())["thread"] == threading.current_thread().name


def test_flush_handles_pending_events_without_reading():
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        push("lobby", event={"type": "chat.message", "text": "queued"}, immediate=True)
        assert ws.consumer.connection._inbox  # queued, not yet handled
        ws.flush()
        assert not ws.consumer.connection._inbox
        assert ws.receive() == "queued"


def test_call_soon_runs_after_the_current_handler():
    with WebSocketCommunicator("/ws/call-soon/") as ws:
        ws.connect()
        ws.send_text("go")
        assert [ws.receive(), ws.receive()] == ["now", "later"]


def test_join_and_leave_at_run_time_and_no_membership_outlives_the_communicator():
    backend = get_backend()
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        ws.send_text("join:room.7")
        assert ws.receive() == "joined"
        assert push("room.7", "to room 7", immediate=True) == 1
        assert ws.receive() == "to room 7"
        ws.send_text("leave:room.7")
        assert ws.receive() == "left"
        assert push("room.7", "nobody", immediate=True) == 0
        server = ws.connection.server
        assert server in backend.servers
    assert backend.members("lobby") == []
    assert server not in backend.servers


def test_a_refused_event_type_is_logged_and_the_connection_stays_open(caplog):
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        with caplog.at_level(logging.ERROR, logger="django_rawws.consumers"):
            push("lobby", event={"type": "close"}, immediate=True)
            push("lobby", event={"type": "chat.message", "text": "after"}, immediate=True)
            assert ws.receive() == "after"
    assert "refusing group event type 'close'" in caplog.text


def test_an_exception_in_an_event_handler_closes_with_1011(caplog):
    with WebSocketCommunicator("/ws/fail/") as ws:
        ws.connect()
        push(f"conn:{ws.connection.id}", event={"type": "explode"}, immediate=True)
        ws.assert_closed(1011)
    assert disconnects() == [("FailingConsumer", 1011)]
    assert "boom from an event" in caplog.text


def test_a_push_from_another_thread_wakes_a_waiting_receive():
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        pusher = threading.Thread(target=push, args=("lobby", "from a thread"), kwargs={"immediate": True})
        pusher.start()
        try:
            assert ws.receive(timeout=5) == "from a thread"
        finally:
            pusher.join(5)


def test_too_many_pending_events_close_with_1008(settings):
    settings.RAWWS = {**RAWWS, "MAX_PENDING_EVENTS": 2}
    with WebSocketCommunicator("/ws/group/") as ws:
        ws.connect()
        sent = [
            push("lobby", event={"type": "chat.message", "text": str(n)}, immediate=True) for n in range(3)
        ]
        assert sent == [1, 1, 0]
        ws.assert_closed(1008)


# ------------------------------------------------------------------ on_commit


@pytest.mark.django_db
def test_run_on_commit_false_leaves_a_handlers_callbacks_to_capture(django_capture_on_commit_callbacks):
    with (
        WebSocketCommunicator("/ws/room/", run_on_commit=False) as alice,
        WebSocketCommunicator("/ws/room/") as bob,
    ):
        alice.connect()
        bob.connect()
        with django_capture_on_commit_callbacks() as callbacks:
            alice.send_json({"name": "alice"})
        assert alice.receive_json() == {"created": "alice", "push_returned": None}
        assert bob.receive_nothing()
        assert len(callbacks) == 1
        callbacks[0]()
        assert bob.receive_json() == {"joined": "alice"}


@pytest.mark.django_db
def test_capture_around_a_send_does_not_run_a_handlers_callbacks_twice(django_capture_on_commit_callbacks):
    with WebSocketCommunicator("/ws/notify/") as ws:
        ws.connect()
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            ws.send_text("once")
        assert callbacks == []
        assert [ws.receive(), ws.receive()] == ["registered", "committed once"]
        assert ws.receive_nothing()


@pytest.mark.django_db
def test_a_failing_callback_raises_unless_robust(caplog):
    with WebSocketCommunicator("/ws/notify/") as ws:
        ws.connect()
        with pytest.raises(RuntimeError, match="callback failed"):
            ws.send_text("non-robust")
    with WebSocketCommunicator("/ws/robust-failure/") as ws:
        ws.connect()
        ws.send_text("go")
        assert ws.receive() == "registered"
    assert "robust callback failed" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_in_a_transactional_test_a_consumers_push_goes_out_at_once():
    with WebSocketCommunicator("/ws/room/") as alice, WebSocketCommunicator("/ws/room/") as bob:
        alice.connect()
        bob.connect()
        alice.send_json({"name": "alice"})
        assert alice.receive_json() == {"created": "alice", "push_returned": 1}
        assert bob.receive_json() == {"joined": "alice"}
    assert get_user_model().objects.filter(username="alice").exists()


@pytest.fixture
def atomic_requests():
    settings_dict = connections["default"].settings_dict
    saved = settings_dict["ATOMIC_REQUESTS"]
    settings_dict["ATOMIC_REQUESTS"] = True
    yield
    settings_dict["ATOMIC_REQUESTS"] = saved


@pytest.mark.django_db
def test_with_atomic_requests_a_failing_handler_rolls_back_its_savepoint_only(atomic_requests, caplog):
    with WebSocketCommunicator("/ws/atomic/") as ws:
        ws.connect()
        ws.send_text("probe")
        assert ws.receive_json() == {"in_atomic_block": True}
        ws.send_text("create:kept")
        assert ws.receive() == "created"
        ws.send_text("create:fail-1")
        ws.assert_closed(1011)
    assert list(get_user_model().objects.values_list("username", flat=True)) == ["kept"]
    assert not connection.needs_rollback
    assert "rolled back" in caplog.text


# ------------------------------------------------------------ the connection API


def test_the_in_process_connection_has_the_server_connection_surface_the_django_side_uses():
    from django_rawws.server import ServerConnection

    surface = {
        "accept", "reject", "send", "send_shared", "close", "fail", "deliver_event", "call_soon",
        "buffered_amount", "is_open", "path",
    }  # fmt: skip
    for name in surface:
        assert hasattr(ServerConnection, name), name
        assert hasattr(InProcessConnection, name), name
        if callable(getattr(ServerConnection, name)):
            server_params = list(inspect.signature(getattr(ServerConnection, name)).parameters)
            assert list(inspect.signature(getattr(InProcessConnection, name)).parameters) == server_params
    with WebSocketCommunicator("/ws/echo/") as ws:
        ws.connect()
        conn = ws.connection
        assert set(vars(conn)) >= {"id", "remote_address", "handshake", "request", "subprotocol", "app_state"}
        assert conn.buffered_amount == 0
        assert conn.handshake.headers.get("Host") == "testserver"
        assert re.fullmatch(r"test-[0-9a-f]{8}\.[0-9a-f]+", conn.id)


# ------------------------------------------------- the docs' examples, collected as tests


@override_settings(RAWWS=RAWWS)  # the docs' project sets RAWWS["URLCONF"]; ours routes their paths too
class TestDocsProfileTests(DOCS_EXAMPLES["profiles.tests"].ProfileTests):
    """The ``TestCase`` of docs/testing.md, run as written."""


# The pytest-django examples of docs/testing.md, collected as written (marks and fixtures included).
for _name, _function in vars(DOCS_EXAMPLES["profiles.test_profile"]).items():
    if _name.startswith("test_") and inspect.isfunction(_function):
        globals()[f"test_docs_{_name[5:]}"] = _function


def test_every_tested_block_of_the_docs_is_collected():
    assert list(DOCS_EXAMPLES) == [
        "profiles.consumers",
        "profiles.wsurls",
        "profiles.tests",
        "profiles.test_profile",
    ]
    cases = unittest.defaultTestLoader.getTestCaseNames(TestDocsProfileTests)
    assert len(cases) == 4
    collected = [name for name in globals() if name.startswith("test_docs_")]
    assert collected == ["test_docs_the_name_is_saved", "test_docs_a_push_reaches_the_user"]
