"""Groups: address many WebSocket connections at once, from any Django code.

::

    from django_rawws.groups import push

    push("room.lobby", "plain text to every member")               # raw send
    push("room.lobby", event={"type": "chat.message", "text": "hi"})  # event send
    push(f"user:{user.pk}", event={"type": "notify", "n": 3}, exclude=self)

A raw send is framed once per encoding class and queued on every member
without running consumer code; an event send runs each member consumer's
method named after ``type`` (``chat.message`` → ``chat_message``) on the
workers. Inside a transaction a push waits for the commit and is dropped on
rollback, unless ``immediate=True``. The backend (``RAWWS["GROUP_BACKEND"]``)
decides how far a send reaches: this process (in-memory) or every process
sharing a Redis; see ``docs/groups.md`` and ``docs/scaling.md``.

Resumable groups (``GROUP_OPTIONS["resumable"]``) give each raw message an id
so a reconnecting client gets what it missed (:mod:`.resume`);
:func:`presence` lists who announced themselves in a group.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.utils.module_loading import import_string

from ..conf import get_config, on_config_change
from ..exceptions import GroupBackendUnavailable
from .base import (
    BaseGroupBackend,
    LocalGroups,
    connection_group,
    event_handler_name,
    exclude_ids,
    prepare_event,
    session_group,
    user_group,
    validate_group_name,
)
from .resume import GAP, PRESENCE, MessageId

__all__ = [
    "GAP",
    "PRESENCE",
    "MessageId",
    "presence",
    "BaseGroupBackend",
    "GroupBackendUnavailable",
    "LocalGroups",
    "connection_group",
    "event_handler_name",
    "exclude_ids",
    "get_backend",
    "prepare_event",
    "push",
    "session_group",
    "user_group",
    "validate_group_name",
]

logger = logging.getLogger("django_rawws.groups")

_backend: BaseGroupBackend | None = None
_backend_lock = threading.Lock()


def get_backend() -> BaseGroupBackend:
    """The process's group backend, built from ``RAWWS["GROUP_BACKEND"]`` and ``["GROUP_OPTIONS"]``.

    Built once and shared by every thread; a change of ``RAWWS`` (a test's
    ``override_settings``) builds a new one on next use. Servers attached to
    the previous instance stay attached to it.

    Raises:
        ImproperlyConfigured: the class can't be imported, is not a
            :class:`BaseGroupBackend`, or refuses the options.
    """
    global _backend
    backend = _backend
    if backend is None:
        with _backend_lock:
            if _backend is None:
                _backend = _load_backend()
            backend = _backend
    return backend


def _load_backend() -> BaseGroupBackend:
    config = get_config()
    path = config["GROUP_BACKEND"]
    options = config["GROUP_OPTIONS"] if config["GROUP_OPTIONS"] is not None else {}
    if isinstance(path, str):
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"RAWWS['GROUP_BACKEND'] = {path!r} can't be imported ({exc}). Use a dotted path such as "
                "'django_rawws.groups.memory.MemoryGroupBackend'; a backend with extra requirements "
                "needs them installed (the Redis backend: pip install 'django-rawws[redis]')."
            ) from exc
    else:
        cls = path
    if not (isinstance(cls, type) and issubclass(cls, BaseGroupBackend)):
        raise ImproperlyConfigured(
            f"RAWWS['GROUP_BACKEND'] = {path!r} is not a subclass of django_rawws.groups.BaseGroupBackend."
        )
    if not isinstance(options, Mapping):
        raise ImproperlyConfigured(f"RAWWS['GROUP_OPTIONS'] must be a dict, not {type(options).__name__}.")
    try:
        return cls(**options)
    except ImproperlyConfigured:
        raise
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"{cls.__name__} refused RAWWS['GROUP_OPTIONS'] = {dict(options)!r}: {exc}"
        ) from exc


@on_config_change
def _reset_backend() -> None:
    """Forget the backend so the next use builds it from the new settings."""
    global _backend
    with _backend_lock:
        _backend = None


def push(
    group: str,
    message: str | bytes | None = None,
    *,
    event: Mapping[str, Any] | None = None,
    exclude: Any = None,
    immediate: bool = False,
    using: str | None = None,
) -> int | None:
    """Send to every member of ``group``, from any thread of any Django code.

    Pass exactly one of ``message`` (a raw send: ``str`` as a text message,
    ``bytes`` as a binary one) or ``event`` (an event send: a JSON-serialisable
    dict whose ``"type"`` names the consumer method to run).

    ``exclude`` takes a connection, a consumer, a connection id or a
    collection of those: typically the sender (``exclude=self``).

    Inside ``transaction.atomic`` (on ``using``, or on any database alias of
    this thread when None), the send waits for the commit
    (``on_commit(..., robust=True)``) and ``None`` is returned; on rollback
    nothing is sent. A deferred send that fails is logged at ERROR on the
    ``django_rawws.groups`` logger and counted in the backend's
    ``failed_pushes``. With ``immediate=True``, or outside a transaction, the
    send happens now and the number of recipients is returned.

    In a resumable group, ``message`` must be JSON text: members receive it
    in the envelope ``{"id": ..., "group": ..., "data": <message>}``.

    Arguments are checked at the call, deferred or not, so a mistake raises
    where it was made: ValueError (group name, event type, a resumable
    group's message that is not JSON), TypeError (message, event, exclude),
    ImproperlyConfigured (the backend setting).

    Raises:
        GroupBackendUnavailable: a send made now could not reach the backend.
    """
    validate_group_name(group)
    if (message is None) == (event is None):
        raise TypeError("push() takes exactly one of message= (a raw send) or event= (an event send)")
    backend = get_backend()
    excluded = exclude_ids(exclude)
    send: Callable[[], int]
    if message is not None:
        send = functools.partial(backend.send_raw, group, backend.prepare_raw(group, message), excluded)
    else:
        send = functools.partial(backend.send_event, group, prepare_event(event), excluded)
    if not immediate:
        aliases = _aliases_in_atomic_block(using)
        if aliases:
            _send_on_commit(send, aliases, backend, group)
            return None
    return send()


def presence(group: str) -> list[dict[str, Any]]:
    """Who is in ``group``: the entries of connections that joined with ``presence=``.

    ``[{"conn": "<connection id>", **presence}, ...]`` sorted by connection
    id; with the Redis backend, from every live process. A user with two tabs
    is there twice (two connections): group by your own fields to show users.

    Raises:
        ValueError: invalid group name.
        GroupBackendUnavailable: the backend can't be reached.
    """
    return get_backend().presence(group)


def _aliases_in_atomic_block(using: str | None) -> list[str]:
    """The database aliases whose transaction the push must wait for."""
    if using is not None:
        return [using] if transaction.get_connection(using).in_atomic_block else []
    # Only connections this thread has touched: looking must not open any.
    return [conn.alias for conn in connections.all(initialized_only=True) if conn.in_atomic_block]


def _send_on_commit(
    send: Callable[[], int], aliases: list[str], backend: BaseGroupBackend, group: str
) -> None:
    """Run ``send`` once every transaction in ``aliases`` has committed; never if one rolls back.

    Django discards the callback of a transaction that rolls back, so the
    countdown never reaches zero and nothing is sent.
    """
    remaining = [len(aliases)]

    def rawws_group_push() -> None:
        remaining[0] -= 1
        if remaining[0]:
            return
        try:
            count = send()
        except Exception:
            backend.record_failed_push()
            logger.exception("push to group %r after commit failed", group)
        else:
            logger.debug("push to group %r after commit reached %d connections", group, count)

    for alias in aliases:
        transaction.on_commit(rawws_group_push, using=alias, robust=True)
