"""TLS: ``wss://`` and ``https://`` on one port, with a certificate each test run generates (trustme).

The server gets a server-side ``ssl.SSLContext`` (what ``runws --certfile
--keyfile`` builds); clients trust the test CA: ``websockets`` for WebSockets,
``http.client`` for pages. The last tests run the example project's
``manage.py runws`` with the certificate written to files.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from django.core.management import CommandError
from django.test import override_settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from django_rawws.conf import server_config
from django_rawws.groups import get_backend
from django_rawws.handler import DjangoApplication
from django_rawws.management.commands.runws import Command
from django_rawws.server import Server
from tests.http_urls import slow_views
from tests.server.helpers import read_http_response, read_to_eof, wait_closed
from tests.test_runws import EXAMPLE, RunwsProcess, free_port
from tests.utils_server import TIMEOUT

# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    """What runws builds from --certfile/--keyfile."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    # websockets' sync client reads and writes its TLS socket from two threads;
    # TLS 1.3 session tickets arriving while it writes can lose its request.
    # No tickets keeps that client-side race out of these tests.
    context.num_tickets = 0
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(autouse=True)
def _http_urls() -> Iterator[None]:
    slow_views.reset()
    with override_settings(
        ROOT_URLCONF="tests.http_urls", MIDDLEWARE=["django.middleware.common.CommonMiddleware"]
    ):
        yield
    slow_views.release()


@contextlib.contextmanager
def tls_server(context: ssl.SSLContext, app: Any = None, **overrides: Any) -> Iterator[Server]:
    """The Django application served over TLS on 127.0.0.1, port 0."""
    overrides = {"ping_interval": None, "linger_timeout": 0.2, "close_timeout": 2.0, **overrides}
    server = Server(
        app if app is not None else DjangoApplication(),
        "127.0.0.1",
        0,
        server_config(**overrides),
        ssl_context=context,
    )
    server.start()
    backend = get_backend()
    backend.attach(server)
    try:
        yield server
    finally:
        server.stop(grace=TIMEOUT)
        backend.detach(server)


def wss_url(server: Server, path: str) -> str:
    host, port = server.address
    return f"wss://{host}:{port}{path}"


def https_connection(server: Server, client_context: ssl.SSLContext) -> http.client.HTTPSConnection:
    host, port = server.address
    return http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=client_context)


def tls_socket(server: Server, client_context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(server.address, timeout=TIMEOUT)
    return client_context.wrap_socket(sock, server_hostname=server.address[0])


def get_request(server: Server, target: str) -> bytes:
    host, port = server.address
    return f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


# ---------------------------------------------------------------- wss://


def test_wss_echo_with_the_websockets_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    big = bytes(range(256)) * 400  # 100 KiB: several TLS records each way
    with (
        tls_server(server_context) as server,
        connect(wss_url(server, "/ws/echo/"), ssl=client_context) as ws,
    ):
        ws.send("héllo over TLS")
        assert ws.recv(timeout=TIMEOUT) == "héllo over TLS"
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big


def test_a_consumer_sees_its_wss_request_as_secure(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with (
        tls_server(server_context) as server,
        connect(wss_url(server, "/ws/info/"), ssl=client_context) as ws,
    ):
        info = json.loads(ws.recv(timeout=TIMEOUT))
        host, port = server.address
    assert info["secure"] is True
    assert info["absolute_uri"] == f"https://{host}:{port}/ws/info/"


def test_runws_marks_the_application_secure_too(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with (
        tls_server(server_context, DjangoApplication(secure=True)) as server,
        connect(wss_url(server, "/ws/info/"), ssl=client_context) as ws,
    ):
        assert json.loads(ws.recv(timeout=TIMEOUT))["secure"] is True


def test_the_pages_own_https_origin_is_accepted_and_its_http_twin_refused(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with tls_server(server_context) as server:
        host, port = server.address
        with connect(wss_url(server, "/ws/echo/"), ssl=client_context, origin=f"https://{host}:{port}") as ws:
            ws.send("same origin")
            assert ws.recv(timeout=TIMEOUT) == "same origin"
        with (
            pytest.raises(InvalidStatus) as excinfo,
            connect(wss_url(server, "/ws/echo/"), ssl=client_context, origin=f"http://{host}:{port}"),
        ):
            pass
    assert excinfo.value.response.status_code == 403


# --------------------------------------------------------------- https://


def test_an_https_page_with_http_client(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with tls_server(server_context) as server:
        client = https_connection(server, client_context)
        try:
            client.request("GET", "/page/")
            response = client.getresponse()
            page = (response.status, response.read())
            client.request("GET", "/scheme/")
            scheme = json.loads(client.getresponse().read())
        finally:
            client.close()
        host, port = server.address
    assert page == (200, b"<h1>A page served on the WebSocket port</h1>")
    assert scheme == {"scheme": "https", "secure": True, "uri": f"https://{host}:{port}/scheme/"}


def test_a_large_post_and_a_keep_alive_follow_up_over_https(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB, most of it read after the head
    with tls_server(server_context) as server:
        client = https_connection(server, client_context)
        try:
            client.request("POST", "/echo/", body=body, headers={"Content-Type": "application/octet-stream"})
            first = client.getresponse()
            echoed = first.read()
            sock = client.sock
            client.request("GET", "/page/")
            second = client.getresponse()
            second.read()
            reused = client.sock is sock
        finally:
            client.close()
    assert (first.status, echoed == body) == (200, True)
    assert second.status == 200
    assert reused


def test_the_health_path_answers_over_https(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with tls_server(server_context) as server:
        client = https_connection(server, client_context)
        try:
            client.request("GET", "/healthz")
            response = client.getresponse()
            result = (response.status, response.read())
        finally:
            client.close()
    assert result == (200, b"ok\n")


def test_a_client_without_tls_gets_nothing_and_tls_clients_are_still_served(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with tls_server(server_context) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as plain:
            plain.sendall(get_request(server, "/page/"))
            try:
                answer = read_to_eof(plain)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/")
        with connect(wss_url(server, "/ws/echo/"), ssl=client_context) as ws:
            ws.send("still serving")
            assert ws.recv(timeout=TIMEOUT) == "still serving"


# --------------------------------------------------------------- shutdown


def test_a_response_in_flight_at_shutdown_is_still_encrypted(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """Cutting idle keep-alive reads at shutdown must not drop the TLS layer of a response being written."""
    with tls_server(server_context) as server, tls_socket(server, client_context) as sock:
        sock.sendall(get_request(server, "/slow/"))
        slow_views.wait_started(1)
        pool = server.http_pool
        wait_idle = pool.wait_idle

        def release_then_wait(timeout: float) -> bool:
            slow_views.release()  # the view ends while stop() waits for the HTTP pool
            return wait_idle(timeout)

        pool.wait_idle = release_then_wait  # type: ignore[method-assign]
        assert server.stop(grace=TIMEOUT) is True
        reply = read_http_response(sock)
    assert (reply.status, reply.body) == (200, b"slow view done")


def test_stop_closes_an_idle_https_keep_alive_connection_promptly(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with (
        tls_server(server_context, handshake_timeout=30) as server,
        tls_socket(server, client_context) as sock,
    ):
        sock.sendall(get_request(server, "/page/"))
        assert read_http_response(sock).status == 200
        assert server.stop(grace=TIMEOUT) is True
        assert wait_closed(sock, TIMEOUT) is not None


# ------------------------------------------------------ runws's TLS options


def test_certfile_with_the_key_inside_builds_a_server_context(
    tmp_path: Path, server_cert: trustme.LeafCert
) -> None:
    combined = tmp_path / "combined.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(combined))
    context = Command().get_ssl_context(str(combined), None)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE  # a server context: clients need no certificate


def test_a_certificate_that_does_not_load_is_a_command_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate\n")
    with pytest.raises(CommandError, match="Cannot load the TLS certificate"):
        Command().get_ssl_context(str(broken), None)


def test_keyfile_without_certfile_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="--keyfile needs --certfile"):
        Command().get_ssl_context(None, "key.pem")


@pytest.fixture
def runws_tls(tmp_path: Path, server_cert: trustme.LeafCert) -> Iterator[tuple[RunwsProcess, int]]:
    """``runws --certfile cert.pem --keyfile key.pem`` of a copy of the example project."""
    project = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    process = RunwsProcess(
        project,
        f"127.0.0.1:{port}",
        "--noreload",
        "--certfile",
        str(tmp_path / "cert.pem"),
        "--keyfile",
        str(tmp_path / "key.pem"),
    )
    try:
        yield process, port
    finally:
        process.kill()


def test_runws_with_certfile_and_keyfile_serves_wss_and_https(
    runws_tls: tuple[RunwsProcess, int], client_context: ssl.SSLContext
) -> None:
    process, port = runws_tls
    assert (
        process.wait_for_line(r"Starting WebSocket server at (\S+)$").group(1) == f"wss://127.0.0.1:{port}/"
    )
    http_line = process.wait_for_line(r"^  HTTP on this port:\s+(\S+)").group(1)
    health_line = process.wait_for_line(r"^  Health check:\s+(\S+)").group(1)
    process.wait_for_line(r"^Quit the server with")
    assert http_line == f"https://127.0.0.1:{port}/"
    assert health_line == f"https://127.0.0.1:{port}/healthz"

    with connect(
        f"wss://127.0.0.1:{port}/ws/echo/", ssl=client_context, origin=f"https://127.0.0.1:{port}"
    ) as ws:
        ws.send("through runws")
        assert ws.recv(timeout=TIMEOUT) == "through runws"
    client = http.client.HTTPSConnection("127.0.0.1", port, timeout=TIMEOUT, context=client_context)
    try:
        client.request("GET", "/static/admin/css/base.css")  # DEBUG: static files, as runserver serves them
        static = client.getresponse()
        static_body = static.read()
        client.request("GET", "/admin/login/")
        page = client.getresponse()
        page_body = page.read()
    finally:
        client.close()
    assert static.status == 200 and static_body.startswith(b"/*")
    assert page.status == 200 and b"<form" in page_body

    process.signal(signal.SIGTERM)
    assert process.wait() == 0, process.output()
