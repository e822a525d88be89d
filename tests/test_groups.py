"""Groups: names, the backend contract, the push API and delivery over real sockets.

Three layers:

* unit tests of the helpers (names, exclude, events);
* a contract suite run against every backend through ``backend`` (memory
  and Redis), with stub connections
  that record what they get. Delivery may be asynchronous for a
  cross-process backend, so the suite waits for what must arrive and proves
  that something did *not* arrive by sending a marker to everybody after it;
* real sockets: a :class:`~django_rawws.server.Server` on port 0 with a plain
  app (no consumers) and ``websockets`` / ``websocket-client`` clients.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import itertools
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import websocket as websocket_client
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.test import override_settings
from websockets.sync.client import ClientConnection, connect

from django_rawws import groups
from django_rawws.exceptions import GroupBackendUnavailable
from django_rawws.groups import (
    BaseGroupBackend,
    connection_group,
    event_handler_name,
    exclude_ids,
    get_backend,
    prepare_event,
    push,
    session_group,
    user_group,
    validate_group_name,
)
from django_rawws.groups.memory import MemoryGroupBackend
from django_rawws.protocol import deflate as deflate_module
from django_rawws.protocol.connection import Connection
from django_rawws.protocol.deflate import DeflateOptions
from django_rawws.server import Server, ServerConfig, ServerConnection, SharedMessage
from tests.redis_proxy import REDIS_BACKEND, REDIS_URL, redis_prefix

MEMORY = "django_rawws.groups.memory.MemoryGroupBackend"

# Generous upper bound for anything that must happen "soon" over loopback.
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_backend() -> Iterator[None]:
    """Every test starts and ends without a cached backend."""
    groups._reset_backend()
    yield
    groups._reset_backend()


# ---------------------------------------------------------------- stubs


_stub_ids = itertools.count(1)


class FakeServer:
    """Stands for a running server: what attach() records."""


class StubConnection:
    """The part of ServerConnection a backend uses, recording what it receives."""

    def __init__(self, ident: str | None = None, *, is_open: bool = True, server: Any = None) -> None:
        self.id = ident if ident is not None else f"stub{next(_stub_ids):x}"
        self.is_open = is_open
        self.server = server
        self.shared: list[SharedMessage] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        return f"<StubConnection {self.id}>"

    @property
    def messages(self) -> list[str | bytes]:
        with self._changed:
            return [shared.message for shared in self.shared]

    def send_shared(self, shared: SharedMessage) -> bool:
        if not self.is_open:
            return False
        with self._changed:
            self.shared.append(shared)
            self._changed.notify_all()
        return True

    def deliver_event(self, event: dict[str, Any]) -> bool:
        if not self.is_open:
            return False
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return True

    def wait_messages(self, count: int) -> list[str | bytes]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.shared) >= count, TIMEOUT), self.shared
        return self.messages

    def wait_events(self, count: int) -> list[dict[str, Any]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.events) >= count, TIMEOUT), self.events
            return list(self.events)


class BrokenConnection(StubConnection):
    def send_shared(self, shared: SharedMessage) -> bool:
        raise RuntimeError("broken member")

    def deliver_event(self, event: dict[str, Any]) -> bool:
        raise RuntimeError("broken member")


# ================================================================ names


class TestGroupNames:
    @pytest.mark.parametrize(
        "name",
        ["room", "chat.room-1", "a", "user:42", "session:abc_DEF", "conn:1f", "x" * 99, "A.b-c_d:e9"],
    )
    def test_ascii_letters_digits_dash_underscore_dot_colon_under_100_chars_are_valid(
        self, name: str
    ) -> None:
        assert validate_group_name(name) == name

    @pytest.mark.parametrize(
        "name",
        ["", "x" * 100, "has space", "tab\t", "slash/x", "é", "room\n", "star*", "a,b", "emoji😀"],
    )
    def test_anything_else_is_refused_with_value_error(self, name: str) -> None:
        with pytest.raises(ValueError):
            validate_group_name(name)

    @pytest.mark.parametrize("name", [None, 42, b"room"])
    def test_a_name_that_is_not_a_str_is_refused_with_value_error(self, name: Any) -> None:
        with pytest.raises(ValueError, match="is a str"):
            validate_group_name(name)

    def test_automatic_connection_group_is_conn_and_the_id(self) -> None:
        conn = StubConnection("1f")
        assert connection_group(conn) == "conn:1f"
        assert connection_group(SimpleNamespace(connection=conn)) == "conn:1f"
        assert connection_group("2a") == "conn:2a"

    def test_automatic_user_group_is_user_and_the_primary_key(self) -> None:
        assert user_group(42) == "user:42"
        assert user_group(SimpleNamespace(pk=7)) == "user:7"
        uuid = "6f1c0c5e-3b4a-4d43-9d7e-1b2f5a6c7d8e"
        assert user_group(uuid) == f"user:{uuid}"

    def test_automatic_session_group_names_a_digest_of_the_key_never_the_key(self) -> None:
        key = "k3j5x0l2m9q8w7e6r5t4y3u2i1o0p9a8"  # Django's alphabet and length
        name = session_group(key)
        assert name.startswith("session:") and key not in name
        assert session_group(SimpleNamespace(session_key=key)) == name
        assert session_group("another-key-entirely-0123456789ab") != name

    def test_automatic_groups_are_valid_names_even_for_keys_that_are_not(self) -> None:
        for name in (user_group("someone@example.com"), user_group("x" * 200), session_group("with space")):
            assert validate_group_name(name) == name
        assert user_group("someone@example.com") == user_group("someone@example.com")
        assert user_group("someone@example.com") != user_group("other@example.com")

    def test_anonymous_users_and_unsaved_sessions_have_no_group(self) -> None:
        with pytest.raises(ValueError):
            user_group(SimpleNamespace(pk=None))
        with pytest.raises(ValueError):
            session_group(SimpleNamespace(session_key=None))


# ======================================================= send arguments


class TestExclude:
    def test_none_excludes_nobody(self) -> None:
        assert exclude_ids(None) == frozenset()

    def test_a_connection_a_consumer_and_an_id_each_name_one_connection(self) -> None:
        conn = StubConnection("a1")
        assert exclude_ids(conn) == {"a1"}
        assert exclude_ids(SimpleNamespace(connection=conn)) == {"a1"}
        assert exclude_ids("a1") == {"a1"}

    def test_a_collection_may_mix_all_three(self) -> None:
        consumer = SimpleNamespace(connection=StubConnection("c3"))
        assert exclude_ids([StubConnection("a1"), "b2", consumer]) == {"a1", "b2", "c3"}
        assert exclude_ids({"a1", "b2"}) == {"a1", "b2"}
        assert exclude_ids(()) == frozenset()

    def test_a_consumer_without_connection_excludes_nobody(self) -> None:
        assert exclude_ids(SimpleNamespace(connection=None)) == frozenset()

    @pytest.mark.parametrize("value", [SimpleNamespace(id=5, pk=5), 5, {"a1": 1}, [object()]])
    def test_objects_that_are_not_connections_are_refused_with_type_error(self, value: Any) -> None:
        # A user's pk taken for a connection id would exclude somebody else.
        with pytest.raises(TypeError, match="exclude="):
            exclude_ids(value)


class TestEvents:
    @pytest.mark.parametrize(
        ("event_type", "handler"),
        [("chat.message", "chat_message"), ("notify", "notify"), ("a.b.c", "a_b_c"), ("x2.y_z", "x2_y_z")],
    )
    def test_dots_in_the_type_map_to_underscores_in_the_handler_name(
        self, event_type: str, handler: str
    ) -> None:
        assert event_handler_name(event_type) == handler

    @pytest.mark.parametrize("event_type", ["_private", ".private", "__init__", "_"])
    def test_types_mapping_to_a_name_starting_with_underscore_are_refused(self, event_type: str) -> None:
        with pytest.raises(ValueError, match="starting with '_'"):
            event_handler_name(event_type)

    @pytest.mark.parametrize("event_type", ["", "chat-message", "9lives", "a b", None, 3])
    def test_types_that_cannot_name_a_method_are_refused(self, event_type: Any) -> None:
        with pytest.raises(ValueError):
            event_handler_name(event_type)

    def test_an_event_is_a_dict_with_a_type(self) -> None:
        with pytest.raises(TypeError, match="dict"):
            prepare_event(["chat.message"])
        with pytest.raises(ValueError, match="'type'"):
            prepare_event({"text": "no type"})
        with pytest.raises(ValueError, match="starting with '_'"):
            prepare_event({"type": "_process"})

    def test_an_event_must_survive_json_as_it_would_between_processes(self) -> None:
        with pytest.raises(TypeError, match="JSON"):
            prepare_event({"type": "x", "value": object()})
        with pytest.raises(TypeError, match="JSON"):
            prepare_event({"type": "x", "raw": b"bytes"})

    def test_the_delivered_event_is_the_json_round_trip_taken_at_the_call(self) -> None:
        original = {
            "type": "chat.message",
            "items": (1, 2),
            "at": datetime.date(2024, 5, 1),
            "nested": {"a": 1},
        }
        snapshot = prepare_event(original)
        original["nested"]["a"] = 2  # type: ignore[index]
        assert snapshot == {"type": "chat.message", "items": [1, 2], "at": "2024-05-01", "nested": {"a": 1}}


# ===================================================== backend contract


BACKENDS = [
    pytest.param((MEMORY, {}), id="memory"),
    # Skipped without Redis on 127.0.0.1:6379 (failed under RAWWS_REQUIRE_SERVICES=1);
    # each test gets a key prefix of its own, deleted afterwards.
    pytest.param((REDIS_BACKEND, {"url": REDIS_URL}), id="redis"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[BaseGroupBackend]:
    """A fresh backend of each kind, with a (fake) server of this process attached."""
    path, options = request.param
    with contextlib.ExitStack() as stack:
        if path == REDIS_BACKEND:
            options = {**options, "prefix": stack.enter_context(redis_prefix())}
        stack.enter_context(override_settings(RAWWS={"GROUP_BACKEND": path, "GROUP_OPTIONS": options}))
        instance = get_backend()
        server = FakeServer()
        instance.attach(server)
        instance.test_server = server  # type: ignore[attr-defined]
        try:
            yield instance
        finally:
            instance.detach(server)
            instance.close()


def member(backend: BaseGroupBackend, *groups_: str, **kwargs: Any) -> StubConnection:
    conn = StubConnection(server=backend.test_server, **kwargs)  # type: ignore[attr-defined]
    for group in groups_:
        backend.add(group, conn)
    return conn


class TestBackendContract:
    """What every group backend does; run against each backend."""

    def test_members_are_listed_in_the_order_they_joined(self, backend: BaseGroupBackend) -> None:
        a, b, c = member(backend, "room"), member(backend, "room"), member(backend, "room")
        assert backend.members("room") == [a, b, c]
        assert backend.members("empty") == []

    def test_adding_twice_is_one_membership(self, backend: BaseGroupBackend) -> None:
        a = member(backend, "room", "room")
        backend.add("room", a)
        assert backend.members("room") == [a]

    def test_groups_of_lists_every_group_of_a_connection(self, backend: BaseGroupBackend) -> None:
        a = member(backend, "room", "user:1", "conn:x")
        assert backend.groups_of(a) == {"room", "user:1", "conn:x"}
        assert backend.groups_of(StubConnection()) == set()

    def test_discard_leaves_one_group_and_ignores_non_members(self, backend: BaseGroupBackend) -> None:
        a, b = member(backend, "room", "other"), member(backend, "room")
        backend.discard("room", a)
        backend.discard("room", a)
        backend.discard("never", a)
        assert backend.members("room") == [b]
        assert backend.groups_of(a) == {"other"}

    def test_discard_all_leaves_every_group(self, backend: BaseGroupBackend) -> None:
        a, b = member(backend, "room", "other", "user:1"), member(backend, "room")
        backend.discard_all(a)
        backend.discard_all(a)
        assert backend.groups_of(a) == set()
        assert backend.members("room") == [b]
        assert backend.members("other") == []

    def test_invalid_group_names_are_refused_everywhere(self, backend: BaseGroupBackend) -> None:
        conn = StubConnection()
        with pytest.raises(ValueError):
            backend.add("bad name", conn)
        with pytest.raises(ValueError):
            backend.send_raw("bad name", "x")
        with pytest.raises(ValueError):
            backend.send_event("bad name", {"type": "x"})

    def test_raw_send_reaches_every_member_with_one_shared_message(self, backend: BaseGroupBackend) -> None:
        members = [member(backend, "room") for _ in range(5)]
        outsider = member(backend, "elsewhere")
        backend.send_raw("room", "hello")
        for conn in members:
            assert conn.wait_messages(1) == ["hello"]
        # Framing is cached on the SharedMessage: one object for all members of the process.
        assert len({id(conn.shared[0]) for conn in members}) == 1
        backend.send_raw("elsewhere", "marker")
        assert outsider.wait_messages(1) == ["marker"]

    def test_raw_send_keeps_bytes_binary_and_str_text(self, backend: BaseGroupBackend) -> None:
        conn = member(backend, "room")
        backend.send_raw("room", b"\x00\xff")
        backend.send_raw("room", bytearray(b"ba"))
        backend.send_raw("room", "caf\u00e9")
        assert conn.wait_messages(3) == [b"\x00\xff", b"ba", "caf\u00e9"]

    def test_raw_send_refuses_other_types(self, backend: BaseGroupBackend) -> None:
        with pytest.raises(TypeError):
            backend.send_raw("room", 42)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            backend.send_raw("room", {"type": "x"})  # type: ignore[arg-type]

    @pytest.mark.parametrize("form", ["connection", "id", "consumer", "collection"])
    def test_raw_send_skips_the_excluded(self, backend: BaseGroupBackend, form: str) -> None:
        a, b, c = member(backend, "room"), member(backend, "room"), member(backend, "room")
        exclude: Any = {
            "connection": a,
            "id": a.id,
            "consumer": SimpleNamespace(connection=a),
            "collection": [a, SimpleNamespace(connection=c)],
        }[form]
        backend.send_raw("room", "not for a", exclude=exclude)
        backend.send_raw("room", "marker")
        assert a.wait_messages(1) == ["marker"]
        assert b.wait_messages(2) == ["not for a", "marker"]
        expected_c = ["marker"] if form == "collection" else ["not for a", "marker"]
        assert c.wait_messages(len(expected_c)) == expected_c

    def test_closed_members_are_skipped_and_the_others_served(self, backend: BaseGroupBackend) -> None:
        closed = member(backend, "room", is_open=False)
        open_ = member(backend, "room")
        backend.send_raw("room", "x")
        backend.send_event("room", {"type": "e"})
        assert open_.wait_messages(1) == ["x"]
        assert open_.wait_events(1) == [{"type": "e"}]
        assert closed.shared == [] and closed.events == []

    def test_a_member_that_raises_costs_the_others_nothing(
        self, backend: BaseGroupBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        before = member(backend, "room")
        broken = BrokenConnection(server=backend.test_server)  # type: ignore[attr-defined]
        backend.add("room", broken)
        after = member(backend, "room")
        with caplog.at_level(logging.ERROR, logger="django_rawws.groups"):
            backend.send_raw("room", "x")
            backend.send_event("room", {"type": "e"})
            assert before.wait_messages(1) == after.wait_messages(1) == ["x"]
            assert before.wait_events(1) == after.wait_events(1) == [{"type": "e"}]
        assert any(
            record.exc_info and "broken member" in str(record.exc_info[1]) for record in caplog.records
        )

    def test_event_send_delivers_the_json_snapshot_in_order(self, backend: BaseGroupBackend) -> None:
        a, b = member(backend, "room"), member(backend, "room")
        for i in range(50):
            backend.send_event("room", {"type": "chat.message", "n": i, "tags": ("t",)})
        expected = [{"type": "chat.message", "n": i, "tags": ["t"]} for i in range(50)]
        assert a.wait_events(50) == expected
        assert b.wait_events(50) == expected

    def test_event_send_skips_the_excluded(self, backend: BaseGroupBackend) -> None:
        a, b = member(backend, "room"), member(backend, "room")
        backend.send_event("room", {"type": "one"}, exclude=SimpleNamespace(connection=a))
        backend.send_event("room", {"type": "two"})
        assert a.wait_events(1) == [{"type": "two"}]
        assert b.wait_events(2) == [{"type": "one"}, {"type": "two"}]

    def test_event_send_refuses_bad_events(self, backend: BaseGroupBackend) -> None:
        with pytest.raises(ValueError):
            backend.send_event("room", {"type": "_process"})
        with pytest.raises(ValueError):
            backend.send_event("room", {"no": "type"})
        with pytest.raises(TypeError):
            backend.send_event("room", {"type": "x", "obj": object()})

    def test_sends_return_a_count(self, backend: BaseGroupBackend) -> None:
        member(backend, "room")
        assert isinstance(backend.send_raw("room", "x"), int)
        assert isinstance(backend.send_event("room", {"type": "x"}), int)

    def test_a_closed_backend_raises_group_backend_unavailable(self, backend: BaseGroupBackend) -> None:
        member(backend, "room")
        backend.close()
        with pytest.raises(GroupBackendUnavailable):
            backend.send_raw("room", "x")
        with pytest.raises(GroupBackendUnavailable):
            backend.send_event("room", {"type": "x"})

    def test_detach_drops_the_memberships_of_that_servers_connections(
        self, backend: BaseGroupBackend
    ) -> None:
        other_server = FakeServer()
        backend.attach(other_server)
        ours = member(backend, "room")
        theirs = StubConnection(server=other_server)
        backend.add("room", theirs)
        backend.detach(other_server)
        assert backend.members("room") == [ours]

    def test_concurrent_joins_leaves_and_sends_never_break(self, backend: BaseGroupBackend) -> None:
        stable = member(backend, "room")
        errors: list[BaseException] = []
        start = threading.Barrier(5)

        def churn() -> None:
            try:
                start.wait()
                for _ in range(300):
                    conn = member(backend, "room", "other")
                    backend.discard("room", conn)
                    backend.discard_all(conn)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def send() -> None:
            try:
                start.wait()
                for i in range(300):
                    backend.send_raw("room", str(i))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=churn) for _ in range(3)] + [
            threading.Thread(target=send) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert errors == []
        assert not any(thread.is_alive() for thread in threads)
        assert len(stable.wait_messages(600)) == 600
        assert backend.members("room") == [stable]
        assert backend.members("other") == []


# ================================================ the in-memory backend


class TestMemoryBackend:
    @pytest.fixture
    def memory(self) -> MemoryGroupBackend:
        backend = MemoryGroupBackend()
        backend.attach(FakeServer())
        return backend

    def test_sends_return_the_exact_number_of_recipients(self, memory: MemoryGroupBackend) -> None:
        a, b = StubConnection(), StubConnection()
        closed = StubConnection(is_open=False)
        for conn in (a, b, closed):
            memory.add("room", conn)
        assert memory.send_raw("room", "x") == 2
        assert memory.send_raw("room", "x", exclude=a) == 1
        assert memory.send_event("room", {"type": "x"}) == 2
        assert memory.send_event("room", {"type": "x"}, exclude=[a, b]) == 0
        assert memory.send_raw("nobody", "x") == 0

    def test_members_of_an_event_send_share_one_snapshot(self, memory: MemoryGroupBackend) -> None:
        a, b = StubConnection(), StubConnection()
        memory.add("room", a)
        memory.add("room", b)
        event = {"type": "x", "n": 1}
        memory.send_event("room", event)
        assert a.events[0] is b.events[0]
        assert a.events[0] is not event

    def test_without_a_server_a_send_reaches_nobody_and_warns_once_per_process(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(MemoryGroupBackend, "_warned_no_server", False)
        lonely = MemoryGroupBackend()
        conn = StubConnection()
        lonely.add("room", conn)
        with caplog.at_level(logging.WARNING, logger="django_rawws.groups"):
            assert lonely.send_raw("room", "x") == 0
            assert lonely.send_event("room", {"type": "x"}) == 0
            assert MemoryGroupBackend().send_raw("room", "x") == 0
        warnings = [
            r for r in caplog.records if r.name == "django_rawws.groups" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        assert "runs no WebSocket server" in warnings[0].getMessage()
        assert conn.shared == [] and conn.events == []

    def test_a_send_reaches_members_once_a_server_is_attached(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(MemoryGroupBackend, "_warned_no_server", True)
        backend = MemoryGroupBackend()
        conn = StubConnection()
        backend.add("room", conn)
        assert backend.send_raw("room", "lost") == 0
        server = FakeServer()
        backend.attach(server)
        backend.attach(server)
        assert backend.servers == [server]
        assert backend.send_raw("room", "delivered") == 1
        backend.detach(server)
        assert backend.servers == []
        assert conn.messages == ["delivered"]

    def test_stats_count_groups_connections_servers_and_failed_pushes(
        self, memory: MemoryGroupBackend
    ) -> None:
        a, b = StubConnection(), StubConnection()
        memory.add("room", a)
        memory.add("room", b)
        memory.add("user:1", a)
        memory.record_failed_push()
        assert memory.stats() == {
            "backend": "MemoryGroupBackend",
            "groups": 2,
            "connections": 2,
            "servers": 1,
            "failed_pushes": 1,
        }

    def test_it_takes_no_options(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="url"):
            MemoryGroupBackend(url="redis://")

    def test_it_is_local_to_the_process(self) -> None:
        assert MemoryGroupBackend.cross_process is False


# ================================================ get_backend and settings


class RecordingBackend(BaseGroupBackend):
    """A backend for the settings tests: remembers its options, sends nowhere."""

    def __init__(self, *, colour: str = "none", **options: Any) -> None:
        super().__init__(**options)
        self.colour = colour

    def _publish_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        return 0

    def _publish_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        return 0


class NotABackend:
    pass


class TestGetBackend:
    def test_the_default_is_the_in_memory_backend(self) -> None:
        with override_settings(RAWWS={}):
            assert type(get_backend()) is MemoryGroupBackend

    def test_the_backend_is_built_once_and_shared_by_threads(self) -> None:
        seen: list[BaseGroupBackend] = []
        threads = [threading.Thread(target=lambda: seen.append(get_backend())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert len(seen) == 8 and all(backend is seen[0] for backend in seen)
        assert get_backend() is seen[0]

    def test_the_setting_names_the_class_and_its_options(self) -> None:
        settings = {"GROUP_BACKEND": "tests.test_groups.RecordingBackend", "GROUP_OPTIONS": {"colour": "red"}}
        with override_settings(RAWWS=settings):
            backend = get_backend()
            assert type(backend) is RecordingBackend
            assert backend.colour == "red"  # type: ignore[attr-defined]

    def test_changing_the_setting_builds_a_new_backend(self) -> None:
        before = get_backend()
        with override_settings(RAWWS={"GROUP_BACKEND": "tests.test_groups.RecordingBackend"}):
            inside = get_backend()
            assert type(inside) is RecordingBackend
        after = get_backend()
        assert type(after) is MemoryGroupBackend
        assert after is not before

    @override_settings(RAWWS={"GROUP_BACKEND": "nowhere.NoSuchBackend"})
    def test_an_unimportable_backend_is_improperly_configured_naming_it(self) -> None:
        with pytest.raises(ImproperlyConfigured, match=r"'nowhere\.NoSuchBackend' can't be imported"):
            get_backend()

    @override_settings(RAWWS={"GROUP_BACKEND": "tests.test_groups.NotABackend"})
    def test_a_class_that_is_not_a_backend_is_improperly_configured(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="not a subclass"):
            get_backend()

    @override_settings(RAWWS={"GROUP_BACKEND": MEMORY, "GROUP_OPTIONS": {"url": "redis://"}})
    def test_unknown_options_are_improperly_configured(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="url"):
            get_backend()

    @override_settings(RAWWS={"GROUP_OPTIONS": ["url"]})
    def test_options_that_are_not_a_dict_are_improperly_configured(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="must be a dict"):
            get_backend()


# ================================================================ push


@pytest.fixture
def room() -> SimpleNamespace:
    """The process backend with a server attached, and "room" with two members, ``a`` and ``b``."""
    backend = get_backend()
    backend.attach(FakeServer())
    a, b = StubConnection("a"), StubConnection("b")
    backend.add("room", a)
    backend.add("room", b)
    return SimpleNamespace(backend=backend, a=a, b=b)


class TestPush:
    def test_outside_a_transaction_it_sends_now_and_returns_the_recipients(
        self, room: SimpleNamespace
    ) -> None:
        assert push("room", "hi") == 2
        assert push("room", event={"type": "chat.message", "text": "hi"}, exclude="a") == 1
        assert room.a.messages == room.b.messages == ["hi"]
        assert room.a.events == [] and room.b.events == [{"type": "chat.message", "text": "hi"}]

    def test_exactly_one_of_message_and_event(self, room: SimpleNamespace) -> None:
        with pytest.raises(TypeError, match="exactly one"):
            push("room")
        with pytest.raises(TypeError, match="exactly one"):
            push("room", "x", event={"type": "x"})

    @pytest.mark.django_db
    def test_mistakes_raise_at_the_call_even_when_the_send_would_be_deferred(
        self, room: SimpleNamespace
    ) -> None:
        with pytest.raises(ValueError):
            push("bad name", "x")
        with pytest.raises(ValueError):
            push("room", event={"type": "_secret"})
        with pytest.raises(TypeError):
            push("room", event={"type": "x", "v": object()})
        with pytest.raises(TypeError):
            push("room", 3.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            push("room", "x", exclude=SimpleNamespace(pk=1))

    @pytest.mark.django_db
    def test_inside_atomic_it_waits_for_the_commit_and_returns_none(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any
    ) -> None:
        with django_capture_on_commit_callbacks() as callbacks:
            assert push("room", "later") is None
            assert push("room", event={"type": "later"}, exclude=room.a) is None
        assert len(callbacks) == 2
        assert room.a.messages == [] and room.b.events == []
        for callback in callbacks:
            callback()
        assert room.a.messages == room.b.messages == ["later"]
        assert room.a.events == [] and room.b.events == [{"type": "later"}]

    @pytest.mark.django_db
    def test_a_deferred_push_sends_what_was_pushed_not_later_changes(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any
    ) -> None:
        event = {"type": "x", "items": [1]}
        data = bytearray(b"before")
        with django_capture_on_commit_callbacks(execute=True):
            push("room", event=event)
            push("room", data)
            event["items"].append(2)  # type: ignore[attr-defined]
            data[:] = b"after!"
        assert room.a.events == [{"type": "x", "items": [1]}]
        assert room.a.messages == [b"before"]

    @pytest.mark.django_db
    def test_immediate_sends_now_inside_atomic(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any
    ) -> None:
        with django_capture_on_commit_callbacks() as callbacks:
            assert push("room", "now", immediate=True) == 2
            assert room.a.messages == ["now"]
        assert callbacks == []

    @pytest.mark.django_db
    def test_using_names_the_database_to_wait_for(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any
    ) -> None:
        with django_capture_on_commit_callbacks(using="default") as callbacks:
            assert push("room", "x", using="default") is None
        assert len(callbacks) == 1

    def test_immediate_raises_when_the_backend_is_unavailable(self, room: SimpleNamespace) -> None:
        room.backend.close()
        with pytest.raises(GroupBackendUnavailable):
            push("room", "x", immediate=True)
        with pytest.raises(GroupBackendUnavailable):
            push("room", event={"type": "x"})

    @pytest.mark.django_db
    def test_a_deferred_push_that_fails_is_logged_at_error_and_counted(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR), django_capture_on_commit_callbacks(execute=True):
            push("room", "doomed")
            room.backend.close()
        assert room.backend.failed_pushes == 1
        assert room.backend.stats()["failed_pushes"] == 1
        [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.name == "django_rawws.groups"
        assert "'room'" in record.getMessage()
        assert record.exc_info is not None and isinstance(record.exc_info[1], GroupBackendUnavailable)

    @pytest.mark.django_db(transaction=True)
    def test_nothing_is_sent_on_rollback_and_everything_on_commit(self, room: SimpleNamespace) -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            assert push("room", "rolled back") is None
            raise RuntimeError("roll back")
        with transaction.atomic():
            assert push("room", "committed") is None
            with pytest.raises(RuntimeError), transaction.atomic():
                push("room", "savepoint rolled back")
                raise RuntimeError("roll back the savepoint")
            assert room.a.messages == []
        assert room.a.messages == room.b.messages == ["committed"]

    @pytest.mark.django_db
    def test_with_several_databases_in_atomic_blocks_it_waits_for_all_of_them(
        self, room: SimpleNamespace, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The test settings have one database; two registrations on it stand for two aliases.
        monkeypatch.setattr(groups, "_aliases_in_atomic_block", lambda using: ["default", "default"])
        with django_capture_on_commit_callbacks() as callbacks:
            assert push("room", "x") is None
        assert len(callbacks) == 2
        callbacks[0]()
        assert room.a.messages == []
        callbacks[1]()
        assert room.a.messages == ["x"]

    def test_from_a_process_without_a_server_it_warns_once_and_returns_zero(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(MemoryGroupBackend, "_warned_no_server", False)
        with caplog.at_level(logging.WARNING, logger="django_rawws.groups"):
            assert push("room", "x") == 0
            assert push("room", event={"type": "x"}) == 0
            assert push("user:1", "x") == 0
        warnings = [r for r in caplog.records if r.name == "django_rawws.groups"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# ======================================================== real sockets


class GroupApp:
    """A plain server app: ``/<group>[/takeover]`` joins ``<group>`` and says the connection id.

    The connection joins before ``accept()``, so once a client has read its
    id it is certainly a member. Events run ``<type with _>(conn, event)``,
    which sends the event's text.
    """

    def __init__(self, backend: BaseGroupBackend) -> None:
        self.backend = backend
        self.connections: dict[str, ServerConnection] = {}
        self.disconnects: queue.Queue[tuple[str, int]] = queue.Queue()

    def websocket_handshake(self, conn: ServerConnection, handshake: Any) -> None:
        parts = conn.path.strip("/").split("/")
        self.backend.add(parts[0], conn)
        self.connections[conn.id] = conn
        takeover = DeflateOptions(server_no_context_takeover=False) if parts[1:] == ["takeover"] else None
        conn.accept(deflate=takeover)
        conn.send(conn.id)

    def websocket_message(self, conn: ServerConnection, message: str | bytes) -> None:
        conn.send(message)

    def websocket_event(self, conn: ServerConnection, event: dict[str, Any]) -> None:
        getattr(self, event_handler_name(event["type"]))(conn, event)

    def chat_message(self, conn: ServerConnection, event: dict[str, Any]) -> None:
        conn.send(event["text"])

    def websocket_disconnect(self, conn: ServerConnection, code: int) -> None:
        self.backend.discard_all(conn)
        self.disconnects.put((conn.id, code))


class Live:
    """A running server attached to the process backend, and clients that are closed at the end."""

    def __init__(self) -> None:
        self.backend = get_backend()
        self.app = GroupApp(self.backend)
        self.server: Server | None = None
        self._clients = contextlib.ExitStack()

    def start(self, **config: Any) -> Server:
        values: dict[str, Any] = {
            "workers": 4,
            "ping_interval": None,
            "close_timeout": 2.0,
            "linger_timeout": 0.2,
        }
        values.update(config)
        self.server = Server(self.app, port=0, config=ServerConfig(**values))
        self.server.start()
        self.backend.attach(self.server)
        return self.server

    @property
    def url(self) -> str:
        if self.server is None:
            self.start()
        assert self.server is not None
        host, port = self.server.address
        return f"ws://{host}:{port}"

    def connect(self, path: str = "/room", **kwargs: Any) -> tuple[ClientConnection, str]:
        """A websockets client, and its connection id on the server."""
        kwargs.setdefault("max_queue", None)
        ws = self._clients.enter_context(connect(self.url + path, proxy=None, open_timeout=TIMEOUT, **kwargs))
        ident = ws.recv(timeout=TIMEOUT)
        assert isinstance(ident, str)
        return ws, ident

    def connect_plain(self, path: str = "/room") -> tuple[websocket_client.WebSocket, str]:
        """A websocket-client client (offers no compression), and its connection id."""
        ws = websocket_client.create_connection(self.url + path, timeout=TIMEOUT)
        self._clients.callback(ws.close)
        return ws, ws.recv()

    def connect_stalled(self, path: str = "/room") -> socket.socket:
        """A client that completes the handshake and then never reads again."""
        host, port = self.url.removeprefix("ws://").rsplit(":", 1)
        sock = self._clients.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(TIMEOUT)
        sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101 ")
        return sock

    def close(self) -> None:
        self._clients.close()
        if self.server is not None:
            self.server.stop(grace=2.0)
            self.backend.detach(self.server)


@pytest.fixture
def live() -> Iterator[Live]:
    harness = Live()
    try:
        yield harness
    finally:
        harness.close()


def run_within(seconds: float, function: Callable[[], Any]) -> Any:
    """Run ``function`` in a thread; fail if it takes longer than ``seconds`` (a send that blocks)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except Exception as exc:  # pragma: no cover - re-raised below
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class TestOverSockets:
    def test_raw_send_reaches_every_member_but_the_excluded(self, live: Live) -> None:
        (a, a_id), (b, b_id), (c, c_id) = live.connect(), live.connect(), live.connect()
        other, _ = live.connect("/other")
        assert push("room", "not for a", exclude=a_id) == 2
        assert (
            push(
                "room", b"\x00binary", exclude=[live.app.connections[b_id], SimpleNamespace(connection=None)]
            )
            == 2
        )
        assert push("room", "for nobody", exclude=[a_id, b_id, live.app.connections[c_id]]) == 0
        assert push("room", "end") == 3
        assert push("other", "elsewhere") == 1
        received = {
            name: [ws.recv(timeout=TIMEOUT) for _ in range(count)]
            for name, ws, count in (("a", a, 2), ("b", b, 2), ("c", c, 3))
        }
        assert received == {
            "a": [b"\x00binary", "end"],
            "b": ["not for a", "end"],
            "c": ["not for a", b"\x00binary", "end"],
        }
        assert other.recv(timeout=TIMEOUT) == "elsewhere"

    def test_event_send_runs_the_handler_of_each_member_in_order(self, live: Live) -> None:
        (a, a_id), (b, _) = live.connect(), live.connect()
        plain, _ = live.connect_plain()
        for i in range(100):
            assert push("room", event={"type": "chat.message", "text": f"m{i}"}) == 3
        push("room", event={"type": "chat.message", "text": "not for a"}, exclude=a_id)
        push("room", event={"type": "chat.message", "text": "end"})
        expected = [f"m{i}" for i in range(100)]
        assert [a.recv(timeout=TIMEOUT) for _ in range(101)] == expected + ["end"]
        assert [b.recv(timeout=TIMEOUT) for _ in range(102)] == expected + ["not for a", "end"]
        assert [plain.recv() for _ in range(102)] == expected + ["not for a", "end"]

    def test_a_member_that_stops_reading_delays_nobody_and_is_closed_with_1008(self, live: Live) -> None:
        live.start(max_outgoing_buffer=1 << 20)
        stalled = live.connect_stalled()
        (a, _), (b, _) = live.connect(compression=None), live.connect(compression=None)
        [stalled_id] = [
            ident
            for ident, conn in live.app.connections.items()
            if conn.remote_address[1] == stalled.getsockname()[1]
        ]
        chunk = os.urandom(256 << 10)
        counts = []

        def fan_out() -> None:
            # 16 MiB in all: more than the kernel buffers plus our 1 MiB bound
            # can hold for the stalled client. The fast ones read each message
            # before the next push.
            for i in range(64):
                payload = i.to_bytes(4, "big") + chunk
                counts.append(push("room", payload))
                assert a.recv(timeout=TIMEOUT) == payload
                assert b.recv(timeout=TIMEOUT) == payload

        run_within(30.0, fan_out)
        assert live.app.disconnects.get(timeout=TIMEOUT) == (stalled_id, 1008)
        assert counts[0] == 3 and counts[-1] == 2
        assert live.backend.members("room") == [
            live.app.connections[i] for i in live.app.connections if i != stalled_id
        ]

    def test_a_broadcast_frames_once_per_encoding_class(
        self, live: Live, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        compressed = [live.connect("/fanout")[0] for _ in range(50)]
        plain = [live.connect_plain("/fanout")[0] for _ in range(47)]
        takeover = [live.connect("/fanout/takeover")[0] for _ in range(3)]
        encodes: list[int] = []
        compressions: list[int] = []
        original_encode = Connection.encode_message
        original_compress_once = deflate_module.compress_once

        def counting_encode(self: Connection, *args: Any, **kwargs: Any) -> bytes:
            encodes.append(1)
            return original_encode(self, *args, **kwargs)

        def counting_compress_once(*args: Any, **kwargs: Any) -> bytes:
            compressions.append(1)
            return original_compress_once(*args, **kwargs)

        monkeypatch.setattr(Connection, "encode_message", counting_encode)
        monkeypatch.setattr(deflate_module, "compress_once", counting_compress_once)
        message = "the same words, again and again; " * 40  # over the compression threshold
        assert push("fanout", message) == 100
        # One frame for the 50 compressed without context takeover, one for the
        # 47 uncompressed, and one per connection that kept context takeover.
        assert len(encodes) == 1 + 1 + 3
        assert len(compressions) == 1
        for ws in compressed + takeover:
            assert ws.recv(timeout=TIMEOUT) == message
        for ws in plain:
            assert ws.recv() == message
        encodes.clear()
        # Under the compression threshold every connection, takeover or not, gets the same plain frame.
        assert push("fanout", "short") == 100
        assert len(encodes) == 1

    @pytest.mark.django_db
    def test_a_push_inside_atomic_reaches_clients_after_commit(
        self, live: Live, django_capture_on_commit_callbacks: Any
    ) -> None:
        ws, _ = live.connect()
        with django_capture_on_commit_callbacks() as callbacks:
            assert push("room", "after commit") is None
            assert push("room", event={"type": "chat.message", "text": "event after commit"}) is None
            assert push("room", "immediate", immediate=True) == 1
            assert ws.recv(timeout=TIMEOUT) == "immediate"
        assert len(callbacks) == 2
        for callback in callbacks:
            callback()
        assert ws.recv(timeout=TIMEOUT) == "after commit"
        assert ws.recv(timeout=TIMEOUT) == "event after commit"

    @pytest.mark.django_db(transaction=True)
    def test_a_rolled_back_push_never_reaches_clients(self, live: Live) -> None:
        ws, _ = live.connect()
        with pytest.raises(RuntimeError), transaction.atomic():
            push("room", "rolled back")
            push("room", event={"type": "chat.message", "text": "rolled back event"})
            raise RuntimeError("roll back")
        with transaction.atomic():
            push("room", "committed")
            assert push("room", "marker", immediate=True) == 1
        assert ws.recv(timeout=TIMEOUT) == "marker"
        assert ws.recv(timeout=TIMEOUT) == "committed"

    def test_disconnected_clients_leave_their_groups(self, live: Live) -> None:
        (a, a_id), (b, _) = live.connect(), live.connect()
        a.close()
        assert live.app.disconnects.get(timeout=TIMEOUT) == (a_id, 1000)
        assert push("room", "after a left") == 1
        assert b.recv(timeout=TIMEOUT) == "after a left"
