"""Test your consumers: in the test's own thread, or end to end over sockets.

:class:`WebSocketCommunicator` drives a consumer without sockets, running its
handlers in the calling thread, so a plain ``TestCase`` or a pytest-django
``db`` test works and the consumer sees the test's transaction::

    from django.test import TestCase
    from django_rawws.testing import WebSocketCommunicator

    class EchoTests(TestCase):
        def test_echo(self):
            with WebSocketCommunicator("/ws/echo/") as ws:
                self.assertEqual(ws.connect(), (True, None))
                ws.send_text("hello")
                self.assertEqual(ws.receive(), "hello")

End to end, a live server runs in the test process and a client talks to it::

    from django.test import TransactionTestCase
    from django_rawws.testing import WebSocketLiveServerMixin

    class EchoTests(WebSocketLiveServerMixin, TransactionTestCase):
        def test_echo(self):
            with self.ws_connect("/ws/echo/") as ws:
                ws.send("hello")
                self.assertEqual(ws.receive(), "hello")

With pytest-django, the ``rawws_live_server`` fixture does the same (import it
in ``conftest.py``, or list this module in ``pytest_plugins``)::

    def test_echo(rawws_live_server):
        with rawws_live_server.connect("/ws/echo/") as ws:
            ...

The server is the real one (:class:`~django_rawws.server.Server` with
:class:`~django_rawws.handler.DjangoApplication`), bound to a free port of
127.0.0.1; its worker threads see the test database. Because handlers run on
other threads, use a transactional test (``TransactionTestCase``,
``@pytest.mark.django_db(transaction=True)``): data a plain ``TestCase``
creates sits in a transaction those threads can't see, except with an
in-memory SQLite database, whose one connection is shared with them as
Django's ``LiveServerTestCase`` does.

:class:`WebSocketTestClient` is a small blocking client over this package's
own protocol core, so tests need no client library.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.test.utils import modify_settings

from .exceptions import ConnectionClosed, Forbidden, HandshakeError, InvalidResponse, InvalidState
from .protocol.codes import CloseCode
from .protocol.connection import Connection, Role
from .protocol.deflate import DeflateOptions, PerMessageDeflate
from .protocol.events import BinaryMessage, CloseReceived, ConnectionFailed, TextMessage
from .protocol.handshake import (
    ClientHandshake,
    HandshakeRequest,
    build_reject,
    validate_request,
)
from .protocol.http import Headers, Request, RequestParser, Response
from .server import Phase, Server, ServerConfig, SharedMessage
from .server.connection import open_protocol

__all__ = [
    "InProcessConnection",
    "InProcessServer",
    "LiveWebSocketServer",
    "NothingReceived",
    "RefusedHandshake",
    "WebSocketCommunicator",
    "WebSocketLiveServerMixin",
    "WebSocketTestClient",
    "rawws_live_server",
]

logger = logging.getLogger("django_rawws.server")
# Where Django logs the errors of robust on_commit callbacks.
on_commit_logger = logging.getLogger("django.db.backends.base")

#: Seconds a client waits for the server unless told otherwise.
DEFAULT_TIMEOUT = 5.0


# --------------------------------------------------------------------------- the server


class LiveWebSocketServer:
    """The WebSocket server running in this process for the duration of a test.

    ``start()`` binds ``host:port`` (port 0: a free one), starts the server
    with the project's ``RAWWS`` options (``config`` overrides them) and
    attaches it to the group backend, so ``push()`` from the test reaches its
    connections. ``stop()`` shuts it down as ``runws`` does on SIGTERM.
    Usable as a context manager.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        application: Any = None,
        config: ServerConfig | None = None,
        grace: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.application = application
        self.config = config
        self.grace = grace
        self.server: Server | None = None
        self._backend: Any = None
        self._shared: dict[str, Any] = {}
        self._allowed_hosts: modify_settings | None = None
        self._clients: weakref.WeakSet[WebSocketTestClient] = weakref.WeakSet()

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>``, without a trailing slash."""
        if self.server is None:
            raise RuntimeError("start() the live server first")
        host, port = self.server.address[:2]
        return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"

    def ws_url(self, path: str = "/") -> str:
        """The URL of ``path`` on this server (``/ws/echo/`` → ``ws://127.0.0.1:<port>/ws/echo/``)."""
        return self.url + (path if path.startswith("/") else "/" + path)

    def connect(self, path: str = "/", **kwargs: Any) -> WebSocketTestClient:
        """Open a :class:`WebSocketTestClient` on ``path``; ``kwargs`` go to its constructor.

        A client still open when the server stops is dropped first, so that
        the shutdown doesn't wait for a close reply it would never read.
        """
        client = WebSocketTestClient(self.ws_url(path), **kwargs)
        self._clients.add(client)
        return client

    def start(self) -> LiveWebSocketServer:
        from .conf import server_config
        from .groups import get_backend
        from .handler import DjangoApplication

        if self.server is not None:
            raise RuntimeError("this live server is already running")
        self._allowed_hosts = modify_settings(ALLOWED_HOSTS={"append": self.host})
        self._allowed_hosts.enable()
        try:
            # An in-memory SQLite database exists once per connection: share
            # the test's connection with the workers, as LiveServerThread does.
            for conn in connections.all():
                if conn.vendor == "sqlite" and conn.is_in_memory_db():
                    conn.inc_thread_sharing()
                    self._shared[conn.alias] = conn
            application = self.application if self.application is not None else DjangoApplication()
            if self._shared:
                application = _SharedConnections(application, self._shared)
            server = Server(application, self.host, self.port, self.config or server_config())
            server.start()
            self.server = server
            self._backend = get_backend()
            self._backend.attach(server)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> bool:
        """Shut down as ``runws`` does; return whether handlers finished within the grace.

        Open connections get 1001, and the server waits for each close reply
        (``CLOSE_TIMEOUT``): a client of another thread or process answers it;
        clients opened with :meth:`connect` are dropped first.
        """
        server, self.server = self.server, None
        for client in list(self._clients):
            client.abort()
        self._clients.clear()
        clean = True
        try:
            if server is not None:
                clean = server.stop(self.grace)
        finally:
            if self._backend is not None and server is not None:
                self._backend.detach(server)
            self._backend = None
            for conn in self._shared.values():
                conn.dec_thread_sharing()
            self._shared.clear()
            if self._allowed_hosts is not None:
                self._allowed_hosts.disable()
                self._allowed_hosts = None
        return clean

    def __enter__(self) -> LiveWebSocketServer:
        return self.start() if self.server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _SharedConnections:
    """Wrap an application so that each worker uses the test's shared database connections.

    Django's connections are per thread; setting them is cheap, so it is done
    before every call rather than at a worker start the server doesn't announce.
    """

    def __init__(self, application: Any, shared: Mapping[str, Any]) -> None:
        self.application = application
        self.shared = dict(shared)

    def _share(self) -> None:
        for alias, conn in self.shared.items():
            connections[alias] = conn

    def websocket_handshake(self, conn: Any, handshake: Any) -> None:
        self._share()
        self.application.websocket_handshake(conn, handshake)

    def websocket_message(self, conn: Any, message: str | bytes) -> None:
        self._share()
        self.application.websocket_message(conn, message)

    def websocket_event(self, conn: Any, event: Any) -> None:
        self._share()
        self.application.websocket_event(conn, event)

    def websocket_disconnect(self, conn: Any, code: int) -> None:
        self._share()
        self.application.websocket_disconnect(conn, code)

    def worker_exit(self) -> None:
        worker_exit = getattr(self.application, "worker_exit", None)
        if worker_exit is not None:
            worker_exit()


class WebSocketLiveServerMixin:
    """A live WebSocket server for the test class; mix into ``TransactionTestCase``.

    Started once per class in ``setUpClass`` and stopped by a class cleanup.
    ``ws_live_server_url`` is ``ws://127.0.0.1:<port>``; ``ws_url(path)``
    adds a path; ``ws_connect(path, ...)`` opens a client that is closed when
    the test ends.
    """

    ws_host = "127.0.0.1"
    ws_port = 0
    ws_live_server: LiveWebSocketServer
    ws_live_server_url: str

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        cls.ws_live_server = LiveWebSocketServer(cls.ws_host, cls.ws_port).start()
        cls.addClassCleanup(cls.ws_live_server.stop)  # type: ignore[attr-defined]
        cls.ws_live_server_url = cls.ws_live_server.url

    def ws_url(self, path: str = "/") -> str:
        return self.ws_live_server.ws_url(path)

    def ws_connect(self, path: str = "/", **kwargs: Any) -> WebSocketTestClient:
        client = self.ws_live_server.connect(path, **kwargs)
        self.addCleanup(client.abort)  # type: ignore[attr-defined]
        return client


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pass
else:

    @pytest.fixture
    def rawws_live_server(transactional_db: None) -> Iterator[LiveWebSocketServer]:
        """A :class:`LiveWebSocketServer` for one test, on a transactional database (pytest-django)."""
        server = LiveWebSocketServer().start()
        try:
            yield server
        finally:
            server.stop()


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class RefusedHandshake:
    """What the server answered instead of 101."""

    status: int
    headers: Headers
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class WebSocketTestClient:
    """A blocking WebSocket client for tests, on this package's protocol core.

    Connects in the constructor (``ws://`` or ``wss://``) and raises
    :class:`~django_rawws.exceptions.InvalidResponse` if the server refuses;
    :meth:`refused` is the way to assert a refusal. ``cookies`` (a dict or
    Django test client's ``client.cookies``) become a ``Cookie`` header,
    ``origin`` an ``Origin`` header. Pings are answered while receiving.
    One thread at a time.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        cookies: Mapping[str, Any] | None = None,
        origin: str | None = None,
        compression: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        max_message_size: int = 64 << 20,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        #: The close code the server sent (or 1006 if TCP closed without one); None while open.
        self.close_code: int | None = None
        self.close_reason = ""
        self._messages: deque[str | bytes] = deque()
        self._closed = False
        self._sock: socket.socket | None = None
        handshake, address, secure = _prepare(url, headers, subprotocols, cookies, origin, compression)
        self._sock = _open_socket(address, secure, ssl_context, timeout)
        try:
            result, trailing = self._handshake(handshake)
        except BaseException:
            self.abort()
            raise
        #: The 101 response.
        self.response = result.response
        self.subprotocol = result.subprotocol
        codec = None
        if result.deflate_params is not None:
            codec = PerMessageDeflate(result.deflate_params, is_server=False)
        self._proto = Connection(Role.CLIENT, max_message_size=max_message_size, deflate=codec)
        if trailing:
            self._handle(self._proto.receive_data(trailing))

    @classmethod
    def refused(cls, url: str, **kwargs: Any) -> RefusedHandshake:
        """Attempt a handshake that the server must refuse; return its status, headers and body.

        Raises:
            AssertionError: the server accepted the handshake.
        """
        try:
            client = cls(url, **kwargs)
        except InvalidResponse as exc:
            response = getattr(exc, "response", None)
            if response is None:
                raise
            return RefusedHandshake(response.status, response.headers, getattr(exc, "body", b""))
        client.abort()
        raise AssertionError(f"the server accepted the handshake to {url}")

    # ------------------------------------------------------------------ sending

    def send(self, message: str | bytes) -> None:
        """Send a text (``str``) or binary (``bytes``) message.

        Raises:
            ConnectionClosed: the connection is closing or closed.
        """
        if isinstance(message, str):
            self._proto.send_text(message)
        else:
            self._proto.send_binary(message)
        self._flush()

    def send_json(self, content: Any) -> None:
        self.send(json.dumps(content))

    # ---------------------------------------------------------------- receiving

    def receive(self, timeout: float | None = None) -> str | bytes:
        """Return the next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` (default: the client's).
            ConnectionClosed: the connection closed; ``.code`` is the close code.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._messages:
            if self._closed:
                raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
            self._read(deadline)
        return self._messages.popleft()

    def receive_text(self, timeout: float | None = None) -> str:
        message = self.receive(timeout)
        if not isinstance(message, str):
            raise AssertionError(f"expected a text message, got {len(message)} bytes of binary")
        return message

    def receive_bytes(self, timeout: float | None = None) -> bytes:
        message = self.receive(timeout)
        if not isinstance(message, bytes):
            raise AssertionError(f"expected a binary message, got text {message[:80]!r}")
        return message

    def receive_json(self, timeout: float | None = None) -> Any:
        return json.loads(self.receive_text(timeout))

    def receive_nothing(self, timeout: float = 0.1) -> bool:
        """Return True if no message arrives within ``timeout`` (the connection may close meanwhile)."""
        if self._messages:
            return False
        deadline = time.monotonic() + timeout
        try:
            while not self._messages and not self._closed:
                self._read(deadline)
        except TimeoutError:
            pass
        return not self._messages

    # ------------------------------------------------------------------ closing

    def close(
        self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "", timeout: float | None = None
    ) -> int:
        """Start the closing handshake and wait for the server's answer; return its close code.

        Messages that arrive meanwhile stay readable with :meth:`receive`.
        """
        if not self._closed and self._proto.close_code_sent is None:
            self._proto.send_close(code, reason)
            self._flush()
        return self.wait_closed(timeout)

    def wait_closed(self, timeout: float | None = None) -> int:
        """Wait until the server closes; return its close code (1006 without a close frame)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._closed:
            self._read(deadline)
        assert self.close_code is not None
        return self.close_code

    def assert_closed(self, code: int | None = None, timeout: float | None = None) -> int:
        """Wait for the close and check its code; messages still unread make it fail too.

        Raises:
            AssertionError: another code, or messages arrived that the test did not read.
        """
        received = self.wait_closed(timeout)
        if code is not None and received != code:
            raise AssertionError(f"closed with {received} {self.close_reason!r}, expected {code}")
        if self._messages:
            raise AssertionError(f"closed with unread messages: {list(self._messages)[:5]!r}")
        return received

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (cleanup)."""
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL_CLOSURE
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> WebSocketTestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if not self._closed:
                self.close()
        except (OSError, ConnectionClosed):
            pass
        finally:
            self.abort()

    # ---------------------------------------------------------------- internals

    def _handshake(self, handshake: ClientHandshake) -> tuple[Any, bytes]:
        sock = self._sock
        assert sock is not None
        sock.sendall(handshake.request_bytes())
        deadline = time.monotonic() + self.timeout
        while True:
            data = self._recv(deadline)
            if not data:
                raise InvalidResponse("the server closed the connection during the handshake")
            try:
                result = handshake.receive_data(data)
            except InvalidResponse as exc:
                response = getattr(exc, "response", None)
                if response is None or response.status == 101:
                    raise  # a malformed answer, not a refusal
                body = self._read_body(response, handshake.trailing, deadline)
                detail = body.decode("utf-8", "replace").strip()[:200]
                refusal = InvalidResponse(f"{exc}: {detail}" if detail else str(exc))
                refusal.response = response
                refusal.body = body  # type: ignore[attr-defined]
                raise refusal from None
            if result is not None:
                return result, handshake.trailing

    def _read_body(self, response: Any, body: bytes, deadline: float) -> bytes:
        """The body of a refusal: up to its Content-Length, or until the server closes."""
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        try:
            while expected is None or len(body) < expected:
                data = self._recv(deadline)
                if not data:
                    break
                body += data
        except (TimeoutError, OSError):
            pass
        return body if expected is None else body[:expected]

    def _recv(self, deadline: float) -> bytes:
        sock = self._sock
        if sock is None:
            return b""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing received from {self.url} in time")
        sock.settimeout(remaining)
        try:
            return sock.recv(65536)
        except TimeoutError:
            raise TimeoutError(f"nothing received from {self.url} in time") from None
        except ConnectionResetError:
            return b""

    def _read(self, deadline: float) -> None:
        data = self._recv(deadline)
        if not data:
            self._proto.receive_eof()
            self.abort()
            return
        self._handle(self._proto.receive_data(data))

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            kind = type(event)
            if kind is TextMessage:
                self._messages.append(event.text)
            elif kind is BinaryMessage:
                self._messages.append(event.data)
            elif (kind is CloseReceived or kind is ConnectionFailed) and self.close_code is None:
                self.close_code = event.code
                self.close_reason = event.reason
        # Pongs and the close reply are queued by the protocol core.
        self._flush()
        if self._proto.close_expected() and not self._closed:
            self._closed = True
            if self.close_code is None:
                self.close_code = CloseCode.ABNORMAL_CLOSURE
            # RFC 6455 §7.1.1: the server closes TCP first; read its FIN, briefly.
            self._await_eof()

    def _await_eof(self) -> None:
        sock = self._sock
        if sock is None:
            return
        deadline = time.monotonic() + min(self.timeout, 2.0)
        try:
            while self._recv(deadline):
                pass
        except (TimeoutError, OSError):
            pass
        self.abort()

    def _flush(self) -> None:
        data = self._proto.data_to_send()
        if data and self._sock is not None:
            self._sock.settimeout(self.timeout)
            try:
                self._sock.sendall(data)
            except OSError:
                # The server is gone; reading will tell how.
                pass


def _prepare(
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    subprotocols: Sequence[str],
    cookies: Mapping[str, Any] | None,
    origin: str | None,
    compression: bool,
) -> tuple[ClientHandshake, tuple[str, int], bool]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    port = parts.port or (443 if secure else 80)
    host = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    fields = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    if origin is not None:
        fields.append(("Origin", origin))
    if cookies:
        pairs = [f"{name}={getattr(value, 'value', value)}" for name, value in cookies.items()]
        fields.append(("Cookie", "; ".join(pairs)))
    handshake = ClientHandshake(
        host,
        target,
        subprotocols=subprotocols,
        deflate_options=DeflateOptions() if compression else None,
        headers=fields,
    )
    return handshake, (parts.hostname, port), secure


def _open_socket(
    address: tuple[str, int], secure: bool, context: ssl.SSLContext | None, timeout: float
) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            context = context or ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=address[0])
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------- in process


class NothingReceived(AssertionError, TimeoutError):
    """``receive()`` waited for a message that never came.

    An AssertionError, so a ``TestCase`` reports a failure rather than an
    error; a TimeoutError too, as :meth:`WebSocketTestClient.receive` raises.
    """


_INPROCESS_PREFIX = secrets.token_hex(4)
_inprocess_ids = itertools.count(1)

# Inbox item kinds, handled in order by WebSocketCommunicator in the test's thread.
_HANDSHAKE = "handshake"
_MESSAGE = "message"
_EVENT = "event"
_CALL = "call"
_DISCONNECT = "disconnect"


class _LocalSocket:
    """What the Django side reads of a socket: the address the client connected to.

    ``build_environ`` takes ``SERVER_NAME`` / ``SERVER_PORT`` from
    ``conn.sock.getsockname()``; nothing else touches it.
    """

    __slots__ = ("address",)

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address

    def getsockname(self) -> tuple[str, int]:
        return self.address


class InProcessServer:
    """What the group backend sees behind in-process connections.

    A communicator attaches one to the backend when it connects and detaches
    it at the end, so ``push()`` reaches its connection (the in-memory backend
    only sends while a server is attached) and any membership left behind is
    dropped. ``config`` carries the limits its connections apply.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._connections: list[InProcessConnection] = []

    def connections(self) -> list[InProcessConnection]:
        return list(self._connections)


class InProcessConnection:
    """The connection API of :class:`~django_rawws.server.ServerConnection`, without a socket.

    What the Django side (:class:`~django_rawws.handler.DjangoApplication`)
    and the group backends call: ``accept``, ``reject``, ``send``,
    ``send_shared``, ``close``, ``fail``, ``deliver_event``, ``call_soon``,
    ``id``, ``handshake``, ``request``, ``path``, ``subprotocol``,
    ``is_open``, ``buffered_amount``, ``close_code``, ``app_state``. It runs
    the real protocol core: the 101 or the refusal is built by the same
    functions as on the server, messages are framed, and the closing
    handshake is exchanged with the communicator's client side, so close
    codes mean what they mean over a socket.

    Handlers never run here: what the server would hand to a worker goes to
    an inbox that :class:`WebSocketCommunicator` drains in the test's thread.
    Other threads may call ``send_shared``/``deliver_event`` (a live server's
    workers, a cross-process group backend); ``lock`` guards the state and
    wakes a communicator waiting in ``receive()``.
    """

    def __init__(
        self,
        server: InProcessServer,
        handshake: HandshakeRequest,
        *,
        remote_address: Any,
        local_address: tuple[str, int],
    ) -> None:
        self.server = server
        self.sock = _LocalSocket(local_address)
        self.id = f"test-{_INPROCESS_PREFIX}.{next(_inprocess_ids):x}"
        self.remote_address = remote_address
        self.lock = threading.Condition()
        self.phase = Phase.DECIDING
        self.created = time.monotonic()
        self.handshake: HandshakeRequest | None = handshake
        self.request: Request | None = handshake.request
        self.subprotocol: str | None = None
        #: 101 once accepted, the refusal's status once rejected.
        self.status: int | None = None
        self.app_state: Any = None
        #: The close code the consumer's ``disconnect()`` gets; None while open.
        self.close_code: int | None = None
        self._proto: Connection | None = None
        self._out = bytearray()
        self._inbox: deque[tuple[str, Any]] = deque([(_HANDSHAKE, None)])
        self._by_us = False
        self._disconnect_queued = False

    def __repr__(self) -> str:
        return f"<InProcessConnection {self.id} {self.phase.name} {self.path}>"

    # ------------------------------------------------------------ the app API

    @property
    def path(self) -> str:
        return self.request.path if self.request is not None else ""

    @property
    def buffered_amount(self) -> int:
        """Always 0: no kernel buffer to wait for (``MAX_OUTGOING_BUFFER`` never applies)."""
        return 0

    @property
    def is_open(self) -> bool:
        return self.phase is Phase.OPEN

    def accept(
        self,
        *,
        subprotocol: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        deflate: DeflateOptions | None = None,
        max_message_size: int | None = None,
    ) -> None:
        """Answer 101 as the server does; only while the handshake is being decided.

        Raises:
            InvalidState: not deciding a handshake, or ``subprotocol`` was not offered.
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
            self._out += response
            self.lock.notify_all()

    def reject(self, error: HandshakeError) -> None:
        """Refuse the handshake with ``error``'s status; only while it is being decided."""
        with self.lock:
            if self.phase is not Phase.DECIDING:
                raise InvalidState(f"reject() while the connection is {self.phase.name}")
            self._reject_locked(error)

    def send(self, message: str | bytes) -> bool:
        """Queue a message for the client; False if the connection is not open."""
        with self.lock:
            proto = self._proto
            if self.phase is not Phase.OPEN or proto is None:
                return False
            if isinstance(message, str):
                proto.send_text(message)
            else:
                proto.send_binary(message)
            self._out += proto.data_to_send()
            self.lock.notify_all()
        return True

    def send_shared(self, shared: SharedMessage) -> bool:
        """Queue a group's raw message, sharing its frames by encoding class as the server does."""
        with self.lock:
            proto = self._proto
            if self.phase is not Phase.OPEN or proto is None:
                return False
            key = shared.encoding_class(proto)
            cached = shared.frames.get(key) if key is not None else None
            if cached is not None:
                frames = cached
            else:
                frames = proto.encode_message(shared.message)
                if key is not None:
                    shared.frames[key] = frames
            proto.queue_encoded(frames)
            self._out += proto.data_to_send()
            self.lock.notify_all()
        return True

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (or refuse the handshake with 403 while deciding)."""
        with self.lock:
            if self.phase is Phase.DECIDING:
                self._reject_locked(Forbidden())
            elif self.phase is Phase.OPEN and self._proto is not None:
                self._proto.send_close(code, reason)
                self._by_us = True
                self.phase = Phase.CLOSING
                self._out += self._proto.data_to_send()
                self.lock.notify_all()

    def fail(self, code: int, reason: str = "") -> None:
        """Close at once with ``code`` (1011 after a handler error)."""
        with self.lock:
            if self.phase in (Phase.OPEN, Phase.CLOSING) and self._proto is not None:
                self._proto.fail(code, reason)
                self._out += self._proto.data_to_send()
                self._by_us = True
                if self.close_code is None:
                    self.close_code = code
                self._finish_locked()

    def deliver_event(self, event: Any) -> bool:
        """Queue a group event; the consumer handles it at the communicator's next receive or flush."""
        return self._enqueue(_EVENT, event)

    def call_soon(self, function: Any) -> bool:
        """Run ``function()`` in this connection's turn, after what is queued."""
        return self._enqueue(_CALL, function)

    # ------------------------------------------------- the communicator's side

    def _enqueue(self, kind: str, value: Any) -> bool:
        with self.lock:
            if self.phase is not Phase.OPEN or self._disconnect_queued:
                return False
            overflow = len(self._inbox) >= self.server.config.max_pending_events
            if not overflow:
                self._inbox.append((kind, value))
                self.lock.notify_all()
        if overflow:
            # As on the server: a consumer that can't keep up is closed.
            self.fail(CloseCode.POLICY_VIOLATION, "too many pending events")
            return False
        return True

    def _receive(self, data: bytes) -> None:
        """Bytes from the client, as the server's I/O thread would read them."""
        with self.lock:
            proto = self._proto
            if proto is None or self.phase not in (Phase.OPEN, Phase.CLOSING):
                return
            events = proto.receive_data(data)
            self._out += proto.data_to_send()
            for event in events:
                kind = type(event)
                if kind is TextMessage or kind is BinaryMessage:
                    # A consumer that started closing gets no more messages.
                    if not self._by_us:
                        self._inbox.append((_MESSAGE, event.text if kind is TextMessage else event.data))  # type: ignore[attr-defined]
                elif kind is CloseReceived or kind is ConnectionFailed:
                    if self.close_code is None:
                        self.close_code = event.code  # type: ignore[attr-defined]
                    self._finish_locked()
            self.lock.notify_all()

    def _receive_eof(self) -> None:
        """The client dropped the connection without a closing handshake (1006)."""
        with self.lock:
            if self.phase in (Phase.OPEN, Phase.CLOSING):
                if self._proto is not None:
                    self._proto.receive_eof()
                if self.close_code is None:
                    self.close_code = CloseCode.ABNORMAL_CLOSURE
                self._finish_locked()

    def _take_output(self) -> bytes:
        with self.lock:
            data = bytes(self._out)
            self._out.clear()
            return data

    def _next_item(self) -> tuple[str, Any] | None:
        with self.lock:
            return self._inbox.popleft() if self._inbox else None

    def _wait(self, timeout: float) -> None:
        """Block until there is output or an item to handle, or ``timeout`` passes."""
        with self.lock:
            if not self._out and not self._inbox:
                self.lock.wait(timeout)

    def _reject_locked(self, error: HandshakeError) -> None:
        self.status = error.status_code
        self._out += build_reject(error)
        self._finish_locked()

    def _finish_locked(self) -> None:
        """The connection is over: queue the one ``websocket_disconnect``, as the server does."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        if not self._disconnect_queued:
            self._disconnect_queued = True
            code = self.close_code if self.close_code is not None else CloseCode.ABNORMAL_CLOSURE
            self._inbox.append((_DISCONNECT, code))
        self.lock.notify_all()


@functools.cache
def _in_process_application_class() -> type:
    """A DjangoApplication that leaves the test's database connections alone.

    Built on first use: the handler imports Django machinery that a pytest
    plugin must not load at startup.
    """
    from .handler import DjangoApplication

    class InProcessApplication(DjangoApplication):
        def close_old_connections(self) -> None:
            """Skipped: closing would end the test's transaction (Django's test client skips it too)."""

    return InProcessApplication


class WebSocketCommunicator:
    """Drive a consumer in the test's own thread, without sockets.

    ::

        from django.test import TestCase
        from django_rawws.testing import WebSocketCommunicator

        class EchoTests(TestCase):
            def test_echo(self):
                with WebSocketCommunicator("/ws/echo/") as ws:
                    self.assertEqual(ws.connect(), (True, None))
                    ws.send_text("hello")
                    self.assertEqual(ws.receive(), "hello")

    The handshake goes through the same Django side as on the server
    (``ALLOWED_HOSTS``, routing, ``Origin``, session, user,
    ``login_required``, ``connect()``), and so do messages, group events and
    the disconnect, each wrapped like a request. Because every handler runs
    in the calling thread, on its database connection, a plain ``TestCase``
    or pytest-django ``db`` test works: the consumer sees the test's data and
    the test sees what the consumer wrote.

    When handlers run: a send runs ``receive()`` (and what it triggers) before
    returning; group events pushed meanwhile are handled at the next
    :meth:`receive`, :meth:`receive_nothing`, :meth:`flush` or send.

    ``transaction.on_commit()`` callbacks registered by a handler (a
    ``push()`` from a consumer, deferred because the test's transaction
    wraps everything) run as soon as that handler returns, as they would
    after its commit on the server; ``run_on_commit=False`` leaves them to
    ``captureOnCommitCallbacks``. A push made by the test itself inside its
    transaction waits for ``captureOnCommitCallbacks(execute=True)``, or use
    ``push(..., immediate=True)``.

    Args:
        path: the URL path, ``/ws/chat/lobby/``; may carry a query string.
        user: a user to log in (a real session, as ``Client.force_login``
            makes); None or an anonymous user connects anonymously.
        headers: extra request headers, a dict or ``(name, value)`` pairs.
        subprotocols: offered in ``Sec-WebSocket-Protocol``, in order.
        query_string: appended to ``path`` after ``?``.
        origin: the ``Origin`` header (none by default, as from a non-browser client).
        cookies: more cookies, a dict or a Django test client's ``client.cookies``.
        host: the ``Host`` header (``testserver``, allowed in tests).
        secure: the client came over TLS (``wss://``): ``request.is_secure()``.
        compression: offer permessage-deflate.
        urlconf: a WebSocket urlconf instead of ``RAWWS["URLCONF"]``.
        client: the client's address (``REMOTE_ADDR``, ``REMOTE_PORT``).
        run_on_commit: run the on-commit callbacks each handler registers when it returns.
    """

    def __init__(
        self,
        path: str,
        *,
        user: Any = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        subprotocols: Sequence[str] = (),
        query_string: str = "",
        origin: str | None = None,
        cookies: Mapping[str, Any] | None = None,
        host: str = "testserver",
        secure: bool = False,
        compression: bool = False,
        urlconf: str | None = None,
        client: tuple[str, int] = ("127.0.0.1", 12345),
        run_on_commit: bool = True,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"the path starts with '/': {path!r}")
        self.path = path
        self.user = user
        self.headers = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        self.subprotocols = list(subprotocols)
        self.query_string = query_string
        self.origin = origin
        self.cookies = cookies
        self.host = host
        self.secure = secure
        self.compression = compression
        self.urlconf = urlconf
        self.client = client
        self.run_on_commit = run_on_commit
        #: The 101 response, or the refusal's response, once :meth:`connect` returned.
        self.response: Response | None = None
        #: The subprotocol the consumer accepted.
        self.subprotocol: str | None = None
        #: Status, headers and body of a refused handshake.
        self.refusal: RefusedHandshake | None = None
        #: The close code the consumer sent (or echoed); None while open.
        self.close_code: int | None = None
        self.close_reason = ""
        self._handshake: ClientHandshake | None = None
        self._client: Connection | None = None
        self._conn: InProcessConnection | None = None
        self._server: InProcessServer | None = None
        self._backend: Any = None
        self._app: Any = None
        self._messages: deque[str | bytes] = deque()
        self._closed = False
        self._running = False

    # ------------------------------------------------------------- connecting

    def connect(self, timeout: float | None = None) -> tuple[bool, str | int | None]:
        """Run the handshake; return ``(True, subprotocol)`` or ``(False, status)``.

        ``timeout`` is accepted for Channels-style calls and not needed: the
        handshake has run to completion when this returns. A refusal's body
        is in :attr:`refusal`.
        """
        if self._handshake is not None:
            raise InvalidState("connect() was already called on this communicator")
        from .conf import server_config
        from .groups import get_backend

        config = server_config()
        handshake = self._client_handshake()
        self._handshake = handshake
        try:
            request = RequestParser(
                max_line=config.max_request_line, max_headers=config.max_headers, max_head=config.max_head
            ).feed(handshake.request_bytes())
            assert request is not None, "ClientHandshake writes a complete head"
            validated = validate_request(request)
        except HandshakeError as error:
            # Refused before any Django code runs, as the server's I/O thread does.
            self._read_response(build_reject(error))
            return False, error.status_code
        self._server = InProcessServer(config)
        self._app = _in_process_application_class()(urlconf=self.urlconf, secure=self.secure)
        self._conn = InProcessConnection(
            self._server,
            validated,
            remote_address=self.client,
            local_address=_local_address(self.host, self.secure),
        )
        self._server._connections.append(self._conn)
        self._backend = get_backend()
        self._backend.attach(self._server)
        try:
            self._run()
        finally:
            if self._conn.phase is Phase.CLOSED:
                self._release()
        if self.refusal is not None:
            return False, self.refusal.status
        return True, self.subprotocol

    def _client_handshake(self) -> ClientHandshake:
        target = self.path
        if self.query_string:
            target += ("&" if "?" in target else "?") + self.query_string
        fields = list(self.headers)
        if self.origin is not None:
            fields.append(("Origin", self.origin))
        cookies = {name: getattr(value, "value", value) for name, value in (self.cookies or {}).items()}
        if self.user is not None and getattr(self.user, "is_authenticated", False):
            cookies.update(_session_cookie_for(self.user))
        if cookies:
            fields.append(("Cookie", "; ".join(f"{name}={value}" for name, value in cookies.items())))
        return ClientHandshake(
            self.host,
            target,
            subprotocols=self.subprotocols,
            deflate_options=DeflateOptions() if self.compression else None,
            headers=fields,
        )

    # ---------------------------------------------------------------- sending

    def send_text(self, text: str) -> None:
        """Send a text message; the consumer's ``receive(text=...)`` has run when this returns.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        self._send(text)

    def send_bytes(self, data: bytes) -> None:
        """Send a binary message; the consumer's ``receive(bytes=...)`` has run when this returns."""
        self._send(bytes(data))

    def send_json(self, content: Any) -> None:
        """Send ``content`` as a JSON text message."""
        self._send(json.dumps(content))

    def _send(self, message: str | bytes) -> None:
        client = self._open_client("send")
        if isinstance(message, str):
            client.send_text(message)
        else:
            client.send_binary(message)
        self._to_server(client.data_to_send())
        self._run()

    # -------------------------------------------------------------- receiving

    def receive(self, timeout: float = 1.0) -> str | bytes:
        """Return the next message the consumer sent: ``str`` for text, ``bytes`` for binary.

        Pending group events are handled first. ``timeout`` matters only for
        what other threads deliver (a cross-process group backend, a thread
        of yours): anything the test's thread caused has already arrived.

        Raises:
            NothingReceived: no message within ``timeout``.
            ConnectionClosed: the connection closed before a message came; ``.code``.
        """
        self._require_connected("receive")
        deadline = time.monotonic() + timeout
        while True:
            self._run()
            if self._messages:
                return self._messages.popleft()
            if self._closed:
                raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NothingReceived(
                    f"expected a message from the consumer at {self.path}, none came within {timeout}s"
                    + _held_callbacks_hint()
                )
            assert self._conn is not None
            self._conn._wait(remaining)

    def receive_text(self, timeout: float = 1.0) -> str:
        message = self.receive(timeout)
        if not isinstance(message, str):
            raise AssertionError(f"expected a text message, got {len(message)} bytes of binary")
        return message

    def receive_bytes(self, timeout: float = 1.0) -> bytes:
        message = self.receive(timeout)
        if not isinstance(message, bytes):
            raise AssertionError(f"expected a binary message, got text {message[:80]!r}")
        return message

    def receive_json(self, timeout: float = 1.0) -> Any:
        return json.loads(self.receive_text(timeout))

    def receive_nothing(self, timeout: float | None = None) -> bool:
        """Handle what is pending; return True if no message is waiting.

        ``timeout`` (seconds) also waits for messages from other threads. By
        default it is 0.1 when the group backend crosses processes (its
        deliveries arrive on another thread), else 0: every in-process
        delivery has arrived when the push returns.
        """
        self._require_connected("receive_nothing")
        if timeout is None:
            timeout = 0.1 if getattr(self._backend, "cross_process", False) else 0.0
        deadline = time.monotonic() + timeout
        while True:
            self._run()
            remaining = deadline - time.monotonic()
            if self._messages or self._closed or remaining <= 0:
                return not self._messages
            assert self._conn is not None
            self._conn._wait(remaining)

    def flush(self) -> None:
        """Handle what is pending (group events, ``call_soon`` functions) without reading."""
        self._require_connected("flush")
        self._run()

    # ---------------------------------------------------------------- closing

    def disconnect(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close from the client side: the consumer's ``disconnect(code)`` runs, once.

        Does nothing when the connection is already closed or never opened.
        """
        if self._conn is not None and self._client is not None and not self._closed:
            client = self._client
            client.send_close(code, reason)
            self._to_server(client.data_to_send())
            self._run()
        self._release()

    def abort(self) -> None:
        """Drop the connection without a closing handshake: ``disconnect(1006)``."""
        if self._conn is not None and not self._closed:
            self._conn._receive_eof()
            self._closed = True
            if self.close_code is None:
                self.close_code = CloseCode.ABNORMAL_CLOSURE
            self._run()
        self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def assert_closed(self, code: int | None = None) -> int:
        """Check that the consumer closed (with ``code``) and left no message unread; return the code.

        Raises:
            AssertionError: still open, another code, or unread messages.
        """
        self._require_connected("assert_closed")
        self._run()
        if not self._closed:
            expected = f" with {code}" if code is not None else ""
            unread = f"; unread: {list(self._messages)[:5]!r}" if self._messages else ""
            raise AssertionError(f"expected the connection to close{expected}, it is still open{unread}")
        assert self.close_code is not None
        if code is not None and self.close_code != code:
            raise AssertionError(f"closed with {self.close_code} {self.close_reason!r}, expected {code}")
        if self._messages:
            raise AssertionError(f"closed with unread messages: {list(self._messages)[:5]!r}")
        return self.close_code

    # ------------------------------------------------------------ inspection

    @property
    def connection(self) -> InProcessConnection | None:
        """The server side of the connection (None before :meth:`connect`): ``exclude=`` takes it."""
        return self._conn

    @property
    def consumer(self) -> Any:
        """The consumer instance, once the handshake built it (None before, or without a route)."""
        state = self._conn.app_state if self._conn is not None else None
        return getattr(state, "consumer", None)

    def __enter__(self) -> WebSocketCommunicator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect()

    # ---------------------------------------------------------------- internals

    def _require_connected(self, action: str) -> None:
        if self._handshake is None:
            raise InvalidState(f"{action}() before connect()")
        if self.refusal is not None:
            raise AssertionError(
                f"{action}(): the handshake was refused with {self.refusal.status} {self.refusal.text.strip()!r}"
            )

    def _open_client(self, action: str) -> Connection:
        self._require_connected(action)
        assert self._client is not None
        self._run()  # what is pending came first, and may have closed the connection
        if self._closed:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)
        return self._client

    def _to_server(self, data: bytes) -> None:
        if data and self._conn is not None:
            self._conn._receive(data)

    def _run(self) -> None:
        """Move bytes both ways and handle the inbox until both are empty.

        Not re-entrant: a handler that causes more work (a push to its own
        group) leaves it in the inbox for this loop.
        """
        conn = self._conn
        if conn is None or self._running:
            return
        self._running = True
        try:
            while True:
                self._read_response(conn._take_output())
                item = conn._next_item()
                if item is None:
                    with conn.lock:
                        if not conn._out and not conn._inbox:
                            return
                    continue
                self._handle(conn, *item)
        finally:
            self._running = False

    def _handle(self, conn: InProcessConnection, kind: str, value: Any) -> None:
        """One inbox item, as a server worker handles it (``ServerConnection._process``)."""
        app = self._app
        marks = _on_commit_marks() if self.run_on_commit else None
        try:
            if kind == _MESSAGE:
                app.websocket_message(conn, value)
            elif kind == _EVENT:
                app.websocket_event(conn, value)
            elif kind == _CALL:
                value()
            elif kind == _HANDSHAKE:
                self._decide(conn)
            else:
                app.websocket_disconnect(conn, value)
        except Exception:
            logger.exception("unhandled error in the %s handler of %s", kind, conn.path)
            conn.fail(CloseCode.INTERNAL_ERROR)
        if marks is not None:
            _run_on_commit_since(marks)

    def _decide(self, conn: InProcessConnection) -> None:
        """The handshake call, with the server's answers when the app gives none."""
        try:
            self._app.websocket_handshake(conn, conn.handshake)
        except HandshakeError as error:
            with conn.lock:
                if conn.phase is Phase.DECIDING:
                    conn._reject_locked(error)
        except Exception:
            logger.exception("error while deciding the handshake of %s", conn.path)
            with conn.lock:
                if conn.phase is Phase.DECIDING:
                    failure = HandshakeError("Internal Server Error")
                    failure.status_code = 500
                    conn._reject_locked(failure)
        with conn.lock:
            if conn.phase is Phase.DECIDING:
                conn._reject_locked(Forbidden())

    def _read_response(self, data: bytes) -> None:
        """Bytes from the server: the handshake's answer first, then frames."""
        if not data:
            return
        if self._client is None:
            if self.refusal is not None or self._handshake is None:
                return  # nothing follows a refusal
            try:
                result = self._handshake.receive_data(data)
            except InvalidResponse as exc:
                response = getattr(exc, "response", None)
                if response is None or response.status == 101:
                    raise  # a malformed answer: a bug, not a refusal
                self.response = response
                length = response.headers.get("Content-Length")
                body = self._handshake.trailing
                if length is not None and length.isdigit():
                    body = body[: int(length)]
                self.refusal = RefusedHandshake(response.status, response.headers, body)
                self._closed = True
                return
            if result is None:
                raise InvalidResponse("incomplete handshake response")  # the server writes it whole
            self.response = result.response
            self.subprotocol = result.subprotocol
            codec = None
            if result.deflate_params is not None:
                codec = PerMessageDeflate(result.deflate_params, is_server=False)
            self._client = Connection(Role.CLIENT, max_message_size=64 << 20, deflate=codec)
            data = self._handshake.trailing
            if not data:
                return
        client = self._client
        for event in client.receive_data(data):
            kind = type(event)
            if kind is TextMessage:
                self._messages.append(event.text)  # type: ignore[attr-defined]
            elif kind is BinaryMessage:
                self._messages.append(event.data)  # type: ignore[attr-defined]
            elif (kind is CloseReceived or kind is ConnectionFailed) and self.close_code is None:
                self.close_code = event.code  # type: ignore[attr-defined]
                self.close_reason = event.reason  # type: ignore[attr-defined]
        # The close reply (and pongs) go back as a client would send them.
        self._to_server(client.data_to_send())
        if client.close_expected():
            self._closed = True

    def _release(self) -> None:
        """Detach from the group backend, dropping memberships left behind.

        Also stops the slow-handler watchdog the handlers started, as a
        server's exiting worker does: no thread outlives the communicator.
        """
        backend, self._backend = self._backend, None
        if backend is not None and self._server is not None:
            backend.detach(self._server)
        from .handler import _watchdog

        _watchdog.stop()


def _local_address(host: str, secure: bool) -> tuple[str, int]:
    """The server address a client reaching ``host`` connected to (``SERVER_NAME``, ``SERVER_PORT``)."""
    parts = urllib.parse.urlsplit("//" + host)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or host, port or (443 if secure else 80)


def _session_cookie_for(user: Any) -> dict[str, str]:
    """Log ``user`` in with a real session, as ``Client.force_login`` does; return its cookie."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def _held_callbacks_hint() -> str:
    """Why a push may not have arrived: the test's transaction holds on-commit callbacks."""
    held = sum(
        len(conn.run_on_commit) for conn in connections.all(initialized_only=True) if conn.in_atomic_block
    )
    if not held:
        return ""
    return (
        f"; {held} on_commit callback(s) wait for the test's transaction to commit (a push() made in the "
        "test?): run them with captureOnCommitCallbacks(execute=True), or push(..., immediate=True)"
    )


def _on_commit_marks() -> dict[str, int]:
    """How many on-commit callbacks each connection inside a transaction holds now."""
    return {
        conn.alias: len(conn.run_on_commit)
        for conn in connections.all(initialized_only=True)
        if conn.in_atomic_block
    }


def _run_on_commit_since(marks: Mapping[str, int]) -> None:
    """Run, and forget, the callbacks registered after ``marks``: a handler's, held by the test's transaction.

    On the server nothing wraps a handler, so they would run at its commit;
    here the test's transaction would hold them forever. Callbacks they
    register run too; robust ones log their errors, as Django does.
    """
    for alias, mark in marks.items():
        conn = connections[alias]
        while conn.in_atomic_block and len(conn.run_on_commit) > mark:
            pending = conn.run_on_commit[mark:]
            del conn.run_on_commit[mark:]
            for _savepoints, callback, robust in pending:
                if not robust:
                    callback()
                    continue
                try:
                    callback()
                except Exception:
                    on_commit_logger.exception(
                        "Error calling %s in on_commit().", getattr(callback, "__qualname__", callback)
                    )
