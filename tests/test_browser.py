"""The chat example in a real browser: Debian's Chromium driven by Selenium.

What ``tests/test_chat.py`` checks over sockets, checked here as people see
it: the page's own script (``chat/room.js`` on ``rawws.js``) in Chromium,
logged in through the login form, against ``manage.py runws`` of a migrated
copy of ``example_project/``. Three browsers with their own profiles (so their
own cookies): alice and bob chat, carol sits in another room.

No download, ever: the browser and its driver are the system's
(``apt-get install chromium chromium-driver``; ``.ci/run`` does it), found on
``PATH`` and handed to Selenium, which then never starts Selenium Manager.
Without them (or without Selenium, from the ``test`` extra) the tests skip,
and fail under ``RAWWS_REQUIRE_SERVICES=1``.

The chat in alice's browser is saved as a screenshot; with
``RAWWS_UPDATE_SCREENSHOT=1`` it also replaces ``docs/images/chat.png``,
the one the README shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import skip_or_fail_without_service
from tests.test_runws import EXAMPLE, REPOSITORY, RunwsProcess, free_port

try:  # The "test" extra brings Selenium; without it the tests skip, or fail in CI.
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

DEMO_PASSWORD = "rawws-demo"  # example_project/example_project/settings.py
SCREENSHOT = REPOSITORY / "docs" / "images" / "chat.png"
UPDATE_SCREENSHOT = os.environ.get("RAWWS_UPDATE_SCREENSHOT", "") == "1"

# Bounds on waits, not delays: they only matter when something is broken.
TIMEOUT = 10.0
# The page retries with full-jitter backoff (rawws.js: ceilings 1, 2, 4, 8 s...),
# so it may come back a few seconds after the server does.
RECONNECT_TIMEOUT = 30.0

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container: no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",  # a small /dev/shm in containers
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",  # 127.0.0.1 directly, whatever the environment says
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--password-store=basic",
    "--lang=en-US",
    "--window-size=1000,640",
    "--force-device-scale-factor=1",
)

T = TypeVar("T")


# ------------------------------------------------------------------ the server


def manage(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py`` of the copy, with this checkout's package and the copy's own settings."""
    environ = {**os.environ, "PYTHONPATH": str(REPOSITORY), "PYTHONUNBUFFERED": "1"}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class ChatServer:
    """``runws`` of a migrated copy of the example, which a test may stop and start again on the same port."""

    project: Path
    port: int = field(default_factory=free_port)
    process: RunwsProcess | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = RunwsProcess(self.project, f"127.0.0.1:{self.port}", "--noreload")
        self.process.wait_until_serving()

    def stop(self) -> None:
        """SIGTERM, as a process manager stops it: a graceful shutdown (1001 to every client), exit code 0."""
        process = self.process
        assert process is not None, "not running"
        process.signal(signal.SIGTERM)
        code = process.wait()  # on a timeout the fixture kills it: still self.process
        self.process = None
        assert code == 0, process.output()

    def post_while_down(self, room: str, author: str, text: str) -> None:
        """Save a message with the ORM from another process, as a management command or cron job would."""
        assert self.process is None, "the server is running"
        code = (
            "from django.contrib.auth import get_user_model\n"
            "from chat.models import Message, Room\n"
            f"Message.objects.create(room=Room.objects.get(slug={room!r}),"
            f" author=get_user_model().objects.get(username={author!r}), text={text!r})\n"
        )
        result = manage(self.project, "shell", "-c", code)
        assert result.returncode == 0, result.stdout + result.stderr

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, browser_binaries: tuple[str, str]
) -> Iterator[ChatServer]:
    """A fresh copy of the example: migrated (demo users alice, bob and carol; rooms Lobby, Django, Random), serving."""
    project = tmp_path_factory.mktemp("browser") / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
    migrated = manage(project, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    chat = ChatServer(project)
    try:
        chat.start()
        yield chat
        if chat.process is not None:
            chat.stop()
    finally:
        chat.kill()


# ------------------------------------------------------------------ the browsers


@pytest.fixture(scope="module")
def browser_binaries() -> Iterator[tuple[str, str]]:
    """The system's Chromium and chromedriver, or a skip (a failure under RAWWS_REQUIRE_SERVICES=1)."""
    if webdriver is None:
        skip_or_fail_without_service("Selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        skip_or_fail_without_service(
            "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    assert chromium is not None and chromedriver is not None
    # Selenium Manager runs only when no driver path is given, and we always give
    # one; should that change, it must not reach the network.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        yield chromium, chromedriver


class ChatPage:
    """One person's browser (its own Chromium and profile), with what it shows of the chat."""

    def __init__(self, server: ChatServer, binaries: tuple[str, str], profile: Path) -> None:
        chromium, chromedriver = binaries
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        self.server = server
        # An explicit driver path: Selenium uses it and skips Selenium Manager.
        self.driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)

    def quit(self) -> None:
        self.driver.quit()

    # -------------------------------------------------------------- waiting

    def wait_for(self, condition: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
        """Poll ``condition`` until it returns something truthy; fail saying ``what`` and what the page showed."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            pytest.fail(
                f"{what}: not within {timeout}s\nstate: {self.state()}\nlist: {self.items()}\n"
                f"url: {self.driver.current_url}",
                pytrace=False,
            )

    # -------------------------------------------------------------- actions

    def login(self, username: str) -> None:
        """Log in with the login form, as a person would."""
        self.driver.get(f"{self.server.origin}/accounts/login/")
        self.driver.find_element(By.ID, "id_username").send_keys(username)
        self.driver.find_element(By.ID, "id_password").send_keys(DEMO_PASSWORD)
        self.driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        self.wait_for(
            lambda: (
                self.driver.current_url == f"{self.server.origin}/"
                and self.driver.find_element(By.CSS_SELECTOR, "header.site .who").text == username
            ),
            f"{username} on the room list after logging in",
        )

    def open_room(self, slug: str) -> None:
        self.driver.get(f"{self.server.origin}/rooms/{slug}/")
        self.wait_until_connected()

    def create_room(self, name: str) -> str:
        """Create a room with the room list's form; return its slug."""
        self.driver.get(f"{self.server.origin}/")
        self.driver.find_element(By.ID, "id_name").send_keys(name)
        self.driver.find_element(By.CSS_SELECTOR, ".new-room button[type=submit]").click()
        prefix = f"{self.server.origin}/rooms/"
        self.wait_for(lambda: self.driver.current_url.startswith(prefix), f"the new room {name!r} opened")
        self.wait_until_connected()
        return self.driver.current_url[len(prefix) :].rstrip("/")

    def say(self, text: str) -> None:
        """Type a message and press Send."""
        box = self.driver.find_element(By.ID, "message-text")
        self.wait_for(box.is_enabled, "the message box enabled")
        box.send_keys(text)
        self.driver.find_element(By.ID, "send").click()
        self.wait_for(lambda: box.get_attribute("value") == "", "the message box emptied once sent")

    def reload(self) -> None:
        self.driver.refresh()
        self.wait_until_connected()

    # -------------------------------------------------------------- what it shows

    def state(self) -> tuple[str, str]:
        """The connection indicator: (its text, its class)."""
        label = self.driver.find_element(By.ID, "connection-state")
        return label.text, label.get_attribute("class") or ""

    def wait_until_connected(self, timeout: float = TIMEOUT) -> None:
        self.wait_for(lambda: self.state() == ("connected", "state state-open"), "connected", timeout)

    def wait_until_reconnecting(self) -> None:
        """Between attempts "reconnecting in N s…", during one "reconnecting…": the same class."""
        self.wait_for(
            lambda: (
                self.state()[1] == "state state-reconnecting" and self.state()[0].startswith("reconnecting")
            ),
            "the page showing it is reconnecting",
        )

    def items(self) -> list[dict[str, Any]]:
        """Every entry of the message list, in page order, read in one script call."""
        items: list[dict[str, Any]] = self.driver.execute_script(
            """
            return Array.from(document.querySelectorAll("#messages > li")).map(function (li) {
              function part(name) {
                var node = li.querySelector("." + name);
                return node ? node.textContent : null;
              }
              return {kind: li.classList.contains("notice") ? "notice" : "message",
                      mine: li.classList.contains("mine"), id: li.dataset.id || null,
                      author: part("author"), text: part("text") || li.textContent};
            });
            """
        )
        return items

    def messages(self) -> list[tuple[str, str, bool]]:
        """(author, text, mine) of each message shown."""
        return [(i["author"], i["text"], i["mine"]) for i in self.items() if i["kind"] == "message"]

    def online(self) -> list[str]:
        """The names in the room's online list, in page order."""
        names: list[str] = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#online > li'), (li) => li.textContent);"
        )
        return names

    def notices(self) -> list[str]:
        return [i["text"] for i in self.items() if i["kind"] == "notice"]

    def wait_for_message(self, author: str, text: str, mine: bool) -> None:
        self.wait_for(
            lambda: (author, text, mine) in self.messages(),
            f"{author}'s message {text!r} shown (mine={mine})",
        )

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(path)), path


@pytest.fixture(scope="module")
def open_browser(
    server: ChatServer, browser_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ChatPage]]:
    """Start a browser with a fresh profile and log ``username`` in; all quit at the end of the module."""
    pages: list[ChatPage] = []

    def open_as(username: str) -> ChatPage:
        page = ChatPage(server, browser_binaries, tmp_path_factory.mktemp(f"profile-{username}"))
        pages.append(page)
        page.login(username)
        return page

    try:
        yield open_as
    finally:
        for page in pages:
            page.quit()


@pytest.fixture(scope="module")
def alice(open_browser: Callable[[str], ChatPage]) -> ChatPage:
    return open_browser("alice")


@pytest.fixture(scope="module")
def bob(open_browser: Callable[[str], ChatPage]) -> ChatPage:
    return open_browser("bob")


@pytest.fixture(scope="module")
def carol(open_browser: Callable[[str], ChatPage]) -> ChatPage:
    return open_browser("carol")


# ------------------------------------------------------------------ the tests


EXCHANGE = [
    ("alice", "Hi Bob! Is this live?"),
    ("bob", "It is: a WebSocket to manage.py runws, no reload."),
    ("alice", "And the consumer saves each message with the ORM."),
    ("bob", "Try stopping the server: the page reconnects by itself."),
]


def test_two_members_see_each_others_messages_live_and_a_member_of_another_room_sees_none(
    alice: ChatPage, bob: ChatPage, carol: ChatPage, tmp_path: Path
) -> None:
    carol.open_room("random")
    carol.wait_for(lambda: carol.online() == ["carol"], "carol alone in Random's online list")
    alice.open_room("lobby")
    assert alice.state() == ("connected", "state state-open")
    assert alice.messages() == []  # a fresh database
    alice.wait_for(lambda: alice.online() == ["alice"], "alice alone in the lobby's online list")
    bob.open_room("lobby")
    alice.wait_for(lambda: alice.notices() == ["bob joined"], "alice told that bob joined")
    alice.wait_for(lambda: alice.online() == ["alice", "bob"], "alice sees bob online")
    bob.wait_for(lambda: bob.online() == ["alice", "bob"], "bob sees alice online")

    pages = {"alice": alice, "bob": bob}
    for author, text in EXCHANGE:
        pages[author].say(text)
        for name, page in pages.items():
            page.wait_for_message(author, text, mine=name == author)
    expected = [(author, text) for author, text in EXCHANGE]
    for name, page in pages.items():
        assert [(author, text) for author, text, _ in page.messages()] == expected, name
        assert [mine for _, _, mine in page.messages()] == [author == name for author, _ in EXCHANGE], name

    # Carol's own message is a barrier: had the server sent her anything of the
    # lobby's (pushed before alice and bob saw it), it would be in her list before this.
    carol.say("Anyone in Random?")
    carol.wait_for_message("carol", "Anyone in Random?", mine=True)
    assert [(i["kind"], i["author"], i["text"]) for i in carol.items()] == [
        ("message", "carol", "Anyone in Random?")
    ]
    assert alice.messages()[-1] == ("bob", EXCHANGE[-1][1], False)  # and nothing of carol's in the lobby
    assert carol.online() == ["carol"]  # nor anyone of the lobby in Random's list

    shot = tmp_path / "chat.png"
    alice.screenshot(shot)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if UPDATE_SCREENSHOT:
        alice.screenshot(SCREENSHOT)


def test_a_reload_shows_the_history_from_the_database_in_order_and_once(
    alice: ChatPage, bob: ChatPage
) -> None:
    alice.open_room("django")
    bob.open_room("django")
    for page, text in ((bob, "one"), (alice, "two"), (bob, "three")):
        page.say(text)
        alice.wait_for_message("alice" if page is alice else "bob", text, mine=page is alice)
    alice.reload()
    history = [("bob", "one", False), ("alice", "two", True), ("bob", "three", False)]
    # Rendered by the view: no notice (those are live only), each with its id.
    assert [i["kind"] for i in alice.items()] == ["message"] * 3
    assert alice.messages() == history
    ids = [int(i["id"]) for i in alice.items()]
    assert ids == sorted(ids)
    # The socket's own history (after the last id shown) adds nothing: a new
    # message, which comes after it on the same socket, shows once, last.
    alice.say("four")
    alice.wait_for_message("alice", "four", mine=True)
    assert alice.messages() == [*history, ("alice", "four", True)]


# Installed in the page before its scripts run: records the page's WebSockets, and
# while window.heldBack is true sends new attempts to a closed port (they fail,
# and RawWS retries), so a test can keep the page away while the server runs.
HOLD_BACK_WEBSOCKETS = """
(function () {
  var Native = window.WebSocket;
  window.pageSockets = [];
  window.heldBack = false;
  function Recorded(url, protocols) {
    var socket = new Native(window.heldBack ? "ws://127.0.0.1:9/" : url, protocols);
    window.pageSockets.push(socket);
    return socket;
  }
  Recorded.prototype = Native.prototype;
  ["CONNECTING", "OPEN", "CLOSING", "CLOSED"].forEach(function (name) { Recorded[name] = Native[name]; });
  window.WebSocket = Recorded;
})();
"""


def test_a_page_away_while_the_server_runs_gets_what_it_missed_once_and_in_order(
    alice: ChatPage, bob: ChatPage
) -> None:
    """No restart: back, the page asks for what came after the last message it shows (?after=)."""
    script = alice.driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": HOLD_BACK_WEBSOCKETS}
    )
    try:
        slug = alice.create_room("Tunnel")
    finally:
        alice.driver.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]}
        )
    bob.open_room(slug)
    alice.say("Entering a tunnel.")
    for page in (alice, bob):
        page.wait_for_message("alice", "Entering a tunnel.", mine=page is alice)

    # The connection drops (a close code RawWS retries) and the retries fail until released.
    alice.driver.execute_script(
        "window.heldBack = true; window.pageSockets[window.pageSockets.length - 1].close(4500);"
    )
    alice.wait_until_reconnecting()
    bob.say("Missed one.")
    bob.say("Missed two.")
    bob.wait_for_message("bob", "Missed two.", mine=True)
    assert alice.messages() == [("alice", "Entering a tunnel.", True)]
    last_shown = [item for item in alice.items() if item["kind"] == "message"][-1]["id"]
    # Back: "online" makes RawWS retry at once rather than at the end of its backoff.
    alice.driver.execute_script("window.heldBack = false; window.dispatchEvent(new Event('online'));")
    alice.wait_until_connected(RECONNECT_TIMEOUT)
    alice.wait_for_message("bob", "Missed two.", mine=False)
    resumed_url = alice.driver.execute_script("return window.pageSockets[window.pageSockets.length - 1].url;")
    assert resumed_url.endswith(f"/ws/rooms/{slug}/?after={last_shown}"), resumed_url
    expected = [
        ("alice", "Entering a tunnel.", True),
        ("bob", "Missed one.", False),
        ("bob", "Missed two.", False),
    ]
    assert alice.messages() == expected
    bob.say("Welcome back.")
    alice.wait_for_message("bob", "Welcome back.", mine=False)
    assert alice.messages() == [*expected, ("bob", "Welcome back.", False)]


def test_the_page_reconnects_by_itself_after_a_server_restart_and_shows_what_it_missed(
    server: ChatServer, alice: ChatPage, bob: ChatPage
) -> None:
    slug = alice.create_room("Night shift")
    bob.open_room(slug)
    alice.say("Restarting the server now.")
    bob.wait_for_message("alice", "Restarting the server now.", mine=False)
    # Set on the page, not in the page's HTML: still there later only if the page never reloaded.
    alice.driver.execute_script("window.sameDocument = true;")

    server.stop()
    for page in (alice, bob):
        page.wait_until_reconnecting()
        assert not page.driver.find_element(By.ID, "message-text").is_enabled()
        assert not page.driver.find_element(By.ID, "send").is_enabled()

    server.post_while_down(slug, "bob", "Posted while the server was down.")
    server.start()  # the same port

    for page in (alice, bob):
        page.wait_until_connected(RECONNECT_TIMEOUT)
        page.wait_for_message("bob", "Posted while the server was down.", mine=page is bob)
    assert alice.driver.execute_script("return window.sameDocument === true;")
    assert alice.messages() == [
        ("alice", "Restarting the server now.", True),
        ("bob", "Posted while the server was down.", False),
    ]
    # And live again, both ways.
    bob.say("Back.")
    alice.wait_for_message("bob", "Back.", mine=False)
    alice.say("Welcome back.")
    bob.wait_for_message("alice", "Welcome back.", mine=False)
