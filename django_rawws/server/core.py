"""The server: a listening socket, one I/O thread, a pool of workers.

The I/O thread never runs application code. It accepts, reads, parses,
answers pings, runs the timers (handshake deadline, keepalive, close timeout,
lingering close) and writes what the kernel would not take at once, so all
of that goes on while every worker is busy. Workers run the application's
handlers, one connection's items at a time and in order; their ``send()``
writes straight to the socket when it has room.

The application is any object with these methods, all called on workers::

    websocket_handshake(conn, handshake)   # must conn.accept() or conn.reject()
    websocket_message(conn, text_or_bytes)
    websocket_event(conn, event)           # what conn.deliver_event() queued
    websocket_disconnect(conn, code)       # exactly once per handshake call
    worker_start()                         # optional: in each worker thread as it starts
    worker_exit()                          # in each worker thread as it stops

and, optionally, on a pool of its own for plain HTTP (not upgrades)::

    http_request(sock, client_address, request, prefix)   # owns the socket
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any

from ..exceptions import ServiceUnavailable, TooManyRequests
from ..protocol.codes import CloseCode
from .config import ServerConfig
from .connection import Phase, ServerConnection, _format_address, _host
from .limits import QuotaTable, ViolationLog, address_key, in_networks, parse_networks
from .poller import READ, Poller
from .workers import WorkerPool

__all__ = ["Server"]

logger = logging.getLogger("django_rawws.server")
access_logger = logging.getLogger("django_rawws.access")

# HTTP connections the pool may hold per thread (served or waiting) before
# new plain requests get 503: the queue in front of the HTTP pool is bounded.
_HTTP_QUEUE_PER_WORKER = 8

_ACCEPT_ERRNOS_FD = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


#: How long a task may wait for the awake worker before another is woken
#: (see :mod:`.workers`): short against a database call, long against a
#: small message's handler.
WAKE_DELAY = 0.001


class Server:
    """Serve WebSockets for ``app`` on ``host:port`` (port 0 picks a free one).

    ``start()`` binds and starts the threads and returns at once;
    ``address`` is then the bound address. ``stop(grace)`` shuts down in
    order and returns whether every handler finished within the grace.
    Signal handling belongs to the caller (the ``runws`` command).
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        config: ServerConfig | None = None,
        *,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        #: With a server-side SSLContext, every connection speaks TLS
        #: (``wss://`` and ``https://``); the handshake runs in the I/O thread.
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.config = config or ServerConfig()
        self.poller = Poller()
        self.pool = WorkerPool(
            self.config.workers,
            wake_delay=WAKE_DELAY,
            on_delayed=self._wake_from_other_thread,
            on_thread_start=getattr(app, "worker_start", None),
            on_thread_exit=getattr(app, "worker_exit", None),
        )
        # Plain HTTP requests (not upgrades) run in a pool of their own, so a
        # slow view never delays WebSocket events.
        self.serves_http = self.config.http_workers > 0 and hasattr(app, "http_request")
        self.http_pool = WorkerPool(
            max(1, self.config.http_workers), name="rawws-http", on_thread_exit=getattr(app, "worker_exit", None)
        )
        self._http_sockets: set[socket.socket] = set()
        self._http_lock = threading.Lock()
        self.shutting_down = False
        self._listener = sock
        self._connections: dict[int, ServerConnection] = {}
        self._open_count = 0
        self._count_lock = threading.Lock()
        self._all_disconnected = threading.Condition(self._count_lock)
        self._pending_disconnects = 0
        self._attention: collections.deque[ServerConnection] = collections.deque()
        self._commands: collections.deque[Any] = collections.deque()
        # Heap of [deadline, seq, conn]: an entry superseded by an earlier
        # deadline, or whose connection is gone, has conn None (see _set_timer).
        self._timers: list[list[Any]] = []
        self._timer_seq = itertools.count()
        self._specific_address: tuple[str, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._io_thread: threading.Thread | None = None
        self._running = False
        self._accept_paused_until = 0.0
        self._emfile_logged = False
        self._stopped = threading.Event()
        self._connections_changed = threading.Condition()
        #: Connection quotas (per client address, and the application's own).
        self.quotas = QuotaTable()
        #: Violations (quotas, rates, capacity) logged once per client a minute.
        self.violations = ViolationLog(logger)
        self._quota_exempt = parse_networks(self.config.quota_exempt)
        delay = self.config.overload_delay
        self._overload_interval = min(1.0, delay / 4) if delay is not None else 0.0
        self._next_overload_check = 0.0
        self._overload_since = 0.0

    # ------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        assert self._listener is not None, "start() the server first"
        return self._listener.getsockname()[:2]

    @property
    def connection_local_address(self) -> tuple[str, int] | None:
        """Every connection's own address when the listener is bound to one (None for a wildcard).

        Saves a ``getsockname()`` per handshake: a system call that lets
        go of the GIL.
        """
        return self._specific_address

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        if self._listener is None:
            self._listener = self._bind()
        host, port = self.address
        self._specific_address = None if host in ("0.0.0.0", "::", "") else (host, port)
        self._listener.setblocking(False)
        self.poller.register(self._listener.fileno(), READ)
        self.poller.register(self._wake_r.fileno(), READ)
        self.pool.start()
        if self.serves_http:
            self.http_pool.start()
        self._running = True
        self._io_thread = threading.Thread(target=self._io_loop, name="rawws-io", daemon=True)
        self._io_thread.start()
        logger.info("listening on %s", _format_address(self.address))

    def _bind(self) -> socket.socket:
        infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, socktype, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.config.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(min(self.config.backlog, socket.SOMAXCONN))
        except BaseException:
            sock.close()
            raise
        return sock

    def stop(self, grace: float = 10.0, *, close_code: int = CloseCode.GOING_AWAY) -> bool:
        """Shut down in order; return False if handlers were still running after ``grace``.

        1. stop accepting; answer handshakes in progress with 503;
        2. stop reading, and let the items already read and the handlers in
           flight finish (up to ``grace``);
        3. send ``close_code`` (1001; 1012 before a reload) to every open
           connection and wait for the replies (``close_timeout``);
        4. run ``disconnect()`` for every connection, then stop the workers
           (each closes its database connections) and the I/O thread.
        """
        if not self._running:
            return True
        start = time.monotonic()
        config = self.config
        self.shutting_down = True
        self._call_in_io(self._stop_accepting)
        self._call_in_io(lambda: self._each_connection(lambda conn: conn.pause_reading_for_shutdown()))
        self._call_in_io(lambda: self._each_connection(lambda conn: conn.begin_shutdown(close_code), only_handshakes=True))
        self._interrupt_http_keepalive()
        clean = self.pool.wait_idle(grace)
        clean = self.http_pool.wait_idle(max(0.0, grace - (time.monotonic() - start))) and clean
        self._call_in_io(lambda: self._each_connection(lambda conn: conn.begin_shutdown(close_code)))
        with self._connections_changed:
            self._connections_changed.wait_for(lambda: not self._connections, config.close_timeout)
        self._call_in_io(lambda: self._each_connection(lambda conn: conn.abort(close_code)))
        remaining = max(1.0, grace - (time.monotonic() - start))
        clean = self._wait_disconnects(remaining) and clean
        clean = self.pool.wait_idle(max(1.0, grace - (time.monotonic() - start))) and clean
        if not clean:
            for stack in self.pool.running_stacks():
                logger.error("handler still running after the %.1fs grace: %s", grace, stack)
        self._running = False
        self._wake()
        if self._io_thread is not None:
            self._io_thread.join(5.0)
        joined = self.pool.stop(timeout=1.0 if not clean else 5.0)
        if self.serves_http:
            self._interrupt_http_keepalive()
            joined = self.http_pool.stop(timeout=1.0 if not clean else 5.0) and joined
        self.poller.close()
        self._wake_r.close()
        self._wake_w.close()
        self._stopped.set()
        logger.info("server stopped%s", "" if clean else " with handlers still running")
        return clean and joined

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped."""
        return self._stopped.wait(timeout)

    # ----------------------------------------------- called from connections

    def attend(self, conn: ServerConnection) -> None:
        """Ask the I/O thread to reconcile ``conn`` (interest, timers, closing)."""
        self._attention.append(conn)
        self._wake()

    attend_locked = attend

    def forget(self, conn: ServerConnection, *, log: bool = True) -> None:
        """The socket of ``conn`` was closed or handed off (I/O thread): drop it, write the access line."""
        self._drop_timer(conn)
        if self._connections.get(conn.fd) is conn:
            del self._connections[conn.fd]
            if self.shutting_down:
                with self._connections_changed:
                    self._connections_changed.notify_all()
        if log and self.config.access_log and (conn.request is not None or conn.status is not None):
            duration = time.monotonic() - conn.created
            access_logger.info(
                '%s "%s" %s %s %.3fs in=%d out=%d',
                _format_address(conn.remote_address),
                conn.request.target if conn.request is not None else "-",
                conn.status if conn.status is not None else "-",
                conn.close_code if conn.status == 101 and conn.close_code is not None else "-",
                duration,
                conn.bytes_in,
                conn.bytes_out,
                extra={"connection_id": conn.id, "status_code": conn.status, "close_code": conn.close_code},
            )

    def hand_off_http(self, sock: socket.socket, client_address: Any, request: Any, prefix: bytes) -> None:
        """Run ``app.http_request(sock, client_address, request, prefix)`` on the HTTP pool (I/O thread).

        ``request`` is the parsed head, ``prefix`` the bytes read so far (the
        head and whatever followed it).
        """
        sock.setblocking(True)
        sock.settimeout(self.config.handshake_timeout)
        with self._http_lock:
            self._http_sockets.add(sock)

        def serve() -> None:
            try:
                self.app.http_request(sock, client_address, request, prefix)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
                # The client left while its response was written: its doing,
                # not an error of ours (a traceback per reset would let any
                # client flood the error log).
                logger.info(
                    "%s went away during its HTTP response (%s)", _format_address(client_address), exc
                )
            except Exception:
                logger.exception("error while serving an HTTP request from %s", _format_address(client_address))
            finally:
                with self._http_lock:
                    self._http_sockets.discard(sock)
                try:
                    sock.close()
                except OSError:
                    pass

        self.http_pool.submit(serve)

    def http_backlog_full(self) -> bool:
        """Whether the HTTP pool already holds as many connections as it may queue (I/O thread)."""
        return len(self._http_sockets) >= self.config.http_workers * _HTTP_QUEUE_PER_WORKER

    def _interrupt_http_keepalive(self) -> None:
        """Wake HTTP handlers waiting for a next keep-alive request: their read sees EOF."""
        with self._http_lock:
            sockets = list(self._http_sockets)
        for sock in sockets:
            try:
                # socket.socket.shutdown, not SSLSocket.shutdown: the latter drops
                # the TLS object, and the response still being written would go
                # out in clear text.
                socket.socket.shutdown(sock, socket.SHUT_RD)
            except OSError:
                pass

    def disconnected(self, conn: ServerConnection) -> None:
        """The application's disconnect handler ran for ``conn`` (a worker)."""
        with self._all_disconnected:
            self._pending_disconnects -= 1
            if self._pending_disconnects <= 0:
                self._all_disconnected.notify_all()

    def connections(self) -> list[ServerConnection]:
        """A snapshot of the connections (any thread)."""
        return list(self._connections.values())

    # -------------------------------------------------------------- internals

    def _wake_from_other_thread(self) -> None:
        """Wake the I/O loop unless this is it (it looks at the pool before polling again)."""
        if threading.current_thread() is not self._io_thread:
            self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def _call_in_io(self, function: Any) -> None:
        """Run ``function`` on the I/O thread and wait for it."""
        if threading.current_thread() is self._io_thread:
            function()
            return
        done = threading.Event()

        def command() -> None:
            try:
                function()
            finally:
                done.set()

        self._commands.append(command)
        self._wake()
        done.wait(10.0)

    def _wait_disconnects(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._all_disconnected:
            while self._pending_disconnects > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._all_disconnected.wait(remaining)
        return True

    def _each_connection(self, action: Any, *, only_handshakes: bool = False) -> None:
        for conn in list(self._connections.values()):
            if only_handshakes and conn.phase is not Phase.HANDSHAKE:
                continue
            action(conn)
            self._reconcile(conn)

    def _stop_accepting(self) -> None:
        if self._listener is not None:
            self.poller.unregister(self._listener.fileno())
            self._listener.close()

    def _io_loop(self) -> None:
        poller = self.poller
        listen_fd = self._listener.fileno() if self._listener is not None else -1
        wake_fd = self._wake_r.fileno()
        connections = self._connections
        pool = self.pool
        try:
            while self._running:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                if self._accept_paused_until:
                    pause = max(0.0, self._accept_paused_until - time.monotonic())
                    timeout = pause if timeout is None else min(timeout, pause)
                overload_check = self._overload_check_due()
                if overload_check:
                    interval = self._overload_interval
                    timeout = interval if timeout is None else min(timeout, interval)
                nudge_at = pool.next_nudge()
                if nudge_at is not None:
                    wait = max(0.0, nudge_at - time.monotonic())
                    timeout = wait if timeout is None else min(timeout, wait)
                for fd, events in poller.poll(timeout):
                    if fd == listen_fd:
                        self._accept()
                    elif fd == wake_fd:
                        self._drain_wake()
                    else:
                        conn = connections.get(fd)
                        if conn is None:
                            continue
                        if events & READ:
                            conn.on_readable()
                        if events & ~READ and conn.phase is not Phase.CLOSED:
                            conn.on_writable()
                conn = None  # not held while polling: a closed connection is freed at once
                self._run_attention()
                self._run_commands()
                self._run_timers()
                pool.nudge()
                if overload_check:
                    self._check_overload(time.monotonic())
                if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                    self._resume_accepting()
        except Exception:
            logger.exception("the I/O thread failed")
            raise

    def _drain_wake(self) -> None:
        # Drain first, then clear the flag: cleared first, a _wake() landing in
        # between would have its byte drained here while the flag stays set,
        # and every later _wake() would be skipped (a lost wake-up). Anything
        # queued before a skipped _wake() is handled after this, in the same
        # loop iteration.
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._woken = False

    def _run_attention(self) -> None:
        attention = self._attention
        while attention:
            self._reconcile(attention.popleft())

    def _run_commands(self) -> None:
        commands = self._commands
        while commands:
            commands.popleft()()

    def _reconcile(self, conn: ServerConnection) -> None:
        if conn.phase is Phase.CLOSED:
            return
        self._set_timer(conn, conn.reconcile())

    def _set_timer(self, conn: ServerConnection, deadline: float | None) -> None:
        if deadline is None or conn.phase is Phase.CLOSED:
            return
        current = conn._timer_entry
        if current is not None:
            if current[0] <= deadline:
                return
            # Superseded: the entry stays in the heap until its time, but
            # without the connection, so a closed one is freed at once.
            current[2] = None
        entry = conn._timer_entry = [deadline, next(self._timer_seq), conn]
        heapq.heappush(self._timers, entry)

    def _drop_timer(self, conn: ServerConnection) -> None:
        entry = conn._timer_entry
        if entry is not None:
            entry[2] = None
            conn._timer_entry = None

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            conn = heapq.heappop(timers)[2]
            if conn is None:
                continue
            conn._timer_entry = None
            if conn.phase is Phase.CLOSED:
                continue
            self._set_timer(conn, conn.on_timer(now))

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRNOS_FD:
                    self._pause_accepting(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            refusal, quota_key = self._admit(address)
            conn = ServerConnection(self, sock, address, refusal=refusal, quota_key=quota_key)
            self._connections[conn.fd] = conn
            conn.register()
            self._reconcile(conn)

    def _admit(self, address: Any) -> tuple[Any, str | None]:
        """Decide at accept, without a worker: a refusal (503, 429) or the quota slot taken."""
        config = self.config
        open_count = len(self._connections) + len(self._http_sockets)
        if self.shutting_down or open_count >= config.max_connections:
            if not self.shutting_down:
                self.violations.log(
                    "capacity",
                    "*",
                    "refusing new connections with 503: %d open, MAX_CONNECTIONS is %d",
                    open_count,
                    config.max_connections,
                )
            return ServiceUnavailable("Service Unavailable: too many connections"), None
        limit = config.max_connections_per_address
        if limit is None:
            return None, None
        host = _host(address)
        if in_networks(host, self._quota_exempt):
            return None, None
        key = address_key(host)
        if self.quotas.claim(key, limit):
            return None, key
        self.violations.log(
            "quota",
            key,
            "refusing %s with 429: %s already holds %d connection(s) (MAX_CONNECTIONS_PER_ADDRESS)",
            _format_address(address),
            key,
            limit,
        )
        return TooManyRequests("Too Many Requests: too many connections from this address"), None

    def _pause_accepting(self, exc: OSError) -> None:
        if not self._emfile_logged:
            logger.error(
                "accept() failed (%s): pausing new connections for %.1fs; raise the open-files limit (ulimit -n)",
                exc,
                self.config.accept_pause,
            )
            self._emfile_logged = True
        if self._listener is not None:
            self.poller.unregister(self._listener.fileno())
        self._accept_paused_until = time.monotonic() + self.config.accept_pause

    def _resume_accepting(self) -> None:
        self._accept_paused_until = 0.0
        if self._listener is not None and not self.shutting_down:
            self.poller.register(self._listener.fileno(), READ)

    def handshake_started(self) -> None:
        """A handshake went to the application: one disconnect() is now due."""
        with self._all_disconnected:
            self._pending_disconnects += 1

    def handshake_cancelled(self) -> None:
        """A handshake queued for the application was refused before a worker took it: no disconnect() due."""
        with self._all_disconnected:
            self._pending_disconnects -= 1
            if self._pending_disconnects <= 0:
                self._all_disconnected.notify_all()

    # -------------------------------------------------------------- overload

    @property
    def overloaded(self) -> bool:
        """Whether work has waited ``overload_delay`` seconds for a worker (new handshakes get 503)."""
        delay = self.config.overload_delay
        return delay is not None and self.pool.queue_delay() >= delay

    def _overload_check_due(self) -> bool:
        return self.config.overload_delay is not None and bool(self.pool.queued_count or self._overload_since)

    def _check_overload(self, now: float) -> None:
        """Shed load while overloaded (I/O thread, every ``overload_delay / 4`` at most 1 s).

        Handshakes waiting that long for a worker get 503; connections whose
        inbox is full get 1013. Logged when the overload starts, for every
        sweep that refused or closed something, and when it ends.
        """
        if now < self._next_overload_check:
            return
        self._next_overload_check = now + self._overload_interval
        waited = self.pool.queue_delay()
        delay = self.config.overload_delay
        if delay is None or waited < delay or self.shutting_down:
            if self._overload_since:
                logger.warning("no longer overloaded, after %.1fs", now - self._overload_since)
                self._overload_since = 0.0
            return
        if not self._overload_since:
            self._overload_since = now
            logger.warning(
                "overloaded: work has waited %.1fs for one of the %d workers (OVERLOAD_DELAY %gs); "
                "new handshakes get 503 and connections with a full inbox are closed with 1013",
                waited,
                self.pool.size,
                delay,
            )
        refused = 0
        closed: list[str] = []
        for conn in list(self._connections.values()):
            done = conn.shed_for_overload(now)
            if done is None:
                continue
            if done == "closed":
                closed.append(_format_address(conn.remote_address))
            else:
                refused += 1
            self._reconcile(conn)
        if closed or refused:
            logger.warning(
                "overloaded: refused %d waiting handshake(s) with 503; closed %d connection(s) with 1013%s",
                refused,
                len(closed),
                (": " + ", ".join(closed[:10]) + (", ..." if len(closed) > 10 else "")) if closed else "",
            )
