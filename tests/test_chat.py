"""The chat example end to end: ``manage.py migrate`` and ``manage.py runws`` of a copy of
``example_project/``, driven through sockets only.

A ``Browser`` logs in over plain HTTP on the WebSocket port (login page, CSRF
token, session cookie), as a person would; WebSockets then open with that
cookie and the page's own origin. Each test makes its own room (over HTTP) so
that tests never see each other's messages or notices.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from django_rawws.testing import WebSocketTestClient
from tests.test_runws import EXAMPLE, REPOSITORY, RunwsProcess, free_port

DEMO_PASSWORD = "rawws-demo"  # example_project/example_project/settings.py
HISTORY = 50  # CHAT_HISTORY there
TIMEOUT = 10.0


# ------------------------------------------------------------------ the site


@dataclass
class Site:
    project: Path
    host: str
    port: int

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def ws_url(self, path: str) -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def db_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the example's SQLite database directly, as a second process would."""
        connection = sqlite3.connect(self.project / "db.sqlite3", timeout=TIMEOUT)
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()


def _manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _env() -> dict[str, str]:
    import os

    environ = {**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONUNBUFFERED": "1"}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    return environ


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A fresh copy of the example, migrated (demo users and rooms included) and served by runws."""
    project = tmp_path_factory.mktemp("chat") / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    migrated = _manage(project, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    port = free_port()
    process = RunwsProcess(project, f"127.0.0.1:{port}", "--noreload")
    try:
        process.wait_until_serving()
        yield Site(project, "127.0.0.1", port)
        process.signal(signal.SIGTERM)
        assert process.wait() == 0, process.output()
    finally:
        process.kill()


# ------------------------------------------------------------------ a browser


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


class Browser:
    """Plain HTTP/1.1 with a cookie jar, against the runws port; redirects are not followed."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, fields: dict[str, str] | None = None) -> Response:
        headers = {"Host": f"{self.site.host}:{self.site.port}"}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        body = None
        if fields is not None:
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = self.site.origin  # what a browser sends with a form POST
        connection = http.client.HTTPConnection(self.site.host, self.site.port, timeout=TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            text = response.read().decode()
        finally:
            connection.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return Response(response.status, response.headers, text)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict[str, str]) -> Response:
        """Submit the form of the page at ``path`` with its CSRF token, as a browser does."""
        page = self.get(path)
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, f"no CSRF token in {path}"
        return self.request("POST", path, {"csrfmiddlewaretoken": match.group(1), **fields})

    def login(self, username: str, password: str = DEMO_PASSWORD) -> Response:
        response = self.post_form("/accounts/login/", {"username": username, "password": password})
        assert response.status == 302, response.text[:2000]
        return response

    def create_room(self, name: str) -> str:
        """Create a room with the form of the room list; return its slug."""
        response = self.post_form("/", {"name": name})
        assert response.status == 302, response.text[:2000]
        assert response.location is not None
        match = re.fullmatch(r"/rooms/([-\w]+)/", response.location)
        assert match, response.location
        return match.group(1)

    def ws(self, path: str, **kwargs: Any) -> WebSocketTestClient:
        """A WebSocket with this browser's cookies and its page's origin."""
        return WebSocketTestClient(
            self.site.ws_url(path), cookies=self.cookies, origin=self.site.origin, timeout=TIMEOUT, **kwargs
        )


@pytest.fixture(scope="module")
def alice(site: Site) -> Browser:
    browser = Browser(site)
    browser.login("alice")
    return browser


@pytest.fixture(scope="module")
def bob(site: Site) -> Browser:
    browser = Browser(site)
    browser.login("bob")
    return browser


@pytest.fixture(scope="module")
def carol(site: Site) -> Browser:
    browser = Browser(site)
    browser.login("carol")
    return browser


@pytest.fixture
def room(alice: Browser) -> str:
    """A room of this test's own."""
    return alice.create_room(f"Room {uuid.uuid4().hex[:12]}")


def room_path(slug: str, after: int | None = None) -> str:
    return f"/ws/rooms/{slug}/" + (f"?after={after}" if after is not None else "")


def receive(ws: WebSocketTestClient) -> dict[str, Any]:
    """The next message of the chat itself, past the group backend's presence
    messages (``rawws.presence``: the presence test reads those)."""
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] != "rawws.presence":
            return message


def join(browser: Browser, slug: str, after: int | None = None) -> tuple[WebSocketTestClient, dict[str, Any]]:
    """Open the room's WebSocket; return it and the history message it starts with."""
    ws = browser.ws(room_path(slug, after))
    history = receive(ws)
    assert history["type"] == "history", history
    return ws, history


def say(ws: WebSocketTestClient, text: str) -> None:
    ws.send_json({"type": "message", "text": text})


def next_message(ws: WebSocketTestClient) -> dict[str, Any]:
    """The next chat message, past join and leave notices and presence changes (a
    connection closed just before may announce its leave a moment later; the
    notice and presence tests check them)."""
    while True:
        message = receive(ws)
        if message["type"] not in ("join", "leave"):
            assert message["type"] == "message", message
            return message


def texts(history: dict[str, Any]) -> list[str]:
    return [message["text"] for message in history["messages"]]


# ------------------------------------------------------------------ HTTP pages


def test_login_page_on_the_websocket_port_lists_the_demo_users_and_password(site: Site) -> None:
    page = Browser(site).get("/accounts/login/")
    assert page.status == 200
    assert re.search(r'<ul id="demo-users">.*alice.*bob.*carol.*</ul>', page.text, re.DOTALL)
    assert f'<code id="demo-password">{DEMO_PASSWORD}</code>' in page.text


def test_pages_redirect_an_anonymous_visitor_to_the_login_page(site: Site) -> None:
    browser = Browser(site)
    assert (browser.get("/").status, browser.get("/").location) == (302, "/accounts/login/?next=/")
    response = browser.get("/rooms/lobby/")
    assert (response.status, response.location) == (302, "/accounts/login/?next=/rooms/lobby/")


def test_login_with_csrf_token_sets_a_session_cookie_and_opens_the_room_list(site: Site) -> None:
    browser = Browser(site)
    response = browser.login("bob")
    assert response.location == "/"
    assert "sessionid" in browser.cookies
    rooms = browser.get("/")
    assert rooms.status == 200
    for name in ("Lobby", "Django", "Random"):
        assert f">{name}</a>" in rooms.text


def test_login_post_without_a_csrf_token_is_refused_with_403(site: Site) -> None:
    browser = Browser(site)
    browser.get("/accounts/login/")  # the CSRF cookie, but no token in the form
    response = browser.request("POST", "/accounts/login/", {"username": "alice", "password": DEMO_PASSWORD})
    assert response.status == 403
    assert "sessionid" not in browser.cookies


def test_login_with_a_wrong_password_stays_on_the_login_page(site: Site) -> None:
    browser = Browser(site)
    response = browser.post_form("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert response.status == 200
    assert "didn't match" in response.text
    assert "sessionid" not in browser.cookies


def test_room_page_loads_the_client_and_its_websocket_path(alice: Browser) -> None:
    page = alice.get("/rooms/lobby/")
    assert page.status == 200
    assert '<script src="/static/django_rawws/rawws.js"></script>' in page.text
    assert '<script src="/static/chat/room.js"></script>' in page.text
    assert 'id="connection-state"' in page.text
    match = re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', page.text)
    assert match
    config = json.loads(match.group(1))
    assert config["wsPath"] == "/ws/rooms/lobby/"
    assert (config["room"], config["user"]) == ("lobby", "alice")


def test_static_files_of_the_page_are_found_by_staticfiles(site: Site) -> None:
    result = _manage(site.project, "findstatic", "django_rawws/rawws.js", "chat/room.js", "chat/chat.css")
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(REPOSITORY / "django_rawws" / "static" / "django_rawws" / "rawws.js") in result.stdout
    assert str(site.project / "chat" / "static" / "chat" / "room.js") in result.stdout


def test_runws_serves_the_page_static_files_in_debug(alice: Browser) -> None:
    for path, marker in (
        ("/static/django_rawws/rawws.js", "function RawWS("),
        ("/static/chat/room.js", "new RawWS("),
        ("/static/chat/chat.css", ".messages"),
    ):
        response = alice.get(path)
        assert response.status == 200, path
        assert marker in response.text, path


def test_creating_a_room_escapes_its_name_on_every_page(alice: Browser) -> None:
    name = f"<b>Bold</b> & {uuid.uuid4().hex[:8]}"
    slug = alice.create_room(name)
    assert re.fullmatch(r"bboldb-[0-9a-f]{8}", slug)
    page = alice.get(f"/rooms/{slug}/")
    assert page.status == 200
    assert "<b>Bold</b>" not in page.text
    assert "&lt;b&gt;Bold&lt;/b&gt; &amp; " in page.text


def test_a_room_name_without_letters_or_digits_or_taken_is_refused(alice: Browser) -> None:
    for name in ("!!!", "Lobby", "lobby!"):
        response = alice.post_form("/", {"name": name})
        assert response.status == 200, name
        assert 'class="errorlist' in response.text, name


def test_example_models_have_their_migrations(site: Site) -> None:
    result = _manage(site.project, "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_room_page_is_404(alice: Browser) -> None:
    assert alice.get("/rooms/no-such-room/").status == 404


# ------------------------------------------------------------------ the handshake


def test_anonymous_handshake_is_refused_with_403(site: Site) -> None:
    refused = WebSocketTestClient.refused(site.ws_url(room_path("lobby")), origin=site.origin)
    assert refused.status == 403


def test_handshake_with_an_unknown_session_is_refused_with_403(site: Site) -> None:
    refused = WebSocketTestClient.refused(
        site.ws_url(room_path("lobby")), origin=site.origin, cookies={"sessionid": "not-a-session"}
    )
    assert refused.status == 403


def test_handshake_from_another_origin_is_refused_with_403(site: Site, alice: Browser) -> None:
    """A page on another site can't use a member's cookie to join (cross-site WebSocket hijacking)."""
    refused = WebSocketTestClient.refused(
        site.ws_url(room_path("lobby")), origin="http://evil.example", cookies=alice.cookies
    )
    assert refused.status == 403


def test_handshake_to_an_unknown_room_is_refused_with_404(site: Site, alice: Browser) -> None:
    refused = WebSocketTestClient.refused(
        site.ws_url(room_path("no-such-room")), origin=site.origin, cookies=alice.cookies
    )
    assert refused.status == 404


def test_handshake_after_logout_is_refused_with_403(site: Site) -> None:
    browser = Browser(site)
    browser.login("carol")
    cookies = dict(browser.cookies)
    with browser.ws(room_path("lobby")) as ws:
        assert receive(ws)["type"] == "history"
    page = browser.get("/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert token
    assert browser.request("POST", "/accounts/logout/", {"csrfmiddlewaretoken": token.group(1)}).status == 302
    refused = WebSocketTestClient.refused(
        site.ws_url(room_path("lobby")), origin=site.origin, cookies=cookies
    )
    assert refused.status == 403


# ------------------------------------------------------------------ chatting


def test_two_members_of_a_room_exchange_messages_both_ways(alice: Browser, bob: Browser, room: str) -> None:
    a, history = join(alice, room)
    assert history == {"type": "history", "messages": [], "truncated": False}
    with a:
        b, _ = join(bob, room)
        with b:
            assert receive(a) == {"type": "join", "user": "bob"}
            say(a, "hello bob")
            from_alice = next_message(a)
            # One event send; each member's consumer shapes it for its reader.
            assert next_message(b) == {**from_alice, "mine": False}
            assert from_alice["mine"] is True
            assert (from_alice["author"], from_alice["text"], from_alice["author_id"]) == (
                "alice",
                "hello bob",
                _user_id(alice.site, "alice"),
            )
            assert from_alice["room"] == room
            say(b, "hi alice")
            from_bob = next_message(b)
            assert next_message(a) == {**from_bob, "mine": False}
            assert from_bob["mine"] is True
            assert (from_bob["author"], from_bob["text"], from_bob["author_id"]) == (
                "bob",
                "hi alice",
                _user_id(bob.site, "bob"),
            )
            assert from_bob["id"] > from_alice["id"]
            assert a.receive_nothing() and b.receive_nothing()


def test_a_member_of_another_room_receives_nothing(
    alice: Browser, bob: Browser, carol: Browser, room: str
) -> None:
    elsewhere = carol.create_room(f"Elsewhere {uuid.uuid4().hex[:12]}")
    c, _ = join(carol, elsewhere)
    with c:
        a, _ = join(alice, room)
        b, _ = join(bob, room)
        with a, b:
            assert receive(a) == {"type": "join", "user": "bob"}
            say(a, "only for this room")
            next_message(a)
            next_message(b)
            say(b, "this room only")
            next_message(b)
            next_message(a)
        # Not the messages, not the join and leave notices either.
        assert c.receive_nothing(timeout=0.5)
        assert elsewhere not in {row[0] for row in _rooms_with_messages(alice.site)}


def _rooms_with_messages(site: Site) -> list[tuple[str]]:
    return site.db_rows("SELECT DISTINCT r.slug FROM chat_message m JOIN chat_room r ON r.id = m.room_id")


def test_others_see_join_and_leave_notices_and_the_member_itself_does_not(
    alice: Browser, bob: Browser, room: str
) -> None:
    a, _ = join(alice, room)
    with a:
        b, _ = join(bob, room)
        assert receive(a) == {"type": "join", "user": "bob"}
        assert b.close() == 1000
        assert receive(a) == {"type": "leave", "user": "bob"}
        assert b.receive_nothing(timeout=0)
        assert a.receive_nothing()


def read_presence(ws: WebSocketTestClient, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Read up to the next ``rawws.presence`` message and apply it to ``members``
    (by connection id, as docs/groups.md says a client keeps them); return it."""
    while True:
        message: dict[str, Any] = ws.receive_json()
        if message["type"] == "rawws.presence":
            break
    if "members" in message:
        members.clear()
        members.update((entry["conn"], entry) for entry in message["members"])
    for entry in message.get("joined", []):
        members[entry["conn"]] = entry
    for entry in message.get("left", []):
        members.pop(entry["conn"], None)
    return message


def online(members: dict[str, dict[str, Any]]) -> list[str]:
    """The names online, once each (a user with two tabs has two entries)."""
    return sorted({entry["name"] for entry in members.values()})


def _user_id(site: Site, username: str) -> int:
    rows = site.db_rows("SELECT id FROM auth_user WHERE username = ?", username)
    assert len(rows) == 1, username
    return int(rows[0][0])


def test_members_see_who_is_online_in_their_room_and_a_member_who_leaves_disappears(
    alice: Browser, bob: Browser, carol: Browser, room: str
) -> None:
    elsewhere = carol.create_room(f"Elsewhere {uuid.uuid4().hex[:12]}")
    seen_by_alice: dict[str, dict[str, Any]] = {}
    seen_by_bob: dict[str, dict[str, Any]] = {}
    seen_by_carol: dict[str, dict[str, Any]] = {}
    with alice.ws(room_path(room)) as a:
        snapshot = read_presence(a, seen_by_alice)
        assert snapshot["group"] == f"room.{room}"
        assert [(entry["user"], entry["name"]) for entry in snapshot["members"]] == [
            (_user_id(alice.site, "alice"), "alice")
        ]
        with carol.ws(room_path(elsewhere)) as c:
            read_presence(c, seen_by_carol)
            assert online(seen_by_carol) == ["carol"]
            assert receive(c)["type"] == "history"  # after the snapshot: the list shows as the page loads
            with bob.ws(room_path(room)) as b, bob.ws(room_path(room)) as b2:  # bob in two tabs
                read_presence(b, seen_by_bob)
                assert online(seen_by_bob) == ["alice", "bob"]
                for _ in range(2):
                    joined = read_presence(a, seen_by_alice)
                    assert [entry["name"] for entry in joined["joined"]] == ["bob"]
                assert len(seen_by_alice) == 3
                assert online(seen_by_alice) == ["alice", "bob"]
                assert b2.close() == 1000
                left = read_presence(a, seen_by_alice)
                assert [entry["name"] for entry in left["left"]] == ["bob"]
                assert online(seen_by_alice) == ["alice", "bob"]  # his other tab is still open
            left = read_presence(a, seen_by_alice)
            assert [entry["name"] for entry in left["left"]] == ["bob"]
            assert online(seen_by_alice) == ["alice"]
            # Nothing of this room's presence reached the other room.
            assert c.receive_nothing(timeout=0.2)
            assert online(seen_by_carol) == ["carol"]


def test_messages_are_saved_with_author_room_and_time(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "  kept, stripped  ")
        message = next_message(a)
    assert message["text"] == "kept, stripped"
    rows = alice.site.db_rows(
        "SELECT m.id, u.username, r.slug, m.text, m.created FROM chat_message m "
        "JOIN auth_user u ON u.id = m.author_id JOIN chat_room r ON r.id = m.room_id WHERE m.id = ?",
        message["id"],
    )
    assert len(rows) == 1
    _, author, slug, text, created = rows[0]
    assert (author, slug, text) == ("alice", room, "kept, stripped")
    assert created.replace(" ", "T").startswith(message["created"][:19])


def test_invalid_messages_get_an_error_and_nothing_is_saved(alice: Browser, bob: Browser, room: str) -> None:
    a, _ = join(alice, room)
    b, _ = join(bob, room)
    with a, b:
        assert receive(a) == {"type": "join", "user": "bob"}
        for content in (
            {"type": "message", "text": "   \n\t "},
            {"type": "message", "text": "x" * 2001},
            {"type": "message", "text": 42},
            {"type": "message"},
            {"type": "shout", "text": "hi"},
            ["message", "hi"],
        ):
            a.send_json(content)
            reply = receive(a)
            assert reply["type"] == "error", (content, reply)
        assert "at most 2000 characters" in _error_for(a, {"type": "message", "text": "y" * 2001})
        say(a, "z" * 2000)  # the limit itself is fine
        assert len(next_message(a)["text"]) == 2000
        assert len(next_message(b)["text"]) == 2000
        assert b.receive_nothing()
    assert alice.site.db_rows(
        "SELECT count(*) FROM chat_message m JOIN chat_room r ON r.id = m.room_id WHERE r.slug = ?", room
    ) == [(1,)]


def _error_for(ws: WebSocketTestClient, content: Any) -> str:
    ws.send_json(content)
    reply = receive(ws)
    assert reply["type"] == "error", reply
    error: str = reply["error"]
    return error


def test_a_message_that_is_not_json_closes_with_1007(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        a.send("not json")
        a.assert_closed(1007)


def test_a_frame_over_16_kib_closes_with_1009(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        a.send(json.dumps({"type": "message", "text": "x" * (16 << 10)}))
        a.assert_closed(1009)


def test_html_in_a_message_is_sent_as_text_and_escaped_in_the_page(
    alice: Browser, bob: Browser, room: str
) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "<script>alert('x')</script> & <b>bold</b>")
        assert next_message(a)["text"] == "<script>alert('x')</script> & <b>bold</b>"
    page = bob.get(f"/rooms/{room}/")
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page.text


# ------------------------------------------------------------------ history


def _page_messages(browser: Browser, slug: str) -> list[tuple[int, str, str]]:
    """(id, author, text) of every message in the room page's HTML."""
    page = browser.get(f"/rooms/{slug}/")
    assert page.status == 200
    items = re.findall(
        r'<li class="message[^"]*" data-id="(\d+)">.*?<span class="author">(.*?)</span>\s*'
        r'<span class="text">(.*?)</span>',
        page.text,
        re.DOTALL,
    )
    return [(int(ident), author, text) for ident, author, text in items]


def test_reloading_the_room_page_shows_the_history_in_order(alice: Browser, bob: Browser, room: str) -> None:
    a, _ = join(alice, room)
    b, _ = join(bob, room)
    ids = []
    with a, b:
        assert receive(a) == {"type": "join", "user": "bob"}
        for ws, text in ((a, "one"), (b, "two"), (a, "three")):
            say(ws, text)
            ids.append(next_message(a)["id"])
            next_message(b)
    expected = [(ids[0], "alice", "one"), (ids[1], "bob", "two"), (ids[2], "alice", "three")]
    assert _page_messages(alice, room) == expected
    assert _page_messages(bob, room) == expected
    page = alice.get(f"/rooms/{room}/")
    config = json.loads(
        re.search(r'id="chat-config" type="application/json">(.*?)</script>', page.text).group(1)
    )  # type: ignore[union-attr]
    assert config["lastId"] == ids[2]
    mine = re.findall(r'<li class="message( mine)?" data-id="(\d+)">', page.text)
    assert [(bool(flag), int(ident)) for flag, ident in mine] == [
        (True, ids[0]),
        (False, ids[1]),
        (True, ids[2]),
    ]


def test_a_websocket_reconnecting_after_its_last_id_gets_exactly_what_it_missed(
    alice: Browser, bob: Browser, room: str
) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "before")
        last_seen = next_message(a)["id"]
    # Alice is away: Bob talks.
    b, _ = join(bob, room)
    with b:
        say(b, "while away 1")
        say(b, "while away 2")
        missed = [next_message(b), next_message(b)]
    a, history = join(alice, room, after=last_seen)
    with a:
        assert history == {
            "type": "history",
            "messages": [{**message, "mine": False} for message in missed],  # Bob's, read by Alice
            "truncated": False,
        }
        # And live again.
        say(a, "back")
        assert next_message(a)["text"] == "back"


def test_the_history_marks_the_readers_own_messages_as_live_delivery_does(
    alice: Browser, bob: Browser, room: str
) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "from alice")
        next_message(a)
    b, _ = join(bob, room)
    with b:
        say(b, "from bob")
        next_message(b)
    for browser, expected in ((alice, [True, False]), (bob, [False, True])):
        ws, history = join(browser, room)
        with ws:
            assert [(m["text"], m["mine"]) for m in history["messages"]] == list(
                zip(["from alice", "from bob"], expected)
            )


def test_a_history_request_sends_what_came_after_an_id(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        ids = []
        for text in ("one", "two", "three"):
            say(a, text)
            ids.append(next_message(a)["id"])
        a.send_json({"type": "history", "after": ids[0]})
        history = receive(a)
        assert (history["type"], history["truncated"]) == ("history", False)
        assert [(m["id"], m["text"]) for m in history["messages"]] == [(ids[1], "two"), (ids[2], "three")]
        # Without a valid id: the latest history, as at a first connect.
        a.send_json({"type": "history", "after": "1"})
        assert texts(receive(a)) == ["one", "two", "three"]


def test_a_websocket_without_a_resume_point_gets_the_latest_history(
    alice: Browser, bob: Browser, room: str
) -> None:
    b, _ = join(bob, room)
    with b:
        for text in ("first", "second"):
            say(b, text)
            next_message(b)
    a, history = join(alice, room)
    with a:
        assert texts(history) == ["first", "second"]
        assert [message["author_id"] for message in history["messages"]] == [_user_id(bob.site, "bob")] * 2
        assert history["truncated"] is False


def test_a_resume_point_older_than_the_history_window_is_marked_truncated(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "start")
        start = next_message(a)["id"]
        for n in range(HISTORY + 1):
            say(a, f"m{n}")
        for n in range(HISTORY + 1):
            assert next_message(a)["text"] == f"m{n}"
    a, history = join(alice, room, after=start)
    with a:
        assert history["truncated"] is True
        assert texts(history) == [f"m{n}" for n in range(1, HISTORY + 1)]
    a, history = join(alice, room, after=start + 1)  # exactly a window's worth missed
    with a:
        assert history["truncated"] is False
        assert len(history["messages"]) == HISTORY


def test_a_malformed_resume_point_is_ignored(alice: Browser, room: str) -> None:
    a, _ = join(alice, room)
    with a:
        say(a, "only")
        next_message(a)
    for after in ("abc", "-1", "1e3", "%D9%A3", ""):
        ws = alice.ws(f"/ws/rooms/{room}/?after={after}")
        with ws:
            history = receive(ws)
            assert (texts(history), history["truncated"]) == (["only"], False)
