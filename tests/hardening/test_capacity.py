"""Capacity and quotas: 503 past MAX_CONNECTIONS, 429 past the per-address and per-user quotas.

The server-wide and per-address limits are decided by the I/O thread at
accept: a refused client never reaches a worker, which the tests check by
counting every task submitted to the worker pool. The per-user quota needs
the session, so the Django side decides it on a worker before ``connect()``.
Each kind of refusal is logged once per client a minute, not once per attempt.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from websockets.sync.client import connect

from django_rawws.handler import DjangoApplication
from django_rawws.server import Server
from tests.server.helpers import (
    TIMEOUT,
    BlockingApp,
    RawClient,
    RecordingApp,
    handshake_request,
    open_socket,
    read_http_response,
    read_to_eof,
    running_server,
    ws_url,
)
from tests.utils_server import raw_handshake
from tests.utils_server import running_server as django_server
from tests.utils_server import ws_url as django_ws_url

from .measure import poll_until


def count_worker_tasks(server: Server) -> list[int]:
    """Count every task submitted to the server's worker pool from now on (a one-item list)."""
    submitted = [0]
    submit = server.pool.submit

    def counting_submit(task: Any) -> None:
        submitted[0] += 1
        submit(task)

    server.pool.submit = counting_submit  # type: ignore[method-assign]
    return submitted


def refused(server: Server, request: bytes | None = None) -> Any:
    """Send a handshake on a new socket; return the response, read in full up to a clean FIN."""
    with open_socket(server) as sock:
        sock.sendall(request or handshake_request())
        reply = read_http_response(sock)
        assert reply.rest + read_to_eof(sock) == b""  # a lingering close, no reset
    return reply


def server_warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "django_rawws.server" and needle in record.getMessage()
    ]


# -------------------------------------------------------- MAX_CONNECTIONS: 503


def test_past_max_connections_handshakes_get_503_with_retry_after_and_never_use_a_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RecordingApp()
    with running_server(app, max_connections=2) as server:
        with connect(ws_url(server)) as first, connect(ws_url(server)) as second:
            submitted = count_worker_tasks(server)
            for _ in range(5):
                reply = refused(server)
                assert reply.status == 503
                assert reply.headers.get("Retry-After") == "5"
                assert reply.body == b"Service Unavailable: too many connections\n"
            assert submitted[0] == 0  # not one task for the five refused clients
            assert len(app.handshakes) == 2
            for ws in (first, second):
                ws.send("still served")
                assert ws.recv(TIMEOUT) == "still served"
    [line] = server_warnings(caplog, "refusing new connections with 503")
    assert line == "refusing new connections with 503: 2 open, MAX_CONNECTIONS is 2"


# ----------------------------------------------- per address: 429, no worker


def test_past_the_per_address_quota_handshakes_get_429_with_retry_after_without_a_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RecordingApp()
    # The loopback is exempt by default (a local proxy, a load test): counted here.
    with running_server(app, max_connections_per_address=2, quota_exempt=()) as server:
        with connect(ws_url(server)) as first, connect(ws_url(server)):
            assert server.quotas.count("addr:127.0.0.1") == 2
            submitted = count_worker_tasks(server)
            for _ in range(3):
                reply = refused(server)
                assert reply.status == 429
                assert reply.headers.get("Retry-After") == "5"
                assert reply.body == b"Too Many Requests: too many connections from this address\n"
            assert submitted[0] == 0
            assert server.quotas.count("addr:127.0.0.1") == 2  # the refused held no slot
            first.send("served")
            assert first.recv(TIMEOUT) == "served"
        # Both closed: their slots come back when their sockets close.
        assert poll_until(lambda: server.quotas.count("addr:127.0.0.1") == 0, TIMEOUT)
        with connect(ws_url(server)) as third:
            third.send("back in")
            assert third.recv(TIMEOUT) == "back in"
    lines = server_warnings(caplog, "with 429")
    assert len(lines) == 1, lines  # three refusals, one line
    assert lines[0].startswith("refusing 127.0.0.1:")
    assert lines[0].endswith(
        "with 429: addr:127.0.0.1 already holds 2 connection(s) (MAX_CONNECTIONS_PER_ADDRESS)"
    )


def test_the_loopback_is_not_counted_per_address_by_default() -> None:
    app = RecordingApp()
    with running_server(app, max_connections_per_address=1) as server:
        with connect(ws_url(server)), connect(ws_url(server)) as second:
            second.send("both in")
            assert second.recv(TIMEOUT) == "both in"
            assert len(server.quotas) == 0


def test_plain_http_and_refused_handshakes_give_their_slot_back() -> None:
    app = RecordingApp()
    with running_server(app, max_connections_per_address=1, quota_exempt=()) as server:
        for _ in range(3):
            # A 426 (plain HTTP, no HTTP pool) and a 400: each took the slot at accept.
            assert refused(server, b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n").status == 426
            assert poll_until(lambda: len(server.quotas) == 0, TIMEOUT)
            assert refused(server, handshake_request(omit=("sec-websocket-key",))).status == 400
            assert poll_until(lambda: len(server.quotas) == 0, TIMEOUT)
        with connect(ws_url(server)) as ws:
            ws.send("the slot is free")
            assert ws.recv(TIMEOUT) == "the slot is free"


# -------------------------------------------- the Django side: users, proxies


def rawws(**options: Any) -> Any:
    return override_settings(RAWWS={"URLCONF": "tests.wsurls", **options})


@pytest.mark.django_db(transaction=True)
def test_past_the_per_user_quota_handshakes_get_429_and_other_users_are_not_affected(
    client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    users = get_user_model()
    ada = users.objects.create_user("ada", password="x")
    client.force_login(ada)
    ada_cookie = [("Cookie", f"sessionid={client.cookies['sessionid'].value}")]
    other = Client()
    other.force_login(users.objects.create_user("bob", password="x"))
    bob_cookie = {"Cookie": f"sessionid={other.cookies['sessionid'].value}"}
    with rawws(MAX_CONNECTIONS_PER_USER=2), django_server() as server:
        url = django_ws_url(server, "/ws/user/")
        with (
            connect(url, additional_headers=dict(ada_cookie)),
            connect(url, additional_headers=dict(ada_cookie)),
        ):
            for _ in range(3):
                status, headers, body = raw_handshake(server, "/ws/user/", ada_cookie)
                assert (status, headers.get("retry-after"), body) == (
                    429,
                    "5",
                    b"Too Many Requests: too many connections for this user\n",
                )
            with connect(url, additional_headers=bob_cookie) as bob, connect(url) as anonymous:
                assert '"username": "bob"' in bob.recv(TIMEOUT)
                assert '"authenticated": false' in anonymous.recv(TIMEOUT)
        assert poll_until(lambda: server.quotas.count(f"user:{ada.pk}") == 0, TIMEOUT)
        status, _, _ = raw_handshake(server, "/ws/user/", ada_cookie)
        assert status == 101
    lines = server_warnings(caplog, f"user:{ada.pk} already holds")
    assert len(lines) == 1, lines


def test_clients_behind_a_trusted_proxy_are_counted_by_their_forwarded_address() -> None:
    def via_proxy(client: str) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", client)]

    with rawws(TRUSTED_PROXIES=["127.0.0.1"], MAX_CONNECTIONS_PER_ADDRESS=2), django_server() as server:
        url = django_ws_url(server, "/ws/echo/")
        seven = {"X-Forwarded-For": "198.51.100.7"}
        with connect(url, additional_headers=seven), connect(url, additional_headers=seven):
            status, headers, body = raw_handshake(server, "/ws/echo/", via_proxy("198.51.100.7"))
            assert (status, headers.get("retry-after")) == (429, "5")
            assert body == b"Too Many Requests: too many connections from this address\n"
            # Another client behind the same proxy has its own quota.
            with connect(url, additional_headers={"X-Forwarded-For": "198.51.100.8"}) as eight:
                eight.send("mine")
                assert eight.recv(TIMEOUT) == "mine"
            assert server.quotas.count("addr:198.51.100.7") == 2
            assert server.quotas.count("addr:127.0.0.1") == 0  # the proxy itself is never counted
        assert poll_until(lambda: len(server.quotas) == 0, TIMEOUT)


def test_quota_violations_are_logged_on_the_server_logger_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = RecordingApp()
    with caplog.at_level(logging.WARNING, "django_rawws.server"):
        with running_server(app, max_connections_per_address=1, quota_exempt=()) as server:
            with connect(ws_url(server)):
                assert refused(server).status == 429
    [record] = [record for record in caplog.records if "with 429" in record.getMessage()]
    assert record.levelno == logging.WARNING


# ------------------------------------------------ queues in front of workers


def test_past_max_pending_events_a_consumer_that_cannot_keep_up_is_closed_with_1008(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = BlockingApp()
    with running_server(app, max_pending_events=10) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")  # its handler holds the connection's turn
            app.wait_entered()
            conn = app.handshakes[0]
            assert [conn.deliver_event({"n": n}) for n in range(11)] == [True] * 10 + [False]
            assert client.events_until_close(reply=False)[1] == 1008
            app.release.set()
        assert app.wait_disconnects() == [1008]
    assert len(app.events) == 10  # queued before the overflow; the 11th was refused
    assert any(
        "more than 10 events waiting for its consumer" in message
        for message in server_warnings(caplog, "closing")
    )


def test_past_eight_waiting_requests_per_http_thread_plain_http_gets_503() -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def blocking_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.release()
        assert release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    with running_server(DjangoApplication(wsgi_application=blocking_wsgi), http_workers=1) as server:
        held = [open_socket(server) for _ in range(8)]
        try:
            for sock in held:
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert entered.acquire(timeout=TIMEOUT)  # one served, seven waiting for the thread
            assert poll_until(lambda: len(server._http_sockets) == 8, TIMEOUT)
            reply = refused(server, b"GET /one-too-many HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (reply.status, reply.headers.get("Retry-After")) == (503, "5")
            assert reply.body == b"Service Unavailable: too many HTTP requests waiting\n"
            # WebSockets are not behind that queue.
            with connect(ws_url(server, "/ws/echo/")) as ws:
                ws.send("not queued")
                assert ws.recv(TIMEOUT) == "not queued"
            release.set()
            for sock in held:
                assert read_http_response(sock).body == b"ok"
                sock.close()  # no keep-alive wait holding the single thread
        finally:
            release.set()
            for sock in held:
                sock.close()
