"""``manage.py runws``: serve the project's WebSocket routes as ``runserver`` serves its views.

The command stays thin. It parses ``addrport`` like ``runserver``, runs the
system checks, raises the open-files limit, builds a
:class:`~django_rawws.server.Server` from the ``RAWWS`` setting, prints a
banner and waits for a signal; everything else happens in the server.

One port serves the whole site in development: a plain HTTP request goes to
the project's WSGI application through Django's own request handler, static
files included, with the options of staticfiles' ``runserver``
(``--nostatic``, ``--insecure``). ``--ws-only`` is for production, where HTTP
goes to a WSGI server; ``--certfile``/``--keyfile`` serve ``wss://`` and
``https://``.

Signals are handled here, in the main thread, never by the server library.
SIGTERM or Ctrl-C stops the server with a grace (``SHUTDOWN_GRACE``): the
process exits 0 when every handler finished in time, 1 otherwise. A second
Ctrl-C exits at once; a second SIGTERM is ignored.

Autoreload works as in ``runserver``: a parent process runs the command again
as a child, and starts a new child each time one exits with code 3, which is
what Django's reloader does (``sys.exit(3)`` in the child's main thread) when a
watched file changes. The child's main thread watches files while another
thread starts the server; the ``SystemExit(3)`` passes through this command on
its way out, and the server is stopped with 1012 (service restart) first, so
that clients know to reconnect. The parent is ours rather than
``autoreload.restart_with_reloader``: that one kills the child at once on
SIGTERM, and a quarter of a second after Ctrl-C, too soon for a graceful
shutdown. Ours forwards SIGTERM and waits.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
from datetime import datetime
from typing import Any, ClassVar, NamedTuple, NoReturn

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.core.management.commands.runserver import naiveip_re
from django.db import connections
from django.utils import autoreload

from django_rawws.protocol.codes import CloseCode
from django_rawws.server import Server, ServerConfig

__all__ = ["Address", "Command", "OpenFilesLimit", "parse_addrport", "raise_open_files_limit"]

logger = logging.getLogger("django_rawws.server")

#: The exit status with which Django's reloader asks for a restart.
RELOAD_EXIT_CODE = 3

ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}


class Address(NamedTuple):
    """Where to listen, as ``runserver`` understands its ``addrport`` argument."""

    #: Host to bind: an IPv4 or IPv6 literal (no brackets) or a name.
    addr: str
    port: int
    use_ipv6: bool
    #: Whether ``addr`` is an IPv6 literal, shown in brackets in URLs.
    raw_ipv6: bool


def parse_addrport(
    addrport: str | None,
    *,
    use_ipv6: bool = False,
    default_addr: str = "127.0.0.1",
    default_addr_ipv6: str = "::1",
    default_port: str = "8000",
) -> Address:
    """Parse ``8001``, ``0.0.0.0:8001``, ``[::1]:8001`` or ``host:8001`` as ``runserver`` does.

    Raises:
        CommandError: not a port or ``address:port`` pair, a port over
            65535, or a non-IPv6 address with ``use_ipv6``.
    """
    raw_ipv6 = False
    if not addrport:
        addr, port = "", default_port
    else:
        match = re.match(naiveip_re, addrport)
        if match is None:
            raise CommandError(f'"{addrport}" is not a valid port number or address:port pair.')
        addr, _ipv4, ipv6, fqdn, port = match.groups()
        addr = addr or ""
        if addr:
            if ipv6:
                addr = addr[1:-1]
                use_ipv6 = raw_ipv6 = True
            elif use_ipv6 and not fqdn:
                raise CommandError(f'"{addr}" is not a valid IPv6 address.')
    if not port.isdigit() or int(port) > 65535:
        raise CommandError(f"{port!r} is not a valid port number.")
    if not addr:
        addr = default_addr_ipv6 if use_ipv6 else default_addr
        raw_ipv6 = use_ipv6
    return Address(addr, int(port), use_ipv6, raw_ipv6)


class OpenFilesLimit(NamedTuple):
    soft: int
    hard: int
    #: The soft limit before :func:`raise_open_files_limit` raised it.
    previous: int

    def describe(self) -> str:
        if self.soft == self.previous:
            return f"{_format_limit(self.soft)} (hard limit {_format_limit(self.hard)})"
        return f"{_format_limit(self.soft)} (raised from {_format_limit(self.previous)})"


def _format_limit(value: int) -> str:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return str(value)
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def raise_open_files_limit() -> OpenFilesLimit | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every WebSocket is a descriptor.

    An unlimited hard limit (macOS) is not a valid soft limit there, so
    smaller values are tried in turn. Return the limits afterwards, or None
    where the ``resource`` module does not exist.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    previous = soft
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        candidates = [hard] if hard != resource.RLIM_INFINITY else []
        candidates += [
            value for value in (1 << 20, 1 << 16, 10240) if value > soft and value not in candidates
        ]
        for target in candidates:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            break
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFilesLimit(soft, hard, previous)


class _Stop(BaseException):
    """Raised in the reloader's main thread by the first SIGTERM or SIGINT: stop watching, shut down.

    A BaseException, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _SignalHandlers:
    """SIGTERM and SIGINT in the main thread of the process that runs the server.

    The first one sets :attr:`received`; with ``interrupt`` it also raises
    :class:`_Stop` in the main thread, which is then running nothing but
    the reloader's file watching. After it, a second Ctrl-C exits at once and
    SIGTERM is ignored (the shutdown is already under way).
    """

    def __init__(self, command: Command, *, interrupt: bool) -> None:
        self.command = command
        self.interrupt = interrupt
        self.received = threading.Event()
        self.previous: dict[int, Any] = {}

    def install(self) -> _SignalHandlers:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._first)
        return self

    def wait(self) -> None:
        """Block the main thread until the first signal has been handled.

        Not ``received.wait()``: the kernel may hand a process's signal to
        any of its threads, and CPython then runs the Python handler in the
        main thread only once that thread runs again, which a thread blocked
        on a lock never does. The wakeup fd is written by the C-level handler
        in whichever thread took the signal, so this select() always returns.
        """
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        try:
            while not self.received.is_set():
                select.select([reader], [], [])
                try:
                    reader.recv(64)
                except BlockingIOError:
                    pass
        finally:
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()

    def stopping(self) -> None:
        """The shutdown began: from now on, only a second Ctrl-C does something."""
        for signum in self.previous:
            signal.signal(signum, self._again)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    def _first(self, signum: int, frame: Any) -> None:
        self.stopping()
        self.received.set()
        if self.interrupt:
            raise _Stop(signum)

    def _again(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self.command.stderr.write("Second interrupt: exiting without waiting for handlers.")
            self.command.stdout.flush()
            os._exit(1)


class Command(BaseCommand):
    help = "Starts the django-rawws WebSocket server (autoreloading unless --noreload)."

    # Checks run in inner_run, again after every reload, as runserver does.
    requires_system_checks: ClassVar[list[str]] = []
    suppressed_base_arguments: ClassVar[set[str]] = {"--verbosity", "--traceback"}

    default_addr = "127.0.0.1"
    default_addr_ipv6 = "::1"
    default_port = "8000"
    protocol = "ws"
    #: The server class; a subclass may swap it (as runserver's ``server_cls``).
    server_cls: type[Server] = Server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.server: Server | None = None
        self.backend: Any = None
        self.open_files: OpenFilesLimit | None = None
        self._server_lock = threading.Lock()
        self._closing = False
        self._signals: _SignalHandlers | None = None
        self.options: dict[str, Any] = {}
        self.ssl_context: ssl.SSLContext | None = None
        #: The live-state socket for ``manage.py ws_status`` (see start_inspection).
        self.inspection: Any = None
        self.inspection_status = "off"

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("addrport", nargs="?", help="Optional port number, or ipaddr:port")
        parser.add_argument(
            "--ipv6", "-6", action="store_true", dest="use_ipv6", help="Tells Django to use an IPv6 address."
        )
        parser.add_argument(
            "--noreload",
            action="store_false",
            dest="use_reloader",
            help="Tells Django to NOT use the auto-reloader.",
        )
        parser.add_argument("--skip-checks", action="store_true", help="Skip system checks.")
        parser.add_argument(
            "--nostatic",
            action="store_false",
            dest="use_static_handler",
            help="Tells Django to NOT automatically serve static files at STATIC_URL.",
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            dest="insecure_serving",
            help="Allows serving static files even if DEBUG is False.",
        )
        parser.add_argument(
            "--ws-only",
            action="store_true",
            help=(
                "Serve WebSockets only, for a site whose HTTP goes to a WSGI server: a plain request "
                "gets 426 on a WebSocket route and 404 elsewhere (the health path still answers)."
            ),
        )
        parser.add_argument(
            "--reuse-port",
            action="store_true",
            help=(
                "Set SO_REUSEPORT on the listening socket (RAWWS['REUSE_PORT']): several runws processes "
                "share one port and the kernel spreads connections among them. Groups then need a shared "
                "backend (Redis)."
            ),
        )
        parser.add_argument(
            "--certfile", help="PEM certificate (chain) file: serve wss:// and https:// with TLS."
        )
        parser.add_argument(
            "--keyfile", help="PEM private key file of --certfile (default: the key is in --certfile)."
        )

    # ----------------------------------------------------------- extension points

    def get_application(self) -> Any:
        """The application the server calls on its workers (see :mod:`django_rawws.server.core`).

        Plain HTTP requests on the same port go to :meth:`get_handler`'s WSGI
        application, unless ``--ws-only``.
        """
        from django_rawws.handler import DjangoApplication

        options = self.options
        ws_only = bool(options.get("ws_only"))
        return DjangoApplication(
            wsgi_application=None if ws_only else self.get_handler(**options),
            ws_only=ws_only,
            secure=self.ssl_context is not None,
        )

    def get_handler(self, *args: Any, **options: Any) -> Any:
        """The project's WSGI application, wrapped to serve static files as ``runserver`` does.

        With ``django.contrib.staticfiles`` installed, files under
        ``STATIC_URL`` are served in DEBUG, or with ``--insecure``, unless
        ``--nostatic`` -- the rules of staticfiles' ``runserver``.
        """
        from django.core.servers.basehttp import get_internal_wsgi_application

        handler = get_internal_wsgi_application()
        if self.serves_static_files(**options):
            from django.contrib.staticfiles.handlers import StaticFilesHandler

            return StaticFilesHandler(handler)
        return handler

    def serves_static_files(self, **options: Any) -> bool:
        """Whether :meth:`get_handler` wraps the application in ``StaticFilesHandler``."""
        return (
            apps.is_installed("django.contrib.staticfiles")
            and options.get("use_static_handler", True)
            and (settings.DEBUG or options.get("insecure_serving", False))
        )

    def get_ssl_context(self, certfile: str | None, keyfile: str | None) -> ssl.SSLContext | None:
        """A server-side TLS context for ``--certfile`` / ``--keyfile``, or None without them.

        Raises:
            CommandError: ``--keyfile`` alone, or files that don't load.
        """
        if not certfile:
            if keyfile:
                raise CommandError("--keyfile needs --certfile.")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"Cannot load the TLS certificate {certfile!r}: {exc}") from exc
        return context

    def get_server_config(self) -> ServerConfig:
        from django_rawws.conf import server_config

        if self.options.get("reuse_port"):
            return server_config(reuse_port=True)
        return server_config()

    def get_group_backend(self) -> Any:
        from django_rawws.groups import get_backend

        return get_backend()

    def get_shutdown_grace(self) -> float:
        from django_rawws.conf import get_config

        return float(get_config()["SHUTDOWN_GRACE"])

    # ----------------------------------------------------------------- the command

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG and not settings.ALLOWED_HOSTS:
            raise CommandError("You must set settings.ALLOWED_HOSTS if DEBUG is False.")
        if options["use_ipv6"] and not socket.has_ipv6:
            raise CommandError("Your Python does not support IPv6.")
        address = parse_addrport(
            options["addrport"],
            use_ipv6=options["use_ipv6"],
            default_addr=self.default_addr,
            default_addr_ipv6=self.default_addr_ipv6,
            default_port=self.default_port,
        )
        self.addr, self.port, self.use_ipv6, self._raw_ipv6 = address
        self.options = options
        self.ssl_context = self.get_ssl_context(options.get("certfile"), options.get("keyfile"))
        _configure_default_logging()
        self.run(**options)

    def run(self, **options: Any) -> None:
        """Serve in this process (``--noreload``), or under the reloader."""
        if not options["use_reloader"]:
            self.run_once(**options)
        elif os.environ.get(autoreload.DJANGO_AUTORELOAD_ENV) == "true":
            self.run_reloaded(**options)
        else:
            sys.exit(self.run_reloader_parent())

    def run_once(self, **options: Any) -> None:
        """``--noreload``: the main thread starts the server, then waits for a signal."""
        signals = self._signals = _SignalHandlers(self, interrupt=False).install()
        try:
            try:
                self.inner_run(None, **options)
                signals.wait()
            except BaseException:
                self.shutdown(CloseCode.GOING_AWAY)
                raise
            status = self.shutdown(CloseCode.GOING_AWAY)
        finally:
            signals.restore()
        sys.exit(status)

    def run_reloaded(self, **options: Any) -> None:
        """The reloader's child: watch files in the main thread, serve from another."""
        signals = self._signals = _SignalHandlers(self, interrupt=True).install()
        try:
            reloader = autoreload.get_reloader()
            autoreload.logger.info("Watching for file changes with %s", reloader.__class__.__name__)
            try:
                autoreload.start_django(reloader, self.inner_run, None, **options)
            except _Stop:
                pass
            except SystemExit as exc:
                # The reloader's sys.exit(3) on a file change, on its way out.
                reloading = exc.code == RELOAD_EXIT_CODE
                self.shutdown(CloseCode.SERVICE_RESTART if reloading else CloseCode.GOING_AWAY)
                raise
            except BaseException:
                self.shutdown(CloseCode.GOING_AWAY)
                raise
            status = self.shutdown(CloseCode.GOING_AWAY)
        finally:
            signals.restore()
        sys.exit(status)

    def run_reloader_parent(self) -> int:
        """Run the command as a child until it exits with something else than 3; return that.

        SIGTERM is forwarded to the child, which shuts down gracefully. Ctrl-C
        is not: the terminal sends it to the child too (same process group),
        and forwarding it would count as a second, forcing, interrupt.
        """
        environ = {**os.environ, autoreload.DJANGO_AUTORELOAD_ENV: "true"}
        arguments = autoreload.get_child_arguments()
        child: subprocess.Popen[bytes] | None = None
        stopping = False

        def on_sigterm(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True
            if child is not None:
                child.send_signal(signal.SIGTERM)

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_sigterm),
            signal.SIGINT: signal.signal(signal.SIGINT, on_sigint),
        }
        try:
            while True:
                child = subprocess.Popen(arguments, env=environ, close_fds=False)
                if stopping:  # a signal came while the child was being started
                    child.send_signal(signal.SIGTERM)
                code = child.wait()
                if code == RELOAD_EXIT_CODE and stopping:
                    return 0  # stopped while reloading: nothing left to stop
                if code != RELOAD_EXIT_CODE:
                    # A child killed by a signal: report it as a shell would.
                    return code if code >= 0 else 128 - code
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def inner_run(self, *args: Any, **options: Any) -> None:
        """Check, bind, start the server and print the banner; return once it serves.

        Runs in the main thread with ``--noreload``, in the reloader's
        "django-main-thread" otherwise (where an exception is kept for the
        reloader, which then waits for a file change, as runserver does).
        """
        # An exception that Django kept during startup for the reloader.
        autoreload.raise_last_exception()
        if not options.get("skip_checks"):
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        # Close the connections the checks opened in this thread.
        for conn in connections.all(initialized_only=True):
            conn.close()

        self.open_files = raise_open_files_limit()
        config = self.get_server_config()
        application = self.get_application()
        backend = self.connect_group_backend()
        try:
            host = _resolve(self.addr, self.use_ipv6, self._raw_ipv6)
            with self._server_lock:
                if self._closing:
                    return
                server = self.server_cls(application, host, self.port, config, ssl_context=self.ssl_context)
                self.server = server  # before start(): a shutdown must find it
                server.start()
                backend.attach(server)
                self.backend = backend
        except OSError as exc:
            with self._server_lock:
                self.server = None
            self._exit_with_error(exc)
        self.start_inspection(server)
        self.on_bind(server)

    def connect_group_backend(self) -> Any:
        """The group backend, checked reachable: a clear error at start beats failed pushes later.

        Raises:
            CommandError: the backend can't be built (bad path or options) or
                can't be reached (a Redis URL nobody answers).
        """
        from django.core.exceptions import ImproperlyConfigured

        from django_rawws.exceptions import GroupBackendUnavailable

        try:
            backend = self.get_group_backend()
        except ImproperlyConfigured as exc:
            raise CommandError(f"The group backend can't be set up: {exc}") from exc
        check = getattr(backend, "check_available", None)
        if callable(check):
            try:
                check()
            except (GroupBackendUnavailable, OSError) as exc:
                name = f"{type(backend).__module__}.{type(backend).__qualname__}"
                # Not the options themselves: a Redis URL may hold a password.
                raise CommandError(
                    f"The group backend {name} is unreachable: {exc}. Start it, or fix "
                    "RAWWS['GROUP_OPTIONS']; runws does not start without it, since every push would fail."
                ) from exc
        return backend

    def start_inspection(self, server: Server) -> None:
        """Open the live-state socket of ``RAWWS["INSPECT_SOCKET"]`` (read by ``manage.py ws_status``).

        A failure is reported in the banner, not raised: the server works without it.
        """
        from django_rawws.conf import get_config
        from django_rawws.inspection import InspectionServer, expand_socket_path, remove_stale_sockets

        template = get_config()["INSPECT_SOCKET"]
        if not template:
            self.inspection_status = "off (RAWWS['INSPECT_SOCKET'] is None)"
            return
        port = server.address[1]
        tls = self.ssl_context is not None
        info = {
            "url": f"{'wss' if tls else self.protocol}://{self._display_host()}:{port}/",
            "settings": settings.SETTINGS_MODULE,
        }
        try:
            path = expand_socket_path(template, port=port)
            remove_stale_sockets(template)
            inspection = InspectionServer(server, path, backend=lambda: self.backend, info=info).start()
        except (OSError, ValueError, KeyError, IndexError) as exc:
            self.inspection_status = f"unavailable ({exc})"
            logger.warning("live-state socket %r not opened: %s", template, exc)
            return
        with self._server_lock:
            closing = self._closing
            if not closing:
                self.inspection = inspection
        if closing:  # a shutdown began meanwhile (reloader thread): it could not see this one
            inspection.stop()
            return
        self.inspection_status = f"{path} (manage.py ws_status)"

    def unsafe_settings_warnings(self, server: Server) -> list[str]:
        """What in this setup should not face the internet, one sentence each."""
        from django_rawws.conf import get_config

        host = str(server.address[0])
        public = not _is_loopback(host)
        warnings = []
        if settings.DEBUG and public:
            warnings.append(
                f"DEBUG is on and the server listens on {host}, reachable from other machines: "
                "DEBUG answers show settings, stack frames and the list of WebSocket routes. "
                "Listen on 127.0.0.1, or set DEBUG = False."
            )
        if not get_config()["CHECK_ORIGIN"]:
            warnings.append(
                "RAWWS['CHECK_ORIGIN'] is False: any web page your users visit can open a WebSocket "
                "here with their cookies (cross-site WebSocket hijacking). Turn it back on and list "
                "other origins in RAWWS['ALLOWED_ORIGINS']."
            )
        if self.options.get("use_reloader") and public:
            warnings.append(
                f"The autoreloader is on and the server listens on {host}: it is a development "
                "server, restarted (clients closed with 1012) on every file change. Use --noreload "
                "outside development."
            )
        return warnings

    def on_bind(self, server: Server) -> None:
        """Print the banner: where we listen, and what a reader checks first."""
        from django_rawws.conf import get_config

        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        port = server.address[1]
        authority = self._display_host() + f":{port}"
        tls = self.ssl_context is not None
        ws_scheme, http_scheme = ("wss", "https") if tls else (self.protocol, "http")
        options = get_config()
        backend = self.backend
        backend_name = (
            f"{type(backend).__module__}.{type(backend).__qualname__}" if backend is not None else "-"
        )
        now = datetime.now().strftime("%B %d, %Y - %X")
        ws_only = bool(self.options.get("ws_only"))
        serves_http = not ws_only and getattr(server, "serves_http", server.config.http_workers > 0)
        if serves_http:
            wsgi_name = settings.WSGI_APPLICATION or "django.core.wsgi.get_wsgi_application()"
            static = (
                f", static files at {settings.STATIC_URL}" if self.serves_static_files(**self.options) else ""
            )
            http = f"{http_scheme}://{authority}/ ({wsgi_name}{static}; {server.config.http_workers} threads)"
        elif ws_only:
            http = "none (--ws-only: 426 on WebSocket routes, 404 elsewhere)"
        else:
            http = "none (HTTP_WORKERS is 0: plain requests get 426)"
        lines = [
            now,
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}",
            f"Starting WebSocket server at {ws_scheme}://{authority}/",
            f"  HTTP on this port:  {http}",
            f"  WebSocket URLconf:  {options['URLCONF']}",
            f"  Group backend:      {backend_name}",
            f"  Workers:            {server.config.workers}",
            f"  Open files limit:   {self.open_files.describe() if self.open_files else 'unknown'}",
        ]
        if tls:
            lines.append(f"  TLS certificate:    {self.options.get('certfile')}")
        if server.config.health_path:
            lines.append(f"  Health check:       {http_scheme}://{authority}{server.config.health_path}")
        lines.append(f"  Live state:         {self.inspection_status}")
        lines.append(f"Quit the server with {quit_command}.")
        self.stdout.write("\n".join(lines))
        if serves_http and os.environ.get("DJANGO_RUNSERVER_HIDE_WARNING") != "true":
            self.stdout.write(
                self.style.WARNING(
                    "WARNING: HTTP on this port has runserver's quality (Django's development "
                    "handler). In production, send HTTP to a WSGI server and run runws --ws-only "
                    "for the WebSockets alone."
                )
            )
        for warning in self.unsafe_settings_warnings(server):
            self.stdout.write(self.style.WARNING(f"WARNING: {warning}"))
        self.stdout.flush()

    def shutdown(self, close_code: int) -> int:
        """Stop the server (if it started) with ``close_code``; return the exit status: 0 clean, 1 not."""
        if self._signals is not None:
            self._signals.stopping()
        with self._server_lock:
            self._closing = True
            server, self.server = self.server, None
            backend, self.backend = self.backend, None
            inspection, self.inspection = self.inspection, None
        if inspection is not None:
            inspection.stop()
        if server is None:
            return 0
        grace = self.get_shutdown_grace()
        what = "Reloading" if close_code == CloseCode.SERVICE_RESTART else "Shutting down"
        self.stdout.write(
            f"{what}: closing {server.connection_count} connection(s) with {int(close_code)}, "
            f"handlers get up to {grace:g}s to finish."
        )
        self.stdout.flush()
        try:
            clean = server.stop(grace, close_code=close_code)
        finally:
            if backend is not None:
                backend.detach(server)
        if not clean:
            self.stderr.write(
                f"Handlers were still running {grace:g}s after the shutdown began; "
                "their stacks are in the django_rawws.server log."
            )
            return 1
        return 0

    # -------------------------------------------------------------------- helpers

    def _display_host(self) -> str:
        if self._raw_ipv6:
            return f"[{self.addr}]"
        if self.addr == "0":
            return "0.0.0.0"
        return self.addr

    def _exit_with_error(self, exc: OSError) -> NoReturn:
        """Friendly one-liners for the usual bind failures, as runserver gives."""
        self.stderr.write(f"Error: {ERRORS.get(exc.errno, exc)}")  # type: ignore[arg-type]
        self.stdout.flush()
        if threading.current_thread() is threading.main_thread():
            sys.exit(1)
        os._exit(1)  # sys.exit in the reloader's thread would end only that thread


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (a bound address) is reachable from this machine only."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _resolve(addr: str, use_ipv6: bool, raw_ipv6: bool) -> str:
    """A host name becomes an address of the family runserver would bind (IPv4 unless --ipv6)."""
    if raw_ipv6:
        return addr
    family = socket.AF_INET6 if use_ipv6 else socket.AF_INET
    infos = socket.getaddrinfo(addr, None, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    return str(infos[0][4][0])


def _configure_default_logging() -> None:
    """Show the access log and server messages when the project configured no logging for them.

    Django's default logging shows ``runserver``'s request lines through the
    ``django.server`` logger; this is our counterpart. A project that
    configures the ``django_rawws`` logger, or a root handler, keeps its own.
    ``RAWWS["ACCESS_LOG"] = False`` silences the access lines.
    """
    from django_rawws.conf import get_config

    if not get_config()["ACCESS_LOG"]:
        logging.getLogger("django_rawws.access").setLevel(logging.WARNING)
    package_logger = logging.getLogger("django_rawws")
    if package_logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%d/%b/%Y %H:%M:%S"))
    package_logger.addHandler(handler)
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
