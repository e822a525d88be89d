"""Redis for the tests: reachability, a unique key prefix per test, and a TCP proxy the test controls.

The shared Redis on 127.0.0.1:6379 is never stopped or flushed: every test
works under a prefix of its own (``rawws-test-<uuid>``) and deletes its keys
afterwards. Outages are simulated with :class:`RedisProxy` between a backend
and Redis: ``cut()`` drops every connection through it and refuses new ones
(they are accepted and closed at once, so clients fail fast instead of
waiting for a timeout); ``restore()`` lets them through again.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import uuid
from collections.abc import Iterator

from tests.conftest import skip_or_fail_without_service

REDIS_HOST = "127.0.0.1"
REDIS_PORT = int(os.environ.get("RAWWS_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
REDIS_BACKEND = "django_rawws.groups.redis.RedisGroupBackend"


def redis_reachable() -> str | None:
    """None if Redis answers PING on 127.0.0.1:6379, else why not."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'django-rawws[redis]')"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"no Redis on {REDIS_HOST}:{REDIS_PORT} ({exc})"
    finally:
        client.close()
    return None


def require_redis() -> None:
    """Skip the calling test without Redis (fail it when RAWWS_REQUIRE_SERVICES=1)."""
    reason = redis_reachable()
    if reason is not None:
        skip_or_fail_without_service(reason)


def unique_prefix() -> str:
    return f"rawws-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(prefix: str) -> None:
    """Delete every key under ``prefix`` (what a test left in the shared Redis)."""
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh prefix whose keys are deleted at the end."""
    require_redis()
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        delete_prefix(prefix)


class RedisProxy:
    """A TCP proxy to Redis on a free port of 127.0.0.1, with a switch.

    One thread moves bytes both ways for every connection with a selector;
    ``cut()`` and ``restore()`` return once the proxy is in the new state.
    """

    def __init__(self, target: tuple[str, int] = (REDIS_HOST, REDIS_PORT)) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._open = True
        self._stopping = False
        self._requests: list[tuple[str, threading.Event]] = []
        #: Connections accepted while open (clients that got through).
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, name="redis-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self) -> None:
        """Drop every connection through the proxy and refuse new ones, as a dead Redis would."""
        self._request("cut")

    def restore(self) -> None:
        self._request("restore")

    def close(self) -> None:
        self._request("stop")
        self._thread.join(5)

    def __enter__(self) -> RedisProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, what: str) -> None:
        done = threading.Event()
        with self._lock:
            self._requests.append((what, done))
        self._wake_w.send(b"x")
        assert done.wait(5), f"the proxy did not {what} in time"

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data == "wake":
                    self._wake_r.recv(4096)
                    self._handle_requests()
                elif key.data is None:
                    self._accept()
                else:
                    self._pump(key.fileobj, key.data)  # type: ignore[arg-type]
        for sock in list(self._pairs):
            self._drop(sock)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _handle_requests(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, []
        for what, done in requests:
            if what == "cut":
                self._open = False
                for sock in list(self._pairs):
                    self._drop(sock)
            elif what == "restore":
                self._open = True
            elif what == "stop":
                self._stopping = True
            done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if not self._open:
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        self.accepted += 1
        for sock, peer in ((client, upstream), (upstream, client)):
            sock.setblocking(False)
            self._pairs[sock] = peer
            self._selector.register(sock, selectors.EVENT_READ, peer)

    def _pump(self, sock: socket.socket, peer: socket.socket) -> None:
        if sock not in self._pairs:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for item in (sock, peer):
            if item is None:
                continue
            self._pairs.pop(item, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(item)
            with contextlib.suppress(OSError):
                item.shutdown(socket.SHUT_RDWR)
            item.close()
