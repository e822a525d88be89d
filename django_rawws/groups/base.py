"""The group backend interface, and what every backend shares.

A backend does two jobs. Membership: which of *this process's* connections
belong to which group (``add``, ``discard``, ``discard_all``, ``members``,
``groups_of``). Delivery: a send to a group reaches its members, wherever they
are (``send_raw``, ``send_event``). The in-memory backend delivers to the
members it holds; a cross-process backend (Redis) publishes, and each
process delivers to its own members with the same :class:`LocalGroups`
fan-out, so a message is framed once per encoding class *per process*.

Resumable groups and presence (:mod:`.resume`) are merged into that fan-out
here, the same way for every backend; a backend supplies the storage
(``_fetch_backlog``) and the announcements (``_presence_join`` /
``_presence_leave``, :meth:`BaseGroupBackend.presence`).

What crosses a process boundary is therefore kept to plain data from the
start, whatever the backend: ``exclude`` becomes a set of connection ids and
an event goes through JSON. Code written against the in-memory backend then
behaves the same on Redis.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder

from ..exceptions import GroupBackendUnavailable
from ..server import SharedMessage
from .resume import (
    Entry,
    Gate,
    GroupState,
    MessageId,
    compile_patterns,
    envelope,
    gap_message,
    has_gap,
    matches,
    presence_entry,
    presence_message,
    resume_requests,
    validate_resumable_message,
)

__all__ = [
    "MAX_GROUP_NAME_LENGTH",
    "BaseGroupBackend",
    "LocalGroups",
    "check_message",
    "connection_group",
    "event_handler_name",
    "exclude_ids",
    "prepare_event",
    "session_group",
    "user_group",
    "validate_group_name",
]

logger = logging.getLogger("django_rawws.groups")

#: Group names are shorter than this. It keeps names usable as Redis channel
#: and key suffixes and in log lines.
MAX_GROUP_NAME_LENGTH = 100

_GROUP_NAME = re.compile(r"[A-Za-z0-9_.:\-]+")


# ------------------------------------------------------------------ names


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise ValueError.

    Valid: 1 to 99 ASCII letters, digits, ``-``, ``_``, ``.``, ``:``. Strict on
    purpose, so a name means the same thing as a Redis channel, in a log line
    and in a URL, and so user input can't smuggle in separators.
    """
    if not isinstance(name, str):
        # ValueError too, as for every invalid name: callers validating user input catch one exception.
        raise ValueError(f"a group name is a str, not {type(name).__name__}")  # noqa: TRY004
    if len(name) >= MAX_GROUP_NAME_LENGTH:
        raise ValueError(
            f"group name too long ({len(name)} characters, the limit is {MAX_GROUP_NAME_LENGTH - 1})"
        )
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(f"invalid group name {name!r}: use ASCII letters, digits, '-', '_', '.' and ':'")
    return name


def _automatic(prefix: str, value: str) -> str:
    """``prefix:value``, or ``prefix:`` + a digest when ``value`` would not make a valid name.

    Primary keys and session keys are nearly always valid as they are
    (integers, UUIDs, Django's lowercase alphanumeric session keys); a digest
    keeps the name valid and stable for the rare custom key that is not.
    """
    name = f"{prefix}:{value}"
    if len(name) < MAX_GROUP_NAME_LENGTH and _GROUP_NAME.fullmatch(name):
        return name
    return f"{prefix}:sha256.{hashlib.sha256(value.encode('utf-8')).hexdigest()[:40]}"


def connection_group(conn: Any) -> str:
    """The automatic group of one connection: ``conn:<id>`` (a connection, a consumer or an id)."""
    ident = _one_id(conn)
    if ident is None:
        raise ValueError("this consumer has no connection")
    return _automatic("conn", ident)


def user_group(user: Any) -> str:
    """The automatic group of one user: ``user:<pk>`` (a user object or a primary key)."""
    pk = getattr(user, "pk", user)
    if pk is None:
        raise ValueError("an anonymous user has no group")
    return _automatic("user", str(pk))


def session_group(session: Any) -> str:
    """The automatic group of one session (a session object or its key): ``session:<digest>``.

    The name carries a keyed digest of the session key, never the key
    itself: group names reach Redis channel names, logs and ``ws_status``,
    and a session key is a credential.
    """
    key = getattr(session, "session_key", session)
    if not key:
        raise ValueError("this session has no key yet (it was never saved)")
    from django.utils.crypto import salted_hmac

    digest = salted_hmac("django_rawws.groups.session_group", str(key), algorithm="sha256").hexdigest()[:40]
    return _automatic("session", digest)


# ------------------------------------------------------- send arguments


def _one_id(item: Any) -> str | None:
    """The connection id ``item`` stands for, None for an unconnected consumer, or TypeError."""
    if isinstance(item, str):
        return item
    if hasattr(item, "connection"):  # a consumer
        conn = item.connection
        return None if conn is None else _one_id(conn)
    if hasattr(item, "send_shared") and isinstance(getattr(item, "id", None), str):  # a connection
        return item.id
    raise TypeError(
        "exclude= takes a connection, a consumer, a connection id or a collection of those, "
        f"not {type(item).__name__}"
    )


def exclude_ids(exclude: Any) -> frozenset[str]:
    """Normalise ``exclude=`` to the set of connection ids it names.

    Ids rather than objects, because that is what can travel to another
    process. Objects that merely have an ``id`` (a user, a model instance)
    are refused: a user's pk taken for a connection id would silently
    exclude somebody else.
    """
    if exclude is None:
        return frozenset()
    if isinstance(exclude, frozenset) and all(isinstance(item, str) for item in exclude):
        return exclude
    if isinstance(exclude, str) or not isinstance(exclude, Iterable) or isinstance(exclude, Mapping):
        ident = _one_id(exclude)
        return frozenset() if ident is None else frozenset((ident,))
    ids = set()
    for item in exclude:
        ident = _one_id(item)
        if ident is not None:
            ids.add(ident)
    return frozenset(ids)


def check_message(message: object) -> str | bytes:
    """Return a raw message as ``str`` or immutable ``bytes``, or raise TypeError.

    A bytearray or memoryview is copied, so a push deferred to commit sends
    the bytes as they were at the call, not as the caller later changed them.
    """
    if isinstance(message, (str, bytes)):
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    raise TypeError(f"a raw group message is str or bytes, not {type(message).__name__}")


def event_handler_name(event_type: object) -> str:
    """The consumer method an event type dispatches to: ``chat.message`` → ``chat_message``.

    Raises:
        ValueError: the type is not a str, maps to a private name (leading
            ``_``: events must not reach internals such as ``_process``), or to
            something that can't be a method name.
    """
    if not isinstance(event_type, str) or not event_type:
        raise ValueError(f"an event's 'type' is a non-empty str, not {event_type!r}")
    name = event_type.replace(".", "_")
    if name.startswith("_"):
        raise ValueError(
            f"event type {event_type!r} maps to {name!r}: handler names starting with '_' are refused"
        )
    if not name.isidentifier():
        raise ValueError(f"event type {event_type!r} maps to {name!r}, which can't be a method name")
    return name


def prepare_event(event: object) -> dict[str, Any]:
    """Validate an event and return a snapshot of it as it will be delivered.

    Every backend delivers what a JSON round trip gives (Django's encoder:
    datetimes, decimals and UUIDs become strings, tuples lists), because
    that is what crosses processes; the in-memory backend does the same so
    that switching backends changes nothing. The snapshot is taken at the
    call, so a push deferred to commit is immune to later changes of the
    caller's dict.

    Raises:
        TypeError: not a dict, or not JSON-serialisable.
        ValueError: a missing or refused ``type`` (see :func:`event_handler_name`).
    """
    if not isinstance(event, Mapping):
        raise TypeError(f"an event is a dict with a 'type' key, not {type(event).__name__}")
    if "type" not in event:
        raise ValueError("an event needs a 'type' key, such as {'type': 'chat.message', ...}")
    event_handler_name(event["type"])
    try:
        encoded = json.dumps(event, cls=DjangoJSONEncoder)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"an event must be JSON-serialisable: {exc}") from exc
    snapshot: dict[str, Any] = json.loads(encoded)
    return snapshot


# ------------------------------------------------------- local membership


class LocalGroups:
    """This process's connections by group, and the fan-out to them.

    One lock guards two maps; it is held only to change them or to copy a
    member list, never while sending, so a send never waits for another and
    membership changes never wait for a send. ``send_shared`` and
    ``deliver_event`` never block (they append to the connection's buffer or
    inbox), so a slow member costs the others nothing.

    ``add`` and ``discard`` report when a group gains its first or loses its
    last local member: that is when a cross-process backend subscribes or
    unsubscribes. Those reports are made under the lock but acted on after
    it, so two threads' reports may be acted on in either order; act on the
    current state (:meth:`has_members`), not on the report.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Inner dicts are ordered sets: delivery follows the order of joining.
        self._members: dict[str, dict[Any, None]] = {}
        self._groups_of: dict[Any, set[str]] = {}

    def add(self, group: str, conn: Any) -> bool:
        """Add ``conn`` to ``group``; return True if it is the group's first local member."""
        with self._lock:
            members = self._members.get(group)
            first = members is None
            if first:
                members = self._members[group] = {}
            members[conn] = None  # type: ignore[index]
            self._groups_of.setdefault(conn, set()).add(group)
        return first

    def discard(self, group: str, conn: Any) -> bool:
        """Remove ``conn`` from ``group`` if there; return True if the group has no local member left."""
        with self._lock:
            return self._discard_locked(group, conn)

    def discard_all(self, conn: Any) -> list[str]:
        """Remove ``conn`` from all its groups; return the groups left without local members."""
        with self._lock:
            emptied = []
            for group in self._groups_of.get(conn, set()).copy():
                if self._discard_locked(group, conn):
                    emptied.append(group)
            return emptied

    def discard_where(self, predicate: Any) -> list[str]:
        """Remove every connection for which ``predicate(conn)`` is true; return the emptied groups."""
        with self._lock:
            doomed = [conn for conn in self._groups_of if predicate(conn)]
            emptied = []
            for conn in doomed:
                for group in self._groups_of.get(conn, set()).copy():
                    if self._discard_locked(group, conn):
                        emptied.append(group)
            return emptied

    def _discard_locked(self, group: str, conn: Any) -> bool:
        members = self._members.get(group)
        if members is None or conn not in members:
            return False
        del members[conn]
        groups = self._groups_of[conn]
        groups.discard(group)
        if not groups:
            del self._groups_of[conn]
        if members:
            return False
        del self._members[group]
        return True

    def members(self, group: str) -> list[Any]:
        with self._lock:
            return list(self._members.get(group, ()))

    def has_members(self, group: str) -> bool:
        with self._lock:
            return group in self._members

    def groups_of(self, conn: Any) -> set[str]:
        with self._lock:
            return set(self._groups_of.get(conn, ()))

    def group_names(self) -> list[str]:
        with self._lock:
            return list(self._members)

    def counts(self) -> tuple[int, int]:
        """(groups, connections) with at least one membership."""
        with self._lock:
            return len(self._members), len(self._groups_of)

    def send_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        """Frame ``message`` once per encoding class and queue it on each member; return how many took it."""
        members = self.members(group)
        if not members:
            return 0
        shared = SharedMessage(message)
        return self._each_member(group, members, excluded, lambda conn: conn.send_shared(shared), "raw send")

    def send_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        """Queue ``event`` for each member's ``websocket_event`` handler; return how many took it.

        Every member gets the same dict: handlers must treat it as read-only.
        """
        members = self.members(group)
        return self._each_member(group, members, excluded, lambda conn: conn.deliver_event(event), "event send")

    @staticmethod
    def _each_member(group: str, members: list[Any], excluded: frozenset[str], deliver: Any, what: str) -> int:
        """Call ``deliver(conn)`` for each member not excluded; count those that took it."""
        sent = 0
        for conn in members:
            if excluded and conn.id in excluded:
                continue
            try:
                if deliver(conn):
                    sent += 1
            except Exception:
                # One broken member must not cost the others their message.
                logger.exception("%s to %r in group %r failed", what, conn, group)
        return sent


# ------------------------------------------------------------ the backend


class BaseGroupBackend(abc.ABC):
    """Membership of this process's connections, and delivery to groups.

    Subclasses implement the transport, :meth:`_publish_raw` and
    :meth:`_publish_event` (and, to reach further than this process, the
    resume and presence hooks); the public methods validate their arguments
    first, so every backend refuses the same mistakes the same way. A backend
    is shared by every thread of the process: the I/O thread never calls it,
    workers and pushing code do, concurrently.

    Servers register with :meth:`attach` after ``start()`` and leave with
    :meth:`detach` after ``stop()`` (``runws`` and the test helpers do it);
    a cross-process backend starts and stops its subscriber there.

    Options come from ``RAWWS["GROUP_OPTIONS"]`` as keyword arguments; a
    subclass takes its own and passes the rest up, where any left over is a
    configuration error. Every backend takes:

    * ``resumable``: group name patterns (``fnmatch``, such as ``"room.*"``)
      whose raw messages carry ids and can be resumed (see
      :mod:`django_rawws.groups.resume`). A setting rather than a consumer
      attribute, because the *publishing* process, which may run no
      consumer at all, must know to keep the message;
    * ``resume_count`` (1000) and ``resume_age`` (300 s): the resume window
      of each resumable group, whichever is smaller.
    """

    #: Whether a send reaches connections of other processes: what a banner,
    #: a system check or a test needs to know about a backend.
    cross_process: ClassVar[bool] = False

    def __init__(
        self,
        *,
        resumable: Iterable[str] = (),
        resume_count: int = 1000,
        resume_age: float = 300.0,
        **options: Any,
    ) -> None:
        if options:
            raise ImproperlyConfigured(
                f"{type(self).__name__} does not take the GROUP_OPTIONS {sorted(options)!r}"
            )
        try:
            self.resumable = compile_patterns(resumable)
        except TypeError as exc:
            raise ImproperlyConfigured(f"GROUP_OPTIONS: {exc}") from None
        if not isinstance(resume_count, int) or isinstance(resume_count, bool) or resume_count < 1:
            raise ImproperlyConfigured(f"GROUP_OPTIONS 'resume_count' is a positive int, not {resume_count!r}")
        if not isinstance(resume_age, (int, float)) or isinstance(resume_age, bool) or resume_age <= 0:
            raise ImproperlyConfigured(f"GROUP_OPTIONS 'resume_age' is a positive number of seconds, not {resume_age!r}")
        self.resume_count = resume_count
        self.resume_age = float(resume_age)
        self.local = LocalGroups()
        self._servers: list[Any] = []
        self._state_lock = threading.Lock()
        self._closed = False
        #: Pushes deferred to commit that failed when they ran (logged at ERROR).
        self.failed_pushes = 0
        # Groups that need more than plain fan-out (resumable, gated, with presence).
        self._states: dict[str, GroupState] = {}
        self._states_lock = threading.Lock()
        # Gates waiting for their connection to open, by connection.
        self._unopened: dict[Any, list[tuple[str, Gate]]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def is_resumable(self, group: str) -> bool:
        """Whether ``group`` matches a ``resumable`` pattern."""
        return bool(self.resumable) and matches(self.resumable, group)

    # ------------------------------------------------------------ membership

    def add(
        self,
        group: str,
        conn: Any,
        *,
        presence: Mapping[str, Any] | None = None,
        last_id: str | MessageId | None = None,
    ) -> None:
        """Add a connection of this process to ``group`` (idempotent).

        ``presence``: announce the connection in the group's presence list
        with these JSON fields (``{"user": 1, "name": "ada"}``); it then also
        receives the group's presence snapshot and changes (see
        :meth:`presence`).

        ``last_id``: for a resumable group, the last message id the client
        saw; by default taken from the handshake's ``last_id.<group>=<id>``
        query parameter. The client then receives what it missed before the
        live flow, once the connection is open (:meth:`connection_opened`).

        Raises:
            ValueError: invalid group name, a bad ``last_id`` or a ``conn`` key in ``presence``.
            TypeError: ``presence`` is not a JSON-serialisable dict.
        """
        validate_group_name(group)
        entry = presence_entry(conn.id, presence) if presence is not None else None
        resumable = self.is_resumable(group)
        resume_from: MessageId | None = None
        if resumable:
            if last_id is not None:
                resume_from = last_id if isinstance(last_id, MessageId) else MessageId.parse(last_id)
            else:
                resume_from = _requested_resume(conn, group)
        gate: Gate | None = None
        if resumable or entry is not None:
            state = self._state(group)
            with state.lock:
                # The gate exists before the connection is a member: nothing
                # of the live flow can reach it ahead of its catch-up.
                if resume_from is not None or entry is not None:
                    existing = state.gates.get(conn)
                    if existing is None or not existing.pending:
                        gate = state.gates[conn] = Gate(resume_from, entry is not None)
                if entry is not None:
                    state.presence[conn] = entry
        if self.local.add(group, conn):
            self._group_activated(group)
        if gate is not None:
            self._wait_subscribed(group)
        if entry is not None:
            self._presence_join(group, conn, entry)
        if gate is not None:
            if getattr(conn, "is_open", False):
                self._open_gate(group, conn, gate)
            else:
                with self._states_lock:
                    self._unopened.setdefault(conn, []).append((group, gate))

    def discard(self, group: str, conn: Any) -> None:
        """Remove a connection from ``group``; nothing happens if it was not a member."""
        emptied = self.local.discard(group, conn)
        self._forget(group, conn)
        if emptied:
            self._drop_state_if_idle(group)
            self._group_deactivated(group)

    def discard_all(self, conn: Any) -> None:
        """Remove a connection from every group (at disconnect)."""
        groups = self.local.groups_of(conn)
        emptied = self.local.discard_all(conn)
        with self._states_lock:
            self._unopened.pop(conn, None)
        for group in groups:
            self._forget(group, conn)
        for group in emptied:
            self._drop_state_if_idle(group)
            self._group_deactivated(group)

    def members(self, group: str) -> list[Any]:
        """This process's connections in ``group``, in the order they joined."""
        return self.local.members(group)

    def groups_of(self, conn: Any) -> set[str]:
        """The groups a connection of this process is in."""
        return self.local.groups_of(conn)

    def connection_opened(self, conn: Any) -> None:
        """The connection is open: send it what its resumable and presence groups hold for it.

        Consumers call this from ``accept()``; an application using the
        server directly calls it after ``conn.accept()``. Cheap when there is
        nothing to send. Never raises: a failure is logged and the client
        gets a gap message.
        """
        with self._states_lock:
            waiting = self._unopened.pop(conn, None)
        for group, gate in waiting or ():
            try:
                self._open_gate(group, conn, gate)
            except Exception:
                logger.exception("could not send the catch-up of group %r to %r", group, conn)

    def _group_activated(self, group: str) -> None:
        """``group`` got its first member in this process (a cross-process backend subscribes).

        Runs after the change, outside the membership lock, so the hooks of
        concurrent changes may run in either order: an implementation
        reconciles with ``self.local.has_members(group)`` under its own lock
        instead of trusting which hook it is.
        """

    def _group_deactivated(self, group: str) -> None:
        """``group`` lost its last member in this process (a cross-process backend unsubscribes).

        Same ordering caveat as :meth:`_group_activated`.
        """

    def _wait_subscribed(self, group: str) -> None:
        """Return once live messages of ``group`` reach this process (before a catch-up is read)."""

    # -------------------------------------------------------------- presence

    def presence(self, group: str) -> list[dict[str, Any]]:
        """Who announced themselves in ``group``: ``[{"conn": <id>, **presence}, ...]``, sorted by ``conn``.

        The in-memory backend knows this process's connections; a
        cross-process backend lists every live process's.
        """
        validate_group_name(group)
        state = self._states.get(group)
        if state is None:
            return []
        with state.lock:
            entries = list(state.presence.values())
        return sorted(entries, key=lambda entry: entry["conn"])

    def _presence_join(self, group: str, conn: Any, entry: dict[str, Any]) -> None:
        """Tell the group's presence watchers that ``entry`` joined (a cross-process backend publishes)."""
        self._deliver_notice(group, {"joined": [entry]})

    def _presence_leave(self, group: str, conn: Any, entry: dict[str, Any]) -> None:
        self._deliver_notice(group, {"left": [entry]})

    # -------------------------------------------------------------- delivery

    def prepare_raw(self, group: str, message: object) -> str | bytes:
        """Check a raw message for ``group``: ``str`` or ``bytes``; JSON text for a resumable group.

        Raises:
            TypeError: wrong type. ValueError: a resumable group's message that is not JSON.
        """
        checked = check_message(message)
        if self.is_resumable(group):
            return validate_resumable_message(group, checked)
        return checked

    def send_raw(self, group: str, message: str | bytes, exclude: Any = None) -> int:
        """Send a text or binary message to every member of ``group`` but ``exclude``.

        No consumer code runs: the frames are built once per encoding class
        and queued on every member. In a resumable group the message must be
        JSON text and members receive it in an envelope with its id. Returns
        the number of recipients (for a cross-process backend, as its
        documentation defines it).

        Raises:
            ValueError: invalid group name. TypeError: bad message or exclude.
            GroupBackendUnavailable: the backend can't take the send.
        """
        validate_group_name(group)
        message = self.prepare_raw(group, message)
        excluded = exclude_ids(exclude)
        self.check_available()
        return self._publish_raw(group, message, excluded)

    def send_event(self, group: str, event: Mapping[str, Any], exclude: Any = None) -> int:
        """Deliver ``event`` to the ``websocket_event`` handler of every member but ``exclude``.

        Each member's consumer method named after ``event["type"]`` runs on a
        worker, after what that connection already has queued. Returns the
        number of recipients, as :meth:`send_raw`. Events carry no id, even
        in a resumable group: each member's consumer shapes its own output,
        which no window could replay.

        Raises:
            ValueError: invalid group name or event type.
            TypeError: not a JSON-serialisable dict, or a bad exclude.
            GroupBackendUnavailable: the backend can't take the send.
        """
        validate_group_name(group)
        snapshot = prepare_event(event)
        excluded = exclude_ids(exclude)
        self.check_available()
        return self._publish_event(group, snapshot, excluded)

    @abc.abstractmethod
    def _publish_raw(self, group: str, message: str | bytes, excluded: frozenset[str]) -> int:
        """Transport a validated raw send (see :meth:`send_raw`)."""

    @abc.abstractmethod
    def _publish_event(self, group: str, event: dict[str, Any], excluded: frozenset[str]) -> int:
        """Transport a validated event send (see :meth:`send_event`)."""

    def _fetch_backlog(self, group: str, after: MessageId) -> tuple[list[Entry], MessageId | None]:
        """The window's entries of ``group`` newer than ``after``, oldest first, and the newest id."""
        return [], None

    def _deliver_raw(
        self, group: str, payload: str | bytes, excluded: frozenset[str], msg_id: MessageId | None = None
    ) -> int:
        """Hand a raw message of the live flow to this process's members; return how many took it.

        ``payload`` is what clients receive (for a resumable group, the
        envelope). Plain groups take the lock-free path; others go through
        their state, where catch-ups are merged in.
        """
        state = self._states.get(group)
        if state is None:
            return self.local.send_raw(group, payload, excluded)
        with state.lock:
            if msg_id is not None:
                if state.catch_up is not None:
                    state.catch_up.append((msg_id, payload, excluded))  # type: ignore[arg-type]
                    return 0
                if state.last_id is not None and msg_id <= state.last_id:
                    return 0  # already delivered by the process's own catch-up
                state.last_id = msg_id
            return self._fan_out_locked(state, group, payload, excluded, msg_id)

    def _fan_out_locked(
        self,
        state: GroupState,
        group: str,
        payload: str | bytes,
        excluded: frozenset[str],
        msg_id: MessageId | None,
    ) -> int:
        members = self.local.members(group)
        if not members:
            return 0
        shared = SharedMessage(payload)
        gates = state.gates
        limit = self.resume_count + 1000
        sent = 0
        for conn in members:
            if excluded and conn.id in excluded:
                continue
            if gates:
                gate = gates.get(conn)
                if gate is not None:
                    taken = gate.offer(msg_id, shared, limit)
                    if gate.done:
                        del gates[conn]
                    if taken:
                        continue
            try:
                if conn.send_shared(shared):
                    sent += 1
            except Exception:
                logger.exception("raw send to %r in group %r failed", conn, group)
        return sent

    def _deliver_notice(self, group: str, change: dict[str, list[dict[str, Any]]]) -> None:
        """Send a presence change to the connections of this process that announced themselves in ``group``."""
        state = self._states.get(group)
        if state is None:
            return
        shared = SharedMessage(presence_message(group, **change))
        limit = self.resume_count + 1000
        # A member needn't hear that it joined: its snapshot has it.
        joiners = {entry.get("conn") for entry in change.get("joined", ())}
        with state.lock:
            for conn in list(state.presence):
                if conn.id in joiners:
                    continue
                gate = state.gates.get(conn)
                if gate is not None and gate.offer(None, shared, limit):
                    continue
                try:
                    conn.send_shared(shared)
                except Exception:
                    logger.exception("presence notice to %r in group %r failed", conn, group)

    def _open_gate(self, group: str, conn: Any, gate: Gate) -> None:
        """Send a connection its catch-up, then what the live flow brought meanwhile, in id order."""
        entries: list[Entry] = []
        gap = False
        if gate.resume_from is not None:
            try:
                entries, last = self._fetch_backlog(group, gate.resume_from)
            except Exception as exc:
                logger.warning("could not read the resume window of group %r (%s): the client gets a gap", group, exc)
                gap = True
            else:
                gap = has_gap(gate.resume_from, entries, last)
        snapshot: list[dict[str, Any]] | None = None
        if gate.presence:
            try:
                snapshot = self.presence(group)
            except Exception as exc:
                logger.warning("could not read the presence of group %r (%s)", group, exc)
        state = self._states.get(group)
        if state is None:
            return
        with state.lock:
            if state.gates.get(conn) is not gate:
                return  # the connection left meanwhile
            if gate.overflowed:
                gap = True
            last_sent = None if gap else gate.resume_from
            # Through send_shared() like the live flow, so the catch-up and the
            # held messages queue on the connection in this order.
            if gap:
                conn.send_shared(SharedMessage(gap_message(group)))
            for entry in entries:
                if last_sent is None or entry.id > last_sent:
                    last_sent = entry.id
                    if conn.id not in entry.excluded:
                        conn.send_shared(SharedMessage(envelope(entry.id, group, entry.data)))
            if snapshot is not None:
                conn.send_shared(SharedMessage(presence_message(group, members=snapshot)))
            for msg_id, shared in gate.buffer:
                if msg_id is None:
                    conn.send_shared(shared)
                elif last_sent is None or msg_id > last_sent:
                    last_sent = msg_id
                    conn.send_shared(shared)
            gate.buffer = []
            gate.pending = False
            gate.last = last_sent
            gate.dedupe = gate.resume_from is not None
            if gate.done:
                del state.gates[conn]

    def _state(self, group: str) -> GroupState:
        with self._states_lock:
            state = self._states.get(group)
            if state is None:
                state = self._states[group] = GroupState()
            return state

    def _forget(self, group: str, conn: Any) -> None:
        """Drop a leaving connection's gate and presence entry in ``group`` (announcing the leave)."""
        state = self._states.get(group)
        if state is None:
            return
        with state.lock:
            state.gates.pop(conn, None)
            entry = state.presence.pop(conn, None)
        if entry is not None:
            try:
                self._presence_leave(group, conn, entry)
            except Exception as exc:
                logger.warning("could not announce that %s left group %r (%s)", entry["conn"], group, exc)

    def _drop_state_if_idle(self, group: str) -> None:
        with self._states_lock:
            state = self._states.get(group)
            if state is not None and state.idle and not self.local.has_members(group):
                del self._states[group]

    def _states_snapshot(self) -> list[tuple[str, GroupState]]:
        with self._states_lock:
            return list(self._states.items())

    # ------------------------------------------------------------- lifecycle

    def attach(self, server: Any) -> None:
        """Register a server of this process whose connections join groups."""
        with self._state_lock:
            if server not in self._servers:
                self._servers.append(server)

    def detach(self, server: Any) -> None:
        """Unregister a server, dropping any membership its connections left behind."""
        with self._state_lock:
            if server in self._servers:
                self._servers.remove(server)

        def of_server(conn: Any) -> bool:
            return getattr(conn, "server", None) is server

        for group, state in self._states_snapshot():
            with state.lock:
                leaving = [conn for conn in state.presence if of_server(conn)]
            for conn in leaving:
                self._forget(group, conn)
        with self._states_lock:
            for conn in [conn for conn in self._unopened if of_server(conn)]:
                del self._unopened[conn]
        for group in self.local.discard_where(of_server):
            self._drop_state_if_idle(group)
            self._group_deactivated(group)

    @property
    def servers(self) -> list[Any]:
        with self._state_lock:
            return list(self._servers)

    def check_available(self) -> None:
        """Raise :class:`GroupBackendUnavailable` if a send can't be taken now."""
        if self._closed:
            raise GroupBackendUnavailable(f"{type(self).__name__} is closed")

    def close(self) -> None:
        """Release the backend's resources; later sends raise GroupBackendUnavailable."""
        self._closed = True

    def record_failed_push(self) -> None:
        with self._state_lock:
            self.failed_pushes += 1

    def stats(self) -> dict[str, Any]:
        """Counters for logs, the banner and tests."""
        groups, connections = self.local.counts()
        return {
            "backend": type(self).__name__,
            "groups": groups,
            "connections": connections,
            "servers": len(self.servers),
            "failed_pushes": self.failed_pushes,
        }


def _requested_resume(conn: Any, group: str) -> MessageId | None:
    """The ``last_id.<group>`` the client put in its handshake URL, if any."""
    handshake = getattr(conn, "handshake", None)
    query = getattr(handshake, "query_string", None)
    if not query:
        return None
    return resume_requests(query).get(group)
