"""The Redis group backend: every process sharing one Redis acts as one.

::

    RAWWS = {
        "GROUP_BACKEND": "django_rawws.groups.redis.RedisGroupBackend",
        "GROUP_OPTIONS": {"url": "redis://127.0.0.1:6379/0", "prefix": "mysite"},
    }

A send is one ``PUBLISH`` on the group's channel, from any process, whether
it runs a server or not. A process with a server attached runs one subscriber
thread (``rawws-redis-<node>``) holding one connection, subscribed to the
channels of the groups its own connections are in, and nothing else; it hands
each message to :class:`~.base.LocalGroups`, which frames it once per encoding
class for all local members. ``conn:<id>`` groups don't cost a channel each:
a connection id starts with its process's prefix, and they travel on that
process's channel.

Resumable groups keep a Redis stream per group (``XADD`` and trimming by
count and age, in one Lua script with the ``PUBLISH``, so ids and live order
agree). Presence is a hash per group of ``<node>|<connection id>`` → entry,
and a key per process (node) that its heartbeat keeps alive: entries of a
node whose key expired are ignored at once and removed by the next heartbeat
of any node watching the group, which announces them as left.

Faults: the subscriber reconnects with bounded, jittered exponential backoff,
resubscribes, catches up the resumable groups from their streams, and
announces its presence again. WebSocket connections never notice, apart from
the messages an outage cost (see ``docs/scaling.md``). A send that can't
reach Redis raises :class:`~django_rawws.exceptions.GroupBackendUnavailable`.
"""

from __future__ import annotations

import json
import logging
import random
import re
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

from ..exceptions import GroupBackendUnavailable
from .base import BaseGroupBackend, validate_group_name
from .resume import Entry, GroupState, MessageId, envelope, gap_message, has_gap

__all__ = ["RedisGroupBackend"]

logger = logging.getLogger("django_rawws.groups")

# A connection id is "<8 hex digits of its process>.<counter>" (django_rawws.server.connection).
_CONNECTION_GROUP = re.compile(r"conn:([0-9a-f]{8})\.[0-9a-f]+")
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")

#: Seconds the last id of a resumable group outlives its stream, so a client
#: back after a long silence gets a clean resume rather than a false gap.
LAST_ID_TTL = 86_400
#: Milliseconds a presence hash lives without a join or a re-announce.
PRESENCE_KEEP_MS = 86_400_000

# KEYS: stream, last id. ARGV: channel, group, data, excluded (JSON), header, count, age ms, last-id TTL.
_PUBLISH_RESUMABLE = """
local prev = redis.call('GET', KEYS[2]) or ''
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], '*', 'p', prev, 'd', ARGV[3], 'x', ARGV[4])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[7])
if oldest > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest))
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('SET', KEYS[2], id, 'EX', ARGV[8])
local body = '{"id":"' .. id .. '","group":"' .. ARGV[2] .. '","data":' .. ARGV[3] .. '}'
return {id, redis.call('PUBLISH', ARGV[1], 'j|' .. id .. '|' .. ARGV[5] .. '\\n' .. body)}
"""

# KEYS: presence hash, nodes set. ARGV: field, entry, node, channel, message, keep ms.
_PRESENCE_JOIN = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return redis.call('PUBLISH', ARGV[4], ARGV[5])
"""

# KEYS: presence hash. ARGV: field, channel, message. Announces only a leave it made.
_PRESENCE_LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  return redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return -1
"""

# KEYS: presence hash, nodes set, the node's alive key. ARGV: node, channel, message head.
# Atomic with the liveness check: a node that came back in between keeps its entries.
_PRESENCE_SWEEP = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
local prefix = ARGV[1] .. '|'
local removed = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix then
    table.insert(removed, redis.call('HGET', KEYS[1], field))
    redis.call('HDEL', KEYS[1], field)
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
if #removed > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\\n{"left":[' .. table.concat(removed, ',') .. ']}')
end
return #removed
"""

# KEYS: presence hash, nodes set. ARGV: node, channel, message head, keep ms, then field, entry pairs.
# Makes the node's entries exactly the given ones, announcing what changed.
_PRESENCE_REANNOUNCE = """
local prefix = ARGV[1] .. '|'
local wanted = {}
local any = false
for i = 5, #ARGV, 2 do
  wanted[ARGV[i]] = ARGV[i + 1]
  any = true
end
local left, joined = {}, {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, #prefix) == prefix and wanted[field] == nil then
    table.insert(left, redis.call('HGET', KEYS[1], field))
    redis.call('HDEL', KEYS[1], field)
  end
end
for i = 5, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    table.insert(joined, ARGV[i + 1])
  end
end
if any then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if #left > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\\n{"left":[' .. table.concat(left, ',') .. ']}')
end
if #joined > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\\n{"joined":[' .. table.concat(joined, ',') .. ']}')
end
return {#joined, #left}
"""


class RedisGroupBackend(BaseGroupBackend):
    """Groups across every process sharing one Redis (redis-py, synchronous).

    Options (``RAWWS["GROUP_OPTIONS"]``), besides ``resumable``,
    ``resume_count`` and ``resume_age``:

    * ``url``: ``redis://[:password@]host:port/db``, ``rediss://`` or ``unix://``;
    * ``prefix`` (``"rawws"``): of every key and channel, so several sites
      (or test runs) can share one Redis;
    * ``presence_ttl`` (30 s): how long the presence of a process outlives
      its last heartbeat (heartbeats every third of it);
    * ``socket_timeout`` (5 s) and ``socket_connect_timeout`` (2 s): a send
      waits at most about this long before raising GroupBackendUnavailable;
    * ``reconnect_delay`` (0.1 s) and ``reconnect_max_delay`` (10 s): the
      subscriber's backoff after a fault, doubling, with jitter.

    A send returns the number of processes that received it (``PUBLISH``'s
    count), not connections: members are counted where they are.
    """

    cross_process = True

    def __init__(
        self,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "rawws",
        presence_ttl: float = 30.0,
        socket_timeout: float = 5.0,
        socket_connect_timeout: float = 2.0,
        reconnect_delay: float = 0.1,
        reconnect_max_delay: float = 10.0,
        **options: Any,
    ) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"The Redis group backend needs redis-py ({exc}): pip install 'django-rawws[redis]'"
            ) from exc
        super().__init__(**options)
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            raise ImproperlyConfigured(
                f"GROUP_OPTIONS 'prefix' is 1 to 64 ASCII letters, digits, '-', '_', '.' or ':', not {prefix!r}"
            )
        for name, value in (
            ("presence_ttl", presence_ttl),
            ("socket_timeout", socket_timeout),
            ("socket_connect_timeout", socket_connect_timeout),
            ("reconnect_delay", reconnect_delay),
            ("reconnect_max_delay", reconnect_max_delay),
        ):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ImproperlyConfigured(f"GROUP_OPTIONS {name!r} is a positive number of seconds, not {value!r}")
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.url = url
        self.prefix = prefix
        self.presence_ttl = float(presence_ttl)
        self.socket_timeout = float(socket_timeout)
        self.reconnect_delay = float(reconnect_delay)
        self.reconnect_max_delay = max(float(reconnect_max_delay), self.reconnect_delay)
        #: This backend instance in Redis's eyes: its presence entries and heartbeat.
        self.node = secrets.token_hex(4)
        try:
            self._pool = redis.ConnectionPool.from_url(
                url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=float(socket_connect_timeout),
                # One retry on a fresh connection: a pooled one may be stale after an outage.
                retry=Retry(NoBackoff(), 1),
                # RESP2 everywhere: subscribed-mode replies arrive as plain
                # replies on every redis-py version (RESP3 turns them into
                # "push" messages some versions route to a handler of their own).
                protocol=2,
            )
        except ValueError as exc:
            raise ImproperlyConfigured(f"GROUP_OPTIONS 'url' {self.safe_url!r} is not a Redis URL: {exc}") from exc
        self._subscriber_kwargs = {**self._pool.connection_kwargs, "retry": Retry(NoBackoff(), 0), "protocol": 2}
        self._redis = redis.Redis(connection_pool=self._pool)
        self._publish_resumable = self._redis.register_script(_PUBLISH_RESUMABLE)
        self._presence_join_script = self._redis.register_script(_PRESENCE_JOIN)
        self._presence_leave_script = self._redis.register_script(_PRESENCE_LEAVE)
        self._presence_sweep_script = self._redis.register_script(_PRESENCE_SWEEP)
        self._presence_reannounce_script = self._redis.register_script(_PRESENCE_REANNOUNCE)

        # The subscriber. Its lock guards the fields below and every command
        # sent on its connection; only its thread reads from the connection.
        self._cond = threading.Condition(threading.Lock())
        self._channels: dict[str, set[str]] = {}  # wanted channel -> local groups on it
        self._active: set[str] = set()  # channels whose last command sent was SUBSCRIBE
        self._unacked: dict[str, int] = {}  # channel -> (UN)SUBSCRIBE replies still to come
        self._sub_conn: Any = None
        self._connected = False
        self._generation = 0
        self._ping_sent_at: float | None = None
        self._catching_up: list[str] = []
        self._attempted = False  # the subscriber tried to connect at least once
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self.reconnects = 0

    def __repr__(self) -> str:
        return f"<RedisGroupBackend {self.safe_url} prefix={self.prefix!r} node={self.node}>"

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        try:
            parts = urlsplit(self.url)
        except ValueError:
            return "<invalid url>"
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))

    @property
    def heartbeat_interval(self) -> float:
        return self.presence_ttl / 3

    # ------------------------------------------------------------- naming

    def channel(self, group: str) -> str:
        """The channel a group's messages travel on (a process's channel for ``conn:`` groups)."""
        match = _CONNECTION_GROUP.fullmatch(group)
        if match is not None:
            return f"{self.prefix}:c:{match.group(1)}"
        return f"{self.prefix}:g:{group}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    # ---------------------------------------------------------- transport

    def _command(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a Redis command; turn a client error into GroupBackendUnavailable."""
        try:
            return function(*args, **kwargs)
        except self._redis_errors as exc:
            raise GroupBackendUnavailable(f"{what}: Redis at {self.safe_url} is unavailable ({exc})") from exc

    @staticmethod
    def _header(group: str, excluded: frozenset[str]) -> str:
        if not excluded:
            return f'{{"g":"{group}"}}'
        return json.dumps({"g": group, "x": sorted(excluded)}, separators=(",", ":"))

    def _publish_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        header = self._header(group, excluded)
        channel = self.channel(group)
        if self.is_resumable(group):
            assert isinstance(message, str)  # prepare_raw() checked it
            _, count = self._command(
                f"send to group {group!r}",
                self._publish_resumable,
                keys=[self._key("s", group), self._key("l", group)],
                args=[
                    channel,
                    group,
                    message,
                    json.dumps(sorted(excluded)),
                    header,
                    self.resume_count,
                    int(self.resume_age * 1000),
                    max(LAST_ID_TTL, int(self.resume_age)),
                ],
            )
            return int(count)
        if isinstance(message, str):
            payload = b"t||" + header.encode() + b"\n" + message.encode("utf-8")
        else:
            payload = b"b||" + header.encode() + b"\n" + message
        return int(self._command(f"send to group {group!r}", self._redis.publish, channel, payload))

    def _publish_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        payload = "e||" + self._header(group, excluded) + "\n" + json.dumps(event, separators=(",", ":"))
        return int(self._command(f"send to group {group!r}", self._redis.publish, self.channel(group), payload))

    def _fetch_backlog(self, group: str, after: MessageId) -> tuple[list[Entry], MessageId | None]:
        pipe = self._redis.pipeline(transaction=True)
        pipe.xrange(self._key("s", group), min=f"({after}", max="+")
        pipe.get(self._key("l", group))
        raw_entries, raw_last = self._command(f"read the window of group {group!r}", pipe.execute)
        entries = []
        for raw_id, fields in raw_entries:
            excluded = frozenset(json.loads(fields.get(b"x", b"[]")))
            entries.append(
                Entry(MessageId.parse(raw_id), fields[b"p"].decode(), fields[b"d"].decode("utf-8"), excluded)
            )
        return entries, MessageId.parse(raw_last) if raw_last else None

    # ------------------------------------------------------------ presence

    def presence(self, group: str) -> list[dict[str, Any]]:
        """Everyone announced in ``group`` by a live process, ``[{"conn": ..., **presence}]``, sorted by ``conn``.

        Entries of a process whose heartbeat stopped more than
        ``presence_ttl`` ago are left out, even before a sweep removes them.

        Raises:
            GroupBackendUnavailable: Redis can't be reached.
        """
        validate_group_name(group)
        raw = self._command(f"read the presence of group {group!r}", self._redis.hgetall, self._key("p", group))
        if not raw:
            return []
        by_node: dict[str, list[bytes]] = {}
        for field, value in raw.items():
            by_node.setdefault(field.decode().split("|", 1)[0], []).append(value)
        nodes = sorted(by_node)
        alive = self._command(
            f"read the presence of group {group!r}", self._redis.mget, [self._key("alive", node) for node in nodes]
        )
        entries = [
            json.loads(value) for node, flag in zip(nodes, alive) if flag is not None for value in by_node[node]
        ]
        return sorted(entries, key=lambda entry: entry["conn"])

    def _notice_head(self, group: str) -> str:
        return "p||" + self._header(group, frozenset())

    def _presence_join(self, group: str, conn: Any, entry: dict[str, Any]) -> None:
        value = json.dumps(entry, separators=(",", ":"))
        self._command(
            f"announce presence in group {group!r}",
            self._presence_join_script,
            keys=[self._key("p", group), self._key("n", group)],
            args=[
                f"{self.node}|{conn.id}",
                value,
                self.node,
                self.channel(group),
                self._notice_head(group) + '\n{"joined":[' + value + "]}",
                PRESENCE_KEEP_MS,
            ],
        )

    def _presence_leave(self, group: str, conn: Any, entry: dict[str, Any]) -> None:
        value = json.dumps(entry, separators=(",", ":"))
        self._command(
            f"announce a leave in group {group!r}",
            self._presence_leave_script,
            keys=[self._key("p", group)],
            args=[f"{self.node}|{conn.id}", self.channel(group), self._notice_head(group) + '\n{"left":[' + value + "]}"],
        )

    def _presence_groups(self) -> list[tuple[str, list[tuple[Any, dict[str, Any]]]]]:
        """The groups where local connections announced themselves, with their entries."""
        found = []
        for group, state in self._states_snapshot():
            with state.lock:
                entries = list(state.presence.items())
            if entries:
                found.append((group, entries))
        return found

    def _reannounce(self) -> None:
        """Make Redis hold exactly this node's presence entries (after a reconnect or an expiry)."""
        for group, entries in self._presence_groups():
            args: list[Any] = [self.node, self.channel(group), self._notice_head(group), PRESENCE_KEEP_MS]
            for conn, entry in entries:
                args += [f"{self.node}|{conn.id}", json.dumps(entry, separators=(",", ":"))]
            self._presence_reannounce_script(keys=[self._key("p", group), self._key("n", group)], args=args)

    def _sweep(self) -> None:
        """Remove, and announce as left, the entries of dead nodes in the groups we watch."""
        groups = [group for group, _ in self._presence_groups()]
        if not groups:
            return
        pipe = self._redis.pipeline(transaction=False)
        for group in groups:
            pipe.smembers(self._key("n", group))
        node_sets = pipe.execute()
        nodes = sorted({node.decode() for members in node_sets for node in members} - {self.node})
        if not nodes:
            return
        alive = dict(zip(nodes, self._redis.mget([self._key("alive", node) for node in nodes])))
        for group, members in zip(groups, node_sets):
            for raw_node in members:
                node = raw_node.decode()
                if node != self.node and alive.get(node) is None:
                    removed = self._presence_sweep_script(
                        keys=[self._key("p", group), self._key("n", group), self._key("alive", node)],
                        args=[node, self.channel(group), self._notice_head(group)],
                    )
                    if removed:
                        logger.info("presence: removed %d entries of stopped process %s from group %r", removed, node, group)

    # ------------------------------------------------------- subscriptions

    def _group_activated(self, group: str) -> None:
        if self.is_resumable(group):
            state = self._state(group)
            if state.last_id is None and self._thread is not None:
                # Where this process's live flow starts: the point to catch up
                # from should it lose its subscription later.
                try:
                    raw = self._redis.get(self._key("l", group))
                except self._redis_errors:
                    raw = None
                if raw:
                    with state.lock:
                        if state.last_id is None:
                            state.last_id = MessageId.parse(raw)
        self._sync_channel(group, wait=True)

    def _group_deactivated(self, group: str) -> None:
        self._sync_channel(group, wait=False)

    def _wait_subscribed(self, group: str) -> None:
        self._sync_channel(group, wait=True)

    def _sync_channel(self, group: str, *, wait: bool) -> None:
        """Bring the subscription of ``group``'s channel in line with local membership.

        With ``wait``, return once Redis confirmed the subscription (bounded
        by ``socket_timeout``), or at once when the subscriber is not
        connected: its reconnection subscribes everything anyway.
        """
        channel = self.channel(group)
        with self._cond:
            groups = self._channels.get(channel)
            if self.local.has_members(group):
                if groups is None:
                    groups = self._channels[channel] = set()
                groups.add(group)
            elif groups is not None:
                groups.discard(group)
                if not groups:
                    del self._channels[channel]
            wanted = channel in self._channels
            if wait and wanted and not self._attempted and self._thread is not None:
                # The subscriber is starting: its first connection subscribes this channel too.
                self._cond.wait_for(lambda: self._attempted, self.socket_timeout)
            if self._connected:
                if wanted and channel not in self._active:
                    self._send_locked("SUBSCRIBE", channel)
                    self._active.add(channel)
                elif not wanted and channel in self._active:
                    self._send_locked("UNSUBSCRIBE", channel)
                    self._active.discard(channel)
            if wait and wanted and self._connected:
                generation = self._generation
                self._cond.wait_for(
                    lambda: not self._connected
                    or self._generation != generation
                    or (channel in self._active and not self._unacked.get(channel)),
                    self.socket_timeout,
                )

    def _send_locked(self, *command: str) -> None:
        """Send a command on the subscriber connection (lock held); a failure ends the connection."""
        try:
            self._sub_conn.send_command(*command, check_health=False)
        except self._redis_errors as exc:
            logger.debug("sending %s to Redis failed: %s", command[0], exc)
            self._connected = False  # the subscriber thread reconnects
            self._cond.notify_all()
            return
        if command[0] in ("SUBSCRIBE", "UNSUBSCRIBE"):
            for channel in command[1:]:
                self._unacked[channel] = self._unacked.get(channel, 0) + 1

    # ----------------------------------------------------------- lifecycle

    def attach(self, server: Any) -> None:
        super().attach(server)
        with self._state_lock:
            if self._thread is None and not self._closed:
                self._stop_event = threading.Event()
                with self._cond:
                    self._attempted = False
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop_event,), name=f"rawws-redis-{self.node}", daemon=True
                )
                self._thread.start()

    def detach(self, server: Any) -> None:
        super().detach(server)
        if not self.servers:
            self._stop_subscriber()

    def check_available(self) -> None:
        """Ping Redis: raise :class:`GroupBackendUnavailable` when it can't be reached now."""
        super().check_available()
        try:
            self._redis.ping()
        except self._redis_errors as exc:
            raise GroupBackendUnavailable(f"Redis at {self.safe_url} is unavailable: {exc}") from exc

    def close(self) -> None:
        super().close()
        self._stop_subscriber()
        self._pool.disconnect()

    def _stop_subscriber(self) -> None:
        with self._state_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop_event.set()
        with self._cond:
            if self._connected:
                self._send_locked("PING")  # wakes the read at once
        thread.join(self.socket_timeout + self.heartbeat_interval + 1.0)
        if thread.is_alive():
            logger.warning("the Redis subscriber thread %s did not stop in time", thread.name)
        try:
            self._redis.delete(self._key("alive", self.node))  # our presence goes at once
        except self._redis_errors:
            pass

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the subscriber is connected, subscribed and caught up; return whether it is.

        For readiness checks and tests: after an outage, True means the live
        flow reaches this process again.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._connected and not self._unacked and not self._catching_up, timeout
            )

    def stats(self) -> dict[str, Any]:
        stats = super().stats()
        with self._cond:
            stats.update(
                node=self.node,
                connected=self._connected,
                subscribed_channels=len(self._active),
                reconnects=self.reconnects,
            )
        return stats

    # ----------------------------------------------------- subscriber thread

    def _run(self, stop: threading.Event) -> None:
        """Connect, subscribe, deliver; on a fault, back off and do it again, until stopped."""
        failures = 0
        while not stop.is_set():
            conn = self._sub_connection()
            try:
                conn.connect()
                self._connected_as(conn, reconnect=self._generation > 0)
                if failures:
                    self.reconnects += 1
                    logger.warning(
                        "reconnected to Redis at %s after %d failed attempt(s); resubscribed to %d channel(s)",
                        self.safe_url,
                        failures,
                        len(self._active),
                    )
                failures = 0
                self._listen(conn, stop)
            except self._redis_errors as exc:
                failures += 1
                if failures == 1:
                    logger.error(
                        "lost the Redis connection of the group backend (%s at %s): WebSocket connections stay "
                        "open; reconnecting with backoff",
                        exc,
                        self.safe_url,
                    )
                else:
                    logger.debug("Redis reconnection attempt %d failed: %s", failures, exc)
            except Exception:
                failures += 1
                logger.exception("the Redis subscriber failed; reconnecting")
            finally:
                self._disconnected(conn)
            if stop.is_set():
                break
            stop.wait(self._backoff(failures))

    def _sub_connection(self) -> Any:
        return self._pool.connection_class(**self._subscriber_kwargs)

    def _backoff(self, failures: int) -> float:
        """Exponential, capped, with "equal jitter": between half and all of the ceiling."""
        ceiling = min(self.reconnect_max_delay, self.reconnect_delay * (2 ** min(failures - 1, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _connected_as(self, conn: Any, *, reconnect: bool) -> None:
        """Subscribe to every wanted channel on a fresh connection; plan the catch-up of resumable groups."""
        with self._cond:
            self._sub_conn = conn
            self._generation += 1
            self._active = set()
            self._unacked = {}
            self._ping_sent_at = None
            self._catching_up = []
            if reconnect:
                for group, state in self._states_snapshot():
                    if self.is_resumable(group) and state.last_id is not None:
                        with state.lock:
                            state.catch_up = []  # live messages wait for the catch-up
                        self._catching_up.append(group)
            self._connected = True
            self._attempted = True
            channels = sorted(self._channels)
            if channels:
                self._send_locked("SUBSCRIBE", *channels)
                self._active.update(channels)
            self._cond.notify_all()
        if not self._connected:
            raise ConnectionError("the subscription could not be sent")

    def _disconnected(self, conn: Any) -> None:
        with self._cond:
            self._attempted = True
            if self._sub_conn is conn:
                self._sub_conn = None
            self._connected = False
            self._active = set()
            self._unacked = {}
            self._cond.notify_all()
        try:
            conn.disconnect()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass

    def _listen(self, conn: Any, stop: threading.Event) -> None:
        interval = self.heartbeat_interval
        next_beat = time.monotonic()  # at once: announce ourselves
        first_beat = True
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                self._heartbeat(reannounce=first_beat)
                first_beat = False
                next_beat = now + interval
            with self._cond:
                if not self._connected:
                    raise ConnectionError("the subscriber connection failed")
                sent_at = self._ping_sent_at
            if sent_at is not None and now - sent_at > max(self.socket_timeout, interval):
                raise ConnectionError("Redis did not answer PING")
            if conn.can_read(timeout=max(0.0, min(next_beat - time.monotonic(), 1.0))):
                self._handle(conn.read_response(disconnect_on_error=False))
                while conn.can_read(timeout=0):
                    self._handle(conn.read_response(disconnect_on_error=False))
            if self._catching_up:
                with self._cond:
                    ready = not self._unacked
                if ready:
                    self._catch_up()

    def _heartbeat(self, *, reannounce: bool) -> None:
        """Keep our presence alive, check the subscriber connection, sweep the dead."""
        with self._cond:
            if self._connected and self._ping_sent_at is None:
                self._ping_sent_at = time.monotonic()
                self._send_locked("PING")
        try:
            previous = self._redis.set(
                self._key("alive", self.node), "1", px=max(1, int(self.presence_ttl * 1000)), get=True
            )
            if reannounce or previous is None:
                self._reannounce()
            self._sweep()
        except self._redis_errors as exc:
            logger.warning("presence heartbeat to Redis failed: %s", exc)

    def _handle(self, response: Any) -> None:
        if not isinstance(response, list) or not response:
            if response in (b"PONG", "PONG"):  # PING outside subscribed mode
                with self._cond:
                    self._ping_sent_at = None
            return
        kind = response[0]
        if kind == b"message":
            try:
                self._on_message(response[2])
            except Exception:
                logger.exception("could not deliver a message from Redis channel %r", response[1])
        elif kind in (b"subscribe", b"unsubscribe"):
            channel = response[1].decode()
            with self._cond:
                left = self._unacked.get(channel, 0) - 1
                if left > 0:
                    self._unacked[channel] = left
                else:
                    self._unacked.pop(channel, None)
                self._cond.notify_all()
        elif kind == b"pong":
            with self._cond:
                self._ping_sent_at = None

    def _on_message(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        kind, raw_id, raw_header = head.split(b"|", 2)
        header = json.loads(raw_header)
        group = header["g"]
        excluded = frozenset(header.get("x", ()))
        if kind == b"t":
            self._deliver_raw(group, body.decode("utf-8"), excluded)
        elif kind == b"j":
            self._deliver_raw(group, body.decode("utf-8"), excluded, MessageId.parse(raw_id))
        elif kind == b"b":
            self._deliver_raw(group, bytes(body), excluded)
        elif kind == b"e":
            self.local.send_event(group, json.loads(body), excluded)
        elif kind == b"p":
            self._deliver_notice(group, json.loads(body))

    def _catch_up(self) -> None:
        """After a reconnect: deliver what the resumable groups got while we were away, then the held live flow."""
        groups = list(self._catching_up)
        for group in groups:
            state = self._states.get(group)
            if state is None:
                continue
            after = state.last_id
            entries: list[Entry] = []
            gap = False
            if after is not None:
                try:
                    entries, last = self._fetch_backlog(group, after)
                except GroupBackendUnavailable as exc:
                    logger.warning("could not catch up group %r after reconnecting (%s)", group, exc)
                    gap = True
                else:
                    gap = has_gap(after, entries, last)
            self._release(state, group, after, entries, gap)
        with self._cond:
            self._catching_up = []
            self._cond.notify_all()

    def _release(
        self, state: GroupState, group: str, after: MessageId | None, entries: list[Entry], gap: bool
    ) -> None:
        with state.lock:
            held, state.catch_up = state.catch_up or [], None
            last = after
            if gap:
                logger.warning("group %r lost messages during the Redis outage: its members get a gap message", group)
                self._fan_out_locked(state, group, gap_message(group), frozenset(), None)
            for entry in entries:
                if last is None or entry.id > last:
                    last = entry.id
                    self._fan_out_locked(state, group, envelope(entry.id, group, entry.data), entry.excluded, entry.id)
            for msg_id, payload, excluded in held:
                if last is None or msg_id > last:
                    last = msg_id
                    self._fan_out_locked(state, group, payload, excluded, msg_id)
            state.last_id = last
