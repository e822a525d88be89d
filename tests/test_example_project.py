"""The example project, served by a real ``manage.py runws``: /ws/echo/ and /ws/broadcast/.

Three clients talk to it: ``websockets``, ``websocket-client`` and our own
test client, so the example is checked against independent implementations.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import websocket
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from django_rawws.testing import WebSocketTestClient
from tests.test_runws import EXAMPLE, REPOSITORY, RunwsProcess, free_port

MIB = 1 << 20


@pytest.fixture(scope="module")
def example_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ``runws --noreload`` of a copy of the example for the module; its ws:// base URL."""
    project = tmp_path_factory.mktemp("example") / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    process = RunwsProcess(project, f"127.0.0.1:{free_port()}", "--noreload")
    try:
        yield process.wait_until_serving()
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.output()
    finally:
        process.kill()


def test_example_project_passes_the_system_checks() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=EXAMPLE,
        env={
            **os.environ,
            "PYTHONPATH": str(REPOSITORY),
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


# ---------------------------------------------------------------------- echo


def test_echo_sends_text_back_as_text(example_url: str) -> None:
    with connect(f"{example_url}/ws/echo/") as ws:
        ws.send("héllo ✓")
        assert ws.recv(timeout=5) == "héllo ✓"


def test_echo_sends_binary_back_as_binary(example_url: str) -> None:
    ws = websocket.create_connection(f"{example_url}/ws/echo/", timeout=5)
    try:
        ws.send_binary(b"\x00\xff binary")
        opcode, data = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_BINARY
        assert data == b"\x00\xff binary"
    finally:
        ws.close()


def test_echo_takes_a_16_mib_message_and_sends_it_back_whole(example_url: str) -> None:
    payload = os.urandom(16 * MIB)
    with WebSocketTestClient(f"{example_url}/ws/echo/", timeout=30) as ws:
        ws.send(payload)
        assert ws.receive_bytes() == payload
        # Still open: the 16 MiB reply fits the example's outgoing buffer.
        ws.send("after")
        assert ws.receive() == "after"


def test_echo_takes_a_16_mib_compressed_text_message(example_url: str) -> None:
    payload = "abcdefgh" * (2 * MIB)
    with connect(f"{example_url}/ws/echo/", max_size=None, compression="deflate") as ws:
        ws.send(payload)
        assert ws.recv(timeout=30) == payload


def test_echo_closes_with_1009_past_16_mib(example_url: str) -> None:
    with WebSocketTestClient(f"{example_url}/ws/echo/", timeout=30) as ws:
        ws.send(bytes(16 * MIB + 1))
        ws.assert_closed(1009)


# ----------------------------------------------------------------- broadcast


def test_broadcast_reaches_every_client_sender_included(example_url: str) -> None:
    with (
        WebSocketTestClient(f"{example_url}/ws/broadcast/") as first,
        connect(f"{example_url}/ws/broadcast/") as second,
    ):
        first.send("from the first")
        assert first.receive() == "from the first"
        assert second.recv(timeout=5) == "from the first"
        second.send("from the second")
        assert second.recv(timeout=5) == "from the second"
        assert first.receive() == "from the second"


def test_broadcast_reaches_only_clients_of_the_broadcast_route(example_url: str) -> None:
    with (
        WebSocketTestClient(f"{example_url}/ws/broadcast/") as listener,
        WebSocketTestClient(f"{example_url}/ws/echo/") as bystander,
    ):
        listener.send("to the room")
        assert listener.receive() == "to the room"
        assert bystander.receive_nothing()


def test_broadcast_refuses_binary_messages_with_1003(example_url: str) -> None:
    with connect(f"{example_url}/ws/broadcast/") as ws:
        ws.send(b"\x01\x02")
        with pytest.raises(ConnectionClosedError) as excinfo:
            ws.recv(timeout=5)
    assert excinfo.value.rcvd is not None
    assert excinfo.value.rcvd.code == 1003


def test_unknown_path_is_refused_with_404(example_url: str) -> None:
    assert WebSocketTestClient.refused(f"{example_url}/ws/nowhere/").status == 404


def test_health_path_answers_200(example_url: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(example_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok\n")
    finally:
        conn.close()
