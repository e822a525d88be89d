"""Resumable groups and presence: the wire format and the pieces every backend shares.

A message of a *resumable* group reaches clients inside a JSON envelope::

    {"id": "1732531200000-0", "group": "room.lobby", "data": <the pushed JSON>}

Ids are ``<milliseconds>-<sequence>``, increasing within a group (the Redis
stream id format; the in-memory backend makes ids of the same form from the
clock, so a restarted process never reissues an id a client still holds). A
client reconnecting with ``?last_id.<group>=<id>`` gets what it missed from a
bounded window, merged with the live flow by a :class:`Gate`. Every window
entry also records the id of the entry before it (``prev``): a window whose
first entry after the client's id does not name that id as its predecessor
has lost something in between, and the client gets a gap message instead of a
silent hole.

Control messages the backend itself sends to clients, never confused with an
envelope (which has no ``type``)::

    {"type": "rawws.gap", "group": "room.lobby"}
    {"type": "rawws.presence", "group": "room.lobby", "members": [...]}   # snapshot
    {"type": "rawws.presence", "group": "room.lobby", "joined": [...]}
    {"type": "rawws.presence", "group": "room.lobby", "left": [...]}

This module has no I/O: the backends do the storing and transporting.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

from django.core.serializers.json import DjangoJSONEncoder

__all__ = [
    "GAP",
    "PRESENCE",
    "Entry",
    "Gate",
    "GroupState",
    "MessageId",
    "ResumeWindow",
    "envelope",
    "gap_message",
    "is_gap",
    "presence_entry",
    "presence_message",
    "resume_requests",
    "validate_resumable_message",
]

#: The ``type`` of the control messages sent to clients.
GAP = "rawws.gap"
PRESENCE = "rawws.presence"

#: The query parameter prefix a reconnecting client names its last ids with.
LAST_ID_PARAMETER = "last_id."

# Redis stream ids: two unsigned 64-bit integers.
_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MAX_RESUME_PARAMETERS = 64


class MessageId(NamedTuple):
    """An id of a resumable group's message; ordered as a tuple, written ``ms-seq``."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str | bytes) -> MessageId:
        """Parse ``"<ms>-<seq>"``; raise ValueError for anything else."""
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        match = _ID.fullmatch(text)
        if match is None:
            raise ValueError(f"not a message id: {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


class Entry(NamedTuple):
    """One message kept in a resume window."""

    id: MessageId
    #: The id of the message before it in the group ("" for the first ever).
    prev: str
    #: The pushed JSON text, spliced into the envelope as it is.
    data: str
    excluded: frozenset[str]


# ------------------------------------------------------------ wire format


def envelope(msg_id: MessageId | str, group: str, data: str) -> str:
    """The text a client receives for a message of a resumable group.

    ``data`` is JSON text already (checked at the push), spliced in without
    decoding; group names and ids need no escaping. The Redis backend's Lua
    script writes the same bytes.
    """
    return f'{{"id":"{msg_id}","group":"{group}","data":{data}}}'


def gap_message(group: str) -> str:
    return json.dumps({"type": GAP, "group": group}, separators=(",", ":"))


def is_gap(text: str, group: str | None = None) -> bool:
    """Whether ``text`` is a gap message (of ``group`` if given): for tests and clients written in Python."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("type") == GAP and (group is None or value.get("group") == group)


def presence_message(group: str, **change: list[dict[str, Any]]) -> str:
    """A presence snapshot (``members=``) or change (``joined=`` / ``left=``) for clients."""
    return json.dumps({"type": PRESENCE, "group": group, **change}, separators=(",", ":"), cls=DjangoJSONEncoder)


def validate_resumable_message(group: str, message: object) -> str:
    """Return ``message`` if it can travel in an envelope: a ``str`` holding one JSON value.

    Raises:
        TypeError: not a str (binary messages can't be resumed).
        ValueError: not JSON (NaN and Infinity included: browsers refuse them).
    """
    if not isinstance(message, str):
        raise TypeError(
            f"group {group!r} is resumable: its raw messages are JSON text (str), not {type(message).__name__}"
        )
    try:
        json.loads(message, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise ValueError(f"group {group!r} is resumable: its raw messages must be JSON text ({exc})") from None
    return message


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def presence_entry(conn_id: str, presence: object) -> dict[str, Any]:
    """What others see of a member: ``{"conn": <id>, **presence}``, JSON-safe.

    Raises:
        TypeError: ``presence`` is not a JSON-serialisable dict.
        ValueError: it has a ``conn`` key (that one is ours).
    """
    if not isinstance(presence, Mapping):
        raise TypeError(f"presence= takes a dict such as {{'user': 1, 'name': 'ada'}}, not {type(presence).__name__}")
    if "conn" in presence:
        raise ValueError("presence= must not set 'conn': it is the connection id, added by the backend")
    try:
        snapshot: dict[str, Any] = json.loads(json.dumps(dict(presence), cls=DjangoJSONEncoder))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"presence= must be JSON-serialisable: {exc}") from exc
    return {"conn": conn_id, **snapshot}


def resume_requests(query_string: str) -> dict[str, MessageId]:
    """The ``last_id.<group>=<id>`` parameters of a handshake's query string, by group.

    Malformed ids are ignored (the client then starts fresh); the number of
    parameters read is bounded, so a crafted URL can't make us parse much.
    """
    from urllib.parse import parse_qsl

    if LAST_ID_PARAMETER not in query_string:
        return {}
    found: dict[str, MessageId] = {}
    fields = query_string.split("&", _MAX_RESUME_PARAMETERS * 4)[: _MAX_RESUME_PARAMETERS * 4]
    for key, value in parse_qsl("&".join(fields)):
        if not key.startswith(LAST_ID_PARAMETER):
            continue
        try:
            found[key[len(LAST_ID_PARAMETER) :]] = MessageId.parse(value)
        except ValueError:
            continue
        if len(found) >= _MAX_RESUME_PARAMETERS:
            break
    return found


def compile_patterns(patterns: object) -> tuple[str, ...]:
    """Validate the ``resumable`` option: group name patterns (``fnmatch``: ``room.*``)."""
    if isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise TypeError("'resumable' is a list of group name patterns, such as ['room.*']")
    result = tuple(patterns)
    for pattern in result:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"'resumable' patterns are non-empty str, not {pattern!r}")
    return result


def matches(patterns: tuple[str, ...], group: str) -> bool:
    return any(fnmatchcase(group, pattern) for pattern in patterns)


def has_gap(after: MessageId, entries: list[Entry], last: MessageId | None) -> bool:
    """Whether the window lost messages between ``after`` and what it still holds.

    ``entries`` are the window's entries after ``after``, oldest first, and
    ``last`` the group's newest id (None when the group has no record). The
    chain of ``prev`` ids proves continuity; a client id the group never
    issued (another Redis, a record that expired) also counts as a gap.
    """
    if entries:
        return entries[0].prev != str(after)
    return last != after


# ------------------------------------------------------- in-memory window


class ResumeWindow:
    """The last messages of one group, bounded by count and age (the in-memory backend's stream).

    ``lock`` is held by the backend around :meth:`append` *and* the fan-out
    of the message, so live delivery follows id order.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: collections.deque[Entry] = collections.deque()
        self.last: MessageId | None = None
        self.touched = time.monotonic()

    def append(self, data: str, excluded: frozenset[str], count: int, age: float) -> MessageId:
        """Store a message; return its id. Call with ``lock`` held."""
        now_ms = time.time_ns() // 1_000_000
        last = self.last
        if last is None or now_ms > last.ms:
            msg_id = MessageId(now_ms, 0)
        else:  # same millisecond, or the clock went back: stay increasing
            msg_id = MessageId(last.ms, last.seq + 1)
        self.entries.append(Entry(msg_id, str(last) if last is not None else "", data, excluded))
        self.last = msg_id
        self.touched = time.monotonic()
        self._trim(count, age, now_ms)
        return msg_id

    def after(self, after: MessageId, count: int, age: float) -> tuple[list[Entry], MessageId | None]:
        """The entries newer than ``after``, and the newest id."""
        with self.lock:
            self._trim(count, age, time.time_ns() // 1_000_000)
            return [entry for entry in self.entries if entry.id > after], self.last

    def _trim(self, count: int, age: float, now_ms: int) -> None:
        entries = self.entries
        while len(entries) > count:
            entries.popleft()
        oldest = now_ms - int(age * 1000)
        while entries and entries[0].id.ms < oldest:
            entries.popleft()


# ----------------------------------------------- merging with the live flow


class Gate:
    """One connection's view of one group while its catch-up is prepared.

    From the moment the connection joins until the catch-up (the missed
    messages, or a presence snapshot) is sent, everything the live flow
    brings for this connection in this group is held back (``pending``).
    Then the catch-up goes out, then the held messages newer than the last
    id sent, and the gate lets the live flow through, still dropping ids not
    newer than the last delivered (a live copy of a message the catch-up
    already sent). The gate is removed once it can no longer matter.
    """

    __slots__ = ("resume_from", "presence", "pending", "buffer", "last", "overflowed", "dedupe")

    def __init__(self, resume_from: MessageId | None, presence: bool) -> None:
        self.resume_from = resume_from
        self.presence = presence
        self.pending = True
        self.buffer: list[tuple[MessageId | None, Any]] = []
        self.last: MessageId | None = resume_from
        self.overflowed = False
        #: After the catch-up: live copies of what it sent may still be on their way.
        self.dedupe = False

    def offer(self, msg_id: MessageId | None, shared: Any, limit: int) -> bool:
        """Take a live message for this connection; return False if it should be sent now.

        Call with the group's lock held.
        """
        if self.pending:
            if len(self.buffer) >= limit:
                self.overflowed = True  # the flush sends a gap instead of the lost ones
            else:
                self.buffer.append((msg_id, shared))
            return True
        if msg_id is None:
            return False
        if self.last is not None and msg_id <= self.last:
            return True
        # The live flow has passed the catch-up: ids only grow from here.
        self.last = msg_id
        self.dedupe = False
        return False

    @property
    def done(self) -> bool:
        """Nothing left to hold back or drop: the gate can go."""
        return not self.pending and not self.dedupe


class GroupState:
    """What a backend keeps for a group beyond membership: gates, presence, the live id.

    Created for resumable groups with local members, and for any group with
    a gate or a presence entry; ``lock`` orders the live flow with catch-ups.
    """

    __slots__ = ("lock", "gates", "presence", "last_id", "catch_up")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gates: dict[Any, Gate] = {}
        #: Local connections that announced themselves, with their entries.
        self.presence: dict[Any, dict[str, Any]] = {}
        #: The newest id delivered live in this process (resumable groups).
        self.last_id: MessageId | None = None
        #: While the process itself catches up (after a Redis outage): live messages held back.
        self.catch_up: list[tuple[MessageId, str, frozenset[str]]] | None = None

    @property
    def idle(self) -> bool:
        return not self.gates and not self.presence
