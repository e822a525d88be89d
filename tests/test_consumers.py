"""django_rawws.consumers: the consumer API, unit by unit, then as a client sees it."""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import uuid

import pytest
import websocket
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.exceptions import PermissionDenied
from django.test import override_settings
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect

from django_rawws.groups import session_group
from django_rawws import consumers
from django_rawws.consumers import JsonWebSocketConsumer, WebSocketConsumer, automatic_groups, handshake_error
from django_rawws.exceptions import (
    BadRequest,
    Forbidden,
    HandshakeError,
    InvalidState,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from django_rawws.groups import get_backend
from django_rawws.handler import _attach_session_and_user
from django_rawws.protocol.deflate import DeflateOptions
from django_rawws.testing import WebSocketCommunicator
from tests.utils_server import TIMEOUT, make_request, origin_of, raw_handshake, running_server, ws_url
from tests.wsconsumers import journal


@pytest.fixture(autouse=True)
def _clear_journal():
    journal.clear()


def bound(consumer_class, target="/ws/x/", headers=None, **initkwargs):
    """A consumer wired to a FakeConnection and a real request, as the handler wires it."""
    conn, request = make_request(target, headers)
    _attach_session_and_user(request)
    consumer = consumer_class(**initkwargs)
    consumer.connection = conn
    consumer.request = request
    return consumer


class Echo(WebSocketConsumer):
    def receive(self, text=None, bytes=None):
        self.send(text=text, bytes=bytes)


class TestClassCreation:
    @pytest.mark.parametrize("name", ["connect", "receive", "disconnect", "chat_message"])
    def test_an_async_handler_is_refused_when_the_class_is_created(self, name):
        namespace = {}
        exec(f"async def {name}(self, *args, **kwargs): pass", namespace)
        with pytest.raises(TypeError, match=rf"tests\.test_consumers\.Bad\.{name} is 'async def'"):
            type("Bad", (WebSocketConsumer,), {name: namespace[name], "__module__": __name__})

    def test_an_async_receive_json_is_refused(self):
        with pytest.raises(TypeError, match="receive_json is 'async def'"):

            class Bad(JsonWebSocketConsumer):
                async def receive_json(self, content):
                    pass

    def test_a_private_async_helper_is_allowed(self):
        class Fine(WebSocketConsumer):
            async def _helper(self):
                pass

        assert Fine.__name__ == "Fine"


class TestAsConsumer:
    def test_the_factory_carries_the_class_and_initkwargs(self):
        factory = Echo.as_consumer(max_message_size=10, compression=False)
        assert factory.consumer_class is Echo
        assert factory.consumer_initkwargs == {"max_message_size": 10, "compression": False}
        assert factory.__name__ == "Echo"

    def test_the_factory_builds_a_fresh_instance_with_the_initkwargs(self):
        factory = Echo.as_consumer(max_message_size=10)
        first, second = factory(), factory()
        assert first is not second
        assert first.max_message_size == 10
        assert Echo.max_message_size is None

    def test_an_unknown_keyword_is_a_type_error(self):
        with pytest.raises(TypeError, match="invalid keyword 'max_size'"):
            Echo.as_consumer(max_size=10)

    def test_a_method_name_is_a_type_error(self):
        with pytest.raises(TypeError, match="'receive' is a method"):
            Echo.as_consumer(receive=None)

    def test_a_private_name_is_a_type_error(self):
        with pytest.raises(TypeError, match="invalid keyword '_accepted'"):
            Echo.as_consumer(_accepted=True)


class TestAccept:
    def test_connect_accepts_by_default(self):
        consumer = bound(Echo)
        consumer.connect()
        assert consumer.accepted
        assert consumer.connection.accepted == {
            "subprotocol": None,
            "headers": [],
            "deflate": None,
            "max_message_size": None,
        }

    def test_an_offered_subprotocol_is_accepted(self):
        consumer = bound(Echo, headers=[("Sec-WebSocket-Protocol", "v1, chat.v2")])
        assert consumer.subprotocols == ["v1", "chat.v2"]
        consumer.accept("chat.v2")
        assert consumer.connection.accepted["subprotocol"] == "chat.v2"
        assert consumer.subprotocol == "chat.v2"

    def test_a_subprotocol_the_client_did_not_offer_raises(self):
        consumer = bound(Echo, headers=[("Sec-WebSocket-Protocol", "v1")])
        with pytest.raises(
            InvalidState, match=r"cannot accept subprotocol 'v2': the client offered \['v1'\]"
        ):
            consumer.accept("v2")
        assert consumer.connection.accepted is None
        assert not consumer.accepted

    def test_extra_headers_are_passed_as_pairs(self):
        consumer = bound(Echo)
        consumer.accept(headers={"X-Server": "rawws"})
        assert consumer.connection.accepted["headers"] == [("X-Server", "rawws")]

    def test_per_class_limits_reach_the_connection(self):
        consumer = bound(Echo, max_message_size=2048, compression=False)
        consumer.accept()
        assert consumer.connection.accepted["max_message_size"] == 2048
        assert consumer.connection.accepted["deflate"] == DeflateOptions(enabled=False)

    def test_compression_true_forces_the_servers_options_on(self):
        with override_settings(
            RAWWS={"URLCONF": "tests.wsurls", "COMPRESSION": False, "COMPRESSION_LEVEL": 3}
        ):
            consumer = bound(Echo, compression=True)
            consumer.accept()
        assert consumer.connection.accepted["deflate"] == DeflateOptions(enabled=True, compress_level=3)

    def test_compression_may_be_explicit_deflate_options(self):
        options = DeflateOptions(server_max_window_bits=9)
        consumer = bound(Echo, compression=options)
        consumer.accept()
        assert consumer.connection.accepted["deflate"] is options

    def test_accept_joins_the_class_groups_and_the_connection_group(self):
        consumer = bound(Echo, groups=("lobby", "news"))
        consumer.accept()
        try:
            assert get_backend().groups_of(consumer.connection) == {"conn:c1", "lobby", "news"}
        finally:
            get_backend().discard_all(consumer.connection)


class TestRejectAndClose:
    @pytest.mark.parametrize(
        ("status", "error_class"),
        [
            (400, BadRequest),
            (403, Forbidden),
            (404, NotFound),
            (429, TooManyRequests),
            (503, ServiceUnavailable),
        ],
    )
    def test_reject_answers_with_the_exception_for_the_status(self, status, error_class):
        consumer = bound(Echo)
        consumer.reject(status, "no")
        error = consumer.connection.rejected
        assert type(error) is error_class
        assert (error.status_code, error.reason) == (status, "no")

    def test_reject_defaults_to_403(self):
        consumer = bound(Echo)
        consumer.reject()
        assert consumer.connection.rejected.status_code == 403

    def test_any_other_error_status_is_a_handshake_error_with_that_status(self):
        error = handshake_error(401, "who are you?")
        assert type(error) is HandshakeError
        assert (error.status_code, error.reason) == (401, "who are you?")

    def test_a_status_that_is_not_an_error_is_refused(self):
        with pytest.raises(ValueError, match="4xx or 5xx"):
            handshake_error(200)

    def test_reject_after_accept_is_invalid(self):
        consumer = bound(Echo)
        consumer.accept()
        with pytest.raises(InvalidState, match="use close"):
            consumer.reject()
        get_backend().discard_all(consumer.connection)

    def test_close_passes_code_and_reason(self):
        consumer = bound(Echo)
        consumer.close(4000, "bye")
        assert consumer.connection.closed == (4000, "bye")


class TestSend:
    def test_text_and_bytes_are_sent_as_given(self):
        consumer = bound(Echo)
        consumer.connection.is_open = True
        assert consumer.send(text="hé") is True
        assert consumer.send(bytes=b"\x00") is True
        assert consumer.connection.sent == ["hé", b"\x00"]

    def test_send_on_a_closed_connection_returns_false(self):
        consumer = bound(Echo)
        assert consumer.send(text="late") is False

    @pytest.mark.parametrize("kwargs", [{}, {"text": "a", "bytes": b"a"}])
    def test_send_needs_exactly_one_of_text_and_bytes(self, kwargs):
        with pytest.raises(ValueError, match="exactly one"):
            bound(Echo).send(**kwargs)

    def test_buffered_amount_and_id_come_from_the_connection(self):
        consumer = bound(Echo)
        consumer.connection.buffered_amount = 123
        assert consumer.buffered_amount == 123
        assert consumer.id == "c1"


class Events(WebSocketConsumer):
    def chat_message(self, event):
        return event


class TestEventHandlers:
    def test_a_dotted_type_dispatches_to_the_underscored_method(self):
        consumer = bound(Events)
        handler = consumer.get_event_handler({"type": "chat.message", "text": "hi"})
        assert handler == consumer.chat_message

    @pytest.mark.parametrize(
        ("event", "logged"),
        [
            ({"type": "_private"}, "refusing a group event: event type '_private' maps to '_private'"),
            ({"type": "._accepted"}, "handler names starting with '_' are refused"),
            ({"type": "close"}, "refusing group event type 'close': it names the consumer's own API"),
            ({"type": "send"}, "refusing group event type 'send'"),
            ({"type": "receive.json"}, "refusing group event type 'receive.json'"),
            ({"type": "request"}, "refusing group event type 'request'"),
            ({"type": "chat.missing"}, "no handler for group event type 'chat.missing'"),
            ({"text": "no type"}, "refusing a group event"),
            ({"type": 3}, "refusing a group event"),
            ("not a dict", "refusing a group event"),
        ],
    )
    def test_refused_events_are_logged_not_raised(self, event, logged, caplog):
        consumer = bound(Events)
        with caplog.at_level(logging.ERROR, logger="django_rawws.consumers"):
            assert consumer.get_event_handler(event) is None
        assert logged in caplog.text


class TestAccessRules:
    def test_login_required_refuses_an_anonymous_user(self):
        consumer = bound(Echo, login_required=True)
        consumer.request.user = AnonymousUser()
        with pytest.raises(PermissionDenied, match="login required"):
            consumer.check_access()

    def test_without_rules_the_user_is_not_even_evaluated(self):
        consumer = bound(Echo)
        consumer.check_access()
        assert "_cached_user" not in consumer.request.__dict__

    def test_permission_required_checks_every_permission(self):
        class User:
            is_authenticated = True

            def has_perms(self, perms):
                self.asked = perms
                return perms == ("app.a",)

        user = User()
        consumer = bound(Echo, permission_required="app.a")
        consumer.request.user = user
        consumer.check_access()
        assert user.asked == ("app.a",)
        consumer = bound(Echo, permission_required=["app.a", "app.b"])
        consumer.request.user = user
        with pytest.raises(PermissionDenied):
            consumer.check_access()

    def test_rules_without_the_auth_app_refuse(self):
        consumer = bound(Echo, login_required=True)
        del consumer.request.user
        with pytest.raises(PermissionDenied, match="need django.contrib.auth"):
            consumer.check_access()


class TestJson:
    def test_a_json_text_message_reaches_receive_json_decoded(self):
        received = []

        class Api(JsonWebSocketConsumer):
            def receive_json(self, content):
                received.append(content)

        consumer = bound(Api)
        consumer.receive(text='{"a": [1, 2]}')
        assert received == [{"a": [1, 2]}]

    def test_invalid_json_closes_with_1007(self):
        consumer = bound(JsonWebSocketConsumer)
        consumer.receive(text="{nope")
        assert consumer.connection.closed == (1007, "invalid JSON")

    def test_json_nested_past_the_stack_is_invalid_not_an_internal_error(self):
        consumer = bound(JsonWebSocketConsumer)
        consumer.receive(text="[" * 200_000)
        assert consumer.connection.closed == (1007, "invalid JSON")

    def test_a_binary_message_closes_with_1003(self):
        consumer = bound(JsonWebSocketConsumer)
        consumer.receive(bytes=b"{}")
        assert consumer.connection.closed == (1003, "binary messages are not accepted")

    def test_send_json_is_compact_and_knows_django_types(self):
        consumer = bound(JsonWebSocketConsumer)
        consumer.connection.is_open = True
        moment = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
        consumer.send_json({"at": moment, "price": decimal.Decimal("1.50"), "id": uuid.UUID(int=1)})
        assert consumer.connection.sent == [
            '{"at":"2024-05-01T12:30:00Z","price":"1.50","id":"00000000-0000-0000-0000-000000000001"}'
        ]

    def test_the_codec_is_overridable_with_classmethods(self):
        class Upper(JsonWebSocketConsumer):
            @classmethod
            def decode_json(cls, text):
                return json.loads(text.lower())

            @classmethod
            def encode_json(cls, content):
                return json.dumps(content).upper()

            def receive_json(self, content):
                self.send_json(content)

        consumer = bound(Upper)
        consumer.connection.is_open = True
        consumer.receive(text='{"A": "B"}')
        assert consumer.connection.sent == ['{"A": "B"}']


class TestAutomaticGroups:
    def test_without_a_session_cookie_only_the_connection_group(self):
        consumer = bound(Echo)
        assert automatic_groups(consumer) == ["conn:c1"]

    @pytest.mark.django_db
    @override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
    def test_a_live_session_adds_session_and_user_groups_for_the_user_it_authenticates(self):
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
        from django.contrib.sessions.backends.cache import SessionStore

        user = get_user_model().objects.create_user("ada")
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.save()
        consumer = bound(Echo, headers=[("Cookie", f"sessionid={session.session_key}")])
        assert automatic_groups(consumer) == ["conn:c1", session_group(session.session_key), f"user:{user.pk}"]
        assert consumer.request.user == user  # the user verified for the group: no second query

    @override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
    def test_a_live_session_that_would_not_authenticate_gives_no_user_group(self):
        from django.contrib.auth import SESSION_KEY
        from django.contrib.sessions.backends.cache import SessionStore

        session = SessionStore()
        session[SESSION_KEY] = "42"  # no backend, no hash: get_user() would say anonymous
        session.save()
        consumer = bound(Echo, headers=[("Cookie", f"sessionid={session.session_key}")])
        assert automatic_groups(consumer) == ["conn:c1", session_group(session.session_key)]
        assert consumer.request.user.is_authenticated is False

    @override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache")
    def test_a_cookie_naming_no_live_session_adds_nothing(self):
        consumer = bound(Echo, headers=[("Cookie", "sessionid=abcdefghijklmnopqrstuvwxyz012345")])
        assert automatic_groups(consumer) == ["conn:c1"]

    def test_an_evaluated_user_gives_the_user_group(self):
        class User:
            is_authenticated = True
            pk = 7

        consumer = bound(Echo)
        consumer.request.user = User()
        assert automatic_groups(consumer) == ["conn:c1", "user:7"]


def test_scope_summarises_the_request_channels_style():
    consumer = bound(Echo, target="/ws/x/?a=1", headers=[("Sec-WebSocket-Protocol", "p")])
    consumer.kwargs = {"room": 1}
    scope = consumer.scope
    assert scope["type"] == "websocket"
    assert scope["path"] == "/ws/x/"
    assert scope["query_string"] == b"a=1"
    assert scope["subprotocols"] == ["p"]
    assert scope["client"] == ("127.0.0.1", "50000")
    assert scope["url_route"] == {"args": (), "kwargs": {"room": 1}}
    assert scope["headers"]["Host"] == "testserver"
    assert scope["user"] is consumer.request.user


def test_reserved_names_cover_the_whole_api():
    for name in ("accept", "send", "close", "join", "leave", "receive_json", "send_json", "dispatch_event"):
        if hasattr(JsonWebSocketConsumer, name):
            assert name in consumers._RESERVED_NAMES


# ------------------------------------------------------------- over sockets


class TestSubprotocolsOverSockets:
    def test_an_offered_subprotocol_is_negotiated(self):
        with (
            running_server() as server,
            connect(ws_url(server, "/ws/subprotocol/"), subprotocols=["v1", "chat.v2"]) as ws,
        ):
            assert ws.subprotocol == "chat.v2"
            ws.send("which?")
            assert ws.recv(timeout=TIMEOUT) == "chat.v2"

    def test_websocket_client_sees_the_same_negotiation(self):
        with running_server() as server:
            ws = websocket.create_connection(
                ws_url(server, "/ws/subprotocol/"), subprotocols=["chat.v2"], timeout=TIMEOUT
            )
            try:
                assert ws.getsubprotocol() == "chat.v2"
            finally:
                ws.close()
                ws.shutdown()

    def test_a_consumer_can_refuse_when_its_subprotocol_is_missing(self):
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/subprotocol/", [("Sec-WebSocket-Protocol", "v1")])
        assert (status, body) == (400, b"this endpoint speaks chat.v2\n")

    def test_accepting_a_subprotocol_not_offered_is_a_500(self, caplog):
        with running_server() as server:
            status, _, _ = raw_handshake(
                server, "/ws/subprotocol/?force=v9", [("Sec-WebSocket-Protocol", "v1")]
            )
        assert status == 500
        assert "cannot accept subprotocol 'v9'" in caplog.text


class TestAccessOverSockets:
    def test_login_required_refuses_anonymous_with_403(self):
        with running_server() as server:
            status, _, _ = raw_handshake(server, "/ws/login/")
        assert status == 403

    # In process (the test's transaction, no sockets): a logged-in user is a real session either way.
    @pytest.mark.django_db
    def test_login_required_accepts_a_logged_in_user(self):
        user = get_user_model().objects.create_user("ada", password="x")
        with WebSocketCommunicator("/ws/login/", user=user) as ws:
            assert ws.connect() == (True, None)
            assert ws.receive_json() == {"authenticated": True, "username": "ada"}

    @pytest.mark.django_db
    def test_permission_required_refuses_a_user_without_it(self):
        user = get_user_model().objects.create_user("bob", password="x")
        with WebSocketCommunicator("/ws/perm/", user=user) as ws:
            assert ws.connect() == (False, 403)
        user.user_permissions.add(Permission.objects.get(codename="view_user"))
        with WebSocketCommunicator("/ws/perm/", user=user) as ws:
            assert ws.connect() == (True, None)
            assert ws.receive_json()["username"] == "bob"

    def test_permission_denied_in_connect_is_403_and_disconnect_still_runs_once(self):
        with running_server() as server:
            status, _, _ = raw_handshake(server, "/ws/denied/")
        assert status == 403
        assert journal.entries("disconnect") == [("disconnect", "DeniedConsumer", 1006)]

    @pytest.mark.parametrize("status", [401, 429, 451])
    def test_reject_sends_the_status_and_reason(self, status):
        with running_server() as server:
            answer, headers, body = raw_handshake(server, f"/ws/reject/{status}/")
        assert (answer, body) == (status, f"refused with {status}\n".encode())
        if status == 429:
            assert headers["retry-after"] == "5"


class TestJsonOverSockets:
    def test_json_round_trip(self):
        with running_server() as server, connect(ws_url(server, "/ws/json/")) as ws:
            ws.send('{"n": 1}')
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"echo": {"n": 1}}

    def test_invalid_json_closes_with_1007(self):
        with running_server() as server, connect(ws_url(server, "/ws/json/")) as ws:
            ws.send("{not json")
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 1007
        assert journal.entries("disconnect") == [("disconnect", "EchoJsonConsumer", 1007)]

    def test_a_binary_message_closes_with_1003(self):
        with running_server() as server:
            ws = websocket.create_connection(ws_url(server, "/ws/json/"), timeout=TIMEOUT)
            try:
                ws.send_binary(b"{}")
                opcode, frame = ws.recv_data_frame(True)
            finally:
                ws.shutdown()
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1003


class TestPerClassOptionsOverSockets:
    def test_compression_false_declines_permessage_deflate_for_that_route_only(self):
        with running_server() as server:
            with connect(ws_url(server, "/ws/echo/")) as ws:
                assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            with connect(ws_url(server, "/ws/nodeflate/")) as ws:
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
                ws.send("still works")
                assert ws.recv(timeout=TIMEOUT) == "still works"

    def test_max_message_size_closes_a_bigger_message_with_1009(self):
        with running_server() as server, connect(ws_url(server, "/ws/small/"), compression=None) as ws:
            ws.send("x" * 16)
            assert ws.recv(timeout=TIMEOUT) == "x" * 16
            ws.send("x" * 17)
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 1009


class TestGroupsOverSockets:
    def test_class_groups_are_joined_at_accept_and_events_reach_their_handler(self):
        with (
            running_server() as server,
            connect(ws_url(server, "/ws/group/")) as first,
            connect(ws_url(server, "/ws/group/")) as second,
        ):
            second.send("groups")  # a round trip: connect() has returned, the groups are joined
            second.recv(timeout=TIMEOUT)
            first.send("groups")
            groups = json.loads(first.recv(timeout=TIMEOUT))
            assert "lobby" in groups
            [sender] = [group.removeprefix("conn:") for group in groups if group.startswith("conn:")]
            assert (
                get_backend().send_event("lobby", {"type": "chat.message", "text": "hi all"}, exclude=sender)
                == 1
            )
            assert second.recv(timeout=TIMEOUT) == "hi all"
            first.send("groups")
            assert json.loads(first.recv(timeout=TIMEOUT)) == groups  # nothing arrived before
        assert get_backend().members("lobby") == []

    def test_join_and_leave_at_run_time(self):
        with running_server() as server, connect(ws_url(server, "/ws/group/")) as ws:
            ws.send("join:room.7")
            assert ws.recv(timeout=TIMEOUT) == "joined"
            assert get_backend().send_raw("room.7", "raw to room 7") == 1
            assert ws.recv(timeout=TIMEOUT) == "raw to room 7"
            ws.send("leave:room.7")
            assert ws.recv(timeout=TIMEOUT) == "left"
            assert get_backend().send_raw("room.7", "nobody") == 0

    def test_a_refused_event_type_is_logged_and_the_connection_stays_open(self, caplog):
        with running_server() as server, connect(ws_url(server, "/ws/group/")) as ws:
            ws.send("groups")  # a round trip: connect() has returned, the groups are joined
            ws.recv(timeout=TIMEOUT)
            with caplog.at_level(logging.ERROR, logger="django_rawws.consumers"):
                get_backend().send_event("lobby", {"type": "close"})
                get_backend().send_event("lobby", {"type": "chat.message", "text": "after"})
                assert ws.recv(timeout=TIMEOUT) == "after"
        assert "refusing group event type 'close'" in caplog.text

    def test_origin_header_from_the_same_page_is_accepted(self):
        with running_server() as server, connect(ws_url(server, "/ws/echo/"), origin=origin_of(server)) as ws:
            ws.send("ok")
            assert ws.recv(timeout=TIMEOUT) == "ok"

    def test_handshake_failures_raise_invalid_status_in_websockets(self):
        with running_server() as server, pytest.raises(InvalidStatus) as info:
            connect(ws_url(server, "/ws/login/"))
        assert info.value.response.status_code == 403
