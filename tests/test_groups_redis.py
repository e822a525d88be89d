"""The Redis group backend across processes: delivery, exclude, addressing, outages, subscriptions.

Needs Redis on 127.0.0.1:6379 (skipped without it, failed under
``RAWWS_REQUIRE_SERVICES=1``); every test works under a key prefix of its own.

* In-process: two :class:`~tests.test_resume.Node` servers, each with its
  own backend instance, stand for two processes (separate subscribers,
  separate presence nodes); a third backend with no server attached pushes
  as a view or a task would.
* Outages: the backend of one node talks to Redis through a
  :class:`~tests.redis_proxy.RedisProxy` the test cuts and restores; the
  shared Redis itself is never touched.
* Real processes: two ``python example_project/manage.py runws --noreload``
  with ``tests.settings_redis``, and a third plain ``python`` process that
  calls ``push()``; one of the servers is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from websockets.sync.client import ClientConnection, connect

from django_rawws import groups
from django_rawws.exceptions import GroupBackendUnavailable
from django_rawws.groups import MessageId, get_backend, push
from django_rawws.groups.redis import RedisGroupBackend
from django_rawws.groups.resume import is_gap
from django_rawws.protocol.connection import Connection
from tests.redis_proxy import REDIS_BACKEND, REDIS_URL, RedisProxy, redis_prefix
from tests.test_resume import Node, recv_json

REPOSITORY = Path(__file__).resolve().parents[1]
MANAGE = REPOSITORY / "example_project" / "manage.py"
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_backend() -> Iterator[None]:
    groups._reset_backend()
    yield
    groups._reset_backend()


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as value:
        yield value


def new_backend(prefix: str, **options: Any) -> RedisGroupBackend:
    values: dict[str, Any] = {
        "url": REDIS_URL,
        "prefix": prefix,
        "resumable": ["room.*"],
        "resume_count": 5,
        "reconnect_delay": 0.02,
        "reconnect_max_delay": 0.2,
    }
    values.update(options)
    return RedisGroupBackend(**values)


@pytest.fixture
def nodes(prefix: str) -> Iterator[list[Node]]:
    """Two servers, each with its own Redis backend: two processes in all but the pid."""
    created: list[Node] = []
    try:
        created.extend(Node(new_backend(prefix)) for _ in range(2))
        yield created
    finally:
        for node in created:
            node.close()


@pytest.fixture
def pusher(prefix: str) -> Iterator[RedisGroupBackend]:
    """A backend with no server attached: a view, a command or a task."""
    backend = new_backend(prefix)
    try:
        yield backend
    finally:
        backend.close()


def send(ws: ClientConnection, **command: Any) -> None:
    ws.send(json.dumps(command))


def no_more(ws: ClientConnection, marker_from: RedisGroupBackend, group: str) -> None:
    """Prove ``ws`` got nothing else: a marker sent after everything is the next message."""
    marker_from.send_raw(group, "marker")
    assert ws.recv(timeout=TIMEOUT) == "marker"


# ====================================================== across processes


class TestAcrossProcesses:
    def test_a_message_from_a_client_on_one_server_reaches_clients_on_both(self, nodes: list[Node]) -> None:
        a, b = nodes
        on_a, _ = a.connect("/lobby")
        on_b, _ = b.connect("/lobby")
        send(on_a, push="lobby", message="hello from a")
        assert on_a.recv(timeout=TIMEOUT) == "hello from a"
        assert on_b.recv(timeout=TIMEOUT) == "hello from a"
        send(on_b, relay="lobby", text="an event from b")
        assert on_a.recv(timeout=TIMEOUT) == "an event from b"
        assert on_b.recv(timeout=TIMEOUT) == "an event from b"

    def test_a_push_from_a_process_without_a_server_reaches_both(
        self, nodes: list[Node], pusher: RedisGroupBackend
    ) -> None:
        a, b = nodes
        on_a, _ = a.connect("/lobby")
        on_b, _ = b.connect("/lobby")
        assert pusher.send_raw("lobby", "raw") == 2  # two subscribed processes
        assert pusher.send_raw("lobby", b"\x00\x01") == 2
        pusher.send_event("lobby", {"type": "relay", "text": "event"})
        for ws in (on_a, on_b):
            assert [ws.recv(timeout=TIMEOUT) for _ in range(3)] == ["raw", b"\x00\x01", "event"]
        assert pusher.stats()["servers"] == 0
        assert not any(t.name == f"rawws-redis-{pusher.node}" for t in threading.enumerate())

    def test_exclude_works_across_processes(self, nodes: list[Node], pusher: RedisGroupBackend) -> None:
        a, b = nodes
        on_a, a_id = a.connect("/lobby")
        on_b, b_id = b.connect("/lobby")
        other_b, _ = b.connect("/lobby")
        send(on_a, push="lobby", message="not for the sender", exclude_me=True)
        assert on_b.recv(timeout=TIMEOUT) == other_b.recv(timeout=TIMEOUT) == "not for the sender"
        pusher.send_raw("lobby", "not for b", exclude=b_id)
        pusher.send_event("lobby", {"type": "relay", "text": "event not for a"}, exclude=[a_id])
        assert on_a.recv(timeout=TIMEOUT) == "not for b"
        assert on_b.recv(timeout=TIMEOUT) == "event not for a"
        assert [other_b.recv(timeout=TIMEOUT) for _ in range(2)] == ["not for b", "event not for a"]
        no_more(on_a, pusher, "lobby")

    def test_a_connection_is_addressed_by_its_id_from_any_process(
        self, nodes: list[Node], pusher: RedisGroupBackend
    ) -> None:
        a, b = nodes
        on_a, a_id = a.connect("/lobby")
        on_b, b_id = b.connect("/lobby")
        # conn:<id> groups ride on their process's channel: no subscription per connection.
        assert a.backend.channel(f"conn:{a_id}") == b.backend.channel(f"conn:{b_id}").replace(
            b_id.split(".")[0], a_id.split(".")[0]
        )
        pusher.send_raw(f"conn:{b_id}", "only b")
        pusher.send_event(f"conn:{a_id}", {"type": "relay", "text": "only a"})
        assert on_b.recv(timeout=TIMEOUT) == "only b"
        assert on_a.recv(timeout=TIMEOUT) == "only a"
        no_more(on_a, pusher, "lobby")
        no_more(on_b, pusher, "lobby")

    def test_each_process_subscribes_to_the_groups_of_its_own_connections_only(
        self, nodes: list[Node], pusher: RedisGroupBackend
    ) -> None:
        a, b = nodes
        on_a, _ = a.connect("/only-a")
        on_b, _ = b.connect("/only-b")
        assert pusher.send_raw("only-a", "x") == 1
        assert pusher.send_raw("only-b", "y") == 1
        assert on_a.recv(timeout=TIMEOUT) == "x" and on_b.recv(timeout=TIMEOUT) == "y"
        on_b.close()
        assert b.app.disconnects.get(timeout=TIMEOUT)
        # Unsubscribed once its last member left: Redis counts no receiver any more.
        assert pusher._redis.execute_command("PUBSUB", "NUMSUB", b.backend.channel("only-b"))[1] == 0
        assert pusher.send_raw("only-b", "nobody") == 0

    def test_a_group_message_is_framed_once_per_encoding_class_per_process(
        self, nodes: list[Node], pusher: RedisGroupBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        a, b = nodes
        clients = [node.connect("/fanout", compression=None)[0] for node in (a, b) for _ in range(10)]
        encodes: list[int] = []
        original = Connection.encode_message

        def counting(self: Connection, *args: Any, **kwargs: Any) -> bytes:
            encodes.append(1)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Connection, "encode_message", counting)
        pusher.send_raw("fanout", "to twenty clients on two processes")
        for ws in clients:
            assert ws.recv(timeout=TIMEOUT) == "to twenty clients on two processes"
        assert len(encodes) == 2  # one per process

    def test_the_subscriber_thread_starts_with_the_first_server_and_is_joined_at_detach(
        self, prefix: str
    ) -> None:
        backend = new_backend(prefix)
        name = f"rawws-redis-{backend.node}"
        server = object()
        backend.attach(server)
        [thread] = [t for t in threading.enumerate() if t.name == name]
        assert backend.wait_connected(TIMEOUT)
        backend.detach(server)
        assert not thread.is_alive()
        backend.close()

    def test_resume_works_when_the_client_comes_back_to_the_other_process(
        self, nodes: list[Node], pusher: RedisGroupBackend
    ) -> None:
        a, b = nodes
        on_a, _ = a.connect("/room.r")
        pusher.send_raw("room.r", '"one"')
        [first] = recv_json(on_a, 1)
        on_a.close()
        for text in ('"two"', '"three"'):
            pusher.send_raw("room.r", text)
        back, _ = b.connect(f"/room.r?last_id.room.r={first['id']}")
        pusher.send_raw("room.r", '"four"')
        received = recv_json(back, 3)
        assert [m["data"] for m in received] == ["two", "three", "four"]
        assert [MessageId.parse(m["id"]) for m in received] == sorted(MessageId.parse(m["id"]) for m in received)
        # A too-old id on either process: the gap message, then the window (5).
        for n in range(7):
            pusher.send_raw("room.r", str(n))
        late, _ = a.connect(f"/room.r?last_id.room.r={first['id']}")
        caught_up = [late.recv(timeout=TIMEOUT) for _ in range(6)]
        assert is_gap(caught_up[0], "room.r")
        assert [json.loads(m)["data"] for m in caught_up[1:]] == [2, 3, 4, 5, 6]


class TestConfiguration:
    def test_without_redis_py_the_backend_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "redis", None)
        with pytest.raises(ImproperlyConfigured, match=r"pip install 'django-rawws\[redis\]'"):
            RedisGroupBackend(url=REDIS_URL)

    @pytest.mark.parametrize(
        "options",
        [{"prefix": ""}, {"prefix": "has space"}, {"presence_ttl": 0}, {"url": "http://x"}, {"colour": "red"}],
    )
    def test_bad_options_are_improperly_configured(self, options: dict[str, Any]) -> None:
        with pytest.raises(ImproperlyConfigured):
            RedisGroupBackend(**options)

    def test_the_url_is_shown_without_its_password(self) -> None:
        backend = RedisGroupBackend(url="redis://user:secret@127.0.0.1:6379/0")
        assert "secret" not in repr(backend) and "secret" not in backend.safe_url
        backend.close()


# ============================================================ outages


@pytest.fixture
def proxy() -> Iterator[RedisProxy]:
    with RedisProxy() as value:
        yield value


class TestOutage:
    def test_connections_stay_open_and_service_resumes_after_an_outage(
        self, prefix: str, proxy: RedisProxy, pusher: RedisGroupBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        node = Node(new_backend(prefix, url=proxy.url))
        try:
            backend = node.backend
            assert isinstance(backend, RedisGroupBackend)
            ws, _ = node.connect("/lobby,room.o")
            assert backend.wait_connected(TIMEOUT)
            pusher.send_raw("lobby", "before")
            assert ws.recv(timeout=TIMEOUT) == "before"
            pusher.send_raw("room.o", '"kept 0"')
            assert json.loads(ws.recv(timeout=TIMEOUT))["data"] == "kept 0"

            with caplog.at_level(logging.ERROR, logger="django_rawws.groups"):
                proxy.cut()
                # A send made now through the cut proxy raises; the deferred kind is counted.
                with pytest.raises(GroupBackendUnavailable, match="unavailable"):
                    backend.send_raw("lobby", "lost", exclude=None)
                # Meanwhile other processes go on: a resumable group keeps what this one misses.
                pusher.send_raw("room.o", '"kept 1"')
                pusher.send_raw("room.o", '"kept 2"')
                ws.ping().wait(TIMEOUT)  # the WebSocket is still open and served
                deadline = time.monotonic() + TIMEOUT
                while not any("lost the Redis connection" in r.getMessage() for r in caplog.records):
                    assert time.monotonic() < deadline, "the fault was not logged"
                    with backend._cond:
                        backend._cond.wait(0.05)
            assert backend.stats()["connected"] is False or not backend.wait_connected(0)

            proxy.restore()
            assert backend.wait_connected(TIMEOUT)
            caught_up = recv_json(ws, 2)
            assert [m["data"] for m in caught_up] == ["kept 1", "kept 2"]
            pusher.send_raw("lobby", "after")
            assert ws.recv(timeout=TIMEOUT) == "after"
            assert backend.send_raw("lobby", "from the node again") >= 1
            assert ws.recv(timeout=TIMEOUT) == "from the node again"
            assert backend.stats()["reconnects"] >= 1
        finally:
            node.close()

    def test_a_push_with_immediate_raises_and_a_deferred_one_is_counted_during_an_outage(
        self, prefix: str, proxy: RedisProxy, caplog: pytest.LogCaptureFixture
    ) -> None:
        options = {"url": proxy.url, "prefix": prefix, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        with override_settings(RAWWS={"GROUP_BACKEND": REDIS_BACKEND, "GROUP_OPTIONS": options}):
            backend = get_backend()
            try:
                assert push("lobby", "fine", immediate=True) == 0
                proxy.cut()
                with pytest.raises(GroupBackendUnavailable):
                    push("lobby", "x", immediate=True)
                with pytest.raises(GroupBackendUnavailable):
                    push("lobby", event={"type": "x"})
                from django_rawws.groups import _send_on_commit

                with caplog.at_level(logging.ERROR, logger="django_rawws.groups"):
                    # What a commit hook runs: failure logged at ERROR and counted, not raised.
                    callbacks: list[Any] = []
                    with pytest.MonkeyPatch.context() as patch:
                        patch.setattr("django.db.transaction.on_commit", lambda fn, using, robust: callbacks.append(fn))
                        _send_on_commit(lambda: backend.send_raw("lobby", "x"), ["default"], backend, "lobby")
                    callbacks[0]()
                assert backend.failed_pushes == 1
                assert any(r.levelno == logging.ERROR and "'lobby'" in r.getMessage() for r in caplog.records)
                proxy.restore()
                assert push("lobby", "fine again", immediate=True) == 0
            finally:
                backend.close()


# ===================================================== real processes


class RunwsProcess:
    """``python example_project/manage.py runws --noreload --ws-only 127.0.0.1:0`` with tests.settings_redis."""

    def __init__(
        self, prefix: str, presence_ttl: float = 30.0, addrport: str = "127.0.0.1:0", *options: str
    ) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPOSITORY),
            "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
            "RAWWS_TEST_REDIS_URL": REDIS_URL,
            "RAWWS_TEST_REDIS_PREFIX": prefix,
            "RAWWS_TEST_PRESENCE_TTL": str(presence_ttl),
        }
        env.pop("DJANGO_AUTORELOAD_ENV", None)
        self.process = subprocess.Popen(
            [sys.executable, str(MANAGE), "runws", "--noreload", "--ws-only", *options, addrport],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.url = self._wait_for(r"Starting WebSocket server at (ws://\S+?)/$").group(1)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.process.stdout.close()
        self.lines.put(None)

    def _wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + 60
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"runws did not print {pattern!r}:\n{''.join(self.output)}")
            if line is None:
                pytest.fail(f"runws exited before {pattern!r}:\n{''.join(self.output)}")
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._reader.join(10)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._reader.join(10)


def push_from_a_plain_process(prefix: str, code: str) -> str:
    """Run ``code`` in a new Python process with the tests' Redis settings; return its stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "DJANGO_SETTINGS_MODULE": "tests.settings_redis",
        "RAWWS_TEST_REDIS_URL": REDIS_URL,
        "RAWWS_TEST_REDIS_PREFIX": prefix,
    }
    script = "import django; django.setup()\nfrom django_rawws.groups import push\n" + code
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@contextlib.contextmanager
def two_runws(prefix: str, presence_ttl: float = 30.0) -> Iterator[list[RunwsProcess]]:
    processes: list[RunwsProcess] = []
    try:
        processes.append(RunwsProcess(prefix, presence_ttl))
        processes.append(RunwsProcess(prefix, presence_ttl))
        yield processes
    finally:
        for process in processes:
            process.stop()


def open_client(url: str, stack: contextlib.ExitStack) -> tuple[ClientConnection, str]:
    ws = stack.enter_context(connect(url, proxy=None, open_timeout=TIMEOUT, max_queue=None))
    assert ws.response is not None
    return ws, ws.response.headers["X-Conn-Id"]


class TestTwoRunwsProcesses:
    def test_clients_on_two_processes_and_a_push_from_a_third(self, prefix: str) -> None:
        with two_runws(prefix) as (one, two), contextlib.ExitStack() as stack:
            on_one, one_id = open_client(f"{one.url}/ws/groups/lobby/?user=7", stack)
            on_two, two_id = open_client(f"{two.url}/ws/groups/lobby/?user=8", stack)
            same_user, _ = open_client(f"{two.url}/ws/groups/lobby/?user=7", stack)

            # A client's message on one process reaches the clients of the other.
            on_one.send(json.dumps({"push": "lobby", "message": "hi all"}))
            for ws in (on_one, on_two, same_user):
                assert ws.recv(timeout=TIMEOUT) == "hi all"
            # exclude= the sender, across processes.
            on_two.send(json.dumps({"push": "lobby", "message": "not to me", "exclude_me": True}))
            assert on_one.recv(timeout=TIMEOUT) == same_user.recv(timeout=TIMEOUT) == "not to me"

            # A third, plain process: a push to the room, to a user on both processes, to one connection.
            out = push_from_a_plain_process(
                prefix,
                f"print(push('lobby', 'from a task'))\n"
                f"print(push('user:7', 'for user 7'))\n"
                f"print(push('conn:{one_id}', 'for one connection'))\n"
                # Last: an event send is not ordered with raw ones (it waits for a worker).
                f"print(push('lobby', event={{'type': 'relay', 'text': 'event'}}, exclude={two_id!r}))\n",
            )
            assert out.split() == ["2", "2", "1", "2"]
            assert [on_one.recv(timeout=TIMEOUT) for _ in range(4)] == [
                "from a task",
                "for user 7",
                "for one connection",
                "event",
            ]
            assert on_two.recv(timeout=TIMEOUT) == "from a task"
            assert [same_user.recv(timeout=TIMEOUT) for _ in range(3)] == ["from a task", "for user 7", "event"]
            # Nothing else reached on_two (excluded from the event, not user 7).
            on_one.send(json.dumps({"push": "lobby", "message": "marker"}))
            assert on_two.recv(timeout=TIMEOUT) == "marker"

    def test_presence_shows_both_processes_and_drops_a_killed_one_within_the_ttl(self, prefix: str) -> None:
        ttl = 1.5
        with two_runws(prefix, presence_ttl=ttl) as (one, two), contextlib.ExitStack() as stack:
            ada, ada_id = open_client(f"{one.url}/ws/groups/room.p/?name=ada", stack)
            assert json.loads(ada.recv(timeout=TIMEOUT)) == {
                "type": "rawws.presence",
                "group": "room.p",
                "members": [{"conn": ada_id, "name": "ada"}],
            }
            bob, bob_id = open_client(f"{two.url}/ws/groups/room.p/?name=bob", stack)
            snapshot = json.loads(bob.recv(timeout=TIMEOUT))
            assert sorted(snapshot["members"], key=lambda e: e["name"]) == [
                {"conn": ada_id, "name": "ada"},
                {"conn": bob_id, "name": "bob"},
            ]
            assert json.loads(ada.recv(timeout=TIMEOUT))["joined"] == [{"conn": bob_id, "name": "bob"}]
            observer = new_backend(prefix)
            try:
                assert {e["name"] for e in observer.presence("room.p")} == {"ada", "bob"}
                started = time.monotonic()
                one.kill()
                # The survivor's heartbeat finds ada's process dead and announces it.
                notice = json.loads(bob.recv(timeout=ttl * 3 + TIMEOUT))
                assert notice == {"type": "rawws.presence", "group": "room.p", "left": [{"conn": ada_id, "name": "ada"}]}
                assert time.monotonic() - started < ttl + ttl / 3 + 3.0
                assert observer.presence("room.p") == [{"conn": bob_id, "name": "bob"}]
            finally:
                observer.close()
            bob.close()

    def test_a_client_resumes_on_the_other_process_with_exactly_what_it_missed(self, prefix: str) -> None:
        with two_runws(prefix) as (one, two), contextlib.ExitStack() as stack:
            first, _ = open_client(f"{one.url}/ws/groups/room.x/", stack)
            push_from_a_plain_process(prefix, "push('room.x', '{\"n\": 1}')")
            [seen] = recv_json(first, 1)
            first.close()
            push_from_a_plain_process(prefix, "push('room.x', '{\"n\": 2}'); push('room.x', '{\"n\": 3}')")
            back, _ = open_client(f"{two.url}/ws/groups/room.x/?last_id.room.x={seen['id']}", stack)
            back.send(json.dumps({"push": "room.x", "message": '{"n": 4}'}))
            assert [m["data"]["n"] for m in recv_json(back, 3)] == [2, 3, 4]

    def test_with_reuse_port_two_processes_share_one_port(self, prefix: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        processes: list[RunwsProcess] = []
        try:
            for _ in range(2):
                processes.append(RunwsProcess(prefix, 30.0, f"127.0.0.1:{port}", "--reuse-port"))
            assert {process.url for process in processes} == {f"ws://127.0.0.1:{port}"}
            assert all(process.process.poll() is None for process in processes)
            with contextlib.ExitStack() as stack:
                # The kernel picks a process for each connection; a push reaches them all.
                clients = [open_client(f"ws://127.0.0.1:{port}/ws/groups/shared/", stack)[0] for _ in range(8)]
                assert push_from_a_plain_process(prefix, "print(push('shared', 'everyone'))").split()[0] in {"1", "2"}
                assert [ws.recv(timeout=TIMEOUT) for ws in clients] == ["everyone"] * 8
        finally:
            for process in processes:
                process.stop()
