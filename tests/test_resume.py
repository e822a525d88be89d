"""Resumable groups: ids in an envelope, the window, the merge with the live flow, the gap message.

Three layers, as in ``test_groups.py``:

* units: message ids, the ``last_id.<group>`` query parameters, gap detection;
* the same resume contract against both backends with stub connections
  (``resumable`` backend fixture; Redis under a prefix of its own);
* real sockets: a plain server app (:class:`NodeApp`) that joins the group
  named by the path, so a ``websockets`` client reconnects with its last id.
  Cross-process resume (two servers, two backends) is in
  ``test_groups_redis.py``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import override_settings
from websockets.sync.client import ClientConnection, connect

from django_rawws import groups
from django_rawws.groups import (
    BaseGroupBackend,
    MessageId,
    connection_group,
    event_handler_name,
    get_backend,
    push,
)
from django_rawws.groups.memory import MemoryGroupBackend
from django_rawws.groups.resume import (
    Entry,
    envelope,
    has_gap,
    is_gap,
    resume_requests,
    validate_resumable_message,
)
from django_rawws.server import Server, ServerConfig, ServerConnection
from tests.redis_proxy import REDIS_BACKEND, REDIS_URL, redis_prefix
from tests.test_groups import FakeServer, StubConnection
from tests.test_js_client import node, node_websocket  # noqa: F401 - fixtures

MEMORY = "django_rawws.groups.memory.MemoryGroupBackend"
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_backend() -> Iterator[None]:
    groups._reset_backend()
    yield
    groups._reset_backend()


def ids_of(messages: list[Any]) -> list[str]:
    return [json.loads(m)["id"] for m in messages]


def data_of(messages: list[Any]) -> list[Any]:
    return [json.loads(m)["data"] for m in messages]


# ================================================================= units


class TestMessageIds:
    def test_an_id_is_milliseconds_dash_sequence_and_orders_numerically(self) -> None:
        assert MessageId.parse("1700000000000-2") == MessageId(1700000000000, 2)
        assert str(MessageId(17, 3)) == "17-3"
        assert MessageId.parse("9-10") > MessageId.parse("9-9") > MessageId.parse("8-99")
        assert MessageId.parse(b"5-0") == MessageId(5, 0)

    @pytest.mark.parametrize("text", ["", "5", "5-", "-5", "a-1", "1-2-3", "1 -2", "9" * 21 + "-0", "1.5-0"])
    def test_anything_else_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError):
            MessageId.parse(text)


class TestResumeRequests:
    def test_last_id_parameters_name_the_group_after_the_dot(self) -> None:
        query = "last_id.room.lobby=1700-1&last_id.user%3A7=1700-2&other=x"
        assert resume_requests(query) == {"room.lobby": MessageId(1700, 1), "user:7": MessageId(1700, 2)}

    def test_malformed_ids_are_ignored_so_the_client_starts_fresh(self) -> None:
        assert resume_requests("last_id.room=yesterday&last_id.b=&last_id.c=3-4") == {"c": MessageId(3, 4)}

    def test_a_query_without_last_ids_costs_no_parsing(self) -> None:
        assert resume_requests("a=1&b=2") == {}
        assert resume_requests("") == {}

    def test_the_number_of_parameters_read_is_bounded(self) -> None:
        query = "&".join(f"last_id.g{i}=1-{i}" for i in range(500))
        assert len(resume_requests(query)) <= 64


class TestGapDetection:
    def entry(self, ident: str, prev: str) -> Entry:
        return Entry(MessageId.parse(ident), prev, "1", frozenset())

    def test_a_window_continuing_from_the_clients_id_has_no_gap(self) -> None:
        entries = [self.entry("5-0", "4-0"), self.entry("6-0", "5-0")]
        assert not has_gap(MessageId(4, 0), entries, MessageId(6, 0))

    def test_a_first_entry_whose_predecessor_is_not_the_clients_id_is_a_gap(self) -> None:
        assert has_gap(MessageId(2, 0), [self.entry("5-0", "4-0")], MessageId(5, 0))

    def test_nothing_after_the_clients_id_is_fine_only_if_it_is_the_newest(self) -> None:
        assert not has_gap(MessageId(6, 0), [], MessageId(6, 0))
        assert has_gap(MessageId(4, 0), [], MessageId(6, 0))  # all trimmed
        assert has_gap(MessageId(9, 0), [], MessageId(6, 0))  # an id this group never issued
        assert has_gap(MessageId(9, 0), [], None)  # no record of the group at all


class TestEnvelope:
    def test_the_envelope_splices_the_json_as_it_was_pushed(self) -> None:
        text = envelope(MessageId(5, 1), "room", '{"a": [1, 2]}')
        assert text == '{"id":"5-1","group":"room","data":{"a": [1, 2]}}'
        assert json.loads(text) == {"id": "5-1", "group": "room", "data": {"a": [1, 2]}}

    @pytest.mark.parametrize("message", ['"text"', "3", "null", '[1, {"b": true}]', ' {"x": 1} '])
    def test_any_json_value_is_a_resumable_message(self, message: str) -> None:
        assert validate_resumable_message("room", message) == message

    @pytest.mark.parametrize("message", ["plain text", "{", "NaN", '{"x": Infinity}', ""])
    def test_text_that_is_not_json_is_refused(self, message: str) -> None:
        with pytest.raises(ValueError, match="JSON"):
            validate_resumable_message("room", message)

    def test_binary_is_refused(self) -> None:
        with pytest.raises(TypeError, match="resumable"):
            validate_resumable_message("room", b"{}")


# ======================================================= backend contract


@pytest.fixture(params=[pytest.param(MEMORY, id="memory"), pytest.param(REDIS_BACKEND, id="redis")])
def resumable(request: pytest.FixtureRequest) -> Iterator[BaseGroupBackend]:
    """A backend where ``room*`` groups are resumable with a window of 5 messages, a server attached."""
    options: dict[str, Any] = {"resumable": ["room*"], "resume_count": 5}
    with contextlib.ExitStack() as stack:
        if request.param == REDIS_BACKEND:
            options.update(url=REDIS_URL, prefix=stack.enter_context(redis_prefix()))
        stack.enter_context(override_settings(RAWWS={"GROUP_BACKEND": request.param, "GROUP_OPTIONS": options}))
        backend = get_backend()
        server = FakeServer()
        backend.attach(server)
        backend.test_server = server  # type: ignore[attr-defined]
        try:
            yield backend
        finally:
            backend.detach(server)
            backend.close()


def member(backend: BaseGroupBackend, group: str, **kwargs: Any) -> StubConnection:
    conn = StubConnection(server=backend.test_server, is_open=kwargs.pop("is_open", True))  # type: ignore[attr-defined]
    backend.add(group, conn, **kwargs)
    return conn


class TestResumeContract:
    def test_every_raw_message_arrives_in_an_envelope_with_increasing_ids(
        self, resumable: BaseGroupBackend
    ) -> None:
        conn = member(resumable, "room")
        for i in range(4):
            resumable.send_raw("room", json.dumps({"n": i}))
        messages = conn.wait_messages(4)
        assert [json.loads(m)["group"] for m in messages] == ["room"] * 4
        assert data_of(messages) == [{"n": i} for i in range(4)]
        ids = [MessageId.parse(i) for i in ids_of(messages)]
        assert ids == sorted(ids) and len(set(ids)) == 4

    def test_groups_not_matching_a_pattern_are_plain(self, resumable: BaseGroupBackend) -> None:
        conn = member(resumable, "lobby")
        resumable.send_raw("lobby", "plain text")
        resumable.send_raw("lobby", b"\x00")
        assert conn.wait_messages(2) == ["plain text", b"\x00"]

    def test_a_resumable_group_takes_json_text_only_and_push_says_so_at_the_call(
        self, resumable: BaseGroupBackend
    ) -> None:
        member(resumable, "room")
        with pytest.raises(TypeError, match="resumable"):
            resumable.send_raw("room", b"{}")
        with pytest.raises(ValueError, match="JSON"):
            push("room", "not json")

    def test_events_in_a_resumable_group_carry_no_id(self, resumable: BaseGroupBackend) -> None:
        conn = member(resumable, "room")
        resumable.send_event("room", {"type": "chat.message", "text": "hi"})
        assert conn.wait_events(1) == [{"type": "chat.message", "text": "hi"}]

    def test_reconnecting_with_the_last_id_gets_exactly_the_missed_ones_in_order(
        self, resumable: BaseGroupBackend
    ) -> None:
        first = member(resumable, "room")
        resumable.send_raw("room", '"a"')
        resumable.send_raw("room", '"b"')
        last = ids_of(first.wait_messages(2))[-1]
        resumable.discard_all(first)  # the client goes away
        for text in ('"c"', '"d"', '"e"'):
            resumable.send_raw("room", text)
        witness = member(resumable, "room-witness")  # another group: proves the sends went out
        resumable.send_raw("room-witness", '"marker"')
        witness.wait_messages(1)
        back = member(resumable, "room", last_id=last)
        resumable.send_raw("room", '"f"')
        messages = back.wait_messages(4)
        assert data_of(messages) == ["c", "d", "e", "f"]
        ids = [MessageId.parse(i) for i in ids_of(messages)]
        assert ids == sorted(ids) and ids[0] > MessageId.parse(last)

    def test_a_client_that_missed_nothing_gets_nothing_but_the_live_flow(
        self, resumable: BaseGroupBackend
    ) -> None:
        first = member(resumable, "room")
        resumable.send_raw("room", '"a"')
        last = ids_of(first.wait_messages(1))[0]
        back = member(resumable, "room", last_id=last)
        resumable.send_raw("room", '"b"')
        assert data_of(back.wait_messages(1)) == ["b"]
        assert data_of(first.wait_messages(2)) == ["a", "b"]
        assert len(back.messages) == 1

    def test_a_last_id_older_than_the_window_gets_a_gap_then_what_the_window_holds(
        self, resumable: BaseGroupBackend
    ) -> None:
        first = member(resumable, "room")
        resumable.send_raw("room", '"old"')
        last = ids_of(first.wait_messages(1))[0]
        for i in range(8):  # the window keeps 5
            resumable.send_raw("room", str(i))
        first.wait_messages(9)
        back = member(resumable, "room", last_id=last)
        messages = back.wait_messages(6)
        assert is_gap(messages[0], "room")
        assert json.loads(messages[0]) == {"type": "rawws.gap", "group": "room"}
        assert data_of(messages[1:]) == [3, 4, 5, 6, 7]

    def test_an_id_the_group_never_issued_gets_a_gap_and_then_the_live_flow(
        self, resumable: BaseGroupBackend
    ) -> None:
        back = member(resumable, "room", last_id="99999999999999-0")
        resumable.send_raw("room", '"live"')
        messages = back.wait_messages(2)
        assert is_gap(messages[0], "room")
        assert data_of(messages[1:]) == ["live"]

    def test_a_connection_not_yet_open_gets_its_catch_up_and_the_held_live_flow_when_opened(
        self, resumable: BaseGroupBackend
    ) -> None:
        first = member(resumable, "room")
        resumable.send_raw("room", '"a"')
        last = ids_of(first.wait_messages(1))[0]
        resumable.send_raw("room", '"missed"')
        deciding = member(resumable, "room", last_id=last, is_open=False)
        resumable.send_raw("room", '"while deciding"')
        first.wait_messages(3)  # delivered everywhere it could be
        assert deciding.messages == []
        deciding.is_open = True
        resumable.connection_opened(deciding)
        resumable.send_raw("room", '"after"')
        assert data_of(deciding.wait_messages(3)) == ["missed", "while deciding", "after"]

    def test_sends_during_a_catch_up_are_delivered_once_in_order_with_no_gap(
        self, resumable: BaseGroupBackend
    ) -> None:
        """A publisher never pauses while clients resume: each resumed client's ids are contiguous."""
        observer = member(resumable, "room")
        resumable.send_raw("room", "0")
        start = ids_of(observer.wait_messages(1))[0]
        stop = threading.Event()
        sent: list[int] = []

        def publish() -> None:
            n = 1
            while not stop.is_set() and n < 2000:
                resumable.send_raw("room", str(n))
                sent.append(n)
                n += 1

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            resumed = []
            for _ in range(3):
                # Each resumes from the same point: the window (5) may already have moved on.
                resumed.append(member(resumable, "room", last_id=start))
        finally:
            stop.set()
            publisher.join(TIMEOUT)
        total = len(sent) + 1
        everything = observer.wait_messages(total)
        by_id = {json.loads(m)["id"]: json.loads(m)["data"] for m in everything}
        for conn in resumed:
            texts = conn.messages
            gap = bool(texts) and is_gap(texts[0])
            body = texts[1:] if gap else texts
            numbers = data_of(body)
            # Exactly once, in order, contiguous up to the last send.
            assert numbers == list(range(numbers[0], total)), numbers[:10]
            assert gap or numbers[0] == 1
            assert all(by_id[i] == n for i, n in zip(ids_of(body), numbers))

    def test_exclude_applies_to_the_live_flow_of_a_resumable_group(self, resumable: BaseGroupBackend) -> None:
        a, b = member(resumable, "room"), member(resumable, "room")
        resumable.send_raw("room", '"not for a"', exclude=a)
        resumable.send_raw("room", '"all"')
        assert data_of(a.wait_messages(1)) == ["all"]
        assert data_of(b.wait_messages(2)) == ["not for a", "all"]


class TestWindowAge:
    def test_messages_older_than_the_resume_age_leave_the_window(self) -> None:
        backend = MemoryGroupBackend(resumable=["room"], resume_age=0.2)
        backend.attach(FakeServer())
        first = StubConnection()
        backend.add("room", first)
        backend.send_raw("room", '"old"')
        last = ids_of(first.messages)[0]
        backend.send_raw("room", '"older than the window soon"')
        # The behaviour under test is the passing of time itself: wait for the clock, bounded.
        deadline = time.monotonic() + 0.25
        while time.monotonic() < deadline:
            time.sleep(0.05)
        back = StubConnection()
        backend.add("room", back, last_id=last)
        assert [is_gap(m) for m in back.messages] == [True]

    def test_a_restarted_process_never_reissues_an_id_a_client_holds(self) -> None:
        before = MemoryGroupBackend(resumable=["room"])
        before.attach(FakeServer())
        conn = StubConnection()
        before.add("room", conn)
        before.send_raw("room", '"x"')
        last = ids_of(conn.messages)[0]
        # A restart takes longer than a millisecond; make sure this one does too (bounded by the clock).
        while time.time_ns() // 1_000_000 <= MessageId.parse(last).ms:
            time.sleep(0.001)
        after = MemoryGroupBackend(resumable=["room"])  # the process restarted: its window is empty
        after.attach(FakeServer())
        back = StubConnection()
        after.add("room", back, last_id=last)
        after.send_raw("room", '"new"')
        assert is_gap(back.messages[0])
        assert MessageId.parse(ids_of(back.messages[1:])[0]) > MessageId.parse(last)


class TestOptions:
    @pytest.mark.parametrize(
        "options",
        [{"resumable": "room.*"}, {"resumable": [3]}, {"resume_count": 0}, {"resume_age": -1}, {"resume_count": 2.5}],
    )
    def test_bad_resume_options_are_improperly_configured(self, options: dict[str, Any]) -> None:
        from django.core.exceptions import ImproperlyConfigured

        with pytest.raises(ImproperlyConfigured):
            MemoryGroupBackend(**options)

    def test_patterns_use_shell_wildcards(self) -> None:
        backend = MemoryGroupBackend(resumable=["room.*", "user:?"])
        assert backend.is_resumable("room.lobby") and backend.is_resumable("user:7")
        assert not backend.is_resumable("room") and not backend.is_resumable("user:42")


# ======================================================== real sockets


class NodeApp:
    """A plain server app over one backend, for resume and presence over real sockets.

    ``/<group>[,<group>...]?name=<n>`` joins ``conn:<id>`` and the groups
    (announcing ``{"name": n}`` when given) before accepting; the connection id is in the ``X-Conn-Id``
    response header. A text message ``{"push": g, "message": m}`` is a raw
    send (``"exclude_me": true`` excludes the sender), ``{"relay": g, "text":
    t}`` an event send whose handler sends ``t``.
    """

    def __init__(self, backend: BaseGroupBackend) -> None:
        self.backend = backend
        self.disconnects: queue.Queue[tuple[str, int]] = queue.Queue()

    def websocket_handshake(self, conn: ServerConnection, handshake: Any) -> None:
        parts = urlsplit(conn.request.target if conn.request is not None else "/")  # type: ignore[union-attr]
        query = parse_qs(parts.query)
        presence = {"name": query["name"][0]} if "name" in query else None
        self.backend.add(connection_group(conn), conn)
        for group in parts.path.strip("/").split(","):
            self.backend.add(group, conn, presence=presence)
        conn.accept(headers=[("X-Conn-Id", conn.id)])
        self.backend.connection_opened(conn)

    def websocket_message(self, conn: ServerConnection, message: str | bytes) -> None:
        command = json.loads(message)
        if "push" in command:
            exclude = conn if command.get("exclude_me") else None
            self.backend.send_raw(command["push"], command["message"], exclude=exclude)
        elif "relay" in command:
            self.backend.send_event(command["relay"], {"type": "relay", "text": command["text"]})

    def websocket_event(self, conn: ServerConnection, event: dict[str, Any]) -> None:
        assert event_handler_name(event["type"]) == "relay"
        conn.send(event["text"])

    def websocket_disconnect(self, conn: ServerConnection, code: int) -> None:
        self.backend.discard_all(conn)
        self.disconnects.put((conn.id, code))


class Node:
    """A server with its own backend (so two Nodes in one process act as two processes)."""

    def __init__(self, backend: BaseGroupBackend) -> None:
        self.backend = backend
        self.app = NodeApp(backend)
        self.server = Server(
            self.app,
            port=0,
            config=ServerConfig(workers=4, ping_interval=None, close_timeout=2.0, linger_timeout=0.2),
        )
        self.server.start()
        backend.attach(self.server)
        self._clients = contextlib.ExitStack()

    def url(self, path: str) -> str:
        host, port = self.server.address
        return f"ws://{host}:{port}{path}"

    def connect(self, path: str, **kwargs: Any) -> tuple[ClientConnection, str]:
        kwargs.setdefault("max_queue", None)
        ws = self._clients.enter_context(connect(self.url(path), proxy=None, open_timeout=TIMEOUT, **kwargs))
        assert ws.response is not None
        return ws, ws.response.headers["X-Conn-Id"]

    def close(self) -> None:
        self._clients.close()
        self.server.stop(grace=2.0)
        self.backend.detach(self.server)
        self.backend.close()


def recv_json(ws: ClientConnection, count: int) -> list[Any]:
    return [json.loads(ws.recv(timeout=TIMEOUT)) for _ in range(count)]


class TestResumeOverSockets:
    """The in-memory backend, one server: a client that reconnects with ``?last_id.<group>=``."""

    @pytest.fixture
    def server_node(self) -> Iterator[Node]:
        created = Node(MemoryGroupBackend(resumable=["room.*"], resume_count=5))
        try:
            yield created
        finally:
            created.close()

    def test_a_client_back_with_its_last_id_gets_the_missed_messages_once_in_order(self, server_node: Node) -> None:
        node = server_node
        ws, _ = node.connect("/room.a")
        sender, _ = node.connect("/room.a")
        sender.send(json.dumps({"push": "room.a", "message": '{"n": 1}'}))
        [first] = recv_json(ws, 1)
        assert first["data"] == {"n": 1} and first["group"] == "room.a"
        ws.close()
        for n in (2, 3):
            sender.send(json.dumps({"push": "room.a", "message": json.dumps({"n": n})}))
        assert [m["data"]["n"] for m in recv_json(sender, 3)] == [1, 2, 3]
        back, _ = node.connect(f"/room.a?last_id.room.a={first['id']}")
        sender.send(json.dumps({"push": "room.a", "message": '{"n": 4}'}))
        received = recv_json(back, 3)
        assert [m["data"]["n"] for m in received] == [2, 3, 4]
        ids = [MessageId.parse(m["id"]) for m in received]
        assert ids == sorted(ids) and ids[0] > MessageId.parse(first["id"])

    def test_a_too_old_id_gets_the_gap_message_first(self, server_node: Node) -> None:
        node = server_node
        sender, _ = node.connect("/room.b")
        for n in range(8):
            sender.send(json.dumps({"push": "room.b", "message": str(n)}))
        received = recv_json(sender, 8)
        back, _ = node.connect(f"/room.b?last_id.room.b={received[0]['id']}")
        caught_up = recv_json(back, 6)
        assert caught_up[0] == {"type": "rawws.gap", "group": "room.b"}
        assert [m["data"] for m in caught_up[1:]] == [3, 4, 5, 6, 7]


# ================================================ the JavaScript client


class HeldNodeApp(NodeApp):
    """NodeApp whose handshakes can be held back, and which remembers each handshake's target."""

    def __init__(self, backend: BaseGroupBackend) -> None:
        super().__init__(backend)
        self.release = threading.Event()
        self.release.set()
        self.waiting: queue.Queue[str] = queue.Queue()
        self.connections: queue.Queue[ServerConnection] = queue.Queue()

    def websocket_handshake(self, conn: ServerConnection, handshake: Any) -> None:
        target = conn.request.target if conn.request is not None else ""
        if not self.release.is_set():
            self.waiting.put(target)
            assert self.release.wait(TIMEOUT)
        super().websocket_handshake(conn, handshake)
        self.connections.put(conn)


def test_the_shipped_javascript_client_resumes_from_its_last_id(node_websocket: list[str]) -> None:
    """rawws.js over a real socket: after the server drops it, it comes back with ?last_id and gets what it missed."""
    import subprocess
    from pathlib import Path

    backend = MemoryGroupBackend(resumable=["room.*"])
    node = Node(backend)
    app = HeldNodeApp(backend)
    node.server.app = app  # before any connection: the server calls its app on each handshake
    driver = Path(__file__).parent / "js" / "live_driver.js"
    options = json.dumps({"minDelay": 50, "maxDelay": 100})
    process = subprocess.Popen(
        [*node_websocket, str(driver), node.url("/room.js"), options],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def next_message() -> Any:
        while True:
            record = lines.get(timeout=TIMEOUT)
            if "message" in record:
                return record["message"]

    try:
        first = app.connections.get(timeout=TIMEOUT)
        backend.send_raw("room.js", '{"n": 1}')
        assert next_message() == {"n": 1}  # unwrapped: the page sees its own JSON
        app.release.clear()
        first.close(1012, "restarting")  # a retried close code
        target = app.waiting.get(timeout=TIMEOUT)  # the retry is in its handshake, held
        backend.send_raw("room.js", '{"n": 2}')
        backend.send_raw("room.js", '{"n": 3}')
        app.release.set()
        app.connections.get(timeout=TIMEOUT)
        backend.send_raw("room.js", '{"n": 4}')
        assert [next_message() for _ in range(3)] == [{"n": 2}, {"n": 3}, {"n": 4}]
        assert "last_id.room.js=" in target
    finally:
        app.release.set()
        if process.stdin is not None:
            process.stdin.write(json.dumps({"close": [1000, "done"]}) + "\n")
            process.stdin.close()
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        node.close()
