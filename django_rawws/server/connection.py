"""One accepted socket on the server: its phases, buffers, timers and inbox.

Threads meet here. The I/O thread reads, parses and writes; workers run the
application's handlers and call :meth:`~ServerConnection.send`,
:meth:`~ServerConnection.close`, :meth:`~ServerConnection.accept`. Everything
mutable is guarded by ``self.lock``, held only for short non-blocking work
(never while application code runs). Only the I/O thread closes the socket,
so a file descriptor is never reused under another thread's feet.

Phases::

    HANDSHAKE ──request──▶ DECIDING ──accept()──▶ OPEN ──close()──▶ CLOSING
        │                     │                     │                  │
        └──────error──────────┴──reject()───────────┴──────────────────┴──▶ DRAINING ──▶ CLOSED

DRAINING flushes what is buffered, shuts the write side down and reads (and
discards) until the peer's FIN or the linger deadline: a lingering close, so
the peer reads our status or close code instead of a reset.
"""

from __future__ import annotations

import collections
import enum
import itertools
import secrets
import logging
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from ..exceptions import Forbidden, HandshakeError, InvalidState, ServiceUnavailable
from ..protocol.codes import CloseCode
from ..protocol.connection import Connection, Role
from ..protocol.deflate import DeflateOptions, PerMessageDeflate
from ..protocol.events import BinaryMessage, CloseReceived, ConnectionFailed, Pong, TextMessage
from ..protocol.handshake import (
    HandshakeRequest,
    build_accept,
    build_reject,
    is_websocket_upgrade,
    negotiate_extensions,
    validate_request,
)
from ..protocol.http import Request, RequestParser, build_response
from .limits import FRAGMENTS_PER_TOKEN, TokenBucket, address_key
from .poller import READ, WRITE

if TYPE_CHECKING:
    from .core import Server

__all__ = ["ServerConnection", "Phase", "SharedMessage", "open_protocol"]

logger = logging.getLogger("django_rawws.server")
access_logger = logging.getLogger("django_rawws.access")

# Connection ids are unique across processes (groups address a connection as
# ``conn:<id>`` across every process sharing a backend): a random per-process
# prefix, then a counter.
_ID_PREFIX = secrets.token_hex(4)
_ids = itertools.count(1)

# Inbox item kinds, processed by workers in order.
_HANDSHAKE = "handshake"
_MESSAGE = "message"
_EVENT = "event"
_CALL = "call"
_DISCONNECT = "disconnect"

# Items a worker handles before giving other connections a turn.
_BATCH = 32


class Phase(enum.IntEnum):
    HANDSHAKE = 1
    DECIDING = 2
    OPEN = 3
    CLOSING = 4
    DRAINING = 5
    CLOSED = 6


class _NotAnUpgrade(HandshakeError):
    status_code = 426
    default_reason = "Upgrade Required: this endpoint speaks WebSocket"

    def default_headers(self) -> list[tuple[str, str]]:
        return [("Upgrade", "websocket")]


def open_protocol(
    handshake: HandshakeRequest,
    config: Any,
    *,
    subprotocol: str | None,
    headers: Any,
    deflate: DeflateOptions | None,
    max_message_size: int | None,
) -> tuple[bytes, Connection]:
    """Accept ``handshake``: the 101 response and the protocol object for what was agreed.

    Negotiates permessage-deflate with ``deflate`` (or the server's options)
    and applies the message limit of the route (or the server's).
    """
    options = deflate if deflate is not None else config.deflate
    extension_header, params = negotiate_extensions(handshake, options if options.enabled else None)
    response = build_accept(handshake, subprotocol=subprotocol, extensions=extension_header, headers=headers)
    codec = None
    if params is not None:
        codec = PerMessageDeflate(params, is_server=True, mem_level=options.mem_level, compress_level=options.compress_level)
    limit = max_message_size if max_message_size is not None else config.max_message_size
    proto = Connection(
        Role.SERVER,
        max_message_size=limit,
        max_frame_size=config.max_frame_size if config.max_frame_size is not None else limit,
        deflate=codec,
        compression_threshold=config.compression_threshold,
    )
    return response, proto


class ServerConnection:
    """A client socket from accept() to close, and the handle the application gets.

    The application sees: ``id``, ``remote_address``, ``handshake`` (the
    validated :class:`HandshakeRequest`), ``subprotocol``, ``accept()``,
    ``reject()``, ``send()``, ``send_shared()``, ``close()``,
    ``deliver_event()``, ``call_soon()``, ``buffered_amount`` and the free
    slot ``app_state``.
    """

    __slots__ = (
        "server",
        "sock",
        "fd",
        "id",
        "remote_address",
        "lock",
        "phase",
        "created",
        "handshake",
        "request",
        "subprotocol",
        "status",
        "app_state",
        "close_code",
        "bytes_in",
        "bytes_out",
        "_parser",
        "_trailing",
        "_proto",
        "_out",
        "_registered",
        "_in_poller",
        "_inbox",
        "_scheduled",
        "_read_paused",
        "_last_received",
        "_ping_sent_at",
        "_closing_since",
        "_drain_since",
        "_by_us",
        "_app_called",
        "_disconnect_queued",
        "_timer_entry",
        "_refusal",
        "_quota_keys",
        "_bucket",
        "_frames_counted",
        "_controls_counted",
        "_deciding_since",
        "_tls",
        "_tls_handshaking",
        "_tls_want_write",
        "__weakref__",
    )

    def __init__(
        self,
        server: Server,
        sock: socket.socket,
        remote_address: Any,
        *,
        refusal: HandshakeError | None = None,
        quota_key: str | None = None,
    ) -> None:
        config = server.config
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.id = f"{_ID_PREFIX}.{next(_ids):x}"
        self.remote_address = remote_address
        self.lock = threading.Lock()
        self.phase = Phase.HANDSHAKE
        self.created = time.monotonic()
        self.handshake: HandshakeRequest | None = None
        self.request: Request | None = None
        self.subprotocol: str | None = None
        self.status: int | None = None
        self.app_state: Any = None
        self.close_code: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._parser: RequestParser | None = RequestParser(
            max_line=config.max_request_line, max_headers=config.max_headers, max_head=config.max_head
        )
        self._trailing = b""
        self._proto: Connection | None = None
        self._out = bytearray()
        self._registered = 0
        self._in_poller = False
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._scheduled = False
        self._read_paused = False
        self._last_received = self.created
        self._ping_sent_at: float | None = None
        self._closing_since = 0.0
        self._drain_since = 0.0
        self._by_us = False
        self._app_called = False
        self._disconnect_queued = False
        #: This connection's live entry in the server's timer heap (I/O thread only).
        self._timer_entry: list[Any] | None = None
        # A status decided at accept (503 past MAX_CONNECTIONS, 429 past the
        # per-address quota), sent as soon as the socket can take it, before
        # anything is read: such a client never reaches a worker.
        self._refusal = refusal
        # Quota slots this connection holds, given back when its socket closes.
        self._quota_keys: list[str] = [quota_key] if quota_key is not None else []
        self._bucket: TokenBucket | None = None
        self._frames_counted = 0
        self._controls_counted = 0
        self._deciding_since = 0.0
        # A TLS socket first completes its handshake, driven by readiness.
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._tls_handshaking = self._tls
        self._tls_want_write = False

    def __repr__(self) -> str:
        return f"<ServerConnection {self.id} {self.phase.name} {self.remote_address}>"

    # ------------------------------------------------------------ the app API

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else ""

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this client and not yet taken by the kernel."""
        return len(self._out)

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN

    def accept(
        self,
        *,
        subprotocol: str | None = None,
        headers: list[tuple[str, str]] | tuple[()] = (),
        deflate: DeflateOptions | None = None,
        max_message_size: int | None = None,
    ) -> None:
        """Answer 101 and open the connection; only during the handshake call.

        ``deflate`` overrides the server's compression options for this
        connection (``DeflateOptions(enabled=False)`` turns it off);
        ``max_message_size`` overrides the server's limit.

        Raises:
            InvalidState: not deciding a handshake, or ``subprotocol`` was
                not offered by the client.
        """
        config = self.server.config
        with self.lock:
            if self.phase is not Phase.DECIDING or self.handshake is None:
                raise InvalidState(f"accept() while the connection is {self.phase.name}")
            response, self._proto = open_protocol(
                self.handshake,
                config,
                subprotocol=subprotocol,
                headers=headers,
                deflate=deflate,
                max_message_size=max_message_size,
            )
            self.subprotocol = subprotocol
            self.status = 101
            self.phase = Phase.OPEN
            self._last_received = time.monotonic()
            if config.message_rate is not None:
                self._bucket = TokenBucket(config.message_rate, config.message_burst, self._last_received)
            self._write_locked(response)
            trailing, self._trailing = self._trailing, b""
            if trailing:
                self._receive_frames_locked(trailing)
        self.server.attend(self)

    def reject(self, error: HandshakeError) -> None:
        """Refuse the handshake with ``error``'s status; only during the handshake call."""
        with self.lock:
            if self.phase is not Phase.DECIDING:
                raise InvalidState(f"reject() while the connection is {self.phase.name}")
            self._reject_locked(error)
        self.server.attend(self)

    def send(self, message: str | bytes) -> bool:
        """Queue a message; never blocks. Return False if the connection is not open.

        Past ``max_outgoing_buffer`` bytes waiting for a slow reader, the
        connection is failed with 1008 (policy violation).
        """
        with self.lock:
            proto = self._proto
            if self.phase is not Phase.OPEN or proto is None:
                return False
            if isinstance(message, str):
                proto.send_text(message)
            else:
                proto.send_binary(message)
            self._write_locked(proto.data_to_send())
        return True

    def send_shared(self, shared: SharedMessage) -> bool:
        """Queue a message whose frames may be shared with other connections.

        ``shared`` caches the frames built for each encoding class
        (uncompressed; compressed without context takeover for given zlib
        parameters), so a broadcast frames a message once per class. A
        connection that kept context takeover compresses on its own.
        """
        with self.lock:
            proto = self._proto
            if self.phase is not Phase.OPEN or proto is None:
                return False
            key = shared.encoding_class(proto)
            if key is None:
                frames = proto.encode_message(shared.message)
            else:
                frames = shared.frames.get(key)
                if frames is None:
                    frames = shared.frames[key] = proto.encode_message(shared.message)
            proto.queue_encoded(frames)
            self._write_locked(proto.data_to_send())
        return True

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (or refuse the handshake with 403 while deciding)."""
        with self.lock:
            if self.phase is Phase.DECIDING:
                self._reject_locked(Forbidden())
            elif self.phase is Phase.OPEN and self._proto is not None:
                self._proto.send_close(code, reason)
                self._by_us = True
                self._closing_since = time.monotonic()
                self.phase = Phase.CLOSING
                self._write_locked(self._proto.data_to_send())
            else:
                return
        self.server.attend(self)

    def fail(self, code: int, reason: str = "") -> None:
        """Close at once with ``code`` (1011 after a handler error, say)."""
        with self.lock:
            if self.phase in (Phase.OPEN, Phase.CLOSING) and self._proto is not None:
                self._proto.fail(code, reason)
                self._write_locked(self._proto.data_to_send())
                self._by_us = True
                if self.close_code is None:
                    self.close_code = code
                self._start_draining_locked()
            else:
                return
        self.server.attend(self)

    def deliver_event(self, event: Any) -> bool:
        """Queue a group event for the application's ``websocket_event`` handler."""
        return self._enqueue(_EVENT, event)

    def call_soon(self, function: Any) -> bool:
        """Run ``function()`` on a worker in this connection's turn (after what is queued)."""
        return self._enqueue(_CALL, function)

    def claim_quota(self, key: str, limit: int) -> bool:
        """Hold one of ``limit`` slots of ``key`` until this connection closes; False when all are taken.

        For the application's own quotas, decided during the handshake call
        (the Django side counts ``user:<pk>`` this way and answers 429). Slots
        are per server, so per process. A refusal is logged once per key per
        minute. A connection already closed holds nothing and gets True.
        """
        with self.lock:
            if self.phase is Phase.CLOSED:
                return True
            if not self.server.quotas.claim(key, limit):
                refused = True
            else:
                refused = False
                self._quota_keys.append(key)
        if refused:
            self.server.violations.log(
                "quota",
                key,
                "refusing %s with 429: %s already holds %d connection(s), its quota",
                _format_address(self.remote_address),
                key,
                limit,
            )
        return not refused

    def claim_client_address(self, host: str) -> bool:
        """Count this connection under the per-address quota of ``host``, its real client.

        For a peer exempt from the quota at accept (a trusted proxy): the
        application names the client it found in ``X-Forwarded-For``. False
        when that client already holds ``max_connections_per_address``.
        """
        limit = self.server.config.max_connections_per_address
        if limit is None:
            return True
        return self.claim_quota(address_key(host), limit)

    def _release_quotas_locked(self) -> None:
        keys, self._quota_keys = self._quota_keys, []
        quotas = self.server.quotas
        for key in keys:
            quotas.release(key)

    def _enqueue(self, kind: str, value: Any) -> bool:
        with self.lock:
            if self.phase is not Phase.OPEN or self._disconnect_queued:
                return False
            if len(self._inbox) >= self.server.config.max_pending_events:
                # The consumer cannot keep up with what is pushed to it.
                overflow = True
            else:
                overflow = False
                self._inbox.append((kind, value))
                self._schedule_locked()
        if overflow:
            logger.warning(
                "closing %s: more than %d events waiting for its consumer",
                _format_address(self.remote_address),
                self.server.config.max_pending_events,
            )
            self.fail(CloseCode.POLICY_VIOLATION, "too many pending events")
            return False
        return True

    # ------------------------------------------------------- I/O thread only

    def register(self) -> None:
        with self.lock:
            if self._refusal is not None and not self._tls_handshaking:
                self._reject_locked(self._refusal)
            else:
                self._set_interest_locked(READ)

    def on_readable(self) -> None:
        now = time.monotonic()
        if self._tls:
            # Under the lock: a TLS object must not read and write in two threads at once.
            with self.lock:
                if self._tls_handshaking and not self._tls_step_locked():
                    return
                data = self._recv_locked()
                if data is not None:
                    self._on_data_locked(data, now)
            return
        # A plain socket reads without the lock, so a worker inside send() never
        # holds up the I/O thread; only the I/O thread reads or closes it.
        data = self._recv_locked()
        if data is not None:
            with self.lock:
                self._on_data_locked(data, now)

    def _on_data_locked(self, data: bytes, now: float) -> None:
        if not data:
            self._on_eof_locked()
            return
        self.bytes_in += len(data)
        phase = self.phase
        if phase is Phase.HANDSHAKE:
            self._receive_head_locked(data)
        elif phase is Phase.OPEN or phase is Phase.CLOSING:
            self._last_received = now
            self._receive_frames_locked(data)
        elif phase is Phase.DECIDING:
            # Reading is off while the application decides; a stray wake-up keeps the bytes.
            self._trailing += data
        # DRAINING: discard.

    def on_writable(self) -> None:
        with self.lock:
            if self._tls_handshaking:
                if self._tls_step_locked():
                    self._update_interest_locked()
                return
            self._flush_locked()

    def _recv_locked(self) -> bytes | None:
        """Read what is there: bytes, ``b""`` at EOF or error, None when nothing yet.

        Called under the lock for TLS; without it for a plain socket.
        """
        sock = self.sock
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except OSError:
            return b""
        if data and isinstance(sock, ssl.SSLSocket):
            # TLS may hold decrypted bytes the descriptor no longer signals.
            pending = sock.pending()
            while pending:
                try:
                    more = sock.recv(pending)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except OSError:
                    break
                if not more:
                    break
                data += more
                pending = sock.pending()
        return data

    def _tls_step_locked(self) -> bool:
        """Advance the TLS handshake; return True once it is complete."""
        try:
            self.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self._tls_want_write = False
            self._set_interest_locked(READ)
            return False
        except ssl.SSLWantWriteError:
            self._tls_want_write = True
            self._set_interest_locked(READ | WRITE)
            return False
        except (ssl.SSLError, OSError) as exc:
            logger.info("TLS handshake with %s failed: %s", _format_address(self.remote_address), exc)
            self._close_socket_locked()
            return False
        self._tls_handshaking = False
        self._tls_want_write = False
        if self._refusal is not None:
            self._reject_locked(self._refusal)
            return False
        self._set_interest_locked(READ)
        return True

    def on_timer(self, now: float) -> float | None:
        """Act on the deadline of the current phase; return the next one."""
        config = self.server.config
        with self.lock:
            phase = self.phase
            if phase is Phase.HANDSHAKE:
                deadline = self.created + config.handshake_timeout
                if now >= deadline:
                    logger.info("handshake timeout from %s", _format_address(self.remote_address))
                    self.status = 408
                    self._close_socket_locked()
                    return None
                return deadline
            if phase is Phase.OPEN:
                if config.ping_interval is None or self._read_paused:
                    return None
                if self._ping_sent_at is not None:
                    deadline = self._ping_sent_at + config.ping_timeout
                    if now >= deadline:
                        logger.info("keepalive timeout for %s", _format_address(self.remote_address))
                        self._proto.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")  # type: ignore[union-attr]
                        self._write_locked(self._proto.data_to_send())  # type: ignore[union-attr]
                        self.close_code = CloseCode.ABNORMAL_CLOSURE
                        self._start_draining_locked()
                        return self._drain_since + config.linger_timeout
                    return deadline
                deadline = self._last_received + config.ping_interval
                if now >= deadline:
                    self._proto.send_ping(b"")  # type: ignore[union-attr]
                    self._write_locked(self._proto.data_to_send())  # type: ignore[union-attr]
                    self._ping_sent_at = now
                    return now + config.ping_timeout
                return deadline
            if phase is Phase.CLOSING:
                deadline = self._closing_since + config.close_timeout
                if now >= deadline:
                    if self.close_code is None:
                        self.close_code = CloseCode.ABNORMAL_CLOSURE
                    self._start_draining_locked()
                    return self._drain_since + config.linger_timeout
                return deadline
            if phase is Phase.DRAINING:
                deadline = self._drain_since + config.linger_timeout
                if now >= deadline:
                    self._close_socket_locked()
                    return None
                return deadline
            return None

    def reconcile(self) -> float | None:
        """Bring socket interest in line with the phase; return the next deadline."""
        with self.lock:
            if self.phase is Phase.CLOSED:
                return None
            if self.phase is Phase.DRAINING and not self._out:
                self._shutdown_write_locked()
            self._update_interest_locked()
        return self.on_timer(time.monotonic())

    def begin_shutdown(self, code: int) -> None:
        """Shutdown step for this connection: 503 while handshaking, ``code`` when open."""
        with self.lock:
            if self.phase is Phase.HANDSHAKE:
                self._reject_locked(ServiceUnavailable("Service Unavailable: the server is shutting down"))
            elif self.phase is Phase.OPEN and self._proto is not None:
                self._proto.send_close(code)
                self._by_us = True
                self.close_code = code
                self._closing_since = time.monotonic()
                self.phase = Phase.CLOSING
                self._write_locked(self._proto.data_to_send())
                if self._read_paused:
                    self._read_paused = False

    def pause_reading_for_shutdown(self) -> None:
        with self.lock:
            if self.phase is Phase.OPEN:
                self._read_paused = True
                self._update_interest_locked()

    def abort(self, code: int) -> None:
        """Close the socket now (end of shutdown); queue disconnect if due."""
        with self.lock:
            if self.phase is not Phase.CLOSED:
                if self.close_code is None or self.phase in (Phase.OPEN, Phase.CLOSING):
                    self.close_code = code
                self._close_socket_locked()

    # --------------------------------------------------------------- internals

    def _receive_head_locked(self, data: bytes) -> None:
        assert self._parser is not None
        try:
            request = self._parser.feed(data)
            if request is None:
                return
            self.request = request
            self._trailing = self._parser.trailing
            self._parser = None
            if not is_websocket_upgrade(request):
                self._answer_plain_http_locked(request)
                return
            handshake = validate_request(request)
        except HandshakeError as error:
            self._reject_locked(error)
            return
        if self.server.shutting_down:
            self._reject_locked(ServiceUnavailable("Service Unavailable: the server is shutting down"))
            return
        if self.server.overloaded:
            self._reject_locked(ServiceUnavailable("Service Unavailable: the server is overloaded"))
            return
        self.handshake = handshake
        self.phase = Phase.DECIDING
        self._deciding_since = time.monotonic()
        self._app_called = True
        self.server.handshake_started()
        self._update_interest_locked()
        self._inbox.append((_HANDSHAKE, None))
        self._schedule_locked()

    def _answer_plain_http_locked(self, request: Request) -> None:
        health = self.server.config.health_path
        if health is not None and request.path == health and request.method in ("GET", "HEAD"):
            body = b"" if request.method == "HEAD" else b"ok\n"
            response = build_response(
                200,
                [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "3"), ("Connection", "close")],
                body,
            )
            self.status = 200
            self._write_locked(response)
            self._start_draining_locked()
            return
        if self.server.shutting_down:
            self._reject_locked(ServiceUnavailable("Service Unavailable: the server is shutting down"))
            return
        if self.server.serves_http:
            if self.server.http_backlog_full():
                self._reject_locked(ServiceUnavailable("Service Unavailable: too many HTTP requests waiting"))
                return
            self._hand_off_http_locked(request)
            return
        self._reject_locked(_NotAnUpgrade())

    def _hand_off_http_locked(self, request: Request) -> None:
        """Give the socket, and the bytes read so far, to the HTTP pool.

        From here the socket belongs to the application's ``http_request``,
        which closes it; the I/O thread forgets it first, so its descriptor
        can't be reused under the I/O thread's feet.
        """
        if self._in_poller:
            self.server.poller.unregister(self.fd)
            self._in_poller = False
            self._registered = 0
        self.phase = Phase.CLOSED
        self._release_quotas_locked()
        prefix = request.head + self._trailing
        self._trailing = b""
        self.server.forget(self, log=False)  # the HTTP handler logs its own requests
        self.server.hand_off_http(self.sock, self.remote_address, request, prefix)

    def _reject_locked(self, error: HandshakeError) -> None:
        self.status = error.status_code
        self._write_locked(build_reject(error))
        self._start_draining_locked()

    def _receive_frames_locked(self, data: bytes) -> None:
        proto = self._proto
        assert proto is not None
        events = proto.receive_data(data)
        # The rate limit: a message costs a token, so does a control frame,
        # and each fragment that does not end a message a fraction of one.
        # Messages of this read beyond the tokens there were are dropped.
        within: int | None = None
        bucket = self._bucket
        if bucket is not None:
            frames = proto.frames_received - self._frames_counted
            if frames:
                controls = proto.control_frames_received - self._controls_counted
                self._frames_counted = proto.frames_received
                self._controls_counted = proto.control_frames_received
                messages = 0
                for event in events:
                    if type(event) is TextMessage or type(event) is BinaryMessage:
                        messages += 1
                cost = messages + controls + (frames - controls - messages) / FRAGMENTS_PER_TOKEN
                before = bucket.charge(cost, time.monotonic())
                if before < cost:
                    within = max(0, int(before))
        out = proto.data_to_send()
        if out:
            self._write_locked(out)
        if not events:
            if within is not None:
                self._rate_exceeded_locked()
            return
        inbox = self._inbox
        by_us = self._by_us
        for event in events:
            kind = type(event)
            if kind is TextMessage or kind is BinaryMessage:
                if by_us:
                    continue
                if within is not None:
                    if within <= 0:
                        continue
                    within -= 1
                inbox.append((_MESSAGE, event.text if kind is TextMessage else event.data))  # type: ignore[attr-defined]
            elif kind is Pong:
                self._ping_sent_at = None
            elif kind is CloseReceived:
                if self.close_code is None:
                    self.close_code = event.code  # type: ignore[attr-defined]
                self._start_draining_locked()
            elif kind is ConnectionFailed:
                if self.close_code is None:
                    self.close_code = event.code  # type: ignore[attr-defined]
                logger.info(
                    "closing %s with %d: %s", _format_address(self.remote_address), event.code, event.reason  # type: ignore[attr-defined]
                )
                self._start_draining_locked()
        if within is not None:
            # After the messages within the limit, so disconnect() follows them.
            self._rate_exceeded_locked()
        if inbox:
            self._schedule_locked()
            if len(inbox) >= self.server.config.max_pending_messages and self.phase is Phase.OPEN:
                self._read_paused = True
                if self._bucket is not None:
                    self._bucket.pause(time.monotonic())
                self._update_interest_locked()

    def _rate_exceeded_locked(self) -> None:
        """Fail with 1008: the client sent faster than ``message_rate`` / ``message_burst`` allow."""
        proto = self._proto
        if proto is None or self.phase not in (Phase.OPEN, Phase.CLOSING):
            return
        config = self.server.config
        self.server.violations.log(
            "rate",
            address_key(_host(self.remote_address)),
            "closing %s with 1008: more than %d messages at once or %g a second on average (MESSAGE_RATE)",
            _format_address(self.remote_address),
            config.message_burst,
            config.message_rate,
        )
        proto.fail(CloseCode.POLICY_VIOLATION, "message rate exceeded")
        self._write_locked(proto.data_to_send())
        if self.close_code is None:
            self.close_code = CloseCode.POLICY_VIOLATION
        self._by_us = True
        self._start_draining_locked()

    def shed_for_overload(self, now: float) -> str | None:
        """The server is overloaded (I/O thread): refuse or close this connection if it adds to it.

        A handshake whose call has waited ``overload_delay`` for a worker, and
        has not started, is answered 503 (the application never sees it, so
        no ``disconnect()`` is due). An open connection whose inbox is full
        (reading paused by backpressure) is closed with 1013 (Try Again
        Later); the messages and events it had waiting are dropped and its
        ``disconnect(1013)`` comes next. Return what was done, or None.
        """
        config = self.server.config
        delay = config.overload_delay
        if delay is None:
            return None
        with self.lock:
            inbox = self._inbox
            if self.phase is Phase.DECIDING:
                if not inbox or inbox[0][0] != _HANDSHAKE or now - self._deciding_since < delay:
                    return None
                inbox.popleft()
                self._app_called = False
                self.server.handshake_cancelled()
                self._reject_locked(ServiceUnavailable("Service Unavailable: the server is overloaded"))
                return "refused"
            if (
                self.phase is Phase.OPEN
                and self._read_paused
                and len(inbox) >= config.max_pending_messages
                and self._proto is not None
            ):
                kept = [item for item in inbox if item[0] in (_CALL, _DISCONNECT)]
                inbox.clear()
                inbox.extend(kept)
                self._proto.fail(CloseCode.TRY_AGAIN_LATER, "server overloaded")
                self._write_locked(self._proto.data_to_send())
                self.close_code = CloseCode.TRY_AGAIN_LATER
                self._by_us = True
                self._start_draining_locked()
                return "closed"
        return None

    def _on_eof_locked(self) -> None:
        if self.phase in (Phase.OPEN, Phase.CLOSING):
            if self._proto is not None:
                self._proto.receive_eof()
            if self.close_code is None:
                self.close_code = CloseCode.ABNORMAL_CLOSURE
        self._close_socket_locked()

    def _start_draining_locked(self) -> None:
        """Enter the lingering close: flush, shut the write side, read until FIN or deadline."""
        if self.phase is Phase.DRAINING or self.phase is Phase.CLOSED:
            return
        self.phase = Phase.DRAINING
        self._drain_since = time.monotonic()
        self._read_paused = False
        self._queue_disconnect_locked()
        if not self._out:
            self._shutdown_write_locked()
        self._update_interest_locked()
        self.server.attend_locked(self)

    def _shutdown_write_locked(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _close_socket_locked(self) -> None:
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._queue_disconnect_locked()
        if self._in_poller:
            self.server.poller.unregister(self.fd)
            self._in_poller = False
            self._registered = 0
        try:
            self.sock.close()
        except OSError:
            pass
        self._out = bytearray()
        self._proto = None
        self._release_quotas_locked()
        self.server.forget(self)

    def _queue_disconnect_locked(self) -> None:
        if self._app_called and not self._disconnect_queued:
            self._disconnect_queued = True
            code = self.close_code if self.close_code is not None else CloseCode.ABNORMAL_CLOSURE
            self._inbox.append((_DISCONNECT, code))
            self._schedule_locked()

    def _write_locked(self, data: bytes) -> None:
        """Write now what the kernel takes, buffer the rest; fail a reader that fell behind.

        The bound applies to the backlog a message joins, not to the message:
        one message larger than ``max_outgoing_buffer`` still goes to a client
        that reads, while a client that stopped reading is closed with 1008 as
        soon as its backlog passes the bound.
        """
        if not data or self.phase is Phase.CLOSED:
            return
        if self._out:
            if len(self._out) > self.server.config.max_outgoing_buffer and self.phase is Phase.OPEN:
                self._overflow_locked()
                return
            self._out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError:
            # The peer is gone; the read side will see EOF or an error.
            self._out = bytearray()
            return
        self.bytes_out += sent
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._update_interest_locked()

    def _overflow_locked(self) -> None:
        logger.warning(
            "closing %s: %d bytes waiting for a client that does not read",
            _format_address(self.remote_address),
            len(self._out),
        )
        assert self._proto is not None
        self._proto.fail(CloseCode.POLICY_VIOLATION, "outgoing buffer full")
        # Queued after the backlog: the frame in progress must complete first.
        self._out += self._proto.data_to_send()
        self.close_code = CloseCode.POLICY_VIOLATION
        self._by_us = True
        self._start_draining_locked()

    def _flush_locked(self) -> None:
        if self._out and self.phase is not Phase.CLOSED:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError:
                self._out = bytearray()
                sent = 0
            self.bytes_out += sent
            del self._out[:sent]
        if not self._out:
            if self.phase is Phase.DRAINING:
                self._shutdown_write_locked()
            self._update_interest_locked()

    def _update_interest_locked(self) -> None:
        if self.phase is Phase.CLOSED:
            return
        interest = 0
        if self._out or self._tls_want_write:
            interest |= WRITE
        if self.phase is Phase.DRAINING or not (self.phase is Phase.DECIDING or self._read_paused):
            interest |= READ
        self._set_interest_locked(interest)

    def _set_interest_locked(self, interest: int) -> None:
        if interest == self._registered:
            return
        poller = self.server.poller
        try:
            if self._in_poller:
                poller.modify(self.fd, interest)
            else:
                poller.register(self.fd, interest)
                self._in_poller = True
        except (OSError, ValueError):
            logger.debug("could not watch %s for %d", self, interest, exc_info=True)
            return
        self._registered = interest

    def _schedule_locked(self) -> None:
        if not self._scheduled and self._inbox:
            self._scheduled = True
            self.server.pool.submit(self._process)

    # ---------------------------------------------------------- worker side

    def _process(self) -> None:
        """Handle this connection's queued items in order, a batch at a time."""
        app = self.server.app
        low_water = self.server.config.max_pending_messages // 2
        for _ in range(_BATCH):
            resumed = False
            with self.lock:
                if not self._inbox:
                    self._scheduled = False
                    return
                kind, value = self._inbox.popleft()
                if (
                    self._read_paused
                    and len(self._inbox) <= low_water
                    and self.phase is Phase.OPEN
                    and not self.server.shutting_down  # stop() paused it for good
                ):
                    # Time paused by our own backpressure never counts against
                    # keepalive, nor against the rate limit.
                    self._read_paused = False
                    self._last_received = time.monotonic()
                    if self._bucket is not None:
                        self._bucket.resume(self._last_received)
                    self._ping_sent_at = None
                    self._update_interest_locked()
                    resumed = True
            if resumed:
                self.server.attend(self)
            # An exception escaping a handler must not end this loop: the
            # connection would never be scheduled again, and its disconnect()
            # (which shutdown waits for) would never run.
            try:
                if kind == _MESSAGE:
                    app.websocket_message(self, value)
                elif kind == _EVENT:
                    app.websocket_event(self, value)
                elif kind == _CALL:
                    value()
                elif kind == _HANDSHAKE:
                    self._run_handshake(app)
                else:
                    try:
                        app.websocket_disconnect(self, value)
                    finally:
                        self.server.disconnected(self)
            except Exception:
                logger.exception("unhandled error in the %s handler of %s", kind, self.path)
                self.fail(CloseCode.INTERNAL_ERROR)
        with self.lock:
            self._scheduled = False
            self._schedule_locked()

    def _run_handshake(self, app: Any) -> None:
        try:
            app.websocket_handshake(self, self.handshake)
        except HandshakeError as error:
            with self.lock:
                if self.phase is Phase.DECIDING:
                    self._reject_locked(error)
        except Exception:
            logger.exception("error while deciding the handshake of %s", self.path)
            with self.lock:
                if self.phase is Phase.DECIDING:
                    error = HandshakeError("Internal Server Error")
                    error.status_code = 500
                    self._reject_locked(error)
        with self.lock:
            if self.phase is Phase.DECIDING:
                self._reject_locked(Forbidden())
        self.server.attend(self)


class SharedMessage:
    """One message on its way to many connections, with its frames per encoding class."""

    __slots__ = ("message", "size", "frames")

    def __init__(self, message: str | bytes) -> None:
        self.message = message
        self.size = len(message.encode("utf-8")) if isinstance(message, str) else len(message)
        self.frames: dict[Any, bytes] = {}

    def encoding_class(self, proto: Connection) -> Any:
        """The key under which ``proto``'s frames for this message can be shared, or None."""
        codec = proto._deflate
        if codec is None or self.size < proto.compression_threshold:
            return "plain"
        if codec.shareable:  # type: ignore[attr-defined]
            return codec.encoding_key  # type: ignore[attr-defined]
        return None


def _host(address: Any) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


def _format_address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
