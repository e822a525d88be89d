"""Session-bound sockets: a WebSocket lives no longer than the session that authenticated it.

A browser's WebSocket is authenticated once, by the session cookie of its
handshake, and may then stay open for days. Django checks a session on every
HTTP request; this module gives open sockets the same guarantee: a
connection whose user came from the session (not from the ``AUTHENTICATE``
hook) is *bound* to that session, and is closed with :data:`SESSION_ENDED`
(4401, "session ended") as soon as the session would no longer authenticate
a request:

* logout (``user_logged_out``) and ``session.flush()``: every socket of
  that session;
* a password change: every socket of that user whose session hash no
  longer matches (the session that changed it was updated by
  ``update_session_auth_hash`` and stays valid, as in Django);
* anything else (a session deleted in the database, expired, a password
  changed with ``QuerySet.update()``...): the periodic re-check,
  every ``RAWWS["SESSION_RECHECK_INTERVAL"]`` seconds.

``session.cycle_key()`` (login, ``update_session_auth_hash``) moves the data
to a new key: bound sockets follow it to the new key instead of closing.

The notices travel as group events (``push`` to ``session:<key>`` or
``user:<pk>``), so they reach sockets of every process the group backend
reaches (the Redis backend: all of them), from any process that logs users
out (a WSGI worker, a command). They have the reserved type
:data:`EVENT_TYPE`, are handled by the Django side before any consumer sees
them, and carry an HMAC keyed with ``SECRET_KEY``: a push of that type by
anything else (a consumer relaying a client's event type, say) is refused.

Django sends no signal when a session is flushed or its key cycled, nor when
a password changes, so :func:`install` (run by the app's ``ready()``) wraps
``SessionBase.flush`` and ``SessionBase.cycle_key`` (and their async twins)
and watches saves of the user model for a new password hash. A failure to
push is logged and never breaks the request that logs out; the periodic
re-check then closes the socket later.
"""

from __future__ import annotations

import contextvars
import functools
import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.signals import request_finished, request_started, setting_changed
from django.dispatch import receiver
from django.utils.crypto import constant_time_compare, salted_hmac

__all__ = [
    "EVENT_TYPE",
    "SESSION_ENDED",
    "SessionBinding",
    "SessionRechecker",
    "install",
    "recheck_user_sessions",
    "session_authenticates",
]

logger = logging.getLogger("django_rawws.auth")

#: Close code of a socket whose session ended (logout, flush, password change, expiry).
SESSION_ENDED = 4401
SESSION_ENDED_REASON = "session ended"

#: The reserved group event type of the notices below (never dispatched to a consumer).
EVENT_TYPE = "rawws.session"

_END = "end"  # session <key> was flushed or logged out: close its bound sockets
_REKEY = "rekey"  # session <key> now lives under <new>: bound sockets follow it
_VERIFY = "verify"  # user <pk> changed password: bound sockets re-verify their session

_SIGNING_SALT = "django_rawws.auth.session-event"


class SessionBinding:
    """The session a connection authenticated with: its key (followed across
    ``cycle_key()``) and the user's primary key, as a string."""

    __slots__ = ("session_key", "user_pk")

    def __init__(self, session_key: str, user_pk: str) -> None:
        self.session_key = session_key
        self.user_pk = user_pk

    def __repr__(self) -> str:
        # Never the key: it is a credential.
        return f"<SessionBinding user={self.user_pk}>"


#: Returned by :func:`bind_session` when the session ended during the
#: handshake, after the consumer had already seen its user: close at once.
REVOKED = object()


# ------------------------------------------------------------ session store


@functools.cache
def session_store() -> Any:
    """The SessionStore class of ``SESSION_ENGINE``, or None when the project uses no sessions."""
    uses_sessions = apps.is_installed("django.contrib.sessions") or any(
        middleware.endswith("SessionMiddleware") for middleware in settings.MIDDLEWARE
    )
    if not uses_sessions:
        return None
    return import_module(settings.SESSION_ENGINE).SessionStore


@receiver(setting_changed)
def _clear_session_store(*, setting: str, **kwargs: Any) -> None:
    if setting in ("INSTALLED_APPS", "MIDDLEWARE", "SESSION_ENGINE"):
        session_store.cache_clear()


def load_session(session_key: str) -> dict[str, Any] | None:
    """The data of a live session, read afresh from the store; None if it does not exist (or expired).

    A new store object every time, so nothing a request cached is reused.
    """
    store_class = session_store()
    if store_class is None or not session_key:
        return None
    store = store_class(session_key)
    if store.session_key is None:  # not a well-formed key
        return None
    data = store.load()
    # Every engine forgets the key when the session is missing or expired.
    return data if store.session_key is not None else None


# ------------------------------------------------------------ verification


def _session_user_pk(data: dict[str, Any]) -> Any:
    """The user's primary key a session's data names, None if the data names nobody Django would load."""
    from django.contrib.auth import BACKEND_SESSION_KEY, SESSION_KEY, get_user_model
    from django.core.exceptions import ValidationError

    try:
        raw, backend_path = data[SESSION_KEY], data[BACKEND_SESSION_KEY]
        pk = get_user_model()._meta.pk.to_python(raw)
    except (KeyError, ValidationError, TypeError, ValueError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    return pk


def session_user(data: dict[str, Any] | None, expected_pk: str | None = None) -> Any:
    """The user a session's data authenticates, or None: Django's ``get_user()``, without side effects.

    The same rules as ``django.contrib.auth.get_user``: a backend still in
    ``AUTHENTICATION_BACKENDS`` that still returns the user (ModelBackend
    refuses inactive users), and a session hash matching
    ``user.get_session_auth_hash()`` (or a hash made with one of
    ``SECRET_KEY_FALLBACKS``). Unlike ``get_user`` it never flushes or
    rewrites the session: a re-check must not change what it checks.
    ``expected_pk``: fail unless the session names this user.
    """
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, load_backend

    if not data:
        return None
    pk = _session_user_pk(data)
    if pk is None or (expected_pk is not None and str(pk) != expected_pk):
        return None
    user = load_backend(data[BACKEND_SESSION_KEY]).get_user(pk)
    if user is None:
        return None
    if hasattr(user, "get_session_auth_hash"):
        session_hash = data.get(HASH_SESSION_KEY)
        if not session_hash or not isinstance(session_hash, str):
            return None
        if not constant_time_compare(session_hash, user.get_session_auth_hash()):
            fallbacks = getattr(user, "get_session_auth_fallback_hash", None)
            if fallbacks is None or not any(constant_time_compare(session_hash, h) for h in fallbacks()):
                return None
    return user


def session_authenticates(binding: SessionBinding) -> bool:
    """Whether the bound session still exists and still authenticates its user (two reads)."""
    return session_user(load_session(binding.session_key), binding.user_pk) is not None


# ------------------------------------------------------------- handshake


def bind_session(
    request: Any, lazy_user: Any, join: Callable[[str], None], leave: Callable[[str], None]
) -> SessionBinding | object | None:
    """Join ``session:<key>`` and ``user:<pk>`` as the session allows; return the binding.

    Called by ``accept()`` before the 101, so nothing pushed to the groups
    can reach the client before the verdict. Each group is joined *before*
    what it depends on is read: a logout or a password change that lands
    during the handshake is either seen by the read or delivered to the
    group afterwards, never lost in between. Costs two reads for a
    logged-in session (session, user), one for an anonymous one.

    ``lazy_user`` is the lazy ``request.user`` the Django side attached; when
    ``request.user`` is something else (the ``AUTHENTICATE`` hook's user),
    the session does not decide who the user is and nothing is bound. When
    the consumer has not touched ``request.user`` yet, it becomes the user
    verified here (or ``AnonymousUser``), so the consumer sees what the
    binding says, for free.

    Returns:
        a :class:`SessionBinding`; None (anonymous, or not session-bound);
        or :data:`REVOKED` if the consumer already saw a user the session
        no longer authenticates.
    """
    from .groups import session_group, user_group

    store_class = session_store()
    cookie = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    key = store_class(cookie).session_key if store_class is not None and cookie else None
    if not key:
        return None
    join(session_group(key))
    data = load_session(key)
    if data is None:
        leave(session_group(key))  # the cookie names no live session
    session_decides = lazy_user is not None and request.__dict__.get("user") is lazy_user
    if not session_decides:
        return None
    seen = _evaluated(lazy_user)
    pk = _session_user_pk(data) if data else None
    user = None
    if pk is not None:
        join(user_group(pk))
        user = session_user(data, str(pk))
        if user is None:
            leave(user_group(pk))
    if user is None:
        if seen is not None and seen.is_authenticated:
            return REVOKED  # the session ended between the consumer's look and now
        if seen is None:
            from django.contrib.auth.models import AnonymousUser

            request.user = AnonymousUser()
        return None
    if seen is None:
        request.user = user
    elif not seen.is_authenticated or str(seen.pk) != str(pk):
        leave(user_group(pk))
        return REVOKED if seen.is_authenticated else None
    return SessionBinding(key, str(pk))


def _evaluated(lazy: Any) -> Any:
    """What a SimpleLazyObject wraps, or None while it is still unevaluated."""
    from django.utils.functional import empty

    wrapped = lazy.__dict__.get("_wrapped", empty)
    return None if wrapped is empty else wrapped


# ---------------------------------------------------------------- events


def _signature(event: dict[str, Any], secret: str | None = None) -> str:
    fields = {name: value for name, value in event.items() if name != "sig"}
    value = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return salted_hmac(_SIGNING_SALT, value, secret=secret, algorithm="sha256").hexdigest()


def _signed(action: str, **fields: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": EVENT_TYPE, "action": action, **fields}
    event["sig"] = _signature(event)
    return event


def verify_event(event: Any) -> bool:
    """Whether ``event`` is a notice this project's code signed (``SECRET_KEY`` or a fallback)."""
    if not isinstance(event, dict) or not isinstance(event.get("sig"), str):
        return False
    secrets = [None, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return any(constant_time_compare(event["sig"], _signature(event, secret)) for secret in secrets)


def is_session_event(event: Any) -> bool:
    return isinstance(event, dict) and event.get("type") == EVENT_TYPE


def handle_event(consumer: Any, event: dict[str, Any], close: Callable[[Any, str], None]) -> None:
    """Act on a notice for one connection, on its worker (the Django side calls this).

    ``close(consumer, why)`` closes the connection with :data:`SESSION_ENDED`.
    """
    if not verify_event(event):
        logger.error(
            "%s: refusing a %r event without a valid signature: this type is reserved for django-rawws",
            type(consumer).__qualname__,
            EVENT_TYPE,
        )
        return
    binding: SessionBinding | None = getattr(consumer, "_session_binding", None)
    if binding is None:
        return  # anonymous, or authenticated by the AUTHENTICATE hook: not bound to a session
    action = event.get("action")
    if action == _END and event.get("session") == binding.session_key:
        close(consumer, "the session was flushed or logged out")
    elif action == _REKEY and event.get("session") == binding.session_key and event.get("new"):
        _rebind(consumer, binding, event["new"])
    elif action == _VERIFY and event.get("user") == binding.user_pk and not session_authenticates(binding):
        close(consumer, "the user's password changed")


def _rebind(consumer: Any, binding: SessionBinding, new_key: str) -> None:
    """Follow the session to its new key (``cycle_key()``): change groups, keep the socket."""
    from .groups import get_backend, session_group

    backend = get_backend()
    backend.add(session_group(new_key), consumer.connection)
    backend.discard(session_group(binding.session_key), consumer.connection)
    binding.session_key = new_key


# -------------------------------------------------------------- notices


def _notify(
    group: str, event: dict[str, Any], *, immediate: bool, what: str, secrets: tuple[str, ...] = ()
) -> None:
    """Push a notice; log, never raise: logging out must work when the backend does not.

    ``secrets`` (session keys: bearer credentials) are blanked out of the
    error logged, which may quote the group name.
    """
    from .groups import get_backend, push

    try:
        backend = get_backend()
        if not backend.cross_process and not backend.servers:
            return  # the in-memory backend of a process serving no WebSockets: nobody to tell
        push(group, event=event, immediate=immediate)
    except Exception as exc:  # noqa: BLE001 - reported; the logout itself must succeed
        detail = f"{type(exc).__name__}: {exc}"
        for secret in secrets:
            detail = detail.replace(secret, "<session key>")
        logger.error(
            "could not tell the WebSocket servers that %s (%s); their sockets close at the next periodic "
            "re-check (RAWWS['SESSION_RECHECK_INTERVAL'])",
            what,
            detail,
        )


def session_ended(session_key: str | None) -> None:
    """Close, in every process, the sockets bound to this session (it was flushed or logged out).

    Sent at once, not at commit: closing a socket too early is harmless (the
    client reconnects), one left open is not.
    """
    if not session_key:
        return
    from .groups import session_group

    _notify(
        session_group(session_key),
        _signed(_END, session=session_key),
        immediate=True,
        what="a session ended",
        secrets=(session_key,),
    )


def session_rekeyed(old_key: str | None, new_key: str | None) -> None:
    """Move the sockets bound to ``old_key`` to ``new_key`` (``cycle_key()`` kept the data)."""
    if not old_key or not new_key or old_key == new_key:
        return
    from .groups import session_group

    _notify(
        session_group(old_key),
        _signed(_REKEY, session=old_key, new=new_key),
        immediate=True,
        what="a session changed its key",
        secrets=(old_key, new_key),
    )


def recheck_user_sessions(user: Any) -> None:
    """Make every socket of ``user`` (a user or a primary key) re-verify its session now.

    Called when a password changes; call it yourself after changing what
    ``get_session_auth_hash()`` depends on without ``save()`` (a
    ``QuerySet.update()``), or to "log out everywhere" after rotating a
    custom hash. Inside an HTTP request it is sent when the request ends
    (after ``update_session_auth_hash`` saved the changer's session, which
    therefore stays valid); otherwise at once, or at commit inside a
    transaction.
    """
    pk = getattr(user, "pk", user)
    if pk is None:
        return
    pending = _request_pending.get()
    if pending is not None:
        pending.setdefault(str(pk), None)
        return
    _send_verify(str(pk))


def _send_verify(pk: str) -> None:
    from .groups import user_group

    _notify(user_group(pk), _signed(_VERIFY, user=pk), immediate=False, what="a user's password changed")


# ------------------------------------------------- Django's side of things

#: The users whose password changed during the current HTTP request (ordered set), or None outside one.
_request_pending: contextvars.ContextVar[dict[str, None] | None] = contextvars.ContextVar(
    "rawws_request_pending", default=None
)

# The key user_logged_out announced, so the flush() that logout() makes next doesn't announce it again.
_announced = threading.local()


def _on_request_started(**kwargs: Any) -> None:
    _flush_pending()  # a request whose response was never closed: send what it left, late but sent
    _request_pending.set({})


def _on_request_finished(**kwargs: Any) -> None:
    _flush_pending()


def begin_handler_call() -> contextvars.Token[dict[str, None] | None]:
    """A WebSocket handler call is a request too: password changes in it are announced when it returns.

    By then a consumer that changed its own user's password has updated and
    saved its session (``update_session_auth_hash``), so its socket stays.
    """
    return _request_pending.set({})


def end_handler_call(token: contextvars.Token[dict[str, None] | None]) -> None:
    pending = _request_pending.get()
    _request_pending.reset(token)
    for pk in pending or ():
        _send_verify(pk)


def _flush_pending() -> None:
    pending = _request_pending.get()
    if pending is None:
        return
    _request_pending.set(None)
    for pk in pending:
        _send_verify(pk)


def _on_logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key:
        _announced.key = key
        session_ended(key)


def _on_user_init(sender: Any, instance: Any, **kwargs: Any) -> None:
    # The stored hash as loaded (None when the field is deferred: unknown).
    instance.__dict__["_rawws_password"] = instance.__dict__.get("password")


def _on_user_saved(
    sender: Any, instance: Any, created: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    current = instance.__dict__.get("password")
    before = instance.__dict__.get("_rawws_password")
    instance.__dict__["_rawws_password"] = current
    if created or (update_fields is not None and "password" not in update_fields):
        return
    # set_password() leaves _password set until save() returns; an assignment or
    # set_unusable_password() shows as a different stored hash.
    changed = getattr(instance, "_password", None) is not None or (
        before is not None and current is not None and before != current
    )
    if changed:
        recheck_user_sessions(instance)


def _wrap_session_base() -> None:
    """Announce ``flush()`` and ``cycle_key()`` of any session engine (Django has no signal for them)."""
    from django.contrib.sessions.backends.base import SessionBase

    if getattr(SessionBase.flush, "_rawws_wrapped", False):
        return
    flush, cycle_key = SessionBase.flush, SessionBase.cycle_key

    @functools.wraps(flush)
    def rawws_flush(self: Any) -> None:
        key = self.session_key
        flush(self)
        if key and getattr(_announced, "key", None) == key:
            _announced.key = None  # logout() announced it already
        else:
            session_ended(key)

    @functools.wraps(cycle_key)
    def rawws_cycle_key(self: Any) -> None:
        key = self.session_key
        cycle_key(self)
        session_rekeyed(key, self.session_key)

    rawws_flush._rawws_wrapped = True  # type: ignore[attr-defined]
    SessionBase.flush = rawws_flush  # type: ignore[method-assign]
    SessionBase.cycle_key = rawws_cycle_key  # type: ignore[method-assign]

    aflush, acycle_key = getattr(SessionBase, "aflush", None), getattr(SessionBase, "acycle_key", None)
    if aflush is None or acycle_key is None:
        return  # Django 4.2

    from asgiref.sync import sync_to_async

    @functools.wraps(aflush)
    async def rawws_aflush(self: Any) -> None:
        key = self.session_key
        await aflush(self)
        if key and getattr(_announced, "key", None) == key:
            _announced.key = None
        else:
            await sync_to_async(session_ended)(key)

    @functools.wraps(acycle_key)
    async def rawws_acycle_key(self: Any) -> None:
        key = self.session_key
        await acycle_key(self)
        await sync_to_async(session_rekeyed)(key, self.session_key)

    SessionBase.aflush = rawws_aflush  # type: ignore[method-assign]
    SessionBase.acycle_key = rawws_acycle_key  # type: ignore[method-assign]


def install() -> None:
    """Connect the receivers and wrap the session methods (idempotent; from ``RawWSConfig.ready()``)."""
    request_started.connect(_on_request_started, dispatch_uid="django_rawws.auth.request_started")
    request_finished.connect(_on_request_finished, dispatch_uid="django_rawws.auth.request_finished")
    _wrap_session_base()
    if not apps.is_installed("django.contrib.auth"):
        return
    from django.contrib.auth import get_user_model
    from django.contrib.auth.signals import user_logged_out
    from django.db.models.signals import post_init, post_save

    user_logged_out.connect(_on_logged_out, dispatch_uid="django_rawws.auth.logged_out")
    user_model = get_user_model()
    post_init.connect(_on_user_init, sender=user_model, dispatch_uid="django_rawws.auth.user_init")
    post_save.connect(_on_user_saved, sender=user_model, dispatch_uid="django_rawws.auth.user_saved")


# -------------------------------------------------------- periodic re-check


class _Entry:
    __slots__ = ("alive", "conn", "due", "interval")

    def __init__(self, conn: Any, interval: float, due: float) -> None:
        self.conn = conn
        self.interval = interval
        self.due = due
        self.alive = True


class SessionRechecker:
    """Says when each session-bound connection is due for its periodic re-check.

    One named thread per application, doing no database work: it hands the
    connections due to ``dispatch``, which queues the verification on the
    workers (so database connections stay within workers × aliases) and
    postpones (:meth:`postpone`) the other tabs of the same session, checked
    with them. The first check of a connection comes at a random point of the
    second half of its interval, so a reconnect storm does not come back as
    a re-check storm; then one every interval. The thread starts with the
    first bound connection and exits when none is left (or at :meth:`stop`,
    from ``worker_exit``).
    """

    #: Longest sleep: bounds how late a newly added, earlier deadline is noticed.
    max_wait = 1.0

    def __init__(self, dispatch: Callable[[list[Any]], None]) -> None:
        self._dispatch = dispatch
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Entry]] = []
        self._entries: dict[Any, _Entry] = {}
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def due(self, conn: Any) -> float | None:
        """When ``conn`` is next checked (``time.monotonic()``), None if it is not watched."""
        with self._lock:
            entry = self._entries.get(conn)
            return entry.due if entry is not None else None

    def add(self, conn: Any, interval: float) -> None:
        due = time.monotonic() + interval * random.uniform(0.5, 1.0)  # spreading load, not secrecy
        entry = _Entry(conn, interval, due)
        with self._lock:
            old = self._entries.pop(conn, None)
            if old is not None:
                old.alive = False
            self._entries[conn] = entry
            heapq.heappush(self._heap, (due, next(self._seq), entry))
            self._stopping = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rawws-session-recheck", daemon=True)
                self._thread.start()
            else:
                self._wake.notify()

    def postpone(self, conns: Iterable[Any]) -> None:
        """Count ``conns`` as checked now (a tab of a session just verified): next check in an interval."""
        now = time.monotonic()
        with self._lock:
            for conn in conns:
                entry = self._entries.get(conn)
                if entry is not None:
                    entry.due = now + entry.interval
                    heapq.heappush(self._heap, (entry.due, next(self._seq), entry))

    def discard(self, conn: Any) -> None:
        with self._lock:
            entry = self._entries.pop(conn, None)
            if entry is not None:
                entry.alive = False
                if not self._entries:
                    self._wake.notify()  # nothing left to watch: let the thread end now

    def stop(self, timeout: float = 1.0) -> None:
        """Stop and join the thread, unless connections are still watched (another server's)."""
        with self._lock:
            thread = self._thread
            if thread is None or self._entries:
                return
            self._stopping = True
            self._wake.notify()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping or not self._entries:
                    self._thread = None
                    self._heap.clear()
                    return
                now = time.monotonic()
                due: list[_Entry] = []
                while self._heap and self._heap[0][0] <= now:
                    when, _, entry = heapq.heappop(self._heap)
                    if entry.alive and entry.due == when:  # else: discarded, or postponed since
                        due.append(entry)
                        entry.due = now + entry.interval
                        heapq.heappush(self._heap, (entry.due, next(self._seq), entry))
                if not due:
                    wait = min(self._heap[0][0] - now, self.max_wait) if self._heap else self.max_wait
                    self._wake.wait(max(wait, 0.005))
                    continue
            try:
                self._dispatch([entry.conn for entry in due])
            except Exception:  # the schedule must survive a bad dispatch
                logger.exception("could not schedule the session re-check of %d connection(s)", len(due))
