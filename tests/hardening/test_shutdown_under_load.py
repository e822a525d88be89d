"""The chat example under load: SIGTERM loses nothing accepted; SIGKILL, then a restart, keeps the history.

Nine members (three per demo user) post to one room in a closed loop: each
sends its next message once the room's broadcast of the previous one came
back to it. That broadcast is the acknowledgement: the row was committed and
pushed to every member.

**Accepted** means read by the server before the signal. On SIGTERM ``runws``
stops reading, lets every handler in flight and every message already read
run to the end, then closes each connection with 1001. So the rows in the
database must be exactly the acknowledged messages (nothing accepted is
lost, nothing is written that no one was told about), every member must
have received every row's broadcast before its 1001, and the exit status is
0 (no handler outlived the grace).

SIGKILL gives no such promise for the messages in flight, only for what was
committed: after a restart, every acknowledged message is in the history,
and members reconnecting with ``?after=<last id seen>`` get exactly the rows
they missed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from django_rawws.exceptions import ConnectionClosed
from django_rawws.protocol.events import TextMessage
from django_rawws.testing import WebSocketTestClient
from tests.server.helpers import BlockingApp, RawClient, running_server
from tests.server.test_shutdown import _signal_when_grace_wait_starts, _stop_in_thread
from tests.test_chat import HISTORY, TIMEOUT, Browser, Site, room_path
from tests.test_runws import EXAMPLE, REPOSITORY, RunwsProcess, free_port

from .measure import poll_until

MEMBERS_PER_USER = 3
#: Below the default MESSAGE_BURST (200): the closed loop may run faster than MESSAGE_RATE.
MAX_MESSAGES = 150


@dataclass
class Member:
    """One WebSocket on the room, driven by a thread: posts in a closed loop, records what it saw."""

    name: str
    ws: WebSocketTestClient
    limit: int
    acknowledged: list[tuple[int, str]] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)
    close_code: int | None = None
    error: BaseException | None = None
    #: Whether the history it got at connect was cut to CHAT_HISTORY (more were missed).
    truncated: bool = False

    def run(self, progress: threading.Condition, stop_sending: threading.Event) -> None:
        try:
            for index in range(self.limit):
                if stop_sending.is_set():
                    break
                text = f"{self.name} #{index}"
                try:
                    self.ws.send_json({"type": "message", "text": text})
                except ConnectionClosed:
                    break  # the server's close arrived with the last read: what came before it is read below
                if not self._until_acknowledged(text):
                    return
                with progress:
                    progress.notify_all()
            self._until_acknowledged(None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _until_acknowledged(self, text: str | None) -> bool:
        """Read until our message comes back (True) or the connection closes (False)."""
        while True:
            try:
                message = chat_message(self.ws.receive_json(timeout=TIMEOUT))
            except ConnectionClosed as closed:
                self.close_code = closed.code
                return False
            if message is None:
                continue  # join, leave and presence notices
            self.seen[message["id"]] = message["text"]
            if message["text"] == text:  # texts are unique: "<member> #<n>"
                self.acknowledged.append((message["id"], text))
                return True


def chat_message(frame: Any) -> dict[str, Any] | None:
    """The chat message in what the room sent, or None for anything else.

    A live message comes as ``{"type": "message", ...}``, or wrapped in a
    resumable group's envelope ``{"id", "group", "data": {...}}``.
    """
    if isinstance(frame, dict):
        if frame.get("type") == "message":
            return frame
        data = frame.get("data")
        if isinstance(data, dict) and data.get("type") == "message":
            return data
    return None


def read_history(ws: WebSocketTestClient) -> dict[str, Any]:
    """The history message a room sends at connect, past any notice before it."""
    for _ in range(100):
        frame = ws.receive_json()
        if isinstance(frame, dict) and frame.get("type") == "history":
            return frame
    raise AssertionError("no history message")


def _manage(project: Path, *args: str) -> None:
    environ = {**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONUNBUFFERED": "1"}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    _manage(target, "migrate", "--noinput")
    return target


@pytest.fixture
def processes() -> Iterator[list[RunwsProcess]]:
    started: list[RunwsProcess] = []
    yield started
    for process in started:
        process.kill()


def start_runws(project: Path, port: int, processes: list[RunwsProcess]) -> tuple[RunwsProcess, Site]:
    process = RunwsProcess(project, f"127.0.0.1:{port}", "--noreload")
    processes.append(process)
    process.wait_until_serving()
    return process, Site(project, "127.0.0.1", port)


def join(browsers: list[Browser], slug: str, *, after: dict[str, int] | None = None) -> list[Member]:
    members = []
    for browser_index, browser in enumerate(browsers):
        for copy in range(MEMBERS_PER_USER):
            name = f"u{browser_index}m{copy}"
            ws = browser.ws(room_path(slug, (after or {}).get(name)))
            history = read_history(ws)
            member = Member(name, ws, MAX_MESSAGES, truncated=history["truncated"])
            member.seen.update({message["id"]: message["text"] for message in history["messages"]})
            members.append(member)
    return members


def drive(members: list[Member], signal_after: int, send_signal: Any) -> None:
    """Run every member; call ``send_signal()`` once ``signal_after`` messages were acknowledged."""
    progress = threading.Condition()
    stop_sending = threading.Event()
    threads = [threading.Thread(target=m.run, args=(progress, stop_sending), name=m.name) for m in members]
    for thread in threads:
        thread.start()
    try:
        with progress:
            reached = progress.wait_for(
                lambda: sum(len(m.acknowledged) for m in members) >= signal_after, timeout=30
            )
        assert reached, f"only {sum(len(m.acknowledged) for m in members)} messages acknowledged"
        send_signal()  # the members keep posting until their connection closes
    except BaseException:
        stop_sending.set()
        raise
    finally:
        for thread in threads:
            thread.join(30)
        for member in members:
            member.ws.abort()  # closed by the server by now: release the socket
    assert not any(thread.is_alive() for thread in threads)
    for member in members:
        assert member.error is None, f"{member.name}: {member.error!r}"


def room_rows(site: Site, slug: str) -> dict[int, str]:
    return dict(
        site.db_rows(
            "SELECT m.id, m.text FROM chat_message m JOIN chat_room r ON r.id = m.room_id WHERE r.slug = ?",
            slug,
        )
    )


def test_sigterm_under_load_loses_no_accepted_message_and_sigkill_keeps_the_history(
    project: Path, processes: list[RunwsProcess]
) -> None:
    port = free_port()
    process, site = start_runws(project, port, processes)
    browsers = [Browser(site) for _ in ("alice", "bob", "carol")]
    for browser, user in zip(browsers, ("alice", "bob", "carol"), strict=True):
        browser.login(user)
    slug = browsers[0].create_room("Under load")

    # ---- SIGTERM while nine members post.
    members = join(browsers, slug)
    drive(members, signal_after=100, send_signal=lambda: process.signal(signal.SIGTERM))
    assert process.wait() == 0, process.output()  # every handler finished within the grace
    assert "Shutting down: closing 9 connection(s) with 1001" in "".join(process.stdout)
    assert [m.close_code for m in members] == [1001] * len(members)
    rows = room_rows(site, slug)
    acknowledged = {ident: text for m in members for ident, text in m.acknowledged}
    assert len(acknowledged) >= 100
    assert rows == acknowledged  # nothing accepted lost, nothing written unannounced
    for member in members:
        assert set(rows) <= set(member.seen), f"{member.name} missed broadcasts before its 1001"

    # ---- Restart; post again; SIGKILL mid-flight.
    process, site = start_runws(project, port, processes)
    last_seen = {m.name: max(m.seen) for m in members}
    members = join(browsers, slug, after=last_seen)
    for member in members:
        assert set(member.seen) == set(), "history after the last id seen should be empty"
    drive(members, signal_after=60, send_signal=process.kill)
    assert all(m.close_code == 1006 for m in members), [m.close_code for m in members]
    before_kill = {ident: text for m in members for ident, text in m.acknowledged}

    # ---- Restart after the kill: the history is whole.
    process, site = start_runws(project, port, processes)
    rows = room_rows(site, slug)
    assert acknowledged.items() <= rows.items()
    assert before_kill.items() <= rows.items()
    # A member killed before any broadcast reached it resumes from where it was.
    last_seen = {m.name: max(m.seen, default=last_seen[m.name]) for m in members}
    for member in join(browsers, slug, after=last_seen):
        missed = sorted((ident, text) for ident, text in rows.items() if ident > last_seen[member.name])
        # Exactly the rows it had not seen, from the database: the last CHAT_HISTORY of them.
        assert sorted(member.seen.items()) == missed[-HISTORY:]
        assert member.truncated == (len(missed) > HISTORY)
        member.ws.close()
        member.ws.abort()
    fresh = browsers[0].ws(room_path(slug))
    history = read_history(fresh)
    latest = sorted(rows.items())[-HISTORY:]
    assert [(message["id"], message["text"]) for message in history["messages"]] == latest
    fresh.close()
    fresh.abort()
    process.signal(signal.SIGTERM)
    assert process.wait() == 0, process.output()


# ------------------------------------------- the bug the chat test exposed


def test_messages_read_before_stop_are_handled_and_nothing_after_them_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: handling a message that was waiting when stop() began used to resume reading.

    The worker's backpressure check (inbox at its low-water mark: read again)
    undid the shutdown's pause, so the server kept reading, and handling,
    messages throughout the grace; one read after the last idle moment was
    handled on a connection already closing, its broadcasts refused.
    """
    app = BlockingApp()
    with running_server(app) as server:
        client = RawClient.connect(server)
        with client.sock:
            client.send_text("block")
            app.wait_entered()
            client.send_text("queued")  # read, and waiting behind the blocked handler
            conn = app.handshakes[0]
            assert poll_until(lambda: len(conn._inbox) == 1, TIMEOUT)
            grace_wait = _signal_when_grace_wait_starts(monkeypatch, server)
            stopper, result = _stop_in_thread(server, TIMEOUT)
            assert grace_wait.wait(TIMEOUT)
            client.send_text("too late")  # after the signal: never read
            app.release.set()
            events, code = client.events_until_close()
        stopper.join(TIMEOUT)
    assert (events, code) == ([TextMessage("released block"), TextMessage("queued")], 1001)
    assert result == [True]
    assert [message for _, message in app.messages] == ["block", "queued"]
