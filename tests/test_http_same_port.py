"""Plain HTTP on the WebSocket port: Django's own handler on the server's HTTP pool.

Every test talks to a real server on 127.0.0.1 through sockets: the views are
in ``tests/http_urls.py``, the WebSocket routes in ``tests/wsurls.py``. Waits
are bounded and wait on something (a response, a view that reports it
started, the peer's FIN), never on the clock alone.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.test import override_settings
from websockets.sync.client import connect

from django_rawws import plain_http
from django_rawws.handler import DjangoApplication
from django_rawws.management.commands.runws import Command
from django_rawws.protocol.http import ResponseParser
from tests.http_urls import slow_views
from tests.server.helpers import HttpReply, read_http_response, read_to_eof, wait_closed
from tests.utils_server import TIMEOUT, running_server, ws_url

WS_URLCONF = "tests.wsurls"


def rawws(**options: Any) -> override_settings:
    return override_settings(RAWWS={"URLCONF": WS_URLCONF, **options})


@pytest.fixture(autouse=True)
def _http_urls() -> Iterator[None]:
    """The test views as ROOT_URLCONF; no slow view outlives its test.

    CommonMiddleware, as in a project, sets Content-Length: without it
    Django's handler closes the connection after each response.
    """
    slow_views.reset()
    with override_settings(
        ROOT_URLCONF="tests.http_urls", MIDDLEWARE=["django.middleware.common.CommonMiddleware"]
    ):
        yield
    slow_views.release()


def request_bytes(
    server: Any,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    host, port = server.address
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def open_socket(server: Any) -> socket.socket:
    return socket.create_connection(server.address, timeout=TIMEOUT)


def fetch(server: Any, method: str, target: str, **kwargs: Any) -> HttpReply:
    """One request on a fresh connection; the response read by its Content-Length."""
    with open_socket(server) as sock:
        sock.sendall(request_bytes(server, method, target, **kwargs))
        return read_http_response(sock)


def round_trip_latencies(server: Any, count: int) -> list[float]:
    latencies = []
    with connect(ws_url(server, "/ws/echo/"), open_timeout=TIMEOUT) as ws:
        for index in range(count):
            start = time.monotonic()
            ws.send(f"ping {index}")
            assert ws.recv(timeout=TIMEOUT) == f"ping {index}"
            latencies.append(time.monotonic() - start)
    return latencies


# --------------------------------------------------------------- requests


def test_a_plain_get_is_answered_by_the_projects_wsgi_application() -> None:
    with running_server() as server:
        reply = fetch(server, "GET", "/page/")
    assert reply.status == 200
    assert reply.body == b"<h1>A page served on the WebSocket port</h1>"
    assert reply.headers.get("Content-Type") == "text/html"
    assert reply.headers.get("Server", "").startswith("WSGIServer/")  # Django's own handler


def test_a_view_sees_a_plain_http_request_as_not_secure() -> None:
    with running_server() as server:
        host, port = server.address
        reply = fetch(server, "GET", "/scheme/?a=1")
    assert json.loads(reply.body) == {
        "scheme": "http",
        "secure": False,
        "uri": f"http://{host}:{port}/scheme/?a=1",
    }


def test_an_unknown_path_gets_djangos_404() -> None:
    with running_server() as server:
        assert fetch(server, "GET", "/nowhere/").status == 404


@pytest.mark.parametrize("size", [11, 300_000], ids=["body-within-the-first-read", "body-after-it"])
def test_a_post_body_reaches_the_view_and_is_echoed_back(size: int) -> None:
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with running_server() as server:
        reply = fetch(
            server, "POST", "/echo/", headers=[("Content-Type", "application/octet-stream")], body=body
        )
    assert reply.status == 200
    assert reply.headers.get("X-Method") == "POST"
    assert reply.headers.get("X-Body-Length") == str(size)
    assert reply.body == body


def test_two_requests_on_one_keep_alive_connection_are_both_answered_with_content_length() -> None:
    with running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/page/"))
        first = read_http_response(sock)
        sock.sendall(request_bytes(server, "POST", "/echo/", body=b"second request"))
        second = read_http_response(sock)
    assert (first.status, second.status) == (200, 200)
    assert first.headers.get("Content-Length") == str(len(first.body))
    assert second.headers.get("Content-Length") == str(len(b"second request"))
    assert second.body == b"second request"
    assert "close" not in (first.headers.get("Connection") or "").lower()


def test_a_response_without_content_length_ends_with_the_connection() -> None:
    """Django's handler (as under runserver) closes the connection when the length is unknown."""
    with running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/stream/"))
        data = read_to_eof(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close" in head
    assert body == b"streamed in three parts"


def split_responses(data: bytes) -> list[HttpReply]:
    """Responses sent back to back, each framed by its Content-Length."""
    replies = []
    while data:
        parser = ResponseParser()
        response = parser.feed(data)
        assert response is not None, f"incomplete response head: {data[:200]!r}"
        length = int(response.headers.get("Content-Length") or 0)
        body, data = parser.trailing[:length], parser.trailing[length:]
        replies.append(HttpReply(response.status, response.headers, body))
    return replies


def test_pipelined_requests_read_with_the_first_head_are_all_answered() -> None:
    with running_server() as server, open_socket(server) as sock:
        sock.sendall(
            request_bytes(server, "POST", "/echo/", body=b"one")
            + request_bytes(server, "POST", "/echo/", body=b"two")
            + request_bytes(server, "GET", "/page/", headers=[("Connection", "close")])
        )
        replies = split_responses(read_to_eof(sock))
    assert [reply.status for reply in replies] == [200, 200, 200]
    assert [reply.body for reply in replies[:2]] == [b"one", b"two"]


def test_a_websocket_upgrade_still_works_next_to_plain_http() -> None:
    with running_server() as server:
        assert fetch(server, "GET", "/page/").status == 200
        with connect(ws_url(server, "/ws/echo/")) as ws:
            ws.send("after a page")
            assert ws.recv(timeout=TIMEOUT) == "after a page"


# ----------------------------------------------------------------- limits


def test_a_plain_request_with_200_headers_gets_431_from_the_servers_parser() -> None:
    headers = [(f"X-Header-{index}", "v") for index in range(200)]
    with running_server() as server:
        reply = fetch(server, "GET", "/page/", headers=headers)
    assert reply.status == 431


def test_a_plain_request_line_over_the_limit_gets_414() -> None:
    with rawws(MAX_REQUEST_LINE=1024), running_server() as server:
        reply = fetch(server, "GET", "/page/?q=" + "a" * 2000)
    assert reply.status == 414


def test_a_keep_alive_follow_up_with_200_headers_gets_431_from_djangos_handler() -> None:
    """After the first request, Django's handler parses: http.server's limit of 100 header lines."""
    headers = [(f"X-Header-{index}", "v") for index in range(200)]
    with running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/page/"))
        assert read_http_response(sock).status == 200
        sock.sendall(request_bytes(server, "GET", "/page/", headers=headers))
        assert read_http_response(sock).status == 431


def test_an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() -> None:
    with rawws(HANDSHAKE_TIMEOUT=0.5), running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/page/"))
        assert read_http_response(sock).status == 200
        waited = wait_closed(sock, TIMEOUT)
    assert waited is not None, "the idle connection stayed open"
    assert waited >= 0.3


# ---------------------------------------------------- the pools, kept apart


def test_slow_views_holding_every_http_thread_do_not_delay_websocket_echo() -> None:
    with rawws(HTTP_WORKERS=2, WORKERS=2), running_server() as server:
        results: list[HttpReply] = []

        def slow_request() -> None:
            results.append(fetch(server, "GET", "/slow/"))

        threads = [threading.Thread(target=slow_request) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            slow_views.wait_started(2)  # both HTTP threads are now inside the view
            latencies = sorted(round_trip_latencies(server, 100))
        finally:
            slow_views.release()
            for thread in threads:
                thread.join(TIMEOUT)
    assert [reply.status for reply in results] == [200, 200]
    assert [reply.body for reply in results] == [b"slow view done"] * 2
    p99 = latencies[98]
    assert p99 < 0.2, f"echo p99 {p99 * 1000:.1f} ms while the views ran"


def test_an_idle_keep_alive_connection_gives_its_thread_to_a_waiting_one() -> None:
    """With every HTTP thread held by an idle keep-alive connection, a new request still gets answered."""
    with rawws(HTTP_WORKERS=2, HANDSHAKE_TIMEOUT=30), running_server() as server:
        idle = [open_socket(server) for _ in range(2)]
        try:
            for sock in idle:
                sock.sendall(request_bytes(server, "GET", "/page/"))
                assert read_http_response(sock).status == 200
            start = time.monotonic()
            reply = fetch(server, "GET", "/page/")
            elapsed = time.monotonic() - start
            # One of them was closed to make room (the other may stay open).
            readable, _, _ = select.select(idle, [], [], TIMEOUT)
            given_up = [sock.recv(1) for sock in readable]
        finally:
            for sock in idle:
                sock.close()
    assert reply.status == 200
    assert elapsed < 5.0, f"the new request waited {elapsed:.1f}s for a thread"
    assert given_up and all(data == b"" for data in given_up)


def test_a_keep_alive_connection_is_kept_while_http_threads_are_free() -> None:
    with rawws(HTTP_WORKERS=4), running_server() as server, open_socket(server) as sock:
        for _ in range(3):
            sock.sendall(request_bytes(server, "GET", "/page/"))
            assert read_http_response(sock).status == 200
        # Another connection comes and goes; this one is still usable.
        assert fetch(server, "GET", "/page/").status == 200
        sock.sendall(request_bytes(server, "POST", "/echo/", body=b"still here"))
        assert read_http_response(sock).body == b"still here"


def test_the_idle_wait_ends_at_once_when_the_pool_is_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule itself: a handler between requests gives up when as many connections as threads are held."""
    monkeypatch.setattr(plain_http._occupancy, "count", 3)
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(30)
        reader = plain_http._PrefixedReader(b"", left, lambda: plain_http._occupancy.count >= 3)
        reader.awaiting_request = True
        start = time.monotonic()
        assert reader.readinto(bytearray(10)) == 0
        assert time.monotonic() - start < 5.0
        # A request already there is read, crowded or not.
        right.sendall(b"GET")
        reader.awaiting_request = True
        buffer = bytearray(10)
        assert reader.readinto(buffer) == 3
        assert bytes(buffer[:3]) == b"GET"


# --------------------------------------------------------------- shutdown


def test_stop_closes_an_idle_keep_alive_connection_and_returns_promptly() -> None:
    with rawws(HANDSHAKE_TIMEOUT=30), running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/page/"))
        assert read_http_response(sock).status == 200
        start = time.monotonic()
        assert server.stop(grace=TIMEOUT) is True
        stopped_in = time.monotonic() - start
        assert wait_closed(sock, TIMEOUT) is not None
    assert stopped_in < 3.0, f"stop() took {stopped_in:.1f}s with an idle keep-alive connection"


def release_slow_views_once_stop_waits_for_http(server: Any) -> None:
    """Let the slow views finish from inside ``stop()``, once it waits for the HTTP pool.

    By then the listener is closed and idle keep-alive reads are cut: the
    view's response is the one of a request in flight at shutdown.
    """
    pool = server.http_pool
    wait_idle = pool.wait_idle

    def release_then_wait(timeout: float) -> bool:
        slow_views.release()
        return wait_idle(timeout)

    pool.wait_idle = release_then_wait


def test_a_request_in_flight_at_shutdown_gets_its_response_then_the_connection_closes() -> None:
    with rawws(HANDSHAKE_TIMEOUT=30), running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/slow/"))
        slow_views.wait_started(1)
        address = server.address
        release_slow_views_once_stop_waits_for_http(server)
        assert server.stop(grace=TIMEOUT) is True
        reply = read_http_response(sock)
        rest = read_to_eof(sock)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=TIMEOUT).close()
    assert (reply.status, reply.body) == (200, b"slow view done")
    assert rest == b""


def test_a_plain_request_still_arriving_at_shutdown_gets_503() -> None:
    with running_server() as server, open_socket(server) as sock:
        sock.sendall(b"GET /page/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head is not complete
        # Accepted in order: once a later connection is answered, this one is in the server.
        assert fetch(server, "GET", "/healthz").status == 200
        server.stop(grace=TIMEOUT)
        reply = read_http_response(sock)
    assert reply.status == 503


# ------------------------------------------------------------- --ws-only


def ws_only_app() -> DjangoApplication:
    return DjangoApplication(ws_only=True, wsgi_application=_must_not_be_called)


def _must_not_be_called(environ: Any, start_response: Any) -> Any:
    raise AssertionError("--ws-only passed a request to the WSGI application")


def test_ws_only_answers_426_with_upgrade_on_a_websocket_route() -> None:
    with running_server(ws_only_app()) as server:
        reply = fetch(server, "GET", "/ws/echo/")
    assert reply.status == 426
    assert reply.headers.get("Upgrade") == "websocket"
    assert "upgrade" in (reply.headers.get("Connection") or "").lower()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ws_only_answers_404_on_any_other_path(method: str) -> None:
    with running_server(ws_only_app()) as server:
        reply = fetch(server, method, "/page/", body=b"x" * 100_000 if method == "POST" else b"")
    assert reply.status == 404


def test_ws_only_still_answers_the_health_path_and_serves_websockets() -> None:
    with running_server(ws_only_app()) as server:
        reply = fetch(server, "GET", "/healthz")
        with connect(ws_url(server, "/ws/echo/")) as ws:
            ws.send("ws only")
            assert ws.recv(timeout=TIMEOUT) == "ws only"
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_with_http_workers_0_a_plain_request_gets_426() -> None:
    with rawws(HTTP_WORKERS=0), running_server() as server:
        reply = fetch(server, "GET", "/page/")
    assert reply.status == 426


# ----------------------------------------------------------- static files


@pytest.fixture
def static_project(tmp_path: Path) -> Iterator[Path]:
    """django.contrib.staticfiles installed, with one file in a STATICFILES_DIRS directory."""
    (tmp_path / "site.css").write_text("body { color: teal; }\n")
    with override_settings(
        INSTALLED_APPS=[*settings.INSTALLED_APPS, "django.contrib.staticfiles"],
        STATIC_URL="/static/",
        STATICFILES_DIRS=[str(tmp_path)],
    ):
        yield tmp_path


def runws_handler(*arguments: str) -> Any:
    """The WSGI application runws builds for these command-line options."""
    command = Command()
    options = vars(command.create_parser("manage.py", "runws").parse_args(list(arguments)))
    return command.get_handler(**options)


@pytest.mark.parametrize(
    ("debug", "arguments", "status"),
    [
        (True, (), 200),
        (True, ("--nostatic",), 404),
        (False, (), 404),
        (False, ("--insecure",), 200),
        (False, ("--insecure", "--nostatic"), 404),
    ],
)
def test_static_files_are_served_as_by_runserver(
    static_project: Path, debug: bool, arguments: tuple[str, ...], status: int
) -> None:
    with override_settings(DEBUG=debug):
        handler = runws_handler(*arguments)
        assert isinstance(handler, StaticFilesHandler) is (status == 200)
        with running_server(DjangoApplication(wsgi_application=handler)) as server:
            reply = fetch(server, "GET", "/static/site.css")
            page = fetch(server, "GET", "/page/")
    assert reply.status == status
    if status == 200:
        assert reply.body == b"body { color: teal; }\n"
        assert reply.headers.get("Content-Type", "").startswith("text/css")
    assert page.status == 200  # everything else still reaches the project's views


def test_without_the_staticfiles_app_nothing_is_wrapped() -> None:
    assert "django.contrib.staticfiles" not in settings.INSTALLED_APPS
    with override_settings(DEBUG=True):
        assert not isinstance(runws_handler("--insecure"), StaticFilesHandler)


def test_a_body_that_stops_coming_is_an_error_not_a_truncated_body() -> None:
    with rawws(HANDSHAKE_TIMEOUT=0.5), running_server() as server, open_socket(server) as sock:
        host, port = server.address
        sock.sendall(
            f"POST /echo/ HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"only ten b"
        )
        reply = read_http_response(sock)
    assert reply.status != 200
    assert reply.body != b"only ten b"


def test_a_follow_up_head_that_stops_coming_closes_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    with rawws(HANDSHAKE_TIMEOUT=0.5), running_server() as server, open_socket(server) as sock:
        sock.sendall(request_bytes(server, "GET", "/page/"))
        assert read_http_response(sock).status == 200
        sock.sendall(b"GET /page/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        assert read_to_eof(sock) == b""
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
