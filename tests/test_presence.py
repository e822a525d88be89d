"""Presence: who announced themselves in a group, their snapshot and the changes, and dead processes.

The contract runs against both backends with stub connections; the Redis
backend's expiry of a dead process is checked here with an entry such a
process leaves behind (the real SIGKILL is in ``test_groups_redis.py``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings

from django_rawws import groups
from django_rawws.groups import BaseGroupBackend, get_backend, presence
from django_rawws.groups.redis import RedisGroupBackend
from tests.redis_proxy import REDIS_BACKEND, REDIS_URL, redis_prefix
from tests.test_groups import FakeServer, StubConnection
from tests.test_resume import Node

MEMORY = "django_rawws.groups.memory.MemoryGroupBackend"
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def fresh_backend() -> Iterator[None]:
    groups._reset_backend()
    yield
    groups._reset_backend()


@pytest.fixture(params=[pytest.param(MEMORY, id="memory"), pytest.param(REDIS_BACKEND, id="redis")])
def backend(request: pytest.FixtureRequest) -> Iterator[BaseGroupBackend]:
    options: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if request.param == REDIS_BACKEND:
            options.update(url=REDIS_URL, prefix=stack.enter_context(redis_prefix()), presence_ttl=0.6)
        stack.enter_context(override_settings(RAWWS={"GROUP_BACKEND": request.param, "GROUP_OPTIONS": options}))
        instance = get_backend()
        server = FakeServer()
        instance.attach(server)
        instance.test_server = server  # type: ignore[attr-defined]
        try:
            yield instance
        finally:
            instance.detach(server)
            instance.close()


def member(backend: BaseGroupBackend, group: str, **kwargs: Any) -> StubConnection:
    conn = StubConnection(server=backend.test_server)  # type: ignore[attr-defined]
    backend.add(group, conn, **kwargs)
    return conn


def notices(conn: StubConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(m) for m in conn.wait_messages(count)]


class TestPresenceContract:
    def test_members_that_announced_themselves_are_listed_with_their_connection_id(
        self, backend: BaseGroupBackend
    ) -> None:
        ada = member(backend, "room", presence={"user": 1, "name": "ada"})
        bob = member(backend, "room", presence={"user": 2, "name": "bob"})
        member(backend, "room")  # a silent member is not listed
        expected = sorted(
            [{"conn": ada.id, "user": 1, "name": "ada"}, {"conn": bob.id, "user": 2, "name": "bob"}],
            key=lambda e: e["conn"],
        )
        assert backend.presence("room") == expected
        assert presence("room") == expected
        assert backend.presence("elsewhere") == []

    def test_an_announced_member_gets_a_snapshot_then_the_changes(self, backend: BaseGroupBackend) -> None:
        ada = member(backend, "room", presence={"name": "ada"})
        assert notices(ada, 1) == [
            {"type": "rawws.presence", "group": "room", "members": [{"conn": ada.id, "name": "ada"}]}
        ]
        bob = member(backend, "room", presence={"name": "bob"})
        assert notices(ada, 2)[1] == {"type": "rawws.presence", "group": "room", "joined": [{"conn": bob.id, "name": "bob"}]}
        backend.discard("room", bob)
        assert notices(ada, 3)[2] == {"type": "rawws.presence", "group": "room", "left": [{"conn": bob.id, "name": "bob"}]}
        assert backend.presence("room") == [{"conn": ada.id, "name": "ada"}]
        # bob's own view: its snapshot, and no notice of its own join.
        [snapshot] = [json.loads(m) for m in bob.messages]
        assert {e["name"] for e in snapshot["members"]} == {"ada", "bob"}

    def test_a_disconnect_removes_every_presence_of_the_connection(self, backend: BaseGroupBackend) -> None:
        watcher = member(backend, "a", presence={"name": "w"})
        member(backend, "b", presence={"name": "w"})
        leaver = StubConnection(server=backend.test_server)  # type: ignore[attr-defined]
        backend.add("a", leaver, presence={"name": "l"})
        backend.add("b", leaver, presence={"name": "l"})
        backend.discard_all(leaver)
        assert [e["name"] for e in backend.presence("a")] == ["w"]
        assert [e["name"] for e in backend.presence("b")] == ["w"]
        assert notices(watcher, 3)[2]["left"] == [{"conn": leaver.id, "name": "l"}]

    def test_detach_removes_the_presence_of_that_servers_connections(self, backend: BaseGroupBackend) -> None:
        other = FakeServer()
        backend.attach(other)
        ours = member(backend, "room", presence={"name": "ours"})
        theirs = StubConnection(server=other)
        backend.add("room", theirs, presence={"name": "theirs"})
        backend.detach(other)
        assert backend.presence("room") == [{"conn": ours.id, "name": "ours"}]

    @pytest.mark.parametrize(
        ("value", "error"),
        [("ada", TypeError), ({"conn": "x"}, ValueError), ({"obj": object()}, TypeError)],
    )
    def test_presence_is_a_json_dict_without_a_conn_key(
        self, backend: BaseGroupBackend, value: Any, error: type[Exception]
    ) -> None:
        with pytest.raises(error):
            backend.add("room", StubConnection(), presence=value)
        assert backend.presence("room") == []

    def test_a_presence_change_is_not_sent_to_silent_members(self, backend: BaseGroupBackend) -> None:
        silent = member(backend, "room")
        member(backend, "room", presence={"name": "ada"})
        backend.send_raw("room", "marker")
        assert silent.wait_messages(1) == ["marker"]


class TestDeadProcesses:
    """Redis only: entries of a node whose heartbeat stopped."""

    @pytest.fixture
    def watcher_backend(self) -> Iterator[RedisGroupBackend]:
        with redis_prefix() as prefix:
            backend = RedisGroupBackend(url=REDIS_URL, prefix=prefix, presence_ttl=0.6)
            server = FakeServer()
            backend.attach(server)
            try:
                yield backend
            finally:
                backend.detach(server)
                backend.close()

    def leave_behind(self, backend: RedisGroupBackend, node: str, conn_id: str, alive_ms: int | None) -> None:
        """Write what a process that died would have left: its entry, and maybe a fading heartbeat."""
        client = backend._redis
        client.hset(f"{backend.prefix}:p:room", f"{node}|{conn_id}", json.dumps({"conn": conn_id, "name": "ghost"}))
        client.sadd(f"{backend.prefix}:n:room", node)
        if alive_ms is not None:
            client.set(f"{backend.prefix}:alive:{node}", "1", px=alive_ms)

    def test_entries_of_a_node_without_heartbeat_are_not_listed(self, watcher_backend: RedisGroupBackend) -> None:
        self.leave_behind(watcher_backend, "deadbeef", "deadbeef.1", alive_ms=None)
        assert watcher_backend.presence("room") == []

    def test_a_watching_node_removes_them_and_announces_the_leave_within_the_ttl(
        self, watcher_backend: RedisGroupBackend
    ) -> None:
        watcher = StubConnection(server=watcher_backend.servers[0])
        watcher_backend.add("room", watcher, presence={"name": "watcher"})
        self.leave_behind(watcher_backend, "feedf00d", "feedf00d.7", alive_ms=600)
        assert {e["name"] for e in watcher_backend.presence("room")} == {"watcher", "ghost"}
        # The ghost's heartbeat fades within 0.6 s; the watcher's next heartbeat (every 0.2 s) sweeps.
        [snapshot, left] = notices(watcher, 2)
        assert snapshot["members"][0]["name"] == "watcher"
        assert left == {"type": "rawws.presence", "group": "room", "left": [{"conn": "feedf00d.7", "name": "ghost"}]}
        assert watcher_backend.presence("room") == [{"conn": watcher.id, "name": "watcher"}]
        assert not watcher_backend._redis.sismember(f"{watcher_backend.prefix}:n:room", "feedf00d")


class TestPresenceOverSockets:
    def test_a_page_sees_who_comes_and_goes(self) -> None:
        from django_rawws.groups.memory import MemoryGroupBackend

        node = Node(MemoryGroupBackend())
        try:
            ada, ada_id = node.connect("/room?name=ada")
            assert json.loads(ada.recv(timeout=TIMEOUT))["members"] == [{"conn": ada_id, "name": "ada"}]
            bob, bob_id = node.connect("/room?name=bob")
            assert json.loads(ada.recv(timeout=TIMEOUT))["joined"] == [{"conn": bob_id, "name": "bob"}]
            bob.close()
            assert json.loads(ada.recv(timeout=TIMEOUT))["left"] == [{"conn": bob_id, "name": "bob"}]
        finally:
            node.close()
