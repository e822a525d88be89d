"""django_rawws.handler: from a handshake to consumer calls, wrapped like Django requests."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import websocket
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.signals import got_request_exception
from django.db import connections
from django.test import override_settings
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect

from django_rawws.groups import session_group
from django_rawws import handler
from django_rawws.exceptions import Forbidden
from django_rawws.handler import (
    DjangoApplication,
    SlowCallWatchdog,
    build_environ,
    check_origin,
    client_address,
    origin_allowed,
)
from tests import wsconsumers
from tests.utils_server import (
    TIMEOUT,
    FakeConnection,
    make_handshake,
    make_request,
    origin_of,
    raw_handshake,
    running_server,
    ws_url,
)
from tests.wsconsumers import journal

GOOD = {"URLCONF": "tests.wsurls"}


def rawws(**options):
    return override_settings(RAWWS={**GOOD, **options})


@pytest.fixture(autouse=True)
def _clear_journal():
    journal.clear()
    wsconsumers.release_slow.clear()
    yield
    wsconsumers.release_slow.set()


# ------------------------------------------------------------------ environ


class TestEnviron:
    def environ(self, target="/ws/echo/", headers=None, **kwargs):
        conn = FakeConnection(make_handshake(target, headers, kwargs.pop("host", "testserver")), **kwargs)
        return build_environ(conn, conn.handshake)

    def test_the_wsgi_keys_describe_the_handshake(self):
        environ = self.environ("/ws/echo/?a=1&b=%20", remote_address=("10.1.2.3", 4567))
        assert environ["REQUEST_METHOD"] == "GET"
        assert environ["SCRIPT_NAME"] == ""
        assert environ["PATH_INFO"] == "/ws/echo/"
        assert environ["QUERY_STRING"] == "a=1&b=%20"
        assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.1.2.3", "4567")
        assert environ["wsgi.url_scheme"] == "http"
        assert environ["wsgi.input"].read() == b""
        assert environ["HTTP_HOST"] == "testserver"
        assert environ["HTTP_SEC_WEBSOCKET_VERSION"] == "13"

    def test_path_info_is_percent_decoded_to_latin1_as_wsgi_says(self):
        assert self.environ("/ws/caf%C3%A9/")["PATH_INFO"] == "/ws/caf\xc3\xa9/"

    def test_content_length_is_absent_and_content_type_has_no_http_prefix(self):
        environ = self.environ(headers=[("Content-Length", "0"), ("Content-Type", "text/plain")])
        assert "CONTENT_LENGTH" not in environ
        assert "HTTP_CONTENT_LENGTH" not in environ
        assert environ["CONTENT_TYPE"] == "text/plain"

    def test_header_names_with_underscores_are_dropped_like_runserver_does(self):
        environ = self.environ(headers=[("X_Forwarded_For", "6.6.6.6"), ("X-Real", "yes")])
        assert "HTTP_X_FORWARDED_FOR" not in environ
        assert environ["HTTP_X_REAL"] == "yes"

    def test_repeated_headers_are_joined_and_cookies_with_a_semicolon(self):
        environ = self.environ(
            headers=[("Cookie", "a=1"), ("Cookie", "b=2"), ("X-List", "1"), ("X-List", "2")]
        )
        assert environ["HTTP_COOKIE"] == "a=1; b=2"
        assert environ["HTTP_X_LIST"] == "1,2"

    def test_the_request_behaves_as_in_a_view(self):
        _, request = make_request(
            "/ws/echo/?x=1&x=2", [("Cookie", "k=v"), ("X-Custom", "é".encode().decode("latin-1"))]
        )
        assert request.path == "/ws/echo/"
        assert request.GET.getlist("x") == ["1", "2"]
        assert request.COOKIES == {"k": "v"}
        assert request.headers["X-Custom"] == "é".encode().decode("latin-1")
        assert request.get_host() == "testserver"
        assert request.is_secure() is False
        assert request.build_absolute_uri() == "http://testserver/ws/echo/?x=1&x=2"
        assert request.method == "GET"

    def test_force_script_name_prefixes_request_path_once(self):
        with override_settings(FORCE_SCRIPT_NAME="/app"):
            _, request = make_request("/app/ws/echo/")
            assert (request.path, request.path_info) == ("/app/ws/echo/", "/ws/echo/")


class TestClientAddress:
    networks = [
        __import__("ipaddress").ip_network("10.0.0.0/8"),
        __import__("ipaddress").ip_network("fd00::/8"),
    ]

    def test_an_untrusted_peer_keeps_its_own_address(self):
        assert client_address("203.0.113.9", "1.2.3.4", self.networks) is None

    def test_without_trusted_proxies_nothing_changes(self):
        assert client_address("10.0.0.1", "1.2.3.4", []) is None

    def test_the_rightmost_untrusted_entry_is_the_client(self):
        assert client_address("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7", self.networks) == "1.2.3.4"

    def test_when_every_entry_is_trusted_the_leftmost_is_taken(self):
        assert client_address("10.0.0.1", "10.0.0.9, 10.0.0.7", self.networks) == "10.0.0.9"

    def test_a_garbage_entry_stops_at_the_last_trusted_hop(self):
        assert client_address("10.0.0.1", "1.2.3.4, unknown, 10.0.0.7", self.networks) == "10.0.0.7"
        assert client_address("10.0.0.1", "nonsense", self.networks) is None

    def test_ports_and_brackets_are_stripped_and_ipv6_works(self):
        assert client_address("10.0.0.1", "1.2.3.4:5555", self.networks) == "1.2.3.4"
        assert client_address("fd00::1", "[2001:db8::1]:443, fd00::2", self.networks) == "2001:db8::1"

    def test_an_ipv4_mapped_peer_is_recognised(self):
        assert client_address("::ffff:10.0.0.1", "1.2.3.4", self.networks) == "1.2.3.4"


class TestProxyRules:
    def test_behind_a_trusted_proxy_remote_addr_comes_from_x_forwarded_for(self):
        with rawws(TRUSTED_PROXIES=["10.0.0.0/8"]):
            _, request = make_request(
                headers=[("X-Forwarded-For", "9.9.9.9, 1.2.3.4")], remote_address=("10.0.0.5", 1)
            )
        assert request.META["REMOTE_ADDR"] == "1.2.3.4"

    def test_a_direct_client_cannot_claim_forwarded_headers(self):
        headers = [
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
        ]
        with (
            rawws(TRUSTED_PROXIES=["10.0.0.0/8"]),
            override_settings(
                SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"), USE_X_FORWARDED_HOST=True
            ),
        ):
            _, request = make_request(headers=headers, remote_address=("203.0.113.9", 1))
            assert request.META["REMOTE_ADDR"] == "203.0.113.9"
            assert request.is_secure() is False
            assert request.get_host() == "testserver"

    def test_a_trusted_proxy_sets_scheme_and_host_as_django_reads_them(self):
        headers = [("X-Forwarded-Host", "localhost"), ("X-Forwarded-Proto", "https")]
        with (
            rawws(TRUSTED_PROXIES=["10.0.0.0/8"]),
            override_settings(
                SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"), USE_X_FORWARDED_HOST=True
            ),
        ):
            _, request = make_request(headers=headers, remote_address=("10.0.0.5", 1))
            assert request.is_secure() is True
            assert request.build_absolute_uri() == "https://localhost/ws/echo/"


# ------------------------------------------------------------------- origin


class TestOrigin:
    @pytest.fixture(autouse=True)
    def _any_host(self, settings):
        settings.ALLOWED_HOSTS = ["*"]

    def request(self, host="example.com", **kwargs):
        return make_request(host=host, **kwargs)[1]

    @pytest.mark.parametrize(
        ("origin", "host", "allowed"),
        [
            ("http://example.com", "example.com", True),
            ("HTTP://Example.COM", "example.com", True),
            ("http://example.com:80", "example.com", True),
            ("http://example.com", "example.com:80", True),
            ("http://example.com:8000", "example.com:8000", True),
            ("http://example.com", "example.com:8000", False),
            ("https://example.com", "example.com", False),
            ("http://example.com.evil.net", "example.com", False),
            ("http://evil-example.com", "example.com", False),
            ("http://example.com@evil.net", "example.com", False),
            ("http://evil.net@example.com", "example.com", False),
            ("http://example.com/path", "example.com", False),
            ("http://example.com:99999", "example.com", False),
            ("null", "example.com", False),
            ("NULL", "example.com", False),
            ("", "example.com", False),
            ("example.com", "example.com", False),
        ],
    )
    def test_same_origin_is_compared_by_scheme_host_and_port(self, origin, host, allowed):
        assert origin_allowed(origin, self.request(host)) is allowed

    def test_secure_proxy_ssl_header_makes_https_the_same_origin(self):
        with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
            request = self.request(headers=[("X-Forwarded-Proto", "https")])
            assert origin_allowed("https://example.com", request)
            assert not origin_allowed("http://example.com", request)

    @override_settings(CSRF_TRUSTED_ORIGINS=["https://app.example.net", "https://*.example.org"])
    @pytest.mark.parametrize(
        ("origin", "allowed"),
        [
            ("https://app.example.net", True),
            ("https://app.example.net:443", True),
            ("http://app.example.net", False),
            ("https://example.org", True),
            ("https://a.b.example.org", True),
            ("https://example.org.evil.net", False),
            ("https://badexample.org", False),
            ("http://a.example.org", False),
            ("https://a.example.org:8443", False),
        ],
    )
    def test_csrf_trusted_origins_apply_with_their_wildcards(self, origin, allowed):
        assert origin_allowed(origin, self.request()) is allowed

    def test_the_extra_origins_work_like_csrf_trusted_origins(self):
        assert origin_allowed("https://x.example.io", self.request(), ["https://*.example.io"])

    def test_a_missing_origin_passes_unless_required(self):
        request = self.request()
        check_origin(request)
        with rawws(REQUIRE_ORIGIN=True), pytest.raises(Forbidden, match="an Origin header is required"):
            check_origin(request)

    def test_a_foreign_origin_is_forbidden_unless_the_check_is_off(self):
        request = self.request(headers=[("Origin", "https://evil.net")])
        with pytest.raises(Forbidden, match="origin not allowed") as info:
            check_origin(request)
        assert info.value.status_code == 403
        with rawws(CHECK_ORIGIN=False):
            check_origin(request)

    def test_two_origin_headers_are_forbidden(self):
        request = self.request(headers=[("Origin", "http://example.com"), ("Origin", "http://example.com")])
        with pytest.raises(Forbidden):
            check_origin(request)


class TestOriginOverSockets:
    def test_same_origin_is_accepted(self):
        with running_server() as server, connect(ws_url(server, "/ws/echo/"), origin=origin_of(server)) as ws:
            ws.send("hi")
            assert ws.recv(timeout=TIMEOUT) == "hi"

    def test_a_trusted_origin_is_accepted_by_websocket_client_too(self):
        with override_settings(CSRF_TRUSTED_ORIGINS=["https://app.example.net"]), running_server() as server:
            ws = websocket.create_connection(
                ws_url(server, "/ws/echo/"), origin="https://app.example.net", timeout=TIMEOUT
            )
            try:
                ws.send("hi")
                assert ws.recv() == "hi"
            finally:
                ws.close()
                ws.shutdown()

    @pytest.mark.parametrize(
        "origin", ["null", "http://evil.net", "http://127.0.0.1.evil.net", "https://127.0.0.1"]
    )
    def test_other_origins_get_403(self, origin):
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/echo/", [("Origin", origin)])
        assert (status, body) == (403, b"Forbidden: origin not allowed\n")

    def test_a_look_alike_port_is_another_origin(self):
        with running_server() as server:
            host, port = server.address
            status, _, _ = raw_handshake(server, "/ws/echo/", [("Origin", f"http://{host}:{port + 1}")])
        assert status == 403

    def test_no_origin_is_accepted_unless_required(self):
        with running_server() as server:
            assert raw_handshake(server, "/ws/echo/")[0] == 101
        with rawws(REQUIRE_ORIGIN=True), running_server() as server:
            assert raw_handshake(server, "/ws/echo/")[0] == 403

    def test_origin_is_checked_after_routing_so_an_unknown_path_is_404(self):
        with running_server() as server:
            assert raw_handshake(server, "/ws/none/", [("Origin", "null")])[0] == 404


class TestHostAndProxyOverSockets:
    def test_a_host_outside_allowed_hosts_gets_400(self, caplog):
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/echo/", host="evil.example")
        assert (status, body) == (400, b"Bad Request: invalid Host header\n")
        assert "Invalid HTTP_HOST header: 'evil.example'" in caplog.text

    def test_a_host_in_allowed_hosts_builds_absolute_uris(self):
        with running_server() as server:
            port = server.address[1]
            with connect(
                ws_url(server, "/ws/info/?q=1"), additional_headers={"X-Custom": "yo", "Cookie": "a=b"}
            ) as ws:
                info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["host"] == f"127.0.0.1:{port}"
        assert info["absolute_uri"] == f"http://127.0.0.1:{port}/ws/info/?q=1"
        assert info["secure"] is False
        assert info["get"] == {"q": ["1"]}
        assert info["cookies"] == {"a": "b"}
        assert info["header_custom"] == "yo"
        assert info["content_length"] is None
        assert info["user_evaluated"] == "object"  # request.user stays lazy

    def test_behind_a_trusted_proxy_the_consumer_sees_the_client_and_https(self):
        headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
        with (
            rawws(TRUSTED_PROXIES=["127.0.0.1"]),
            override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")),
            running_server() as server,
        ):
            origin = origin_of(server, "https")
            with connect(ws_url(server, "/ws/info/"), additional_headers=headers, origin=origin) as ws:
                info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["remote_addr"] == "198.51.100.7"
        assert info["secure"] is True
        assert info["absolute_uri"].startswith("https://")


# ------------------------------------------------------- session and user


@pytest.mark.django_db(transaction=True)
class TestSessionAuthOverSockets:
    def test_a_logged_in_session_gives_the_user_and_its_groups(self, client):
        user = get_user_model().objects.create_user("ada", password="x")
        client.force_login(user)
        key = client.cookies["sessionid"].value
        with (
            running_server() as server,
            connect(ws_url(server, "/ws/user/"), additional_headers={"Cookie": f"sessionid={key}"}) as ws,
        ):
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"authenticated": True, "username": "ada"}
            ws.send("groups?")
            groups = json.loads(ws.recv(timeout=TIMEOUT))
        assert session_group(key) in groups
        assert f"user:{user.pk}" in groups

    def test_without_a_session_the_user_is_anonymous(self):
        with running_server() as server, connect(ws_url(server, "/ws/user/")) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"authenticated": False, "username": None}
            ws.send("groups?")
            groups = json.loads(ws.recv(timeout=TIMEOUT))
        assert len(groups) == 1 and groups[0].startswith("conn:")

    def test_an_unknown_session_cookie_is_anonymous(self):
        cookie = "sessionid=0123456789abcdefghijklmnopqrstuv"
        with (
            running_server() as server,
            connect(ws_url(server, "/ws/user/"), additional_headers={"Cookie": cookie}) as ws,
        ):
            assert json.loads(ws.recv(timeout=TIMEOUT))["authenticated"] is False

    def test_the_authenticate_hook_replaces_the_session_user(self):
        get_user_model().objects.create_user("token-user")
        with rawws(AUTHENTICATE="tests.test_handler.token_hook"), running_server() as server:
            with connect(ws_url(server, "/ws/login/?token=token-user")) as ws:
                assert json.loads(ws.recv(timeout=TIMEOUT))["username"] == "token-user"
            assert (
                raw_handshake(server, "/ws/login/")[0] == 403
            )  # hook returned None: session user, anonymous
            assert raw_handshake(server, "/ws/login/?token=refuse")[0] == 403


def token_hook(request, handshake):
    """An AUTHENTICATE hook: ?token=<username> logs in; ?token=refuse refuses the handshake."""
    from django.core.exceptions import PermissionDenied

    token = request.GET.get("token")
    if token == "refuse":
        raise PermissionDenied
    if token:
        return get_user_model().objects.get(username=token)
    return None


# ----------------------------------------------------- consumer exceptions


class TestExceptions:
    def test_an_exception_in_receive_fails_that_connection_with_1011_only(self, caplog):
        signals = []

        def on_exception(sender, request, **kwargs):
            signals.append(request.path)

        got_request_exception.connect(on_exception)
        try:
            with (
                running_server() as server,
                connect(ws_url(server, "/ws/fail/")) as bad,
                connect(ws_url(server, "/ws/echo/")) as good,
            ):
                bad.send("boom")
                with pytest.raises(ConnectionClosedError) as info:
                    bad.recv(timeout=TIMEOUT)
                good.send("still here")
                assert good.recv(timeout=TIMEOUT) == "still here"
        finally:
            got_request_exception.disconnect(on_exception)
        assert info.value.rcvd.code == 1011
        assert sorted(journal.entries("disconnect")) == [
            ("disconnect", "EchoConsumer", 1000),
            ("disconnect", "FailingConsumer", 1011),
        ]
        assert signals == ["/ws/fail/"]
        [record] = [
            r for r in caplog.records if r.name == "django_rawws.consumers" and r.levelno == logging.ERROR
        ]
        assert record.getMessage() == "Exception in FailingConsumer.receive() (/ws/fail/)"
        assert record.exc_info[1].args == ("boom from a consumer",)
        assert record.request.path == "/ws/fail/"

    def test_messages_queued_after_the_failure_are_not_delivered(self):
        with running_server() as server, connect(ws_url(server, "/ws/fail/")) as ws:
            ws.send("boom")
            ws.send("after")
            with pytest.raises(ConnectionClosedError):
                while True:
                    assert ws.recv(timeout=TIMEOUT) != "after"
        assert journal.entries("disconnect") == [("disconnect", "FailingConsumer", 1011)]

    def test_an_exception_in_an_event_handler_fails_with_1011(self):
        from django_rawws.groups import get_backend

        with running_server() as server, connect(ws_url(server, "/ws/fail/")) as ws:
            ws.send("ping")  # a round trip: connect() has returned, the groups are joined
            assert ws.recv(timeout=TIMEOUT) == "ping"
            [(_, _, ident)] = journal.entries("connect")
            assert get_backend().send_event(f"conn:{ident}", {"type": "explode"}) == 1
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 1011
        assert journal.entries("disconnect") == [("disconnect", "FailingConsumer", 1011)]

    def test_an_exception_in_connect_before_accept_is_a_500_and_disconnect_gets_1011(self, caplog):
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/fail-connect/")
        assert (status, body) == (500, b"Internal Server Error\n")
        assert "Exception in ConnectFailingConsumer.connect() (/ws/fail-connect/)" in caplog.text
        assert journal.entries("disconnect") == [("disconnect", "ConnectFailingConsumer", 1011)]

    def test_an_exception_in_connect_after_accept_fails_with_1011(self):
        with running_server() as server, connect(ws_url(server, "/ws/fail-connect/?after=1")) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 1011
        assert journal.entries("disconnect") == [("disconnect", "ConnectFailingConsumer", 1011)]

    def test_an_exception_in_disconnect_is_reported_once(self, caplog):
        with running_server() as server, connect(ws_url(server, "/ws/fail-disconnect/")):
            pass
        assert journal.entries("disconnect") == [("disconnect", "DisconnectFailingConsumer", 1000)]
        assert (
            caplog.text.count("Exception in DisconnectFailingConsumer.disconnect() (/ws/fail-disconnect/)")
            == 1
        )

    def test_disconnect_runs_exactly_once_for_a_dropped_connection(self):
        with running_server() as server:
            ws = websocket.create_connection(ws_url(server, "/ws/echo/"), timeout=TIMEOUT)
            journal.wait_for("connect")
            ws.shutdown()  # no close frame
            journal.wait_for("disconnect")
        assert journal.entries("disconnect") == [("disconnect", "EchoConsumer", 1006)]

    def test_disconnect_gets_1001_at_shutdown(self):
        server_context = running_server()
        server = server_context.__enter__()
        try:
            with connect(ws_url(server, "/ws/echo/")) as ws:
                journal.wait_for("connect")
                server_context.__exit__(None, None, None)
                server = None
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=TIMEOUT)
        finally:
            if server is not None:
                server_context.__exit__(None, None, None)
        assert info.value.rcvd.code == 1001
        assert journal.entries("disconnect") == [("disconnect", "EchoConsumer", 1001)]

    def test_a_route_never_reaching_connect_never_gets_disconnect(self):
        with running_server() as server:
            assert raw_handshake(server, "/ws/login/")[0] == 403
            assert raw_handshake(server, "/ws/nowhere/")[0] == 404
        assert journal.entries() == []


class TestApplicationWithoutServer:
    """The application interface driven directly, as the server's workers would."""

    def handshake(self, target, headers=None):
        app = DjangoApplication()
        conn = FakeConnection(make_handshake(target, headers))
        app.websocket_handshake(conn, conn.handshake)
        return app, conn

    def test_an_accepted_connection_gets_messages_and_one_disconnect(self):
        app, conn = self.handshake("/ws/echo/")
        assert conn.accepted is not None
        app.websocket_message(conn, "hello")
        app.websocket_message(conn, b"\x01")
        assert conn.sent == ["hello", b"\x01"]
        app.websocket_disconnect(conn, 1000)
        app.websocket_disconnect(conn, 1000)
        assert journal.entries("disconnect") == [("disconnect", "EchoConsumer", 1000)]

    def test_an_unrouted_handshake_is_rejected_and_never_disconnects(self):
        app, conn = self.handshake("/ws/nowhere/")
        assert conn.rejected.status_code == 404
        app.websocket_disconnect(conn, 1006)
        assert journal.entries() == []

    def test_after_a_failure_nothing_is_delivered_and_disconnect_sees_1011(self):
        app, conn = self.handshake("/ws/fail/")
        app.websocket_message(conn, "boom")
        assert conn.failed == 1011
        app.websocket_message(conn, "later")
        app.websocket_event(conn, {"type": "explode"})
        assert conn.sent == []
        app.websocket_disconnect(conn, 1006)
        assert journal.entries("disconnect") == [("disconnect", "FailingConsumer", 1011)]

    def test_the_groups_are_left_at_disconnect(self):
        from django_rawws.groups import get_backend

        app, conn = self.handshake("/ws/group/")
        assert get_backend().groups_of(conn) == {"conn:c1", "lobby"}
        app.websocket_disconnect(conn, 1000)
        assert get_backend().groups_of(conn) == set()

    def test_messages_after_the_consumer_closed_are_dropped(self):
        app, conn = self.handshake("/ws/json/")
        app.websocket_message(conn, b"binary")
        assert conn.closed == (1003, "binary messages are not accepted")
        app.websocket_message(conn, "{}")
        assert conn.sent == []


# ------------------------------------------------ context and request cycle


class TestContextIsolation:
    def test_two_connections_on_one_worker_never_see_each_others_language(self):
        with (
            running_server(workers=1) as server,
            connect(ws_url(server, "/ws/lang/")) as first,
            connect(ws_url(server, "/ws/lang/")) as second,
        ):
            first.send("activate:fr")
            seen_by_first = json.loads(first.recv(timeout=TIMEOUT))
            second.send("get")
            seen_by_second = json.loads(second.recv(timeout=TIMEOUT))
            first.send("get")
            first_next_call = json.loads(first.recv(timeout=TIMEOUT))
        assert seen_by_first["language"] == "fr"
        assert seen_by_first["thread"] == seen_by_second["thread"]  # one worker
        assert seen_by_second["language"] == "en-us"
        assert first_next_call["language"] == "en-us"  # reset at every call, like a request

    def test_timezone_is_reset_at_every_call(self):
        assert django_settings.TIME_ZONE != "Europe/Paris"
        with (
            running_server(workers=1) as server,
            connect(ws_url(server, "/ws/lang/")) as first,
            connect(ws_url(server, "/ws/lang/")) as second,
        ):
            first.send("tz:Europe/Paris")
            assert json.loads(first.recv(timeout=TIMEOUT))["timezone"] == "Europe/Paris"
            second.send("get")
            assert json.loads(second.recv(timeout=TIMEOUT))["timezone"] == django_settings.TIME_ZONE

    def test_a_context_variable_set_in_a_call_lasts_for_that_call_only(self):
        with (
            running_server(workers=1) as server,
            connect(ws_url(server, "/ws/lang/")) as first,
            connect(ws_url(server, "/ws/lang/")) as second,
        ):
            first.send("set:tea")
            assert json.loads(first.recv(timeout=TIMEOUT))["favourite"] == "tea"
            second.send("get")
            assert json.loads(second.recv(timeout=TIMEOUT))["favourite"] == "unset"
            first.send("get")
            assert json.loads(first.recv(timeout=TIMEOUT))["favourite"] == "unset"

    def test_a_worker_keeps_its_cache_client_from_call_to_call_as_under_wsgi(self):
        with (
            running_server(workers=1) as server,
            connect(ws_url(server, "/ws/lang/")) as first,
            connect(ws_url(server, "/ws/lang/")) as second,
        ):
            seen = []
            for ws in (first, second, first):
                ws.send("get")
                seen.append(json.loads(ws.recv(timeout=TIMEOUT))["cache"])
        assert len(set(seen)) == 1, seen


@pytest.mark.django_db(transaction=True)
class TestDatabase:
    @pytest.fixture
    def atomic_requests(self):
        settings_dict = connections["default"].settings_dict
        saved = settings_dict["ATOMIC_REQUESTS"]
        settings_dict["ATOMIC_REQUESTS"] = True
        yield
        settings_dict["ATOMIC_REQUESTS"] = saved

    def test_without_atomic_requests_a_call_runs_in_autocommit(self):
        with running_server() as server, connect(ws_url(server, "/ws/atomic/")) as ws:
            ws.send("probe")
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"in_atomic_block": False}

    def test_atomic_requests_wraps_each_call_in_a_transaction(self, atomic_requests):
        with running_server() as server, connect(ws_url(server, "/ws/atomic/")) as ws:
            ws.send("probe")
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"in_atomic_block": True}
            ws.send("create:kept")
            assert ws.recv(timeout=TIMEOUT) == "created"

    def test_a_failing_call_is_rolled_back_with_atomic_requests(self, atomic_requests):
        with running_server() as server, connect(ws_url(server, "/ws/atomic/")) as ws:
            ws.send("create:kept")
            assert ws.recv(timeout=TIMEOUT) == "created"
            ws.send("create:failed")
            with pytest.raises(ConnectionClosedError):
                ws.recv(timeout=TIMEOUT)
        usernames = set(get_user_model().objects.values_list("username", flat=True))
        assert usernames == {"kept"}

    def test_non_atomic_requests_opts_a_handler_out(self, atomic_requests):
        from django_rawws.groups import get_backend

        with running_server() as server, connect(ws_url(server, "/ws/atomic/")) as ws:
            ws.send("probe")
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"in_atomic_block": True}
            [conn] = server.connections()
            get_backend().send_event(f"conn:{conn.id}", {"type": "chat.probe"})
            assert json.loads(ws.recv(timeout=TIMEOUT)) == {"in_atomic_block": False}


def test_close_old_connections_runs_before_and_after_every_call(monkeypatch):
    original = handler.close_old_connections

    def recording():
        journal.add("close_old_connections", threading.current_thread().name)
        original()

    monkeypatch.setattr(handler, "close_old_connections", recording)
    with running_server() as server, connect(ws_url(server, "/ws/echo/")) as ws:
        ws.send("one")
        assert ws.recv(timeout=TIMEOUT) == "one"
    kinds = [entry[0] for entry in journal.entries()]
    assert kinds == [
        *("close_old_connections", "connect", "close_old_connections"),
        *("close_old_connections", "receive", "close_old_connections"),
        *("close_old_connections", "disconnect", "close_old_connections"),
    ]
    assert all(name.startswith("rawws-worker") for kind, name, *_ in journal.entries("close_old_connections"))


def test_worker_exit_closes_the_threads_database_connections(monkeypatch):
    closed = []
    monkeypatch.setattr(handler.connections, "close_all", lambda: closed.append(True))
    DjangoApplication().worker_exit()
    assert closed == [True]


# ----------------------------------------------------------------- watchdog


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.event.set()


@pytest.fixture
def consumer_warnings():
    records = _Records()
    records.setLevel(logging.WARNING)
    logger = logging.getLogger("django_rawws.consumers")
    logger.addHandler(records)
    yield records
    logger.removeHandler(records)


class TestSlowHandlers:
    def test_a_call_over_the_threshold_is_logged_once_with_its_stack(self, consumer_warnings):
        watchdog = SlowCallWatchdog()
        token = watchdog.begin(lambda: "Slow.receive() for /ws/slow/", 0.02)
        assert consumer_warnings.event.wait(TIMEOUT)
        watchdog.end(token)
        thread = watchdog._thread
        watchdog.stop()
        assert not thread.is_alive()
        [record] = consumer_warnings.records
        message = record.getMessage()
        assert message.startswith("Slow.receive() for /ws/slow/ has been running for ")
        assert "test_a_call_over_the_threshold_is_logged_once_with_its_stack" in message  # the stack

    def test_stop_waits_for_calls_in_flight_and_begin_restarts_the_thread(self):
        watchdog = SlowCallWatchdog()
        token = watchdog.begin(lambda: "x", 60)
        first = watchdog._thread
        watchdog.stop()
        assert first.is_alive()  # a call is running: not stopped
        watchdog.end(token)
        watchdog.stop()
        assert not first.is_alive()
        watchdog.end(watchdog.begin(lambda: "y", 60))
        second = watchdog._thread
        assert second is not first and second.is_alive()
        watchdog.stop()
        assert not second.is_alive()

    def test_the_watchdog_thread_is_gone_when_the_server_stops(self):
        with (
            rawws(SLOW_HANDLER_WARNING=5),
            running_server() as server,
            connect(ws_url(server, "/ws/echo/")) as ws,
        ):
            ws.send("x")
            assert ws.recv(timeout=TIMEOUT) == "x"
            assert handler._watchdog._thread is not None
        assert handler._watchdog._thread is None
        assert "rawws-slow-handler-watchdog" not in [thread.name for thread in threading.enumerate()]

    def test_a_running_servers_threads_do_not_change_with_its_traffic(self):
        """The watchdog starts with the workers, not with the first call: a thread count is a constant."""

        def names() -> list[str]:
            return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("rawws-"))

        with rawws(SLOW_HANDLER_WARNING=5), running_server() as server:
            before = names()
            assert "rawws-slow-handler-watchdog" in before
            with connect(ws_url(server, "/ws/echo/")) as ws:
                ws.send("x")
                assert ws.recv(timeout=TIMEOUT) == "x"
                assert names() == before

    def test_a_disabled_threshold_costs_nothing(self):
        watchdog = SlowCallWatchdog()
        assert watchdog.begin(lambda: "x", None) is None
        assert watchdog._thread is None

    def test_a_slow_consumer_method_is_reported_while_it_runs(self, consumer_warnings):
        with (
            rawws(SLOW_HANDLER_WARNING=0.05),
            running_server() as server,
            connect(ws_url(server, "/ws/slow/")) as ws,
        ):
            ws.send("go")
            assert consumer_warnings.event.wait(TIMEOUT)
            wsconsumers.release_slow.set()
            assert ws.recv(timeout=TIMEOUT) == "done"
        message = consumer_warnings.records[0].getMessage()
        assert message.startswith("SlowConsumer.receive() for /ws/slow/ has been running for")
        assert "release_slow.wait" in message


# --------------------------------------------------------------- PostgreSQL


def _postgres_available() -> bool:
    try:
        import psycopg

        from tests.pg_bound import PG

        with psycopg.connect(dbname="postgres", connect_timeout=2, **PG):
            return True
    except Exception:  # noqa: BLE001 - any failure means: no usable server
        return False


@pytest.fixture(scope="module")
def postgres():
    from tests.conftest import skip_or_fail_without_service

    if not _postgres_available():
        skip_or_fail_without_service("PostgreSQL is not reachable on 127.0.0.1:5432")


def run_pg_bound(conn_max_age: int, clients: int = 500, workers: int = 4) -> dict:
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "tests.pg_bound", "--conn-max-age", str(conn_max_age)]
        + ["--clients", str(clients), "--workers", str(workers)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.usefixtures("postgres")
class TestPostgresConnectionBound:
    """500 WebSockets that each write: the server holds at most workers x aliases connections."""

    def test_with_persistent_connections_the_bound_holds_throughout(self):
        figures = run_pg_bound(conn_max_age=60)
        assert figures["replies"] == figures["rows"] == 500
        bound = figures["workers"] * figures["aliases"]
        assert 1 <= figures["max_pg_stat_activity"] <= bound, figures
        assert figures["max_open_client_side"] <= bound
        assert figures["opened"] <= bound  # reused across calls, as CONN_MAX_AGE says
        assert figures["idle_after_burst"] >= 1  # kept open between calls
        assert figures["after_stop"] == figures["open_after_stop"] == 0  # worker_exit closed them
        assert figures["clean_stop"] is True

    def test_with_conn_max_age_0_each_call_closes_its_connection(self):
        figures = run_pg_bound(conn_max_age=0)
        assert figures["replies"] == figures["rows"] == 500
        assert figures["max_open_client_side"] <= figures["workers"] * figures["aliases"]
        # pg_stat_activity may briefly list a backend whose client just closed
        # (it leaves the view when its process exits), so the exact bound is
        # taken from the driver's side; the view must empty as soon as idle.
        assert figures["opened"] == 500  # one connection per call
        assert figures["idle_after_burst"] == 0
        assert figures["after_stop"] == figures["open_after_stop"] == 0
