"""Session-bound sockets: a WebSocket closes with 4401 once its session would no longer authenticate.

Through real sockets: the Django side on a running server, Django's test
client (or a real HTTP login on the same port) logging in and out, the
session in the test database. Every wait is bounded: a socket expected to
close must close within ``TIMEOUT``; a socket expected to stay open answers a
message sent after the notice was delivered (its events and messages are
handled in order, so the answer proves the notice was handled and spared it).

This module is also the test ``ROOT_URLCONF`` (the views below).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth import authenticate, get_user_model, login, logout
from django.contrib.auth.hashers import make_password
from django.contrib.auth.views import PasswordChangeView
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from django_rawws.groups import session_group
from django_rawws import auth
from django_rawws.auth import SESSION_ENDED
from django_rawws.handler import DjangoApplication
from tests.utils_server import TIMEOUT, make_request, running_server, ws_url

REPOSITORY = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
NEW_PASSWORD = "Tr0ub4dor&3-but-longer"

pytestmark = pytest.mark.django_db(transaction=True)


# ---------------------------------------------------------------- the views


@csrf_exempt
def login_view(request: HttpRequest) -> HttpResponse:
    user = authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
    if user is None:
        return HttpResponse("no", status=403)
    login(request, user)
    return HttpResponse("in")


@csrf_exempt
def logout_view(request: HttpRequest) -> HttpResponse:
    logout(request)
    return HttpResponse("out")


def flush_view(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("flushed")


def cycle_view(request: HttpRequest) -> HttpResponse:
    request.session.cycle_key()
    return HttpResponse("cycled")


urlpatterns = [
    path("login/", login_view),
    path("logout/", logout_view),
    path("flush/", flush_view),
    path("cycle/", cycle_view),
    path("password/", PasswordChangeView.as_view(success_url="/done/")),
]


@pytest.fixture(autouse=True)
def _site() -> Iterator[None]:
    """This module's views, with the session and authentication middleware a site has."""
    with override_settings(
        ROOT_URLCONF="tests.test_session_bound",
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
    ):
        yield


def rawws(**options: Any) -> override_settings:
    return override_settings(RAWWS={"URLCONF": "tests.wsurls", **options})


# ------------------------------------------------------------------ helpers


def make_user(username: str = "ada") -> Any:
    return get_user_model().objects.create_user(username, password=PASSWORD)


def logged_in(user: Any) -> tuple[Client, str]:
    """A test client logged in as ``user`` (a session of its own) and its session key."""
    client = Client()
    client.force_login(user)
    return client, client.cookies["sessionid"].value


def open_socket(
    stack: contextlib.ExitStack, server: Any, key: str | None = None, target: str = "/ws/user/"
) -> tuple[ClientConnection, dict]:
    """A WebSocket to ``UserConsumer`` with the session cookie ``key`` (closed with ``stack``); and who it says we are."""
    headers = {"Cookie": f"sessionid={key}"} if key else {}
    ws = stack.enter_context(
        connect(ws_url(server, target), additional_headers=headers, open_timeout=TIMEOUT)
    )
    return ws, json.loads(ws.recv(timeout=TIMEOUT))


def close_code(ws: ClientConnection) -> int:
    """The code the server closed ``ws`` with (within TIMEOUT, or the test fails)."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code


def groups_of(ws: ClientConnection) -> list[str]:
    """Ask the consumer for its groups: an answer proves the socket is open and has handled what came before."""
    ws.send("groups?")
    return json.loads(ws.recv(timeout=TIMEOUT))


@contextlib.contextmanager
def sockets() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


class AuthLog(logging.Handler):
    """Records of ``django_rawws.auth`` (DEBUG and up), with a bounded wait."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._condition = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._condition:
            self.records.append(record)
            self._condition.notify_all()

    def messages(self) -> list[str]:
        with self._condition:
            return [record.getMessage() for record in self.records]

    def wait_for(self, text: str, count: int = 1) -> None:
        with self._condition:
            done = self._condition.wait_for(
                lambda: sum(text in record.getMessage() for record in self.records) >= count, TIMEOUT
            )
        assert done, f"expected {count} log line(s) with {text!r}, got {self.messages()}"


@pytest.fixture
def auth_log() -> Iterator[AuthLog]:
    handler = AuthLog()
    logger = logging.getLogger("django_rawws.auth")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# ------------------------------------------------------------------- logout


class TestLogout:
    def test_logout_closes_every_socket_of_that_session_with_4401_and_no_other(self) -> None:
        ada = make_user()
        first, first_key = logged_in(ada)
        _, second_key = logged_in(ada)
        with running_server() as server, sockets() as stack:
            tab1, who = open_socket(stack, server, first_key)
            tab2, _ = open_socket(stack, server, first_key)
            other_session, _ = open_socket(stack, server, second_key)
            anonymous, nobody = open_socket(stack, server)
            assert who == {"authenticated": True, "username": "ada"}
            assert nobody["authenticated"] is False
            first.logout()
            assert close_code(tab1) == close_code(tab2) == SESSION_ENDED
            assert session_group(second_key) in groups_of(other_session)
            assert groups_of(anonymous)[0].startswith("conn:")

    def test_the_close_frame_says_why_and_disconnect_gets_4401(self) -> None:
        client, key = logged_in(make_user())
        with running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            client.logout()
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4401, "session ended")

    def test_a_real_login_and_logout_over_http_on_the_websocket_port(self) -> None:
        make_user()
        with running_server(DjangoApplication()) as server:
            cookie = http_post(server, "/login/", {"username": "ada", "password": PASSWORD})
            assert cookie is not None
            with sockets() as stack:
                ws, who = open_socket(stack, server, cookie)
                assert who == {"authenticated": True, "username": "ada"}
                http_post(server, "/logout/", {}, cookie=cookie)
                assert close_code(ws) == SESSION_ENDED

    def test_a_socket_authenticated_by_the_authenticate_hook_outlives_the_session(self) -> None:
        client, key = logged_in(make_user())
        with (
            rawws(AUTHENTICATE="tests.test_handler.token_hook"),
            running_server() as server,
            sockets() as stack,
        ):
            by_token, who = open_socket(stack, server, key, "/ws/user/?token=ada")
            by_session, _ = open_socket(stack, server, key)
            assert who["authenticated"] is True
            client.logout()
            assert close_code(by_session) == SESSION_ENDED
            assert groups_of(by_token)  # the hook vouched for it, not the session

    def test_an_anonymous_socket_of_a_flushed_session_stays_open(self) -> None:
        from django.contrib.sessions.backends.db import SessionStore

        session = SessionStore()
        session["cart"] = [1, 2]
        session.create()
        client = Client()
        client.cookies["sessionid"] = session.session_key
        with running_server() as server, sockets() as stack:
            ws, who = open_socket(stack, server, session.session_key)
            assert who["authenticated"] is False
            assert session_group(session.session_key) in groups_of(ws)
            client.get("/flush/")
            assert groups_of(ws)  # nothing authenticated, nothing to revoke


def http_post(server: Any, target: str, fields: dict[str, str], *, cookie: str | None = None) -> str | None:
    """POST a form to the server's HTTP side; return the new session cookie it set, if any."""
    conn = http.client.HTTPConnection(*server.address, timeout=TIMEOUT)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if cookie:
            headers["Cookie"] = f"sessionid={cookie}"
        conn.request("POST", target, body=urlencode(fields), headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name.strip() == "sessionid":
                return rest.split(";", 1)[0]
        return None
    finally:
        conn.close()


class TestWithTheCommunicator:
    """The same rules hold for consumers under test with ``django_rawws.testing``, without sockets."""

    def test_a_logout_closes_a_communicators_socket_with_4401(self) -> None:
        from django_rawws.testing import WebSocketCommunicator

        ada = make_user()
        client, _ = logged_in(ada)
        with WebSocketCommunicator("/ws/user/", cookies=client.cookies) as ws:
            assert ws.connect() == (True, None)
            assert ws.receive_json() == {"authenticated": True, "username": "ada"}
            client.logout()
            assert ws.assert_closed(SESSION_ENDED) == SESSION_ENDED


# ---------------------------------------------------------- password change


class TestPasswordChange:
    def test_the_other_sessions_sockets_close_and_the_changers_stay_open_on_its_new_key(self) -> None:
        ada = make_user()
        changer, changer_key = logged_in(ada)
        _, other_key = logged_in(ada)
        with running_server() as server, sockets() as stack:
            mine = open_socket(stack, server, changer_key)[0]
            theirs = open_socket(stack, server, other_key)[0]
            response = changer.post(
                "/password/",
                {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
            )
            assert response.status_code == 302, response.content
            new_key = changer.cookies["sessionid"].value
            assert new_key != changer_key  # update_session_auth_hash() cycled the key
            assert close_code(theirs) == SESSION_ENDED
            groups = groups_of(mine)
            assert session_group(new_key) in groups and session_group(changer_key) not in groups
            changer.logout()  # the socket followed the session: its logout still reaches it
            assert close_code(mine) == SESSION_ENDED

    def test_a_password_set_outside_a_request_closes_every_session_of_the_user(self) -> None:
        ada = make_user()
        bob = make_user("bob")
        _, first = logged_in(ada)
        _, second = logged_in(ada)
        _, bobs = logged_in(bob)
        with running_server() as server, sockets() as stack:
            one = open_socket(stack, server, first)[0]
            two = open_socket(stack, server, second)[0]
            unrelated = open_socket(stack, server, bobs)[0]
            ada.set_password(NEW_PASSWORD)
            ada.save()
            assert close_code(one) == close_code(two) == SESSION_ENDED
            assert groups_of(unrelated)

    def test_saving_a_user_without_a_new_password_sends_nothing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sent: list[str] = []
        monkeypatch.setattr(auth, "_send_verify", sent.append)
        ada = make_user()
        assert sent == []  # creating a user is not a change
        ada.first_name = "Ada"
        ada.save()
        ada.last_login = timezone.now()
        ada.save(update_fields=["last_login"])
        fresh = get_user_model().objects.get(pk=ada.pk)
        fresh.save()
        assert sent == []
        fresh.set_unusable_password()
        fresh.save()
        assert sent == [str(ada.pk)]

    def test_a_session_already_stale_at_the_handshake_is_anonymous_and_joins_no_user_group(self) -> None:
        ada = make_user()
        _, key = logged_in(ada)
        # No signal: a bulk update, as a migration or a script would do it.
        get_user_model().objects.filter(pk=ada.pk).update(password=make_password("elsewhere"))
        with running_server() as server, sockets() as stack:
            ws, who = open_socket(stack, server, key)
            assert who["authenticated"] is False
            assert f"user:{ada.pk}" not in groups_of(ws)


# ----------------------------------------------------------- flush and keys


class TestFlushAndCycleKey:
    def test_a_flush_in_a_view_closes_the_sessions_sockets(self) -> None:
        client, key = logged_in(make_user())
        with running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            client.get("/flush/")
            assert close_code(ws) == SESSION_ENDED

    def test_a_flush_outside_a_request_closes_them_too(self) -> None:
        from django.contrib.sessions.backends.db import SessionStore

        _, key = logged_in(make_user())
        with running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            SessionStore(key).flush()
            assert close_code(ws) == SESSION_ENDED

    def test_cycle_key_moves_the_socket_to_the_new_key_instead_of_closing_it(self) -> None:
        client, key = logged_in(make_user())
        with running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            client.get("/cycle/")
            new_key = client.cookies["sessionid"].value
            assert new_key != key
            groups = groups_of(ws)
            assert session_group(new_key) in groups and session_group(key) not in groups
            client.logout()
            assert close_code(ws) == SESSION_ENDED

    def test_logging_in_again_as_the_same_user_keeps_the_session_and_the_socket(self) -> None:
        make_user()
        with running_server(DjangoApplication()) as server:
            cookie = http_post(server, "/login/", {"username": "ada", "password": PASSWORD})
            with sockets() as stack:
                ws, _ = open_socket(stack, server, cookie)
                again = http_post(server, "/login/", {"username": "ada", "password": PASSWORD}, cookie=cookie)
                assert again in (None, cookie)  # same user, same hash: login() keeps the session
                assert session_group(cookie) in groups_of(ws)

    def test_logging_in_as_another_user_on_the_same_session_closes_the_socket(self) -> None:
        make_user()
        make_user("bob")
        with running_server(DjangoApplication()) as server:
            cookie = http_post(server, "/login/", {"username": "ada", "password": PASSWORD})
            with sockets() as stack:
                ws, _ = open_socket(stack, server, cookie)
                http_post(server, "/login/", {"username": "bob", "password": PASSWORD}, cookie=cookie)
                assert close_code(ws) == SESSION_ENDED  # login() flushed ada's session


# --------------------------------------------------------- periodic re-check


class TestPeriodicRecheck:
    def test_a_session_deleted_in_the_database_is_closed_by_the_recheck(self, auth_log: AuthLog) -> None:
        from django.contrib.sessions.models import Session

        _, key = logged_in(make_user())
        _, bobs = logged_in(make_user("bob"))
        with rawws(SESSION_RECHECK_INTERVAL=0.2), running_server() as server, sockets() as stack:
            doomed = open_socket(stack, server, key)[0]
            kept = open_socket(stack, server, bobs)[0]
            Session.objects.filter(session_key=key).delete()  # no flush(), no signal
            assert close_code(doomed) == SESSION_ENDED
            bob_pk = get_user_model().objects.get(username="bob").pk
            auth_log.wait_for(f"re-checked the session of user {bob_pk}: True", count=2)
            assert groups_of(kept)
        assert any("the periodic re-check found the session ended" in m for m in auth_log.messages())

    def test_a_password_set_with_a_bulk_update_is_caught_by_the_recheck(self) -> None:
        ada = make_user()
        _, key = logged_in(ada)
        with rawws(SESSION_RECHECK_INTERVAL=0.2), running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            get_user_model().objects.filter(pk=ada.pk).update(password=make_password("elsewhere"))
            assert close_code(ws) == SESSION_ENDED

    def test_an_expired_session_is_caught_by_the_recheck(self) -> None:
        from django.contrib.sessions.models import Session

        _, key = logged_in(make_user())
        with rawws(SESSION_RECHECK_INTERVAL=0.2), running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(seconds=1))
            assert close_code(ws) == SESSION_ENDED

    def test_a_deactivated_user_is_caught_by_the_recheck(self) -> None:
        ada = make_user()
        _, key = logged_in(ada)
        with rawws(SESSION_RECHECK_INTERVAL=0.2), running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            get_user_model().objects.filter(pk=ada.pk).update(is_active=False)
            assert close_code(ws) == SESSION_ENDED

    def test_tabs_of_one_session_are_verified_once_for_all(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from django.contrib.sessions.models import Session

        calls: list[str] = []
        real = auth.session_authenticates

        def counting(binding: auth.SessionBinding) -> bool:
            calls.append(binding.user_pk)
            return real(binding)

        monkeypatch.setattr(auth, "session_authenticates", counting)
        _, key = logged_in(make_user())
        app = DjangoApplication()
        # An hour: the rechecker's own thread never fires; the test dispatches by hand.
        with rawws(SESSION_RECHECK_INTERVAL=3600), running_server(app) as server, sockets() as stack:
            tabs = [open_socket(stack, server, key)[0] for _ in range(3)]
            for ws in tabs:
                assert groups_of(ws)  # the handshake call, which registers the socket, has returned
            conns = server.connections()
            assert len(app.rechecker) == 3
            before = {conn: app.rechecker.due(conn) for conn in conns}
            app._dispatch_rechecks([conns[0]])
            for ws in tabs:
                assert groups_of(ws)  # each tab's queue has run past the verification
            assert len(calls) == 1
            assert all(app.rechecker.due(conn) >= before[conn] for conn in conns[1:])
            Session.objects.filter(session_key=key).delete()
            app._dispatch_rechecks([conns[1]])
            assert [close_code(ws) for ws in tabs] == [SESSION_ENDED] * 3
            assert len(calls) == 2  # one read for three sockets

    def test_none_disables_the_recheck_and_the_thread_ends_with_the_server(self) -> None:
        _, key = logged_in(make_user())
        app = DjangoApplication()
        with rawws(SESSION_RECHECK_INTERVAL=None), running_server(app) as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            assert groups_of(ws)
            assert len(app.rechecker) == 0
        with rawws(SESSION_RECHECK_INTERVAL=30), running_server(app) as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            assert groups_of(ws)
            assert len(app.rechecker) == 1
            assert "rawws-session-recheck" in [thread.name for thread in threading.enumerate()]
        assert len(app.rechecker) == 0
        assert "rawws-session-recheck" not in [thread.name for thread in threading.enumerate()]

    def test_a_database_error_during_the_recheck_is_logged_and_the_socket_kept(
        self, monkeypatch: pytest.MonkeyPatch, auth_log: AuthLog
    ) -> None:
        def broken(binding: auth.SessionBinding) -> bool:
            raise RuntimeError("database unavailable")

        _, key = logged_in(make_user())
        with rawws(SESSION_RECHECK_INTERVAL=0.1), running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            monkeypatch.setattr(auth, "session_authenticates", broken)
            auth_log.wait_for("session check of a WebSocket failed", count=2)
            assert groups_of(ws)


# ------------------------------------------------------------------ events


class TestNotices:
    def test_a_forged_session_notice_is_refused_and_logged(self, auth_log: AuthLog) -> None:
        from django_rawws.groups import push

        ada = make_user()
        _, key = logged_in(ada)
        with running_server() as server, sockets() as stack:
            ws, _ = open_socket(stack, server, key)
            forged = {"type": auth.EVENT_TYPE, "action": "end", "session": key}
            push(f"user:{ada.pk}", event={**forged, "sig": "0" * 64})
            push(session_group(key), event=forged)
            assert groups_of(ws)
        refusals = [m for m in auth_log.messages() if "without a valid signature" in m]
        assert len(refusals) == 2

    def test_notices_signed_with_a_fallback_secret_are_accepted(self) -> None:
        with override_settings(SECRET_KEY="old-secret-key"):
            event = auth._signed("end", session="abcdefgh12345678")
        with override_settings(SECRET_KEY="new-secret-key", SECRET_KEY_FALLBACKS=["old-secret-key"]):
            assert auth.verify_event(event)
        with override_settings(SECRET_KEY="new-secret-key", SECRET_KEY_FALLBACKS=[]):
            assert not auth.verify_event(event)
        assert not auth.verify_event({**event, "session": "another-session-key"})

    def test_a_logout_when_the_backend_is_down_is_logged_without_the_key_and_still_logs_out(
        self, monkeypatch: pytest.MonkeyPatch, auth_log: AuthLog
    ) -> None:
        from django.contrib.sessions.models import Session

        from django_rawws.exceptions import GroupBackendUnavailable
        from django_rawws.groups import get_backend

        client, key = logged_in(make_user())
        with running_server():

            def down(group: str, *args: Any, **kwargs: Any) -> int:
                raise GroupBackendUnavailable(f"Redis is down: cannot send to group {group!r}")

            monkeypatch.setattr(get_backend(), "send_event", down)
            client.logout()
        assert not Session.objects.filter(session_key=key).exists()
        [message] = [m for m in auth_log.messages() if "could not tell the WebSocket servers" in m]
        assert "a session ended (GroupBackendUnavailable: Redis is down" in message
        assert key not in message  # a session key is a credential


# ------------------------------------------------------- during a handshake


class TestHandshake:
    def bound_consumer(self, key: str) -> Any:
        from django_rawws.consumers import WebSocketConsumer
        from django_rawws.handler import _attach_session_and_user

        conn, request = make_request("/ws/user/", [("Cookie", f"sessionid={key}")])
        _attach_session_and_user(request)
        consumer = WebSocketConsumer()
        consumer.connection = conn
        consumer.request = request
        return consumer

    def test_a_session_ending_after_connect_saw_the_user_closes_at_once_with_4401(self) -> None:
        from django.contrib.sessions.models import Session

        _, key = logged_in(make_user())
        consumer = self.bound_consumer(key)
        assert consumer.user.is_authenticated  # connect() looked at the user...
        Session.objects.filter(session_key=key).delete()  # ...then the user logged out elsewhere
        consumer.accept()
        assert consumer.connection.closed == (SESSION_ENDED, "session ended")
        assert consumer._session_binding is None

    def test_each_group_is_joined_before_what_it_depends_on_is_read(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from django_rawws.groups import get_backend

        ada = make_user()
        _, key = logged_in(ada)
        consumer = self.bound_consumer(key)
        seen: dict[str, set[str]] = {}
        load_session, session_user = auth.load_session, auth.session_user

        def reading_session(session_key: str) -> Any:
            seen["session read"] = get_backend().groups_of(consumer.connection)
            return load_session(session_key)

        def reading_user(data: Any, expected_pk: Any = None) -> Any:
            seen["user read"] = get_backend().groups_of(consumer.connection)
            return session_user(data, expected_pk)

        monkeypatch.setattr(auth, "load_session", reading_session)
        monkeypatch.setattr(auth, "session_user", reading_user)
        try:
            consumer.accept()
            assert session_group(key) in seen["session read"]
            assert f"user:{ada.pk}" in seen["user read"]
            assert consumer._session_binding.session_key == key
            assert consumer.user == ada  # the verified user, without a second query
        finally:
            get_backend().discard_all(consumer.connection)


# ------------------------------------------------------ across processes


SERVER_SCRIPT = r"""
import os, sys
from django.conf import settings

settings.configure(
    SECRET_KEY="tests-only-not-secret",
    ALLOWED_HOSTS=["127.0.0.1"],
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django_rawws",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["RAWWS_TEST_DB"]}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    RAWWS={
        "URLCONF": "tests.wsurls",
        "ACCESS_LOG": False,
        "PING_INTERVAL": None,
        "SESSION_RECHECK_INTERVAL": None,
        "GROUP_BACKEND": "django_rawws.groups.redis.RedisGroupBackend",
        "GROUP_OPTIONS": {"url": os.environ["RAWWS_TEST_REDIS_URL"], "prefix": os.environ["RAWWS_TEST_REDIS_PREFIX"]},
    },
)
import django

django.setup()
from django_rawws.conf import server_config
from django_rawws.groups import get_backend
from django_rawws.handler import DjangoApplication
from django_rawws.server import Server

server = Server(DjangoApplication(), "127.0.0.1", 0, server_config(linger_timeout=0.2, close_timeout=2.0))
server.start()
get_backend().attach(server)
print(server.address[1], flush=True)
sys.stdin.read()  # until the test closes our stdin
server.stop(grace=2.0)
get_backend().detach(server)
get_backend().close()
"""


class OtherProcess:
    """A WebSocket server in another process, on the same database and Redis."""

    def __init__(self, prefix: str, redis_url: str) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPOSITORY),
            "RAWWS_TEST_DB": connections["default"].settings_dict["NAME"],
            "RAWWS_TEST_REDIS_URL": redis_url,
            "RAWWS_TEST_REDIS_PREFIX": prefix,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT],
            cwd=REPOSITORY,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.process.stdout.readline()), daemon=True).start()
        try:
            port = lines.get(timeout=30)
        except queue.Empty:
            port = ""
        if not port.strip().isdigit():
            self.stop()
            pytest.fail(f"the other server did not start: {self.process.stderr.read()}")
        self.address = ("127.0.0.1", int(port))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            stream.close()


@pytest.fixture
def redis_site() -> Iterator[OtherProcess]:
    """This process and another one, sharing the Redis group backend (a prefix of their own)."""
    from django_rawws.groups import get_backend
    from tests.redis_proxy import REDIS_BACKEND, REDIS_URL, redis_prefix

    with (
        redis_prefix() as prefix,
        rawws(GROUP_BACKEND=REDIS_BACKEND, GROUP_OPTIONS={"url": REDIS_URL, "prefix": prefix}),
    ):
        other = OtherProcess(prefix, REDIS_URL)
        try:
            yield other
        finally:
            other.stop()
            get_backend().close()


class TestAcrossProcesses:
    def test_a_logout_here_closes_the_sessions_socket_served_by_another_process(
        self, redis_site: OtherProcess
    ) -> None:
        client, key = logged_in(make_user())
        _, other_key = logged_in(get_user_model().objects.get(username="ada"))
        with running_server() as here, sockets() as stack:
            there = open_socket(stack, redis_site, key)[0]
            also_here = open_socket(stack, here, key)[0]
            other_session = open_socket(stack, redis_site, other_key)[0]
            client.logout()
            assert close_code(there) == close_code(also_here) == SESSION_ENDED
            assert groups_of(other_session)

    def test_a_password_change_here_closes_the_other_sessions_socket_there(
        self, redis_site: OtherProcess
    ) -> None:
        ada = make_user()
        changer, changer_key = logged_in(ada)
        _, other_key = logged_in(ada)
        with sockets() as stack:
            mine = open_socket(stack, redis_site, changer_key)[0]
            theirs = open_socket(stack, redis_site, other_key)[0]
            response = changer.post(
                "/password/",
                {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
            )
            assert response.status_code == 302
            assert close_code(theirs) == SESSION_ENDED
            assert session_group(changer.cookies['sessionid'].value) in groups_of(mine)
