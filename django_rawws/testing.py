"""Test your consumers end to end: a live server in the test process, and a client to talk to it.

::

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

import json
import socket
import ssl
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections
from django.test.utils import modify_settings

from .exceptions import ConnectionClosed, InvalidResponse
from .protocol.codes import CloseCode
from .protocol.connection import Connection, Role
from .protocol.deflate import DeflateOptions, PerMessageDeflate
from .protocol.events import BinaryMessage, CloseReceived, ConnectionFailed, TextMessage
from .protocol.handshake import ClientHandshake
from .protocol.http import Headers
from .server import Server, ServerConfig

__all__ = [
    "LiveWebSocketServer",
    "RefusedHandshake",
    "WebSocketLiveServerMixin",
    "WebSocketTestClient",
    "rawws_live_server",
]

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
