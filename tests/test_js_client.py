"""The shipped JavaScript client, ``django_rawws/static/django_rawws/rawws.js``, run by node.

Two layers:

* ``tests/js/rawws.test.js``: the state machine, backoff and reconnect rules
  with a fake socket and a fake clock, and ``tests/js/room.test.js``: the chat
  page's script on a fake DOM (``node --test``), run from here so the Python
  suite includes them;
* the real thing: ``tests/js/live_driver.js`` drives one ``RawWS`` over
  node's own ``WebSocket`` (node 22, or node 20 with ``--experimental-websocket``)
  against this package's server, which the test stops and starts again.

Without node (or without a WebSocket in it) these tests skip, or fail with
``RAWWS_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from django_rawws.server import Server, ServerConfig
from tests.conftest import skip_or_fail_without_service
from tests.server.helpers import RecordingApp

REPOSITORY = Path(__file__).resolve().parents[1]
JS_TESTS = REPOSITORY / "tests" / "js"
TIMEOUT = 10.0

# Short delays, so that a reconnect in a test takes milliseconds.
FAST = {"minDelay": 50, "maxDelay": 200, "stableAfter": 1000, "connectTimeout": 2000}


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        skip_or_fail_without_service("node is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def node_websocket(node: str) -> list[str]:
    """The node command line with a global WebSocket (node 22+, or node 20's experimental flag)."""
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        result = subprocess.run([node, *flags, "-e", probe], capture_output=True, timeout=30, check=False)
        if result.returncode == 0:
            return [node, *flags]
    skip_or_fail_without_service("this node has no WebSocket client (node >= 22, or >= 20.10 with a flag)")
    raise AssertionError("unreachable")


def test_javascript_unit_tests_pass_under_node(node: str) -> None:
    """``tests/js/*.test.js``: rawws.js with a fake socket and clock, the chat page with a fake DOM."""
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.js"))
    assert len(files) >= 2
    result = subprocess.run(
        [node, "--test", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPOSITORY,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout
    assert "# pass " in result.stdout


# ------------------------------------------------------------ against a real server


class ControlApp(RecordingApp):
    """Echo, except ``{"close": code}``, which the server answers by closing with that code."""

    def on_message(self, conn: Any, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith('{"close":'):
            conn.close(json.loads(message)["close"], "asked to")
            return
        conn.send(message)


class Restartable:
    """One server address that a test can stop and serve again, as a deployment restarts."""

    def __init__(self, app: ControlApp) -> None:
        self.app = app
        self.config = ServerConfig(workers=2, ping_interval=None, close_timeout=1.0, linger_timeout=0.2)
        self.server: Server | None = Server(app, "127.0.0.1", 0, self.config)
        self.server.start()
        self.port = self.server.address[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=TIMEOUT)
            self.server = None

    def start(self) -> None:
        assert self.server is None
        self.server = Server(self.app, "127.0.0.1", self.port, self.config)
        self.server.start()


@pytest.fixture
def served() -> Iterator[Restartable]:
    server = Restartable(ControlApp())
    try:
        yield server
    finally:
        server.stop()


class NodeClient:
    """``live_driver.js`` in a subprocess: commands in on stdin, callbacks out as JSON lines."""

    def __init__(self, command: list[str], url: str, options: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [*command, str(JS_TESTS / "live_driver.js"), url, json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPOSITORY,
        )
        self.records: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.records.put(json.loads(line))
        self.records.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def expect(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Consume records until one satisfies ``predicate``; fail with what was seen."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                record = self.records.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(
                    f"node client: no {what} within {TIMEOUT}s; seen {self.seen}; {''.join(self.stderr)}"
                )
            if record is None:
                pytest.fail(f"node client exited before {what}; seen {self.seen}; {''.join(self.stderr)}")
            self.seen.append(record)
            if predicate(record):
                return record

    def expect_state(self, state: str) -> dict[str, Any]:
        return self.expect(lambda record: record.get("state") == state, f"state {state!r}")["detail"]

    def expect_message(self) -> Any:
        return self.expect(lambda record: "message" in record, "message")["message"]

    def finish(self) -> int:
        """Close stdin and wait for node to exit on its own: it does once nothing is pending."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"node client still running (a retry pending?); seen {self.seen}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def node_client(node_websocket: list[str]) -> Iterator[Callable[..., NodeClient]]:
    clients: list[NodeClient] = []

    def start(url: str, **options: Any) -> NodeClient:
        client = NodeClient(node_websocket, url, {**FAST, **options})
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.kill()


def test_client_opens_and_exchanges_json_with_the_server(served: Restartable, node_client: Any) -> None:
    client = node_client(served.url)
    assert client.expect_state("open") == {"attempt": 0}
    client.command(send={"type": "message", "text": "héllo ✓"})
    assert client.expect_message() == {"type": "message", "text": "héllo ✓"}
    assert served.app.wait_messages(1) == ['{"type":"message","text":"héllo ✓"}']
    client.command(close=[1000, "done"])
    client.expect_state("closed")
    assert served.app.wait_disconnects(1) == [1000]
    assert client.finish() == 0


def test_client_reconnects_by_itself_when_the_server_restarts(served: Restartable, node_client: Any) -> None:
    client = node_client(served.url)
    client.expect_state("open")
    served.stop()  # open connections get 1001
    lost = client.expect_state("reconnecting")
    assert (lost["code"], lost["attempt"]) == (1001, 1)
    # While the port is closed, attempts fail and the client keeps trying.
    client.expect(lambda record: record.get("detail", {}).get("code") == 1006, "a failed attempt")
    served.start()
    client.expect_state("open")
    client.command(send={"after": "restart"})
    assert client.expect_message() == {"after": "restart"}
    assert len(served.app.handshakes) == 2


def test_client_does_not_reconnect_after_a_4403_close(served: Restartable, node_client: Any) -> None:
    client = node_client(served.url)
    client.expect_state("open")
    client.command(send={"close": 4403})
    closed = client.expect_state("closed")
    assert closed == {"code": 4403, "reason": "asked to", "byClient": False}
    # No retry timer and no socket left: node exits by itself.
    assert client.finish() == 0
    assert len(served.app.handshakes) == 1


def test_client_reconnects_after_a_1011_close(served: Restartable, node_client: Any) -> None:
    client = node_client(served.url)
    client.expect_state("open")
    client.command(send={"close": 1011})
    assert client.expect_state("reconnecting")["code"] == 1011
    client.expect_state("open")
    assert len(served.app.handshakes) == 2


def test_client_that_never_reached_the_server_keeps_trying_until_it_is_up(
    served: Restartable, node_client: Any
) -> None:
    served.stop()
    client = node_client(served.url)
    client.expect_state("connecting")
    assert client.expect_state("reconnecting")["code"] == 1006
    served.start()
    client.expect_state("open")
    assert len(served.app.handshakes) == 1
