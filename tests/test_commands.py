"""``ws_routes``, ``ws_status`` with the inspection socket, and what ``runws`` says at start.

``ws_status`` is checked against a server in this process (the inspection
module on a real server with real clients) and against ``runws`` of the
example project in a subprocess; the socket file's mode is checked both ways.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from websockets.sync.client import connect

from django_rawws.exceptions import GroupBackendUnavailable
from django_rawws.groups import get_backend
from django_rawws.groups.memory import MemoryGroupBackend
from django_rawws.inspection import (
    InspectionServer,
    discover_sockets,
    expand_socket_path,
    query,
    remove_stale_sockets,
)
from django_rawws.management.commands.runws import Command as RunwsCommand
from django_rawws.management.commands.ws_status import format_age, format_bytes
from tests.test_runws import REPOSITORY, FakeBackend, FakeServer, example_copy, free_port, start_runws  # noqa: F401
from tests.utils_server import TIMEOUT, running_server, ws_url

RAWWS = {"URLCONF": "tests.wsurls"}


def run(*args: str, **options: Any) -> tuple[str, str]:
    """``call_command`` with captured stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    call_command(*args, stdout=stdout, stderr=stderr, **options)
    return stdout.getvalue(), stderr.getvalue()


# ------------------------------------------------------------------ ws_routes


@override_settings(RAWWS=RAWWS)
def test_ws_routes_lists_pattern_consumer_and_namespaced_name() -> None:
    out, err = run("ws_routes")
    lines = out.splitlines()
    assert lines[0] == "WebSocket routes of tests.wsurls:"
    assert re.fullmatch(r"pattern\s+consumer\s+name", lines[1])
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["ws/echo/"] == ["tests.wsconsumers.EchoConsumer", "echo"]
    assert rows["ws/rooms/<int:room>/<slug:name>/"] == ["tests.wsconsumers.RouteConsumer", "room"]
    assert rows["^ws/re/(\\d+)/([a-z]+)/$"] == ["tests.wsconsumers.RouteConsumer", "positional"]
    assert rows["ws/api/items/<uuid:item>/"] == ["tests.wsconsumers.RouteConsumer", "api:item"]
    assert rows["ws/greeting/"] == ["tests.wsconsumers.RouteWithGreeting(greeting='bonjour')", "greeting"]
    assert rows["ws/small/"] == ["tests.wsconsumers.EchoConsumer(max_message_size=16)", "-"]
    assert err == ""


@override_settings(RAWWS=RAWWS)
def test_ws_routes_json_has_one_object_per_route_in_urlconf_order() -> None:
    out, _ = run("ws_routes", "--json")
    routes = json.loads(out)
    from tests import wsurls

    assert len(routes) == len(wsurls.urlpatterns) + len(wsurls.api_patterns) - 1
    assert routes[0] == {
        "pattern": "ws/echo/",
        "consumer": "tests.wsconsumers.EchoConsumer",
        "view": "tests.wsconsumers.EchoConsumer",
        "initkwargs": {},
        "name": "echo",
    }
    nodeflate = next(route for route in routes if route["pattern"] == "ws/nodeflate/")
    assert nodeflate["initkwargs"] == {"compression": False}


@override_settings(RAWWS={"URLCONF": "tests.wsurls_bad"})
def test_ws_routes_flags_what_is_not_a_consumer_and_points_to_the_check() -> None:
    out, err = run("ws_routes")
    assert re.search(r"^ws/ok/\s+tests\.wsconsumers\.EchoConsumer\s+-$", out, re.MULTILINE)
    assert re.search(r"^ws/view/\s+NOT A CONSUMER: tests\.wsurls_bad\.a_view\s+-$", out, re.MULTILINE)
    assert re.search(
        r"^ws/instance/\s+NOT A CONSUMER: tests\.wsconsumers\.EchoConsumer\s+-$", out, re.MULTILINE
    )
    assert err.strip() == (
        "2 route(s) lead to something that is not a consumer class: run 'manage.py check' for the fix (rawws.E003)."
    )


@override_settings(RAWWS={"URLCONF": None})
def test_ws_routes_without_a_urlconf_is_a_command_error_naming_the_setting() -> None:
    with pytest.raises(
        CommandError, match=r'RAWWS\["URLCONF"\] must name the module .* \(system check rawws\.E001\)'
    ):
        run("ws_routes")


@override_settings(RAWWS={"URLCONF": "tests.no_such_wsurls"})
def test_ws_routes_with_a_urlconf_that_does_not_import_says_why() -> None:
    with pytest.raises(
        CommandError, match=r"The WebSocket urlconf 'tests\.no_such_wsurls' cannot be loaded: No module"
    ):
        run("ws_routes")


#: This module is also an empty WebSocket urlconf.
urlpatterns: list[Any] = []


@override_settings(RAWWS={"URLCONF": "tests.test_commands"})
def test_ws_routes_of_an_empty_urlconf_says_so() -> None:
    out, _ = run("ws_routes")
    assert out == "tests.test_commands has no WebSocket routes.\n"


# ------------------------------------------------------------------ inspection


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private directory with a short path: a Unix socket path must stay under ~100 bytes."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rawws-t") as name:
        os.chmod(name, 0o700)
        yield Path(name)


@pytest.mark.django_db(transaction=True)
@override_settings(RAWWS=RAWWS)
def test_ws_status_shows_connections_users_groups_and_counters_of_a_running_server(
    short_tmp: Path, client: Any, django_user_model: Any
) -> None:
    user = django_user_model.objects.create_user("ada")
    client.force_login(user)
    session_key = client.cookies["sessionid"].value
    path = short_tmp / "status.sock"
    with running_server() as server:
        address = "{}:{}".format(*server.address)
        with InspectionServer(server, path, backend=get_backend, info={"url": "ws://test/"}):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            with (
                connect(
                    ws_url(server, "/ws/user/"), additional_headers={"Cookie": f"sessionid={session_key}"}
                ) as ada,
                connect(ws_url(server, "/ws/group/")) as anonymous,
            ):
                assert json.loads(ada.recv(timeout=TIMEOUT))["username"] == "ada"
                anonymous.send("join:room.lobby")
                assert anonymous.recv(timeout=TIMEOUT) == "joined"

                out, _ = run("ws_status", "--socket", str(path), "--json")
                table, _ = run("ws_status", "--socket", str(path))
                all_groups, _ = run("ws_status", "--socket", str(path), "--all-groups")
        assert not path.exists(), "the socket file is removed when the inspection stops"

    [state] = json.loads(out)
    assert state["pid"] == os.getpid()
    assert state["url"] == "ws://test/"
    assert state["address"] == address
    by_path = {row["path"]: row for row in state["connections"]}
    assert set(by_path) == {"/ws/user/", "/ws/group/"}
    ada_row, anonymous_row = by_path["/ws/user/"], by_path["/ws/group/"]
    assert ada_row["user"] == str(user.pk)
    assert anonymous_row["user"] is None
    assert ada_row["consumer"] == "tests.wsconsumers.UserConsumer"
    assert ada_row["phase"] == "open"
    assert ada_row["bytes_in"] > 0 and ada_row["bytes_out"] > 0
    assert ada_row["buffered"] == 0
    assert ada_row["age"] >= 0
    # Session keys never leave the process: the automatic group is shown as a digest.
    assert session_key not in out
    assert any(group.startswith("session:#") for group in ada_row["groups"])
    assert f"user:{user.pk}" in ada_row["groups"]
    groups = {group["name"]: group["members"] for group in state["groups"]}
    assert groups["room.lobby"] == [anonymous_row["id"]]
    assert groups["lobby"] == [anonymous_row["id"]]
    counters = state["counters"]
    assert counters["connections"] == 2
    assert counters["by_phase"] == {"open": 2}
    assert counters["bytes_in"] == ada_row["bytes_in"] + anonymous_row["bytes_in"]
    assert counters["workers"] == server.config.workers
    assert counters["group_backend"]["backend"] == "MemoryGroupBackend"

    assert table.splitlines()[0] == f"runws pid {os.getpid()} at ws://test/"
    assert re.search(
        r"^\s+id\s+user\s+path\s+phase\s+age\s+in\s+out\s+buffered\s+consumer$", table, re.MULTILINE
    )
    assert re.search(
        rf"^\s+{re.escape(ada_row['id'])}\s+{user.pk}\s+/ws/user/\s+open\s+", table, re.MULTILINE
    )
    assert re.search(rf"^\s+{re.escape(anonymous_row['id'])}\s+-\s+/ws/group/\s+open\s+", table, re.MULTILINE)
    assert re.search(rf"^\s+room\.lobby\s+1\s+{re.escape(anonymous_row['id'])}$", table, re.MULTILINE)
    assert "automatic conn:/session:/user: groups hidden" in table
    assert not re.search(r"^\s+(conn|session|user):", table, re.MULTILINE)
    assert f"user:{user.pk}" in all_groups


@override_settings(RAWWS=RAWWS)
def test_the_socket_directory_must_not_let_others_replace_the_file(short_tmp: Path) -> None:
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by all, not sticky
    with running_server() as server:
        with pytest.raises(PermissionError, match="writable by other users"):
            InspectionServer(server, shared / "s.sock").start()
        os.chmod(shared, 0o777 | stat.S_ISVTX)  # as /tmp: others can't remove our file
        with InspectionServer(server, shared / "s.sock") as inspection:
            assert query(inspection.path)["counters"]["connections"] == 0


@override_settings(RAWWS=RAWWS)
def test_a_stale_socket_is_replaced_and_a_live_one_is_left_alone(short_tmp: Path) -> None:
    path = short_tmp / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed runws leaves
    with running_server() as server:
        with InspectionServer(server, path):
            assert query(path)["pid"] == os.getpid()
            with pytest.raises(OSError, match="another server answers on"):
                InspectionServer(server, path).start()
        assert not path.exists()


def test_query_refuses_what_is_not_a_socket(short_tmp: Path) -> None:
    plain = short_tmp / "file.sock"
    plain.write_text("{}")
    with pytest.raises(OSError, match="is not a socket"):
        query(plain)


def test_an_unknown_request_gets_an_error_document(short_tmp: Path) -> None:
    with running_server() as server, InspectionServer(server, short_tmp / "s.sock") as inspection:
        assert query(inspection.path, "shutdown") == {
            "error": "unknown command 'shutdown'; this server knows 'status'"
        }


def test_socket_paths_are_expanded_and_discovered_by_port_and_pid(short_tmp: Path) -> None:
    template = str(short_tmp / "{port}-{pid}.sock")
    assert expand_socket_path(template, port=8000, pid=42) == short_tmp / "8000-42.sock"
    assert expand_socket_path("{tmp}/rawws-{uid}/{port}.sock", port=1) == Path(
        f"{__import__('tempfile').gettempdir()}/rawws-{os.getuid()}/1.sock"
    )
    sockets = []
    for name in ("8000-1.sock", "8000-2.sock", "8001-3.sock"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(short_tmp / name))
        sockets.append(sock)
    (short_tmp / "other.txt").write_text("")
    try:
        assert [path.name for path in discover_sockets(template)] == [
            "8000-1.sock",
            "8000-2.sock",
            "8001-3.sock",
        ]
        assert [path.name for path in discover_sockets(template, port=8000)] == ["8000-1.sock", "8000-2.sock"]
        assert [path.name for path in discover_sockets(template, pid=3)] == ["8001-3.sock"]
        # None listens on them: all stale.
        assert sorted(path.name for path in remove_stale_sockets(template)) == [
            "8000-1.sock",
            "8000-2.sock",
            "8001-3.sock",
        ]
        assert discover_sockets(template) == []
    finally:
        for sock in sockets:
            sock.close()


def test_ws_status_without_a_running_server_says_where_it_looked(short_tmp: Path) -> None:
    settings = override_settings(RAWWS={**RAWWS, "INSPECT_SOCKET": str(short_tmp / "{port}-{pid}.sock")})
    with (
        settings,
        pytest.raises(CommandError, match=r"No running runws found on port 8123\. ws_status reads the"),
    ):
        run("ws_status", "--port", "8123")


@override_settings(RAWWS={**RAWWS, "INSPECT_SOCKET": None})
def test_ws_status_with_the_socket_disabled_says_so() -> None:
    with pytest.raises(CommandError, match=r"RAWWS\['INSPECT_SOCKET'\] is None: runws serves no live state"):
        run("ws_status")


def test_ws_status_with_a_socket_nobody_answers_on_fails_clearly(short_tmp: Path) -> None:
    path = short_tmp / "gone.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    with pytest.raises(CommandError, match="No running runws answered"):
        run("ws_status", "--socket", str(path))


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"), (3 * 2**30, "3.0 GiB")],
)
def test_byte_counts_read_in_binary_units(count: int, text: str) -> None:
    assert format_bytes(count) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(4.23, "4.2s"), (724, "12m04s"), (3 * 3600 + 7 * 60, "3h07m"), (2 * 86400 + 5 * 3600, "2d05h")],
)
def test_ages_read_at_a_glance(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_runws_serves_its_live_state_on_a_0600_socket_that_ws_status_reads(
    start_runws: Any,  # noqa: F811 - the fixture imported above
    example_copy: Path,  # noqa: F811
) -> None:
    port = free_port()
    process = start_runws(f"127.0.0.1:{port}", "--noreload")
    process.wait_until_serving()
    path = Path(process.wait_for_line(r"^  Live state:\s+(\S+) \(manage\.py ws_status\)$").group(1))
    assert path.name == f"{port}-{process.process.pid}.sock"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    with connect(f"ws://127.0.0.1:{port}/ws/echo/", open_timeout=TIMEOUT) as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
        environ = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        environ.pop("DJANGO_SETTINGS_MODULE", None)
        result = subprocess.run(
            [sys.executable, "manage.py", "ws_status", "--port", str(port), "--json"],
            cwd=example_copy,
            env=environ,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    [state] = json.loads(result.stdout)
    assert state["pid"] == process.process.pid
    assert state["url"] == f"ws://127.0.0.1:{port}/"
    assert state["settings"] == "example_project.settings"
    assert [row["path"] for row in state["connections"]] == ["/ws/echo/"]
    assert state["connections"][0]["consumer"] == "chat.consumers.EchoConsumer"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0
    assert not path.exists()


# ------------------------------------------------------------------ runws at start


class _Server(FakeServer):
    """The stand-in server of test_runws, with the state the inspection reads."""

    instances: ClassVar[list[FakeServer]] = []
    on_start = staticmethod(lambda: os.kill(os.getpid(), signal.SIGTERM))

    def connections(self) -> list[Any]:
        return []


def start_and_stop(*arguments: str) -> str:
    """Run runws with the stand-in server until it serves, then SIGTERM; return what it printed."""

    class TestCommand(RunwsCommand):
        server_cls = _Server  # type: ignore[assignment]

        def get_application(self) -> Any:
            return "the application"

        def get_group_backend(self) -> Any:
            return FakeBackend()

    stdout = io.StringIO()
    with pytest.raises(SystemExit) as excinfo:
        call_command(TestCommand(), *arguments, "--noreload", "--skip-checks", stdout=stdout)
    assert excinfo.value.code == 0
    return stdout.getvalue()


def warnings_of(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if line.startswith("WARNING:") and "runserver's quality" not in line
    ]


@pytest.mark.django_db
@override_settings(RAWWS=RAWWS)
def test_a_safe_setup_gets_no_warning() -> None:
    assert warnings_of(start_and_stop("127.0.0.1:0")) == []


@pytest.mark.django_db
@override_settings(RAWWS=RAWWS, DEBUG=True)
def test_debug_on_a_public_address_is_warned_about() -> None:
    assert warnings_of(start_and_stop("0.0.0.0:0")) == [
        (
            "WARNING: DEBUG is on and the server listens on 0.0.0.0, reachable from other machines: DEBUG answers "
            "show settings, stack frames and the list of WebSocket routes. Listen on 127.0.0.1, or set DEBUG = False."
        )
    ]


@pytest.mark.django_db
@override_settings(RAWWS=RAWWS, DEBUG=True)
def test_debug_on_loopback_is_fine() -> None:
    assert warnings_of(start_and_stop("127.0.0.1:0")) == []


@pytest.mark.django_db
@override_settings(RAWWS={**RAWWS, "CHECK_ORIGIN": False})
def test_the_origin_check_turned_off_is_warned_about_even_on_loopback() -> None:
    """A page on any site can make the browser open ws://127.0.0.1: loopback is no protection."""
    [warning] = warnings_of(start_and_stop("127.0.0.1:0"))
    assert warning.startswith(
        "WARNING: RAWWS['CHECK_ORIGIN'] is False: any web page your users visit can open"
    )


@pytest.mark.parametrize(
    ("host", "reloader", "expected"),
    [
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("192.0.2.7", True, True),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("0.0.0.0", False, False),
    ],
)
def test_the_autoreloader_on_a_public_address_is_warned_about(
    host: str, reloader: bool, expected: bool
) -> None:
    command = RunwsCommand()
    command.options = {"use_reloader": reloader}

    class Bound:
        address = (host, 8000)

    with override_settings(RAWWS=RAWWS, DEBUG=False):
        found = [text for text in command.unsafe_settings_warnings(Bound()) if "autoreloader" in text]  # type: ignore[arg-type]
    assert bool(found) is expected
    if expected:
        assert found[0].startswith(f"The autoreloader is on and the server listens on {host}:")


@pytest.mark.django_db
@override_settings(RAWWS=RAWWS)
def test_the_banner_names_the_live_state_socket() -> None:
    output = start_and_stop("127.0.0.1:0")
    match = re.search(r"^  Live state:\s+(\S+) \(manage\.py ws_status\)$", output, re.MULTILINE)
    assert match, output
    assert Path(match.group(1)) == expand_socket_path("{tmp}/rawws-{uid}/{port}-{pid}.sock", port=43210)
    assert not Path(match.group(1)).exists(), "removed at shutdown"


@pytest.mark.django_db
@override_settings(RAWWS={**RAWWS, "INSPECT_SOCKET": None})
def test_the_banner_says_when_the_live_state_is_off() -> None:
    assert "  Live state:         off (RAWWS['INSPECT_SOCKET'] is None)\n" in start_and_stop("127.0.0.1:0")


class UnreachableBackend(MemoryGroupBackend):
    """What a shared backend does when its server is down."""

    def check_available(self) -> None:
        raise GroupBackendUnavailable("Redis at redis://127.0.0.1:1/0 is unavailable (Connection refused)")


@pytest.mark.django_db
@override_settings(RAWWS={**RAWWS, "GROUP_BACKEND": "tests.test_commands.UnreachableBackend"})
def test_an_unreachable_group_backend_stops_runws_with_a_clear_error_before_it_binds() -> None:
    class TestCommand(RunwsCommand):
        server_cls = _Server  # type: ignore[assignment]

    _Server.instances = []
    with pytest.raises(CommandError) as excinfo:
        call_command(TestCommand(), "127.0.0.1:0", "--noreload", "--skip-checks", stdout=io.StringIO())
    assert str(excinfo.value) == (
        "The group backend tests.test_commands.UnreachableBackend is unreachable: Redis at "
        "redis://127.0.0.1:1/0 is unavailable (Connection refused). Start it, or fix RAWWS['GROUP_OPTIONS']; "
        "runws does not start without it, since every push would fail."
    )
    assert _Server.instances == []


@pytest.mark.django_db
@override_settings(RAWWS={**RAWWS, "GROUP_BACKEND": "tests.no_such_module.Backend"})
def test_a_group_backend_that_does_not_import_is_a_command_error() -> None:
    with pytest.raises(CommandError, match=r"The group backend can't be set up: RAWWS\['GROUP_BACKEND'\] = "):
        call_command("runws", "127.0.0.1:0", "--noreload", "--skip-checks", stdout=io.StringIO())


@pytest.mark.django_db
def test_runws_with_redis_unreachable_is_a_clear_command_error() -> None:
    from django_rawws.groups.base import BaseGroupBackend
    from django_rawws.groups.redis import RedisGroupBackend

    if RedisGroupBackend.check_available is BaseGroupBackend.check_available:
        pytest.skip(
            "RedisGroupBackend.check_available() does not contact Redis yet: runws can't tell at start"
        )
    options = {"url": "redis://127.0.0.1:1/0", "socket_connect_timeout": 0.5}
    backend = "django_rawws.groups.redis.RedisGroupBackend"
    settings = override_settings(RAWWS={**RAWWS, "GROUP_BACKEND": backend, "GROUP_OPTIONS": options})
    unreachable = r"The group backend django_rawws\.groups\.redis\.RedisGroupBackend is unreachable"

    class TestCommand(RunwsCommand):
        server_cls = _Server  # type: ignore[assignment] # were it to start, it stops at once

    with settings, pytest.raises(CommandError, match=unreachable):
        call_command(TestCommand(), "127.0.0.1:0", "--noreload", "--skip-checks", stdout=io.StringIO())
