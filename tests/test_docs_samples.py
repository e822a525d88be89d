"""Every code sample in README.md and docs/*.md is exercised, so that the docs cannot rot.

A marker is an HTML comment on the line before a fence (invisible once rendered):

* every ```python block compiles, and each name it imports from django_rawws exists;
* a block without a marker runs on its own, with Django set up by the test settings;
* ``<!-- fragment ... -->``: a piece of a larger program (a method, a file of
  a project the page does not show whole), compiled and import-checked only;
* ``<!-- tested ... -->``: run by a test that builds the program it belongs to
  (see ``TESTED_BY``).

docs/tutorial.md and docs/migrating-from-channels.md are projects: each block
whose first line names a file (``# live/consumers.py``,
``{# live/templates/live/room.html #}``, ``# mysite/settings.py (add at the
end)``) is written into a fresh ``startproject`` in a temporary directory, in
page order, between the tutorial's own ``$`` commands; the project's tests
then run, and the tutorial is served by ``runws`` and used by a real client.
"""

from __future__ import annotations

import ast
import http.client
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.test_runws import RunwsProcess, free_port
from tests.utils_server import TIMEOUT

REPOSITORY = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([REPOSITORY / "README.md", *(REPOSITORY / "docs").glob("*.md")])
TUTORIAL = REPOSITORY / "docs" / "tutorial.md"
MIGRATION = REPOSITORY / "docs" / "migrating-from-channels.md"
PROJECT_DOCUMENTS = (TUTORIAL, MIGRATION)

#: Which test runs the ``<!-- tested -->`` blocks of each document.
TESTED_BY = {
    "docs/testing.md": "tests/test_communicator.py",
    "docs/tutorial.md": "tests/test_docs_samples.py",
    "docs/migrating-from-channels.md": "tests/test_docs_samples.py",
}
MARKERS = ("fragment", "tested")

# Generous bounds: they only matter when something is broken.
COMMAND_TIMEOUT = 120

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>[\w-]+)(?P<rest>.*?)-->\s*$", re.DOTALL)
_FILE_HEADER = re.compile(
    r"^(?:#|\{#)\s*(?P<path>[\w./-]+\.(?:py|html|txt|js|css))(?P<append>\s+\(add at the end\))?\s*(?:#\})?\s*$"
)


@dataclass(frozen=True)
class Block:
    """One fenced block of a document, dedented to its fence."""

    document: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    lang: str
    marker: str | None  # "fragment", "tested", another word, or None
    source: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def file_header(self) -> re.Match[str] | None:
        first = self.source.split("\n", 1)[0]
        return _FILE_HEADER.match(first)


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with the marker comment that precedes each, if any."""
    lines = path.read_text().splitlines()
    found = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening.group("indent"), opening.group("fence")
        body = []
        end = index + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and not lines[end].strip().strip(fence[0])
        ):
            line = lines[end]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            end += 1
        previous = index - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        marker = None
        if previous >= 0:
            comment = _MARKER.match(lines[previous])
            if comment is not None:
                marker = comment.group("kind")
        found.append(
            Block(
                document=str(path.relative_to(REPOSITORY)),
                line=index + 1,
                lang=opening.group("lang").lower(),
                marker=marker,
                source="\n".join(body) + "\n",
            )
        )
        index = end + 1
    return found


ALL_BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]
PYTHON = [block for block in ALL_BLOCKS if block.lang == "python"]


def is_project_file(block: Block) -> bool:
    return (
        block.document in {str(doc.relative_to(REPOSITORY)) for doc in PROJECT_DOCUMENTS}
        and block.marker != "fragment"
        and block.file_header is not None
    )


# ------------------------------------------------------------------ every block


def test_the_docs_have_python_samples_to_check() -> None:
    """Guard against an extraction that silently finds nothing."""
    assert len(PYTHON) > 30
    assert {block.document for block in PYTHON} >= {"README.md", "docs/tutorial.md", "docs/testing.md"}


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.where)
def test_every_python_block_compiles(block: Block) -> None:
    compile(block.source, block.where, "exec")


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.where)
def test_every_name_imported_from_django_rawws_exists(block: Block) -> None:
    for node in ast.walk(ast.parse(block.source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "django_rawws":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*":
                    continue
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "django_rawws":
                    importlib.import_module(alias.name)


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.where)
def test_markers_are_known_and_tested_blocks_have_a_test(block: Block) -> None:
    if block.marker is None:
        return
    assert block.marker in MARKERS, f"{block.where}: unknown marker {block.marker!r} (one of {MARKERS})"
    if block.marker == "tested":
        runner = TESTED_BY.get(block.document)
        assert runner is not None, (
            f"{block.where} says it is tested, but no test runs {block.document}'s blocks"
        )
        assert (REPOSITORY / runner).is_file()


STANDALONE = [block for block in PYTHON if block.marker is None and not is_project_file(block)]


@pytest.mark.parametrize("block", STANDALONE, ids=lambda block: block.where)
def test_every_unmarked_python_block_runs_on_its_own(block: Block) -> None:
    """A block that can't run alone is a fragment: mark it ``<!-- fragment -->``."""
    namespace = {"__name__": f"docs_sample_{block.line}"}
    exec(compile(block.source, block.where, "exec"), namespace)  # noqa: S102 - our own docs


@pytest.mark.parametrize("document", PROJECT_DOCUMENTS, ids=lambda path: path.name)
def test_every_python_block_of_a_project_page_is_a_file_or_a_fragment(document: Path) -> None:
    for block in blocks_of(document):
        if block.lang == "python" and block.marker != "fragment":
            assert block.file_header is not None, f"{block.where}: start it with '# <path>.py' or mark it"


def test_the_ws_routes_output_in_the_commands_page_is_the_example_projects() -> None:
    [shown] = [
        block
        for block in blocks_of(REPOSITORY / "docs" / "commands.md")
        if "$ python manage.py ws_routes" in block.source
    ]
    expected = shown.source.split("\n", 1)[1]
    result = subprocess.run(
        [sys.executable, "manage.py", "ws_routes", "--no-color"],
        cwd=REPOSITORY / "example_project",
        env=project_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


# ------------------------------------------------------------------ projects


def project_environment() -> dict[str, str]:
    """This environment minus what points at the test run: a project finds django_rawws installed."""
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "DJANGO_AUTORELOAD_ENV"):
        environ.pop(name, None)
    return environ


def run_in(directory: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv,
        cwd=directory,
        env=project_environment(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def as_argv(command: str) -> list[str] | None:
    """A ``$`` line of a console block as the command to run here, or None for setup we already have.

    The virtual environment is this one (django-rawws installed in it), so
    ``venv``, ``activate`` and ``pip install`` are skipped; ``python`` and
    ``django-admin`` are this interpreter.
    """
    words = shlex.split(command)
    if words[:3] == ["python", "-m", "venv"] or words[0] in (".", "source", "pip"):
        return None
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "django-admin":
        return [sys.executable, "-m", "django", *words[1:]]
    raise AssertionError(f"don't know how to run {command!r}")


def write_file(directory: Path, block: Block) -> None:
    header = block.file_header
    assert header is not None
    target = directory / header.group("path")
    body = block.source
    target.parent.mkdir(parents=True, exist_ok=True)
    if header.group("append"):
        assert target.exists(), f"{block.where}: {header.group('path')} must exist to be added to"
        with target.open("a") as file:
            file.write("\n" + body)
    else:
        target.write_text(body)


def build(
    document: Path, directory: Path, *, scaffold: tuple[str, ...] = ()
) -> tuple[list[str], dict[str, subprocess.CompletedProcess[str]]]:
    """Run the page's commands and write its files in page order.

    Return the commands not run (``runws``) and the result of each one run.

    ``scaffold``: commands run first, for a page that starts from an
    existing project (the migration guide).
    """
    for command in scaffold:
        argv = as_argv(command)
        assert argv is not None
        run_in(directory, argv)
    deferred = []
    results = {}
    for block in blocks_of(document):
        if block.lang == "console":
            for line in block.source.splitlines():
                if not line.startswith("$ "):
                    continue
                command = line[2:]
                if " runws" in f" {command}":
                    deferred.append(command)
                    continue
                argv = as_argv(command)
                if argv is not None:
                    results[command] = run_in(directory, argv)
        elif is_project_file(block):
            write_file(directory, block)
    return deferred, results


def http_get(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


@pytest.mark.slow
def test_the_tutorial_builds_a_project_whose_tests_pass_and_that_runws_serves(tmp_path: Path) -> None:
    project = tmp_path / "tutorial"
    project.mkdir()
    deferred, results = build(TUTORIAL, project)
    tests = results["python manage.py test live"].stderr
    assert re.search(r"^Ran 3 tests in ", tests, re.MULTILINE), tests
    assert re.search(r"^OK$", tests, re.MULTILINE), tests

    assert deferred == ["python manage.py runws"]
    port = free_port()
    server = RunwsProcess(project, f"127.0.0.1:{port}")
    try:
        assert server.wait_until_serving() == f"ws://127.0.0.1:{port}"

        status, page = http_get(port, "/rooms/lobby/")
        assert status == 200, page
        match = re.search(r'<body data-ws-url="([^"]+)">', page)
        assert match, page
        url = match.group(1)
        assert url == f"ws://127.0.0.1:{port}/ws/rooms/lobby/"
        assert '<script src="/static/django_rawws/rawws.js"></script>' in page
        status, script = http_get(port, "/static/django_rawws/rawws.js")
        assert status == 200 and "function RawWS(" in script

        origin = f"http://127.0.0.1:{port}"
        kitchen_url = url.replace("/lobby/", "/kitchen/")
        with (
            connect(url, origin=origin, open_timeout=TIMEOUT) as first,
            connect(url, origin=origin, open_timeout=TIMEOUT) as second,
            connect(kitchen_url, origin=origin, open_timeout=TIMEOUT) as kitchen,
        ):
            first.send(json.dumps({"text": "hello"}))
            assert json.loads(first.recv(timeout=TIMEOUT)) == {"author": "anonymous", "text": "hello"}
            assert json.loads(second.recv(timeout=TIMEOUT)) == {"author": "anonymous", "text": "hello"}
            # The lobby's push was delivered before this one: the kitchen's first message is its own.
            kitchen.send(json.dumps({"text": "soup"}))
            assert json.loads(kitchen.recv(timeout=TIMEOUT)) == {"author": "anonymous", "text": "soup"}

            status = run_in(
                project, [sys.executable, "manage.py", "ws_status", "--port", str(port), "--json"]
            )
            [state] = json.loads(status.stdout)
            assert sorted(row["path"] for row in state["connections"]) == [
                "/ws/rooms/kitchen/",
                "/ws/rooms/lobby/",
                "/ws/rooms/lobby/",
            ]
            assert {group["name"]: len(group["members"]) for group in state["groups"]}["room.lobby"] == 2
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.output()
    finally:
        server.kill()


@pytest.mark.slow
def test_the_migration_guides_after_code_is_a_project_whose_tests_pass(tmp_path: Path) -> None:
    project = tmp_path / "migrated"
    project.mkdir()
    deferred, _ = build(
        MIGRATION,
        project,
        scaffold=("django-admin startproject mysite .", "python manage.py startapp chat"),
    )
    assert deferred == []
    written = {
        block.file_header.group("path")  # type: ignore[union-attr]
        for block in blocks_of(MIGRATION)
        if is_project_file(block)
    }
    assert written == {
        "mysite/settings.py",
        "chat/consumers.py",
        "mysite/wsurls.py",
        "chat/views.py",
        "mysite/urls.py",
        "chat/tests.py",
    }
    result = run_in(project, [sys.executable, "manage.py", "test", "chat"])
    assert re.search(r"^Ran 3 tests in ", result.stderr, re.MULTILINE), result.stderr
    assert re.search(r"^OK$", result.stderr, re.MULTILINE), result.stderr
    # The Channels side of the page is there for comparison, compiled by the tests above.
    assert sum(1 for block in blocks_of(MIGRATION) if block.marker == "fragment") == 5
