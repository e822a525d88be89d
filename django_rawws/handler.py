"""The Django side of a connection: from a handshake to consumer calls.

:class:`DjangoApplication` is the application object the server calls on its
worker threads (see :mod:`django_rawws.server.core`). For a handshake it:

1. builds a WSGI environ and a real :class:`~django.core.handlers.wsgi.WSGIRequest`
   (the client address taken from ``X-Forwarded-For`` only behind a trusted
   proxy);
2. validates ``Host`` against ``ALLOWED_HOSTS`` (400);
3. resolves the path in the WebSocket urlconf (404) -- before anything that
   costs a query;
4. checks ``Origin`` (403);
5. attaches a lazy ``request.session`` and ``request.user``, then runs the
   ``AUTHENTICATE`` hook if one is set;
6. builds the consumer, enforces ``login_required`` / ``permission_required``
   (403) and calls ``connect()``.

Every handler call (handshake, message, group event, disconnect) runs in a
:class:`contextvars.Context` of its own, as Django runs each request of an
ASGI server: nothing a call activates (a language, a time zone, a urlconf)
reaches the next one, between two
``close_old_connections()`` (Django does the same around a request), and
with the consumer method inside ``transaction.atomic`` for each database with
``ATOMIC_REQUESTS``. A consumer exception is logged on
``django_rawws.consumers`` with the request attached, ``got_request_exception``
is sent (so ``mail_admins`` and error trackers see it), and the connection is
failed with 1011; ``disconnect(1011)`` follows, once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import ipaddress
import logging
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import apps
from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import BadRequest as DjangoBadRequest
from django.core.exceptions import DisallowedHost, PermissionDenied, SuspiciousOperation
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import got_request_exception
from django.db import close_old_connections, connections, transaction
from django.http import Http404
from django.urls import set_script_prefix
from django.utils.functional import SimpleLazyObject
from django.utils.http import is_same_domain
from django.utils.module_loading import import_string

from . import auth
from .auth import session_store
from .conf import get_config, on_config_change
from .consumers import WebSocketConsumer, handshake_error
from .exceptions import BadRequest, Forbidden, HandshakeError, InvalidState, NotFound, TooManyRequests
from .protocol.codes import CloseCode
from .routing import path_info_from_target, resolve

__all__ = ["DjangoApplication", "build_environ", "check_origin", "origin_allowed"]

logger = logging.getLogger("django_rawws.consumers")
security_logger = logging.getLogger("django.security.DisallowedHost")

# Headers a proxy sets; ignored from a peer that is not a trusted proxy once
# TRUSTED_PROXIES is configured.
_FORWARDED_META = ("HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT")

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


class _ConnectionState:
    """What the Django side keeps per connection (in ``conn.app_state``)."""

    __slots__ = ("connect_called", "consumer", "disconnected", "failed_code", "request")

    def __init__(self) -> None:
        self.request: WSGIRequest | None = None
        self.consumer: WebSocketConsumer | None = None
        self.connect_called = False
        self.failed_code: int | None = None
        self.disconnected = False


class _WebSocketOnly(HandshakeError):
    status_code = 426
    default_reason = "Upgrade Required: this URL is a WebSocket endpoint"

    def default_headers(self) -> list[tuple[str, str]]:
        return [("Upgrade", "websocket")]


class DjangoApplication:
    """Serve the consumers of the WebSocket urlconf (``RAWWS["URLCONF"]``).

    ``urlconf`` overrides the setting (a second server, tests).
    """

    def __init__(
        self,
        *,
        urlconf: str | None = None,
        wsgi_application: Any = None,
        ws_only: bool = False,
        secure: bool = False,
    ) -> None:
        self.urlconf = urlconf
        self.watchdog = _watchdog
        #: Says when each session-bound connection is due for its periodic re-check.
        self.rechecker = auth.SessionRechecker(self._dispatch_rechecks)
        self.ws_only = ws_only
        self.secure = secure
        self._wsgi_application = wsgi_application

    @property
    def wsgi_application(self) -> Any:
        """The project's WSGI application, found as ``runserver`` finds it."""
        if self._wsgi_application is None:
            from django.core.servers.basehttp import get_internal_wsgi_application

            self._wsgi_application = get_internal_wsgi_application()
        return self._wsgi_application

    def http_request(self, sock: Any, client_address: Any, request: Any, prefix: bytes) -> None:
        """Serve a plain HTTP request (not an upgrade) on an HTTP-pool thread.

        With ``ws_only`` (``runws --ws-only``, for a site whose HTTP goes to a
        WSGI server) nothing reaches the WSGI app: a WebSocket route answers
        426 with ``Upgrade: websocket``, any other path 404.
        """
        if self.ws_only:
            from .protocol.handshake import build_reject

            try:
                resolve(path_info_from_target(request.target), self.urlconf)
            except NotFound:
                error: HandshakeError = NotFound()
            else:
                error = _WebSocketOnly()
            try:
                sock.sendall(build_reject(error))
                sock.shutdown(socket.SHUT_WR)
                _drain(sock)
            except OSError:
                pass
            return
        from .plain_http import serve_http

        serve_http(
            sock,
            client_address,
            prefix,
            self.wsgi_application,
            secure=self.secure or isinstance(sock, ssl.SSLSocket),
            workers=get_config()["HTTP_WORKERS"],
        )

    # --------------------------------------------------- the server interface

    def websocket_handshake(self, conn: Any, handshake: Any) -> None:
        state = _ConnectionState()
        conn.app_state = state
        _fresh_context().run(self._handshake, conn, handshake, state)

    def websocket_message(self, conn: Any, message: str | bytes) -> None:
        state: _ConnectionState | None = conn.app_state
        consumer = self._live_consumer(state)
        if consumer is None:
            return
        assert state is not None
        if isinstance(message, str):
            _fresh_context().run(self._call, conn, state, consumer.receive, (), {"text": message})
        else:
            _fresh_context().run(self._call, conn, state, consumer.receive, (), {"bytes": message})

    def websocket_event(self, conn: Any, event: Any) -> None:
        state: _ConnectionState | None = conn.app_state
        consumer = self._live_consumer(state)
        if consumer is None:
            return
        assert state is not None
        if auth.is_session_event(event):
            # Ours, never the consumer's: a logout, a new session key, a password change.
            self._internal_call(state, auth.handle_event, consumer, event, self._end_session)
            return
        handler = consumer.get_event_handler(event)
        if handler is not None:
            _fresh_context().run(self._call, conn, state, handler, (event,), {})

    def websocket_disconnect(self, conn: Any, code: int) -> None:
        state: _ConnectionState | None = conn.app_state
        if state is None or state.disconnected:
            return
        state.disconnected = True
        self.rechecker.discard(conn)
        consumer = state.consumer
        if consumer is not None:
            # Groups are joined just before the 101; accept() may have failed after.
            from .groups import get_backend

            try:
                get_backend().discard_all(conn)
            except Exception:
                logger.exception("could not remove connection %s from its groups", conn.id)
        if consumer is not None and state.connect_called:
            if state.failed_code is not None:
                code = state.failed_code
            _fresh_context().run(self._call, conn, state, consumer.disconnect, (code,), {}, True)

    def close_old_connections(self) -> None:
        """Database hygiene before and after every handler call, as Django does around a request.

        Overridden by the in-process test communicator
        (:mod:`django_rawws.testing`): there the handlers run inside the
        test's transaction, which closing the connection would destroy, so
        it skips this as Django's test client disconnects
        ``close_old_connections`` from the request signals.
        """
        close_old_connections()

    def worker_start(self) -> None:
        """A worker thread starts: the slow-handler watchdog runs from now until the workers exit.

        Started with the server rather than by the first call, so a running
        server's thread count never changes with its traffic.
        """
        self.watchdog.start(for_server=True)

    def worker_exit(self) -> None:
        """A worker thread stops: give its database connections back (and stop the watchdog if idle)."""
        connections.close_all()
        self.watchdog.stop()
        self.rechecker.stop()

    # ------------------------------------------------------------- internals

    @staticmethod
    def _live_consumer(state: _ConnectionState | None) -> WebSocketConsumer | None:
        """The consumer that should see the next message or event, if any.

        Nothing is delivered after the consumer failed (1011) or started
        closing itself; what arrived before the peer's close still is.
        """
        if state is None or state.failed_code is not None or state.disconnected:
            return None
        consumer = state.consumer
        if consumer is None or not consumer.accepted or consumer._closing:
            return None
        return consumer

    def _handshake(self, conn: Any, handshake: Any, state: _ConnectionState) -> None:
        scope = auth.begin_handler_call()
        self.close_old_connections()
        try:
            self._decide(conn, handshake, state)
        except HandshakeError as error:
            _reject(conn, error)
        except Exception as error:
            response = _handshake_error_for(error, state.request)
            if response.status_code == 500:
                self._report(error, state.request, f"the handshake of {handshake.path}")
            _reject(conn, response)
        finally:
            auth.end_handler_call(scope)
            self.close_old_connections()

    def _decide(self, conn: Any, handshake: Any, state: _ConnectionState) -> None:
        secure = self.secure or isinstance(getattr(conn, "sock", None), ssl.SSLSocket)
        request = WSGIRequest(build_environ(conn, handshake, secure=secure))
        state.request = request
        try:
            request.get_host()
        except DisallowedHost as error:
            security_logger.error(str(error), extra={"status_code": 400, "request": request})
            raise BadRequest("Bad Request: invalid Host header") from None
        route = resolve(request.path_info, self.urlconf)
        request.resolver_match = route.match
        check_origin(request)
        _attach_session_and_user(request)
        hook = _authenticate_hook()
        if hook is not None:
            user = _hook_user(hook(request, handshake), hook)
            if user is not None:
                request.user = user
        claim_quotas(conn, request)
        consumer = route.consumer_class(**route.initkwargs)
        consumer.connection = conn
        consumer.request = request
        consumer.args = route.args
        consumer.kwargs = route.kwargs
        state.consumer = consumer
        consumer.check_access()
        state.connect_called = True
        self._run(conn, state, consumer.connect, (), {})
        self._watch_session(conn, state, consumer)

    def _call(
        self,
        conn: Any,
        state: _ConnectionState,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        disconnecting: bool = False,
    ) -> None:
        """One handler call after the handshake, wrapped like a request."""
        scope = auth.begin_handler_call()
        self.close_old_connections()
        try:
            self._run(conn, state, method, args, kwargs, disconnecting)
        finally:
            auth.end_handler_call(scope)
            self.close_old_connections()

    def _run(
        self,
        conn: Any,
        state: _ConnectionState,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        disconnecting: bool = False,
    ) -> None:
        """Run a consumer method in the request's transactions; turn its exceptions into statuses or 1011."""
        consumer = state.consumer
        assert consumer is not None
        name = getattr(method, "__name__", "handler")
        threshold = get_config()["SLOW_HANDLER_WARNING"]
        token = self.watchdog.begin(
            lambda: f"{type(consumer).__qualname__}.{name}() for {consumer.request.path}", threshold
        )
        try:
            with _atomic_requests(method):
                method(*args, **kwargs)
        except Exception as error:
            self._consumer_failed(conn, state, consumer, name, error, disconnecting)
        finally:
            self.watchdog.end(token)

    def _consumer_failed(
        self,
        conn: Any,
        state: _ConnectionState,
        consumer: WebSocketConsumer,
        name: str,
        error: Exception,
        disconnecting: bool,
    ) -> None:
        if disconnecting:
            # The connection is gone already: report, nothing to close.
            self._report(error, consumer.request, f"{type(consumer).__qualname__}.{name}()")
            return
        if not consumer.accepted:
            # Still deciding the handshake: answer with a status.
            response = _handshake_error_for(error, consumer.request)
            if response.status_code == 500:
                self._report(error, consumer.request, f"{type(consumer).__qualname__}.{name}()")
                state.failed_code = CloseCode.INTERNAL_ERROR
            _reject(conn, response)
            return
        self._report(error, consumer.request, f"{type(consumer).__qualname__}.{name}()")
        state.failed_code = CloseCode.INTERNAL_ERROR
        conn.fail(CloseCode.INTERNAL_ERROR)

    @staticmethod
    def _report(error: Exception, request: Any, where: str) -> None:
        """Log with the request attached and send got_request_exception, as Django does for views."""
        path = request.path if request is not None else "?"
        logger.error(
            "Exception in %s (%s)",
            where,
            path,
            exc_info=(type(error), error, error.__traceback__),
            extra={"request": request, "status_code": 500},
        )
        got_request_exception.send(sender=None, request=request)

    # ------------------------------------------------- session-bound sockets

    def _watch_session(self, conn: Any, state: _ConnectionState, consumer: WebSocketConsumer) -> None:
        """After ``connect()``: a connection bound to its session joins the periodic re-check."""
        if consumer._session_binding is None or self._live_consumer(state) is None:
            return
        interval = get_config()["SESSION_RECHECK_INTERVAL"]
        if interval:
            self.rechecker.add(conn, interval)

    def _dispatch_rechecks(self, conns: list[Any]) -> None:
        """On the rechecker's thread: queue one verification per session on the workers.

        Tabs of one browser share a session: it is read once for all of
        them (this process's connections bound to it), in the turn of the
        first one still open, and the others' next check is postponed.
        """
        from .groups import get_backend, session_group

        backend = get_backend()
        done: set[tuple[str, str]] = set()
        for conn in conns:
            binding = self._binding_of(conn)
            if binding is None or (binding.session_key, binding.user_pk) in done:
                continue
            ident = (binding.session_key, binding.user_pk)
            done.add(ident)
            group = [(conn, binding)]
            for other in backend.members(session_group(binding.session_key)):
                other_binding = self._binding_of(other) if other is not conn else None
                if other_binding is not None and (other_binding.session_key, other_binding.user_pk) == ident:
                    group.append((other, other_binding))
            self.rechecker.postpone(other for other, _ in group[1:])
            for member, _ in group:
                if member.call_soon(functools.partial(self._recheck, member, group)):
                    break

    def _binding_of(self, conn: Any) -> auth.SessionBinding | None:
        consumer = self._live_consumer(getattr(conn, "app_state", None))
        return getattr(consumer, "_session_binding", None)

    def _recheck(self, conn: Any, group: list[tuple[Any, auth.SessionBinding]]) -> None:
        state: _ConnectionState | None = conn.app_state
        if self._live_consumer(state) is None:
            return
        assert state is not None
        self._internal_call(state, self._verify_sessions, conn, group)

    def _verify_sessions(self, current: Any, group: list[tuple[Any, auth.SessionBinding]]) -> None:
        verdicts: dict[tuple[str, str], bool] = {}
        for conn, binding in group:
            ident = (binding.session_key, binding.user_pk)  # read now: a new key may have come meanwhile
            if ident not in verdicts:
                verdicts[ident] = auth.session_authenticates(binding)
                auth.logger.debug("re-checked the session of user %s: %s", binding.user_pk, verdicts[ident])
            if verdicts[ident]:
                continue
            if conn is current:
                self._end_if_bound(conn, ident)
            else:
                conn.call_soon(functools.partial(self._end_in_turn, conn, ident))

    def _end_in_turn(self, conn: Any, ident: tuple[str, str]) -> None:
        state: _ConnectionState | None = conn.app_state
        if self._live_consumer(state) is not None:
            assert state is not None
            self._internal_call(state, self._end_if_bound, conn, ident)

    def _end_if_bound(self, conn: Any, ident: tuple[str, str]) -> None:
        consumer = self._live_consumer(conn.app_state)
        binding = getattr(consumer, "_session_binding", None)
        if binding is not None and (binding.session_key, binding.user_pk) == ident:
            self._end_session(consumer, "the periodic re-check found the session ended")

    def _end_session(self, consumer: Any, why: str) -> None:
        """Close a session-bound connection with 4401: its session no longer authenticates."""
        conn = consumer.connection
        consumer._session_binding = None
        self.rechecker.discard(conn)
        auth.logger.info(
            "closing %s (%s) with %d: %s", conn.id, consumer.request.path, auth.SESSION_ENDED, why
        )
        consumer.close(auth.SESSION_ENDED, auth.SESSION_ENDED_REASON)

    def _internal_call(self, state: _ConnectionState, function: Callable[..., Any], *args: Any) -> None:
        """Run django-rawws's own work for a connection in its context, wrapped like a handler call.

        Not consumer code: a failure (the database down during a re-check)
        is logged and the connection kept; the next re-check tries again.
        """
        _fresh_context().run(self._internal, function, args)

    def _internal(self, function: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.close_old_connections()
        try:
            function(*args)
        except Exception:  # noqa: BLE001 - logged; the socket must not die of a re-check's failure
            auth.logger.exception("session check of a WebSocket failed; the connection stays open")
        finally:
            self.close_old_connections()


#: Per worker thread: a clean context for each script prefix, copied for every call.
_clean_contexts = threading.local()


def _fresh_context() -> contextvars.Context:
    """A context for one handler call, as Django gives each request of an ASGI server.

    A copy of this thread's clean context (O(1)), so nothing a call
    activates (a language, a time zone, a urlconf) reaches the next one. The
    clean context has the script prefix set and the configured caches
    opened, so cache clients (and their connection pools) last per worker
    thread, as under WSGI, instead of being opened again by every call.
    Per thread, because asgiref's ``Local`` behind those Django settings
    ignores values set on another thread.
    """
    prefix = settings.FORCE_SCRIPT_NAME or "/"
    by_prefix: dict[str, contextvars.Context] | None = getattr(_clean_contexts, "by_prefix", None)
    if by_prefix is None:
        by_prefix = _clean_contexts.by_prefix = {}
    clean = by_prefix.get(prefix)
    if clean is None:
        clean = by_prefix[prefix] = contextvars.Context()
        clean.run(_prepare_clean_context, prefix)
    return clean.copy()


def _prepare_clean_context(prefix: str) -> None:
    set_script_prefix(prefix)
    for alias in settings.CACHES:
        try:
            caches[alias]
        except Exception:  # noqa: BLE001 - a broken cache fails where it is used, with its own error
            logger.debug("cache %r could not be opened ahead of the handler calls", alias, exc_info=True)


def _atomic_requests(method: Callable[..., Any]) -> contextlib.AbstractContextManager[Any]:
    """``transaction.atomic`` for each database with ATOMIC_REQUESTS, as Django wraps views.

    ``@transaction.non_atomic_requests`` on a consumer method opts it out.
    """
    non_atomic = getattr(method, "_non_atomic_requests", ())
    aliases = [
        alias
        for alias, settings_dict in connections.settings.items()
        if settings_dict.get("ATOMIC_REQUESTS") and alias not in non_atomic
    ]
    if not aliases:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for alias in aliases:
        stack.enter_context(transaction.atomic(using=alias))
    return stack


def _drain(sock: Any, limit: int = 1 << 16, timeout: float = 2.0) -> None:
    """Read, for a moment, what the client still sends after our answer (a lingering close).

    Closing with unread bytes (a request body) would reset the connection,
    and the reset can destroy the answer before the client reads it.
    """
    deadline = time.monotonic() + timeout
    received = 0
    while received < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        sock.settimeout(remaining)
        data = sock.recv(1 << 16)
        if not data:
            return
        received += len(data)


def _reject(conn: Any, error: HandshakeError) -> None:
    try:
        conn.reject(error)
    except InvalidState:
        pass  # already decided (accepted, rejected or closed meanwhile)


def _handshake_error_for(error: Exception, request: Any) -> HandshakeError:
    """Map an exception raised while deciding a handshake to its response, like Django's handlers."""
    if isinstance(error, HandshakeError):
        return error
    if isinstance(error, PermissionDenied):
        return Forbidden()
    if isinstance(error, Http404):
        return NotFound()
    if isinstance(error, SuspiciousOperation):
        logging.getLogger(f"django.security.{type(error).__name__}").error(
            str(error), extra={"status_code": 400, "request": request}
        )
        return BadRequest()
    if isinstance(error, DjangoBadRequest):
        return BadRequest()
    return handshake_error(500, "Internal Server Error")


# ------------------------------------------------------------------ environ


def build_environ(conn: Any, handshake: Any, *, secure: bool = False) -> dict[str, Any]:
    """A WSGI environ for the handshake, as a WSGI server would build it (PEP 3333).

    ``secure``: the client reached us over TLS (``wss://``), so
    ``wsgi.url_scheme`` is ``https`` and ``request.is_secure()`` is true.

    Header names containing ``_`` are dropped, as ``runserver`` does, so that
    ``X_Forwarded_For`` cannot pose as ``X-Forwarded-For``. ``CONTENT_LENGTH``
    is absent: a handshake has no body. ``REMOTE_ADDR`` is the client behind
    a trusted proxy (:func:`client_address`).
    """
    request = handshake.request
    peer_host, peer_port = _split_address(conn.remote_address)
    server_host, server_port = _local_address(conn)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path_info_from_target(handshake.path),
        "QUERY_STRING": handshake.query_string,
        "SERVER_NAME": server_host,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{request.version[0]}.{request.version[1]}",
        "REMOTE_ADDR": peer_host,
        "REMOTE_PORT": peer_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if secure else "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key == "CONTENT_LENGTH":
            continue
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        if key in environ:
            separator = "; " if key == "HTTP_COOKIE" else ","
            environ[key] = f"{environ[key]}{separator}{value}"
        else:
            environ[key] = value
    _apply_proxy_rules(environ, peer_host)
    return environ


def _split_address(address: Any) -> tuple[str, str]:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), str(address[1])
    return str(address or ""), ""


def _local_address(conn: Any) -> tuple[str, str]:
    known = getattr(getattr(conn, "server", None), "connection_local_address", None)
    if known is not None:
        return _split_address(known)
    sock = getattr(conn, "sock", None)
    try:
        return _split_address(sock.getsockname()) if sock is not None else ("localhost", "")
    except OSError:
        return "localhost", ""


@functools.cache
def trusted_proxies() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``RAWWS["TRUSTED_PROXIES"]`` parsed (rawws.E005 reports bad entries; they are skipped here)."""
    networks = []
    for entry in get_config()["TRUSTED_PROXIES"]:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


on_config_change(trusted_proxies.cache_clear)


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("["):  # [v6] or [v6]:port
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:  # v4:port
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, networks: Sequence[Any]
) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str, forwarded_for: str | None, networks: Sequence[Any]) -> str | None:
    """The client's address behind trusted proxies, or None to keep the peer's.

    Only when the peer itself is a trusted proxy: the rightmost
    ``X-Forwarded-For`` entry that is not a trusted proxy (entries further
    left were written by the client and can be forged). An entry that is not
    an IP address stops the walk at the last trusted hop.
    """
    if not networks or not forwarded_for or not _is_trusted(_parse_ip(peer), networks):
        return None
    last_trusted: str | None = None
    for entry in reversed(forwarded_for.split(",")):
        address = _parse_ip(entry)
        if address is None:
            return last_trusted
        if not _is_trusted(address, networks):
            return str(address)
        last_trusted = str(address)
    return last_trusted


def _apply_proxy_rules(environ: dict[str, Any], peer: str) -> None:
    networks = trusted_proxies()
    if not networks:
        return  # no proxy configured: Django's own settings decide, as under any WSGI server
    if not _is_trusted(_parse_ip(peer), networks):
        # A direct client: what it claims in proxy headers is not believed.
        for key in _FORWARDED_META:
            environ.pop(key, None)
        ssl_header = settings.SECURE_PROXY_SSL_HEADER
        if ssl_header:
            environ.pop(ssl_header[0], None)
        return
    address = client_address(peer, environ.get("HTTP_X_FORWARDED_FOR"), networks)
    if address is not None and address != peer:
        environ["REMOTE_ADDR"] = address
        environ["REMOTE_PORT"] = ""


# ------------------------------------------------------------------- quotas


def claim_quotas(conn: Any, request: Any) -> None:
    """Answer 429 past ``MAX_CONNECTIONS_PER_USER``, or past the per-address quota behind a proxy.

    The server counts direct clients per address at accept, without a
    worker; a trusted proxy is exempt there (every client behind it shares
    its address), so its clients are counted here, by the address
    ``X-Forwarded-For`` gave. A logged-in user is counted as ``user:<pk>``:
    with a session cookie this loads the session's user, as
    ``login_required`` does (without one, ``request.user`` stays lazy and
    costs no query). Each slot is held until the connection closes, and
    counted per process.

    Raises:
        TooManyRequests: 429 with ``Retry-After``.
    """
    claim = getattr(conn, "claim_quota", None)
    if claim is None:  # a connection double without quotas (the test communicator)
        return
    peer = _split_address(conn.remote_address)[0]
    client = request.META.get("REMOTE_ADDR")
    if client and client != peer and not conn.claim_client_address(client):
        raise TooManyRequests("Too Many Requests: too many connections from this address")
    limit = get_config()["MAX_CONNECTIONS_PER_USER"]
    user = getattr(request, "user", None)
    if not limit or user is None:
        return
    if isinstance(user, SimpleLazyObject) and settings.SESSION_COOKIE_NAME not in request.COOKIES:
        return  # the session's user, and there is no session: anonymous
    if user.is_authenticated and not claim(f"user:{user.pk}", limit):
        raise TooManyRequests("Too Many Requests: too many connections for this user")


# ------------------------------------------------------------------- origin


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a serialized origin, None if it is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
        if port is None:
            return None
    return scheme, host.lower(), port


def origin_allowed(origin: str, request: Any, extra_origins: Sequence[str] = ()) -> bool:
    """Whether a browser page at ``origin`` may open this WebSocket.

    Same rules as Django's CSRF origin check: same origin as the request
    (``https`` when ``request.is_secure()``, which honours
    ``SECURE_PROXY_SSL_HEADER``), or listed in ``CSRF_TRUSTED_ORIGINS`` or
    ``extra_origins``, where ``https://*.example.com`` allows the domain and
    its subdomains. ``null`` (sandboxed frames, ``file:``) never passes.
    """
    if origin.strip().lower() == "null":
        return False
    key = _origin_key(origin)
    if key is None:
        return False
    own = _origin_key(f"{'https' if request.is_secure() else 'http'}://{request.get_host()}")
    if key == own:
        return True
    netloc = urlsplit(origin.strip()).netloc.lower()
    for trusted in (*settings.CSRF_TRUSTED_ORIGINS, *extra_origins):
        if "*" in trusted:
            parts = urlsplit(trusted)
            if parts.scheme.lower() == key[0] and is_same_domain(netloc, parts.netloc.lstrip("*").lower()):
                return True
        elif _origin_key(trusted) == key:
            return True
    return False


def check_origin(request: Any) -> None:
    """Apply CHECK_ORIGIN / ALLOWED_ORIGINS / REQUIRE_ORIGIN to ``request``.

    Raises:
        Forbidden: 403.
    """
    config = get_config()
    if not config["CHECK_ORIGIN"]:
        return
    origin = request.META.get("HTTP_ORIGIN")
    if origin is None:
        if config["REQUIRE_ORIGIN"]:
            raise Forbidden("Forbidden: an Origin header is required")
        return
    if not origin_allowed(origin, request, config["ALLOWED_ORIGINS"]):
        raise Forbidden("Forbidden: origin not allowed")


# ------------------------------------------------------- session, user, hook


@functools.cache
def _authenticate_hook() -> Callable[[Any, Any], Any] | None:
    path = get_config()["AUTHENTICATE"]
    return import_string(path) if path else None


on_config_change(_authenticate_hook.cache_clear)


def _attach_session_and_user(request: Any) -> None:
    """Set ``request.session`` as SessionMiddleware does, and a lazy ``request.user``.

    The user is loaded on first use only, as with AuthenticationMiddleware.
    The lazy object is also kept as ``request._rawws_lazy_user``: while
    ``request.user`` is still it, the session decides who the user is and
    the connection is bound to the session (:mod:`django_rawws.auth`).
    """
    store = session_store()
    if store is not None:
        request.session = store(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
    if apps.is_installed("django.contrib.auth"):
        if store is not None:
            from django.contrib.auth import get_user

            request.user = request._rawws_lazy_user = SimpleLazyObject(lambda: get_user(request))
        else:
            from django.contrib.auth.models import AnonymousUser

            request.user = AnonymousUser()


def _hook_user(user: Any, hook: Any) -> Any:
    """Check what the ``AUTHENTICATE`` hook returned before it becomes ``request.user``.

    ``None`` keeps the session's user; a user object replaces it. An
    inactive user (``is_active`` False) is refused with 403, as Django's
    ModelBackend refuses to authenticate one: a token must not outlive the
    account being disabled. Anything that is not a user (a string, a
    dict, ``True``, an authenticated user without a primary key) is a bug
    in the hook: 500, logged, never a half-authenticated connection.

    Raises:
        Forbidden: an inactive user.
        TypeError: not a user.
    """
    if user is None:
        return None
    authenticated = getattr(user, "is_authenticated", None)
    if not isinstance(authenticated, bool) or (authenticated and getattr(user, "pk", None) is None):
        name = getattr(hook, "__qualname__", repr(hook))
        raise TypeError(
            f"RAWWS['AUTHENTICATE'] hook {name} returned {type(user).__name__!r}: it must return a user "
            "(with is_authenticated and a pk), AnonymousUser() or None"
        )
    if authenticated and getattr(user, "is_active", True) is False:
        raise Forbidden("Forbidden: inactive user")
    return user


# ----------------------------------------------------------------- watchdog


class SlowCallWatchdog:
    """Warns, with the stack, about a handler call running longer than a threshold.

    One thread watches every call: starting a call costs a dict store and an
    uncontended lock, not a timer thread. A server starts it with its workers
    (``worker_start``) and stops it when they exit (:meth:`stop`, from
    ``worker_exit``). Without a server (the in-process communicator) it
    starts with the first call and exits after ``idle_exit`` seconds
    without calls.
    """

    #: Seconds without calls after which the thread exits (a new call restarts it).
    idle_exit = 30.0
    #: Longest pause between two looks: a call is reported at most this late.
    max_interval = 0.25

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        #: Started by a server: no idle exit.
        self._for_server = False

    def start(self, *, for_server: bool = False) -> None:
        """Run the thread if it is not running (idempotent)."""
        with self._lock:
            if for_server:
                self._for_server = True
            self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None:
            stop_event = threading.Event()
            self._stop_event = stop_event
            self._thread = threading.Thread(
                target=self._watch, args=(stop_event,), name="rawws-slow-handler-watchdog", daemon=True
            )
            self._thread.start()

    def begin(self, describe: Callable[[], str], threshold: float | None) -> int | None:
        """A call starts on this thread; return the token for :meth:`end`."""
        if not threshold or threshold <= 0:
            return None
        ident = threading.get_ident()
        self._calls[ident] = [time.monotonic(), threshold, describe, False]
        # Under the lock, so the thread cannot decide to exit between the store and this check.
        with self._lock:
            self._start_locked()
        return ident

    def end(self, token: int | None) -> None:
        if token is not None:
            self._calls.pop(token, None)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop and join the thread unless calls are in flight (a worker exits)."""
        with self._lock:
            thread, stop_event = self._thread, self._stop_event
            if thread is None or stop_event is None or self._calls:
                return
            self._thread = self._stop_event = None
            self._for_server = False
            stop_event.set()
        if thread is not threading.current_thread():
            thread.join(timeout)

    def _watch(self, stop_event: threading.Event) -> None:
        idle_since = time.monotonic()
        while not stop_event.is_set():
            calls = self._calls.copy()
            now = time.monotonic()
            if calls:
                idle_since = now
            elif now - idle_since >= self.idle_exit and not self._for_server:
                with self._lock:
                    if not self._calls and self._stop_event is stop_event and not self._for_server:
                        self._thread = self._stop_event = None
                        return
            interval = self.max_interval
            for ident, call in calls.items():
                started, threshold, describe, warned = call
                if warned:
                    continue
                elapsed = now - started
                if elapsed >= threshold:
                    call[3] = True
                    self._warn(ident, describe, elapsed)
                else:
                    interval = min(interval, threshold - elapsed)
            stop_event.wait(max(interval, 0.01))

    @staticmethod
    def _warn(ident: int, describe: Callable[[], str], elapsed: float) -> None:
        frame = sys._current_frames().get(ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(stack unavailable)\n"
        try:
            what = describe()
        except Exception:  # noqa: BLE001 - a warning must not fail the watchdog
            what = "a handler"
        logger.warning(
            "%s has been running for %.2fs, holding a worker thread; move long work out of consumer "
            "methods.\n%s",
            what,
            elapsed,
            stack.rstrip(),
        )


#: Shared by every application of the process: at most one watchdog thread.
_watchdog = SlowCallWatchdog()
