"""Consumers: the synchronous API a project writes its WebSocket endpoints with.

One consumer instance serves one connection. Its hooks run on the server's
worker threads, one at a time and in order, each wrapped like a Django
request (database hygiene, ``ATOMIC_REQUESTS``, translation, timezone and
urlconf reset); see :mod:`django_rawws.handler`. A hook may use the ORM and
any blocking library, as a view does: this is why hooks are ``def``, never
``async def``.

::

    class EchoConsumer(WebSocketConsumer):
        def receive(self, text=None, bytes=None):
            self.send(text=text, bytes=bytes)

Hooks: :meth:`~WebSocketConsumer.connect`, :meth:`~WebSocketConsumer.receive`,
:meth:`~WebSocketConsumer.disconnect` and one method per group event type.
Actions: :meth:`~WebSocketConsumer.accept`, :meth:`~WebSocketConsumer.reject`,
:meth:`~WebSocketConsumer.send`, :meth:`~WebSocketConsumer.close`,
:meth:`~WebSocketConsumer.join`, :meth:`~WebSocketConsumer.leave`.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from types import FunctionType
from typing import TYPE_CHECKING, Any, ClassVar

from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder

from .auth import REVOKED, SESSION_ENDED, SESSION_ENDED_REASON, bind_session
from .exceptions import (
    BadRequest,
    Forbidden,
    HandshakeError,
    InvalidState,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from .protocol.codes import CloseCode
from .protocol.deflate import DeflateOptions

if TYPE_CHECKING:
    from django.http import HttpRequest

    from .server import ServerConnection

__all__ = ["JsonWebSocketConsumer", "WebSocketConsumer"]

logger = logging.getLogger("django_rawws.consumers")

_HANDSHAKE_ERRORS: dict[int, type[HandshakeError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    429: TooManyRequests,
    503: ServiceUnavailable,
}


def handshake_error(status: int, reason: str | None = None) -> HandshakeError:
    """A :class:`HandshakeError` answering ``status`` (any 4xx/5xx) with ``reason``."""
    if not 400 <= status <= 599:
        raise ValueError(f"a rejected handshake needs a 4xx or 5xx status, not {status}")
    error_class = _HANDSHAKE_ERRORS.get(status)
    if error_class is not None:
        return error_class(reason)
    error = HandshakeError(reason or "Refused")
    error.status_code = status
    return error


class WebSocketConsumer:
    """One WebSocket connection, seen from Django.

    Set by the server before :meth:`connect` runs:

    * ``request``: a real :class:`~django.http.HttpRequest` built from the
      handshake (``get_host()``, ``is_secure()``, ``build_absolute_uri()``,
      ``headers``, ``COOKIES``, ``GET``, ``META``), with a lazy ``session``
      and a lazy ``user``;
    * ``args`` and ``kwargs``: what the URL pattern captured;
    * ``connection``: the server's connection object.

    Class attributes, overridable per consumer (or per route with
    :meth:`as_consumer`):

    * ``groups``: group names joined at accept and left at disconnect;
    * ``login_required``: refuse anonymous users with 403 before ``connect``;
    * ``permission_required``: a permission name or several, all required
      (``user.has_perms``), else 403;
    * ``max_message_size``: largest incoming message in bytes for this route
      (None: ``RAWWS["MAX_MESSAGE_SIZE"]``);
    * ``compression``: None follows the server (``RAWWS["COMPRESSION"]``),
      False turns permessage-deflate off for this route, True turns it on
      with the server's options, a :class:`DeflateOptions` sets them.
    """

    groups: ClassVar[Sequence[str]] = ()
    login_required: ClassVar[bool] = False
    permission_required: ClassVar[str | Sequence[str] | None] = None
    max_message_size: ClassVar[int | None] = None
    compression: ClassVar[bool | DeflateOptions | None] = None

    connection: ServerConnection
    request: HttpRequest
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __init__(self, **initkwargs: Any) -> None:
        for key, value in initkwargs.items():
            setattr(self, key, value)
        self.args = ()
        self.kwargs = {}
        self._accepted = False
        self._closing = False
        self._scope: dict[str, Any] | None = None
        # The session this connection authenticated with (django_rawws.auth), if any.
        self._session_binding: Any = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if name.startswith("_"):
                continue
            function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__}.{name} is 'async def', but django-rawws consumers "
                    f"are synchronous: their methods run on worker threads, where the ORM works as in views. "
                    f"Write 'def {name}(...)'."
                )

    @classmethod
    def as_consumer(cls, **initkwargs: Any) -> Callable[..., WebSocketConsumer]:
        """Return a route target building ``cls(**initkwargs)`` per connection.

        Like ``View.as_view()``: each keyword must name an existing class
        attribute (``path("ws/big/", Upload.as_consumer(max_message_size=2**24))``).
        """
        for key in initkwargs:
            if key.startswith("_") or not hasattr(cls, key):
                raise TypeError(
                    f"{cls.__qualname__}.as_consumer() received an invalid keyword {key!r}: "
                    f"it accepts only attributes the class already has."
                )
            if isinstance(
                inspect.getattr_static(cls, key), (FunctionType, staticmethod, classmethod, property)
            ):
                raise TypeError(f"{cls.__qualname__}.as_consumer(): {key!r} is a method, not a setting.")

        def consumer(**kwargs: Any) -> WebSocketConsumer:
            return cls(**{**initkwargs, **kwargs})

        consumer.consumer_class = cls  # type: ignore[attr-defined]
        consumer.consumer_initkwargs = initkwargs  # type: ignore[attr-defined]
        consumer.__name__ = cls.__name__
        consumer.__qualname__ = cls.__qualname__
        consumer.__module__ = cls.__module__
        consumer.__doc__ = cls.__doc__
        return consumer

    # ------------------------------------------------------------ properties

    @property
    def id(self) -> str:
        """The connection's id, unique in this process (also the group ``conn:<id>``)."""
        return self.connection.id

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        handshake = self.connection.handshake
        return list(handshake.subprotocols) if handshake is not None else []

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol accepted, or None."""
        return self.connection.subprotocol

    @property
    def accepted(self) -> bool:
        return self._accepted

    @property
    def buffered_amount(self) -> int:
        """Bytes sent but not yet taken by the kernel, like the browser's ``bufferedAmount``."""
        return self.connection.buffered_amount

    @property
    def user(self) -> Any:
        """``request.user``: evaluated (one query at most) on first use."""
        return self.request.user

    @property
    def session(self) -> Any:
        return self.request.session

    @property
    def scope(self) -> dict[str, Any]:
        """A Channels-style summary, for code written against ``self.scope``."""
        if self._scope is None:
            request = self.request
            self._scope = {
                "type": "websocket",
                "path": request.path,
                "query_string": request.META.get("QUERY_STRING", "").encode("iso-8859-1"),
                "headers": dict(request.headers),
                "subprotocols": self.subprotocols,
                "client": (request.META.get("REMOTE_ADDR"), request.META.get("REMOTE_PORT")),
                "url_route": {"args": self.args, "kwargs": self.kwargs},
                "session": getattr(request, "session", None),
                "user": getattr(request, "user", None),
            }
        return self._scope

    # ----------------------------------------------------------------- hooks

    def connect(self) -> None:
        """Decide the handshake: accept (the default), reject, or raise.

        Raising :class:`~django.core.exceptions.PermissionDenied` refuses with
        403, a :class:`~django_rawws.exceptions.HandshakeError` with its
        status; any other exception is a 500 (logged).
        """
        self.accept()

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        """A message arrived: ``text`` for a text message, ``bytes`` for a binary one."""

    def disconnect(self, code: int) -> None:
        """The connection is gone (runs once). ``code``: the peer's close code, or
        1005 (close without a code), 1006 (dropped), 1001 (server shutdown),
        1011 (this consumer raised), 1008 (client too slow to read)."""

    def check_access(self) -> None:
        """Enforce ``login_required`` and ``permission_required`` (before ``connect``).

        Raises:
            PermissionDenied: the handshake is refused with 403.
        """
        if not (self.login_required or self.permission_required):
            return
        user = getattr(self.request, "user", None)
        if user is None:
            raise PermissionDenied("login_required and permission_required need django.contrib.auth")
        if self.login_required and not user.is_authenticated:
            raise PermissionDenied("login required")
        required = self.permission_required
        if required:
            perms = (required,) if isinstance(required, str) else tuple(required)
            if not user.has_perms(perms):
                raise PermissionDenied("permission denied")

    # --------------------------------------------------------------- actions

    def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        """Answer 101: the connection opens, the consumer joins its groups.

        Raises:
            InvalidState: ``subprotocol`` is not one the client offered
                (``self.subprotocols``), or the handshake is already decided.
        """
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise InvalidState(
                f"cannot accept subprotocol {subprotocol!r}: the client offered {self.subprotocols or 'none'}"
            )
        if headers is None:
            extra: list[tuple[str, str]] = []
        elif isinstance(headers, Mapping):
            extra = list(headers.items())
        else:
            extra = list(headers)
        # Join first: once the client reads the 101, a push to any of these
        # groups must reach it. A push in between finds the connection not yet
        # open and skips it, as it would have before the join.
        binding = self._join_initial_groups()
        self.connection.accept(
            subprotocol=subprotocol,
            headers=extra,
            deflate=self._deflate_options(),
            max_message_size=self.max_message_size,
        )
        self._accepted = True
        from .groups import get_backend

        # What resumable and presence groups hold for this client (nothing to do for most).
        get_backend().connection_opened(self.connection)
        if binding is REVOKED:
            # The session ended while connect() ran, after it saw the user.
            logger.info("closing %s (%s): the session ended during the handshake", self.id, self.request.path)
            self.close(SESSION_ENDED, SESSION_ENDED_REASON)
        else:
            self._session_binding = binding

    def reject(self, status: int = 403, reason: str | None = None) -> None:
        """Refuse the handshake with ``status`` (4xx/5xx) and a plain-text ``reason``."""
        if self._accepted:
            raise InvalidState("reject() after accept(): use close(code) instead")
        self.connection.reject(handshake_error(status, reason))

    def send(self, text: str | None = None, bytes: bytes | None = None) -> bool:
        """Queue one message; never blocks. Return False if the connection is not open.

        A client that stops reading is closed with 1008 once
        ``RAWWS["MAX_OUTGOING_BUFFER"]`` bytes wait for it.
        """
        if (text is None) == (bytes is None):
            raise ValueError("send() takes exactly one of text= or bytes=")
        return self.connection.send(text if text is not None else bytes)  # type: ignore[arg-type]

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; before accept, refuse the handshake with 403.

        Messages that arrived before the client answers are not delivered.
        """
        self._closing = True
        self.connection.close(code, reason)

    def join(self, group: str, presence: Mapping[str, Any] | None = None) -> None:
        """Add this connection to ``group`` (any thread, any time while open).

        ``presence``: announce this connection in the group's presence list
        with these JSON fields (``{"user": self.user.pk, "name": ...}``); see
        ``docs/groups.md``.
        """
        from .groups import get_backend

        get_backend().add(group, self.connection, presence=presence)

    def leave(self, group: str) -> None:
        from .groups import get_backend

        get_backend().discard(group, self.connection)

    # ------------------------------------------------------------- internals

    def _deflate_options(self) -> DeflateOptions | None:
        compression = self.compression
        if compression is None:
            return None
        if isinstance(compression, DeflateOptions):
            return compression
        if compression:
            from .conf import deflate_options

            return replace(deflate_options(), enabled=True)
        return _NO_DEFLATE

    def _join_initial_groups(self) -> Any:
        """Join the automatic groups (``conn:<id>``, ``session:<key>``, ``user:<pk>``), then ``groups``.

        Returns the session binding (see :func:`django_rawws.auth.bind_session`).
        """
        from .groups import get_backend

        backend = get_backend()
        connection = self.connection
        binding = _join_automatic_groups(
            self,
            lambda group: backend.add(group, connection),
            lambda group: backend.discard(group, connection),
        )
        for group in self.groups:
            backend.add(group, connection)
        return binding

    def get_event_handler(self, event: Any) -> Callable[[dict[str, Any]], Any] | None:
        """The method for a group event ``{"type": "chat.message", ...}``: ``chat_message``.

        Refused (logged, not raised: an event can come from anywhere): a
        missing or non-string type, a name starting with ``_``, a name of the
        consumer API itself (``send``, ``close``, ``receive``...), and a name
        with no method.
        """
        from .groups import event_handler_name

        event_type = event.get("type") if isinstance(event, dict) else None
        try:
            name = event_handler_name(event_type)
        except ValueError as error:
            logger.error("%s: refusing a group event: %s", type(self).__qualname__, error)
            return None
        if name in _RESERVED_NAMES:
            logger.error(
                "%s: refusing group event type %r: it names the consumer's own API, not an event handler",
                type(self).__qualname__,
                event_type,
            )
            return None
        handler = getattr(self, name, None)
        if handler is None or not callable(handler):
            logger.error(
                "%s: no handler for group event type %r (define %s(self, event))",
                type(self).__qualname__,
                event_type,
                name,
            )
            return None
        return handler  # type: ignore[no-any-return]


_NO_DEFLATE = DeflateOptions(enabled=False)


def automatic_groups(consumer: WebSocketConsumer) -> list[str]:
    """The groups every accepted connection is in: ``conn:<id>``, ``session:<key>``, ``user:<pk>``.

    ``session:<key>`` only for a session cookie naming a live session.
    ``user:<pk>`` for the user the request authenticates: the
    ``AUTHENTICATE`` hook's, or the session's when the session still
    authenticates it (as ``get_user()`` would: backend, active user, session
    hash), so a stale session never receives its former user's pushes.
    This reads the session and the user (what ``accept()`` does, joining as
    it goes).
    """
    groups: list[str] = []

    def leave(group: str) -> None:
        if group in groups:
            groups.remove(group)

    _join_automatic_groups(consumer, groups.append, leave)
    return groups


def _join_automatic_groups(consumer: WebSocketConsumer, join: Any, leave: Any) -> Any:
    """Join the automatic groups in an order no logout can slip through; return the session binding."""
    from .groups import connection_group, user_group

    join(connection_group(consumer.connection))
    request = consumer.request
    lazy_user = getattr(request, "_rawws_lazy_user", None)
    user = request.__dict__.get("user")
    binding = None
    if getattr(request, "session", None) is not None:
        binding = bind_session(request, lazy_user, join, leave)
    if user is not None and user is not lazy_user:
        # Not the session's user (the AUTHENTICATE hook's, or set by connect()).
        evaluated = _evaluated_user(user)
        if evaluated is not None and evaluated.is_authenticated:
            join(user_group(evaluated.pk))
    return binding


def _evaluated_user(user: Any) -> Any:
    """The user object if ``user`` is a plain user or an already evaluated lazy one."""
    if user is None:
        return None
    wrapped = getattr(user, "_wrapped", None)
    if wrapped is None:
        return user  # not a lazy object
    from django.utils.functional import empty

    return None if wrapped is empty else wrapped


class JsonWebSocketConsumer(WebSocketConsumer):
    """A consumer speaking JSON text messages.

    Override :meth:`receive_json`; reply with :meth:`send_json`. A message
    that is not valid JSON closes the connection with 1007, a binary message
    with 1003. Override the classmethods :meth:`decode_json` and
    :meth:`encode_json` to change the codec.
    """

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        if text is None:
            self.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
            return
        try:
            content = self.decode_json(text)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the stack
            self.close(CloseCode.INVALID_PAYLOAD, "invalid JSON")
            return
        self.receive_json(content)

    def receive_json(self, content: Any) -> None:
        """A JSON message arrived, decoded."""

    def send_json(self, content: Any) -> bool:
        return self.send(text=self.encode_json(content))

    @classmethod
    def decode_json(cls, text: str) -> Any:
        return json.loads(text)

    @classmethod
    def encode_json(cls, content: Any) -> str:
        """Compact JSON; dates, decimals, UUIDs and lazy strings as Django's serializers write them."""
        return json.dumps(content, cls=DjangoJSONEncoder, separators=(",", ":"))


# Attribute names of the API classes: a group event may never call these
# ({"type": "close"} must not close the connection).
_RESERVED_NAMES = frozenset(
    {*vars(WebSocketConsumer), *vars(JsonWebSocketConsumer), "connection", "request", "args", "kwargs"}
)
