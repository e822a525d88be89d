"""The README: its two quick-start commands work as written, and it has the sections a newcomer needs.

The test command is the one ``.ci/run`` runs (CI runs the suite through it, so
it is proven by every CI run); the demo command is run here from a clean copy of
the repository and probed over HTTP and WebSocket.
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pytest
from websockets.sync.client import connect

from tests.test_packaging import clean_environment, copy_repository
from tests.test_runws import free_port

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
CI_RUN = REPOSITORY / ".ci" / "run"

# Generous bounds: they only matter when something is broken. The demo's
# first minute or so goes to creating a venv and pip installing Django.
DEMO_START_TIMEOUT = 300.0
DEMO_EXIT_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0


# ------------------------------------------------------------------ extraction


def sed_range(lines: list[str], start: str, end: str) -> list[str]:
    """What ``sed -n '/start/,/end/p'`` prints: from a line matching ``start`` through the next matching ``end``.

    As in sed, ``end`` is looked for from the line after ``start``, and a
    range may begin again after it ends.
    """
    selected: list[str] = []
    inside = False
    for line in lines:
        if inside:
            selected.append(line)
            inside = re.search(end, line) is None
        elif re.search(start, line):
            selected.append(line)
            inside = True
    return selected


def readme_command(name: str) -> str:
    """The code block between ``<!-- name:start -->`` and ``<!-- name:end -->``, extracted as ``.ci/run`` does."""
    marked = sed_range(README.read_text().splitlines(), f"<!-- {name}:start -->", f"<!-- {name}:end -->")
    fenced = sed_range(marked, "^```", "^```")
    # $(...) drops the trailing newlines.
    return "\n".join(line for line in fenced if not line.startswith("```")).rstrip("\n")


def ci_test_command() -> str:
    """The test command exactly as ``.ci/run`` computes it: its own assignment line, run by bash."""
    assignments = [line for line in CI_RUN.read_text().splitlines() if line.startswith('test_command="$(')]
    assert len(assignments) == 1, assignments
    result = subprocess.run(
        ["bash", "-c", f'{assignments[0]}\nprintf %s "$test_command"'],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# ------------------------------------------------------------------ the two commands


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = readme_command("test-command")
    assert command, "README.md has no code block between the test-command markers"
    assert ci_test_command() == command
    assert 'bash -euo pipefail -c "$test_command"' in CI_RUN.read_text()


@pytest.mark.parametrize("name", ["test-command", "demo-command"])
def test_each_quick_start_command_is_one_copy_paste_line(name: str) -> None:
    command = readme_command(name)
    assert command
    assert "\n" not in command


def test_the_test_command_installs_the_test_extra_and_runs_the_whole_suite() -> None:
    command = readme_command("test-command")
    assert "'.[test]'" in command
    assert command.endswith("-m pytest -q")


def test_the_demo_command_migrates_then_ends_with_runws() -> None:
    """The demo test appends an addrport to the command: it must end with ``runws``."""
    command = readme_command("demo-command")
    assert "manage.py migrate" in command
    assert command.endswith("manage.py runws")


class ShellProcess:
    """``bash -c <command>`` in its own process group, its output (stdout and stderr) read by a thread."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)
            self.lines.put(line)
        stream.close()
        self.lines.put(None)

    def transcript(self) -> str:
        return "--- output\n" + "".join(self.output)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {timeout:g}s\n{self.transcript()}")
            if line is None:
                pytest.fail(f"the command ended before {pattern!r}\n{self.transcript()}")
            match = regex.search(line)
            if match:
                return match

    def find_process(self, needle: str) -> int:
        """The pid of the shell, or of its child, whose command line contains ``needle``.

        bash may run the last command of an ``&&`` list in its own process
        (bash 5.1+ does) or fork for it: look at both.
        """
        shell = self.process.pid
        candidates = [shell, *children(shell)]
        for pid in candidates:
            if needle in command_line(pid):
                return pid
        pytest.fail(f"no process running {needle!r} among {candidates}\n{self.transcript()}")

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the command did not exit within {timeout:g}s\n{self.transcript()}")
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        """End the whole group (bash, the reloader and its child) whatever state it is in."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(DEMO_EXIT_TIMEOUT)
        self._reader.join(DEMO_EXIT_TIMEOUT)


def children(pid: int) -> list[int]:
    if Path("/proc").is_dir():
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # The command name in parentheses may hold spaces: split after it.
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # ended meanwhile
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        return found
    result = subprocess.run(
        ["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10, check=False
    )
    return [int(line) for line in result.stdout.split()]


def command_line(pid: int) -> str:
    if Path("/proc").is_dir():
        try:
            return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=10, check=False
    )
    return result.stdout


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[ShellProcess, int]]:
    """The README's demo command, started from a clean copy of the repository; its process and port."""
    checkout = tmp_path / "django-rawws"
    copy_repository(checkout)
    port = free_port()
    command = f"{readme_command('demo-command')} 127.0.0.1:{port}"
    shell = ShellProcess(command, checkout, clean_environment())
    try:
        yield shell, port
    finally:
        shell.kill()


@pytest.mark.slow
def test_the_demo_command_serves_pages_and_websockets_from_a_fresh_checkout_and_stops_cleanly(
    demo: tuple[ShellProcess, int],
) -> None:
    """The README's demo command, run as a newcomer runs it, on a copy of the repository.

    The copy holds what a clone would: ``git ls-files`` plus new files not
    ignored, so no ``.venv``, database or caches. The command creates its own
    virtual environment there and pip installs the package (and Django) into
    it. One adaptation: the final ``runws`` gets an explicit ``127.0.0.1:<free
    port>`` appended, so that the test never collides with a server on 8000.
    The environment is this one's minus the variables that point at this test
    run (``PYTHONPATH``, ``DJANGO_SETTINGS_MODULE``, an active ``VIRTUAL_ENV``).

    The chat pages are being built out, so ``/`` is only asked not to fail
    (below 500, after at most one redirect); ``/healthz`` and ``/ws/echo/``
    are exact. SIGTERM goes to ``runws`` (the reloader parent), which stops
    its child gracefully; the command then ends with 0.
    """
    shell, port = demo
    shell.wait_for_line(rf"Starting .*server at \S+:{port}/", DEMO_START_TIMEOUT)

    status, _, body = http_get(port, "/healthz")
    assert status == 200, body

    status, headers, body = http_get(port, "/")
    if 300 <= status < 400:
        target = urlsplit(headers["location"])
        assert target.netloc in ("", f"127.0.0.1:{port}"), headers["location"]
        status, _, body = http_get(port, target.path + (f"?{target.query}" if target.query else ""))
    assert status < 500, body[:2000]

    with connect(f"ws://127.0.0.1:{port}/ws/echo/", open_timeout=HTTP_TIMEOUT) as ws:
        ws.send("hello from the README")
        assert ws.recv(timeout=HTTP_TIMEOUT) == "hello from the README"

    os.kill(shell.find_process("runws"), signal.SIGTERM)
    assert shell.wait(DEMO_EXIT_TIMEOUT) == 0, shell.transcript()


# ------------------------------------------------------------------ sections


def headings() -> list[str]:
    """The README's level-2 headings, outside code blocks."""
    text = re.sub(r"^```.*?^```", "", README.read_text(), flags=re.MULTILINE | re.DOTALL)
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]


def is_titled(heading: str, title: str) -> bool:
    """``## Tutorial`` or ``## Tutorial: a consumer in an existing project`` both title a Tutorial section."""
    return heading == title or heading.startswith(f"{title}:")


def section(title: str) -> str:
    """The text under the ``## title`` heading up to the next level-2 heading."""
    text = README.read_text()
    heading = re.escape(title)
    match = re.search(rf"^## {heading}(?::[^\n]*)?\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize(
    "title", ["Quick start", "Tutorial", "Settings", "Statuses and close codes", "Deployment"]
)
def test_readme_has_the_section_once(title: str) -> None:
    found = headings()
    assert sum(is_titled(heading, title) for heading in found) == 1, found


def test_readme_opens_with_what_it_is_and_why() -> None:
    introduction = README.read_text().split("\n## ", 1)[0]
    for point in ("ORM", "ASGI", "runws"):
        assert point in introduction


def test_readme_settings_and_statuses_sections_give_a_table_or_link_to_one() -> None:
    for title, document in (
        ("Settings", "docs/settings.md"),
        ("Statuses and close codes", "docs/statuses-and-close-codes.md"),
    ):
        text = section(title)
        assert re.search(r"^\|.*\|\s*$", text, re.MULTILINE) or f"({document}" in text, title


def test_readme_deployment_covers_noreload_nginx_upgrade_and_systemd() -> None:
    text = section("Deployment")
    for point in ("--noreload", "nginx", "Upgrade", "systemd"):
        assert point in text, point


def test_readme_relative_links_point_at_files_in_the_repository() -> None:
    targets = re.findall(r"\]\(((?!https?://|mailto:|#)[^)\s]+)\)", README.read_text())
    missing = [t for t in targets if not (REPOSITORY / t.split("#", 1)[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"
