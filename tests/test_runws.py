"""``manage.py runws``: argument parsing, the banner, signals, exit codes, autoreload (1012), and the HTTP, TLS and --ws-only options.

Unit tests drive the command in-process with a stand-in server; the others run
the example project's ``manage.py runws`` in a subprocess and talk to it over
real sockets. Every wait is bounded and waits on something (a line of output,
a socket, a process exit), never on the clock alone.
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import io
import os
import platform
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import autoreload

from django_rawws.management.commands import runws
from django_rawws.management.commands.runws import Address, Command, parse_addrport, raise_open_files_limit
from django_rawws.testing import WebSocketTestClient

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE = REPOSITORY / "example_project"

# Generous bounds: they only matter when something is broken.
START_TIMEOUT = 30.0
#: The tgkill(2) system call's number, by machine (Python has no wrapper).
SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())
EXIT_TIMEOUT = 30.0


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunwsProcess:
    """``python manage.py runws ...`` of a copy of the example project, with its output read by threads."""

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPOSITORY)}
        environ.pop("DJANGO_SETTINGS_MODULE", None)
        environ.pop(autoreload.DJANGO_AUTORELOAD_ENV, None)
        environ.update(env or {})
        self.project = project
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runws", *args],
            cwd=project,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Its own process group, so that kill() ends the reloader's child too.
            start_new_session=True,
        )
        self.stdout_lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(
                target=self._pump, args=(self.process.stdout, self.stdout, self.stdout_lines), daemon=True
            ),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr, None), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: Any, lines: list[str], sink: queue.Queue[str | None] | None) -> None:
        for line in stream:
            lines.append(line)
            if sink is not None:
                sink.put(line)
        stream.close()
        if sink is not None:
            sink.put(None)

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """Consume stdout lines until one matches ``pattern``; fail with the output so far."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.stdout_lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout}s\n{self.output()}")
            if line is None:
                self.process.wait(EXIT_TIMEOUT)
                pytest.fail(f"runws exited ({self.process.returncode}) before {pattern!r}\n{self.output()}")
            match = regex.search(line)
            if match:
                return match

    def wait_until_serving(self) -> str:
        """Wait for the banner; return the server's ws:// base URL."""
        return self.wait_for_line(r"Starting WebSocket server at (ws://\S+?)/$").group(1)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"runws did not exit within {timeout}s\n{self.output()}")
        for thread in self._threads:
            thread.join(timeout)
        return code

    def output(self) -> str:
        return f"--- stdout\n{''.join(self.stdout)}--- stderr\n{''.join(self.stderr)}"

    def kill(self) -> None:
        # The reloader's child may outlive its parent: end the whole group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(EXIT_TIMEOUT)
        for thread in self._threads:
            thread.join(EXIT_TIMEOUT)


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """A copy of example_project/ (its SQLite file, and files touched to trigger reloads, stay there)."""
    target = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    return target


@pytest.fixture
def start_runws(example_copy: Path) -> Iterator[Any]:
    """Start runws of the example copy; every process started is killed at the end if still running."""
    started: list[RunwsProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunwsProcess:
        process = RunwsProcess(example_copy, *args, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


# ---------------------------------------------------------- argument parsing


@pytest.mark.parametrize(
    ("addrport", "use_ipv6", "expected"),
    [
        (None, False, Address("127.0.0.1", 8000, False, False)),
        ("8001", False, Address("127.0.0.1", 8001, False, False)),
        ("0.0.0.0:8001", False, Address("0.0.0.0", 8001, False, False)),
        ("[::1]:8001", False, Address("::1", 8001, True, True)),
        ("[::]:9000", False, Address("::", 9000, True, True)),
        ("localhost:8001", False, Address("localhost", 8001, False, False)),
        ("0:8001", False, Address("0", 8001, False, False)),
        (None, True, Address("::1", 8000, True, True)),
        ("8001", True, Address("::1", 8001, True, True)),
        ("localhost:8001", True, Address("localhost", 8001, True, False)),
        ("0", False, Address("127.0.0.1", 0, False, False)),
    ],
)
def test_addrport_is_parsed_like_runserver(addrport: str | None, use_ipv6: bool, expected: Address) -> None:
    assert parse_addrport(addrport, use_ipv6=use_ipv6) == expected


@pytest.mark.parametrize(
    ("addrport", "use_ipv6", "message"),
    [
        ("abc", False, '"abc" is not a valid port number or address:port pair.'),
        ("127.0.0.1:", False, '"127.0.0.1:" is not a valid port number or address:port pair.'),
        ("[::1]", False, '"[::1]" is not a valid port number or address:port pair.'),
        ("127.0.0.1:8000", True, '"127.0.0.1" is not a valid IPv6 address.'),
        ("70000", False, "'70000' is not a valid port number."),
    ],
)
def test_invalid_addrport_is_a_command_error(addrport: str, use_ipv6: bool, message: str) -> None:
    with pytest.raises(CommandError) as excinfo:
        parse_addrport(addrport, use_ipv6=use_ipv6)
    assert str(excinfo.value) == message


def test_command_refuses_an_invalid_addrport_before_starting_anything() -> None:
    with pytest.raises(CommandError, match="is not a valid port number or address:port pair"):
        call_command("runws", "not-a-port", "--noreload")


@override_settings(DEBUG=False, ALLOWED_HOSTS=[])
def test_command_requires_allowed_hosts_when_debug_is_off() -> None:
    with pytest.raises(CommandError, match="You must set settings.ALLOWED_HOSTS if DEBUG is False."):
        call_command("runws", "--noreload")


def test_open_files_soft_limit_is_raised_to_the_hard_limit() -> None:
    resource = pytest.importorskip("resource")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(before[0], 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, before[1]))
    try:
        limits = raise_open_files_limit()
        assert limits is not None
        assert limits.previous == lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (limits.soft, limits.hard)
        if before[1] != resource.RLIM_INFINITY:
            assert limits.soft == before[1]
            assert limits.describe() == f"{before[1]} (raised from {lowered})"
        else:
            assert limits.soft > lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


# ------------------------------------------- the command with a stand-in server


class FakeServer:
    """Records what the command asks of a server; ``stop()`` returns ``clean``."""

    instances: ClassVar[list[FakeServer]] = []
    clean = True
    on_start: Any = None

    def __init__(self, app: Any, host: str, port: int, config: Any, *, ssl_context: Any = None) -> None:
        self.app, self.host, self.port, self.config = app, host, port, config
        self.ssl_context = ssl_context
        self.started = False
        self.stops: list[tuple[float, int]] = []
        self.connection_count = 0
        type(self).instances.append(self)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port or 43210)

    def start(self) -> None:
        self.started = True
        if self.on_start is not None:
            self.on_start()

    def stop(self, grace: float, *, close_code: int) -> bool:
        self.stops.append((grace, close_code))
        return self.clean


class FakeBackend:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def attach(self, server: Any) -> None:
        self.events.append(("attach", server))

    def detach(self, server: Any) -> None:
        self.events.append(("detach", server))


def make_command(*, clean: bool = True, on_start: Any = None) -> tuple[Command, FakeBackend]:
    backend = FakeBackend()

    class TestServer(FakeServer):
        pass

    TestServer.instances = []
    TestServer.clean = clean
    TestServer.on_start = staticmethod(on_start) if on_start is not None else None

    class TestCommand(Command):
        server_cls = TestServer  # type: ignore[assignment]

        def get_application(self) -> Any:
            return "the application"

        def get_group_backend(self) -> Any:
            return backend

    return TestCommand(), backend


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.test_runws", "SHUTDOWN_GRACE": 2.5})
@pytest.mark.parametrize(("clean", "status"), [(True, 0), (False, 1)])
def test_sigterm_stops_the_server_with_1001_and_the_grace_then_exits_0_or_1(clean: bool, status: int) -> None:
    command, backend = make_command(clean=clean, on_start=lambda: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as excinfo:
        call_command(command, "127.0.0.1:0", "--noreload", "--skip-checks")
    assert excinfo.value.code == status
    server = type(command).server_cls.instances[0]  # type: ignore[attr-defined]
    assert server.app == "the application"
    assert server.stops == [(2.5, 1001)]
    assert backend.events == [("attach", server), ("detach", server)]
    # The command's handlers are gone once it returns.
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.test_runws"})
def test_sigint_also_stops_the_server_with_1001() -> None:
    command, _ = make_command(on_start=lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as excinfo:
        call_command(command, "127.0.0.1:0", "--noreload", "--skip-checks")
    assert excinfo.value.code == 0
    assert type(command).server_cls.instances[0].stops == [(10.0, 1001)]  # type: ignore[attr-defined]


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.test_runws", "SHUTDOWN_GRACE": 3})
def test_reload_stops_the_server_with_1012_before_the_child_exits_with_3(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's reloader ends the child with sys.exit(3) in its main thread; runws closes with 1012 first."""

    class Reloader:
        pass

    def start_django(reloader: Any, main_func: Any, *args: Any, **kwargs: Any) -> None:
        main_func(*args, **kwargs)  # in a thread in real life; the server is running after it
        autoreload.trigger_reload("chat/consumers.py")

    monkeypatch.setenv(autoreload.DJANGO_AUTORELOAD_ENV, "true")
    monkeypatch.setattr(autoreload, "get_reloader", Reloader)
    monkeypatch.setattr(autoreload, "start_django", start_django)
    command, backend = make_command()
    with pytest.raises(SystemExit) as excinfo:
        call_command(command, "127.0.0.1:0", "--skip-checks")
    assert excinfo.value.code == 3
    server = type(command).server_cls.instances[0]  # type: ignore[attr-defined]
    assert server.stops == [(3.0, 1012)]
    assert backend.events == [("attach", server), ("detach", server)]


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.test_runws"})
def test_bind_errors_get_runservers_friendly_messages(capsys: pytest.CaptureFixture[str]) -> None:
    def in_use() -> None:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    command, backend = make_command(on_start=in_use)
    with pytest.raises(SystemExit) as excinfo:
        call_command(command, "127.0.0.1:8000", "--noreload", "--skip-checks")
    assert excinfo.value.code == 1
    assert "Error: That port is already in use." in capsys.readouterr().err
    assert backend.events == []


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (errno.EACCES, "You don't have permission to access that port."),
        (errno.EADDRNOTAVAIL, "That IP address can't be assigned to."),
        (errno.EADDRINUSE, "That port is already in use."),
    ],
)
def test_each_usual_bind_errno_has_a_one_line_message(code: int, message: str) -> None:
    assert runws.ERRORS[code] == message


# ------------------------------------------------- the real command, as a process


def test_banner_names_the_url_urlconf_backend_workers_and_open_files_limit(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    assert process.wait_until_serving() == f"ws://127.0.0.1:{port}"
    banner = {}
    for label in ("WebSocket URLconf", "Group backend", "Workers", "Open files limit", "Health check"):
        banner[label] = process.wait_for_line(rf"^  {label}:\s+(.+)$").group(1)
    process.wait_for_line(r"^Quit the server with CONTROL-C\.$")
    assert banner["WebSocket URLconf"] == "chat.wsurls"
    assert banner["Group backend"] == "django_rawws.groups.memory.MemoryGroupBackend"
    assert int(banner["Workers"]) >= 1
    assert re.fullmatch(
        r"(\d+|unlimited) \((hard limit|raised from) (\d+|unlimited)\)", banner["Open files limit"]
    )
    assert banner["Health check"] == f"http://127.0.0.1:{port}/healthz"
    assert "System check identified no issues" in "".join(process.stdout)
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_sigterm_closes_every_client_with_1001_and_exits_0(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    url = process.wait_until_serving()
    clients = [WebSocketTestClient(f"{url}/ws/echo/") for _ in range(3)]
    for index, client in enumerate(clients):
        client.send(f"ping {index}")
        assert client.receive() == f"ping {index}"
    process.signal(signal.SIGTERM)
    for client in clients:
        assert client.assert_closed(1001) == 1001
    assert process.wait() == 0
    assert "Shutting down: closing 3 connection(s) with 1001" in "".join(process.stdout)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or SYS_TGKILL is None,
    reason="aims the signal at one thread with Linux's tgkill (x86_64 and aarch64)",
)
def test_sigterm_taken_by_a_thread_other_than_the_main_one_still_stops_the_server(start_runws: Any) -> None:
    """The kernel may hand a process's SIGTERM to any thread (the I/O thread, a worker):
    the main thread, blocked waiting for it, must still wake and shut down."""
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    url = process.wait_until_serving()
    pid = process.process.pid
    with WebSocketTestClient(f"{url}/ws/echo/") as client:
        client.send("before")
        assert client.receive() == "before"
        other_threads = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
        assert other_threads, "runws runs server threads besides the main one"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, other_threads[-1], signal.SIGTERM) == 0, ctypes.get_errno()
        client.assert_closed(1001)
    assert process.wait() == 0


def test_ctrl_c_closes_clients_with_1001_and_exits_0(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    url = process.wait_until_serving()
    with WebSocketTestClient(f"{url}/ws/echo/") as client:
        client.send("before")
        assert client.receive() == "before"
        process.signal(signal.SIGINT)
        client.assert_closed(1001)
    assert process.wait() == 0


def test_port_in_use_prints_the_friendly_error_and_exits_1(start_runws: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_runws(f"127.0.0.1:{port}", "--noreload")
        assert process.wait() == 1
    assert "Error: That port is already in use." in "".join(process.stderr)


def test_ipv6_literal_is_served_and_shown_in_brackets(start_runws: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    process = start_runws(f"[::1]:{port}", "--noreload")
    url = process.wait_until_serving()
    assert url == f"ws://[::1]:{port}"
    with WebSocketTestClient(f"{url}/ws/echo/") as client:
        client.send("over IPv6")
        assert client.receive() == "over IPv6"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_autoreload_closes_clients_with_1012_and_serves_again_after_the_restart(
    start_runws: Any, example_copy: Path
) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}")
    url = process.wait_until_serving()
    client = WebSocketTestClient(f"{url}/ws/echo/")
    client.send("first run")
    assert client.receive() == "first run"

    # Django's StatReloader compares modification times once a second, from
    # a first snapshot taken as it starts: move the file's mtime forward
    # until the reload shows (each attempt waits on the client's socket).
    watched = example_copy / "chat" / "consumers.py"
    mtime = watched.stat().st_mtime
    deadline = time.monotonic() + 30
    while True:
        mtime += 10
        os.utime(watched, (mtime, mtime))
        try:
            assert client.wait_closed(timeout=1.5) == 1012
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                pytest.fail(f"no reload after touching {watched}\n{process.output()}")
    client.abort()
    process.wait_for_line(r"^Reloading: closing 1 connection\(s\) with 1012")

    # The new child prints its banner once it listens again.
    assert process.wait_until_serving() == url
    with WebSocketTestClient(f"{url}/ws/echo/") as again:
        again.send("second run")
        assert again.receive() == "second run"
        # SIGTERM to the reloader's parent reaches the child: 1001, exit 0.
        process.signal(signal.SIGTERM)
        again.assert_closed(1001)
    assert process.wait() == 0


def test_ctrl_c_in_a_terminal_under_the_reloader_closes_with_1001_and_exits_0(start_runws: Any) -> None:
    """A terminal sends SIGINT to the whole process group: parent and child; only the child acts."""
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}")
    url = process.wait_until_serving()
    with WebSocketTestClient(f"{url}/ws/echo/") as client:
        client.send("before")
        assert client.receive() == "before"
        os.killpg(process.process.pid, signal.SIGINT)
        client.assert_closed(1001)
    assert process.wait() == 0
    assert "Second interrupt" not in "".join(process.stderr)


def test_system_check_errors_stop_runws_before_it_binds(start_runws: Any, example_copy: Path) -> None:
    (example_copy / "example_project" / "settings_no_urlconf.py").write_text(
        "from .settings import *  # noqa: F403\n\nRAWWS = {}\n"
    )
    port = free_port()
    process = start_runws(
        f"127.0.0.1:{port}", "--noreload", "--settings", "example_project.settings_no_urlconf"
    )
    assert process.wait() == 1
    assert "rawws.E001" in "".join(process.stderr)
    assert not any("Starting WebSocket server" in line for line in process.stdout)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_second_ctrl_c_exits_at_once_with_1(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    url = process.wait_until_serving()
    # A client that never reads: the shutdown would wait CLOSE_TIMEOUT (10 s) for its close reply.
    silent = WebSocketTestClient(f"{url}/ws/echo/")
    try:
        process.signal(signal.SIGINT)
        process.wait_for_line(r"^Shutting down: closing 1 connection\(s\) with 1001")
        process.signal(signal.SIGINT)
        assert process.wait(timeout=8) == 1
        assert "Second interrupt: exiting without waiting for handlers." in "".join(process.stderr)
    finally:
        silent.abort()


def test_handler_still_running_after_the_grace_makes_runws_exit_1_and_log_its_stack(
    start_runws: Any, example_copy: Path
) -> None:
    (example_copy / "chat" / "slow.py").write_text(
        "import threading\n"
        "from django.urls import path\n"
        "from django_rawws.consumers import WebSocketConsumer\n\n"
        "class StuckConsumer(WebSocketConsumer):\n"
        "    def receive(self, text=None, bytes=None):\n"
        "        self.send(text='stuck')\n"
        "        threading.Event().wait(60)  # a handler that outlives any grace\n\n"
        "urlpatterns = [path('ws/stuck/', StuckConsumer.as_consumer())]\n"
    )
    (example_copy / "example_project" / "settings_stuck.py").write_text(
        "from .settings import *  # noqa: F403\n\n"
        "RAWWS = {'URLCONF': 'chat.slow', 'SHUTDOWN_GRACE': 0.5, 'SLOW_HANDLER_WARNING': None}\n"
    )
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload", "--settings", "example_project.settings_stuck")
    url = process.wait_until_serving()
    with WebSocketTestClient(f"{url}/ws/stuck/") as client:
        client.send("go")
        assert client.receive() == "stuck"  # the handler is now blocked
        process.signal(signal.SIGTERM)
        client.assert_closed(1001)
        assert process.wait() == 1
    stderr = "".join(process.stderr)
    assert "handler still running after the 0.5s grace" in stderr
    assert "StuckConsumer" in stderr or "slow.py" in stderr
    assert "Handlers were still running 0.5s after the shutdown began" in stderr


# ------------------------------------------- HTTP on the same port, TLS, --ws-only


def run_command_until_serving(*arguments: str) -> tuple[Any, str]:
    """Run the real command and application with a stand-in server, stopped once it serves.

    Return the server the command built and what it printed.
    """

    class TestServer(FakeServer):
        instances: ClassVar[list[FakeServer]] = []
        on_start = staticmethod(lambda: os.kill(os.getpid(), signal.SIGTERM))

    class TestCommand(Command):
        server_cls = TestServer  # type: ignore[assignment]

        def get_group_backend(self) -> Any:
            return FakeBackend()

    stdout = io.StringIO()
    with pytest.raises(SystemExit) as excinfo:
        call_command(TestCommand(), "127.0.0.1:0", "--noreload", "--skip-checks", *arguments, stdout=stdout)
    assert excinfo.value.code == 0
    return TestServer.instances[0], stdout.getvalue()


def test_keyfile_without_certfile_is_a_command_error_before_anything_starts() -> None:
    with pytest.raises(CommandError, match="--keyfile needs --certfile"):
        call_command("runws", "--noreload", "--keyfile", "key.pem")


def test_a_missing_certfile_is_a_command_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(CommandError, match=rf"Cannot load the TLS certificate '{re.escape(str(missing))}'"):
        call_command("runws", "--noreload", "--certfile", str(missing))


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.wsurls"})
def test_by_default_plain_http_goes_to_the_projects_wsgi_application() -> None:
    from django.core.handlers.wsgi import WSGIHandler

    from django_rawws.handler import DjangoApplication

    server, output = run_command_until_serving()
    app = server.app
    assert isinstance(app, DjangoApplication)
    assert (app.ws_only, app.secure) == (False, False)
    assert isinstance(app._wsgi_application, WSGIHandler)
    assert server.ssl_context is None
    assert "Starting WebSocket server at ws://127.0.0.1:43210/" in output
    assert re.search(
        r"^  HTTP on this port:  http://127\.0\.0\.1:43210/ \(.+; 4 threads\)$", output, re.MULTILINE
    )
    assert "WARNING: HTTP on this port has runserver's quality" in output
    assert "--ws-only" in output


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.wsurls"})
def test_ws_only_never_loads_the_wsgi_application_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_wsgi_app() -> Any:
        raise AssertionError("--ws-only loaded the WSGI application")

    monkeypatch.setattr("django.core.servers.basehttp.get_internal_wsgi_application", no_wsgi_app)
    server, output = run_command_until_serving("--ws-only")
    assert server.app.ws_only is True
    assert server.app._wsgi_application is None
    assert "  HTTP on this port:  none (--ws-only: 426 on WebSocket routes, 404 elsewhere)" in output
    assert "WARNING" not in output


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.wsurls"})
def test_certfile_and_keyfile_give_the_server_a_tls_context_and_the_banner_wss_and_https(
    tmp_path: Path,
) -> None:
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server, output = run_command_until_serving(
        "--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem")
    )
    assert isinstance(server.ssl_context, ssl.SSLContext)
    assert server.app.secure is True
    assert "Starting WebSocket server at wss://127.0.0.1:43210/" in output
    assert "  HTTP on this port:  https://127.0.0.1:43210/ (" in output
    assert "  Health check:       https://127.0.0.1:43210/healthz" in output
    assert f"  TLS certificate:    {tmp_path / 'cert.pem'}" in output


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        client.request("GET", path)
        response = client.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        client.close()


def test_runws_serves_the_sites_pages_and_static_files_on_its_port(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    process.wait_until_serving()
    http_line = process.wait_for_line(r"^  HTTP on this port:\s+(.+)$").group(1)
    process.wait_for_line(r"^WARNING: HTTP on this port has runserver's quality")
    assert http_line == (
        f"http://127.0.0.1:{port}/ (example_project.wsgi.application, static files at /static/; 4 threads)"
    )
    status, headers, body = http_get(port, "/static/admin/css/base.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and body
    status, _, body = http_get(port, "/admin/login/")
    assert status == 200 and b"<form" in body
    with WebSocketTestClient(f"ws://127.0.0.1:{port}/ws/echo/") as client:
        client.send("next to the pages")
        assert client.receive() == "next to the pages"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert '"GET /static/admin/css/base.css HTTP/1.1" 200' in "".join(process.stderr)


def test_runws_nostatic_leaves_static_urls_to_the_project(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload", "--nostatic")
    process.wait_until_serving()
    assert http_get(port, "/static/admin/css/base.css")[0] == 404
    assert http_get(port, "/admin/login/")[0] == 200
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_runws_ws_only_answers_426_on_websocket_routes_and_404_elsewhere(start_runws: Any) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload", "--ws-only")
    process.wait_until_serving()
    status, headers, _ = http_get(port, "/ws/echo/")
    assert (status, headers.get("Upgrade")) == (426, "websocket")
    assert http_get(port, "/admin/login/")[0] == 404
    assert http_get(port, "/static/admin/css/base.css")[0] == 404
    assert http_get(port, "/healthz")[:3:2] == (200, b"ok\n")
    with WebSocketTestClient(f"ws://127.0.0.1:{port}/ws/echo/") as client:
        client.send("ws only")
        assert client.receive() == "ws only"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


@pytest.mark.django_db
@override_settings(RAWWS={"URLCONF": "tests.wsurls", "HTTP_WORKERS": 0})
def test_with_http_workers_0_the_banner_says_plain_requests_get_426() -> None:
    _, output = run_command_until_serving()
    assert "  HTTP on this port:  none (HTTP_WORKERS is 0: plain requests get 426)" in output
    assert "WARNING" not in output
