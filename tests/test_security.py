"""The bypass attempts a reviewer would try on the handshake's checks, through real sockets.

``Origin`` (cross-site WebSocket hijacking), ``Host`` (``ALLOWED_HOSTS``),
proxy headers from a peer that is not a trusted proxy, and the
``AUTHENTICATE`` hook returning what it should not. The rule tables of
``origin_allowed`` and ``client_address`` are unit-tested in
tests/test_handler.py; here each attempt is a raw handshake with exactly
the headers an attacker would send, and the answer is read off the wire.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.test import Client, override_settings
from websockets.sync.client import connect

from tests.utils_server import TIMEOUT, raw_handshake, running_server, ws_url

ORIGIN_REFUSED = (403, b"Forbidden: origin not allowed\n")
HOST_REFUSED = (400, b"Bad Request: invalid Host header\n")


def rawws(**options: Any) -> override_settings:
    return override_settings(RAWWS={"URLCONF": "tests.wsurls", **options})


def answer(server: Any, host: str, origin: str | None = None, path: str = "/ws/echo/") -> tuple[int, bytes]:
    """Status and body of a handshake with this ``Host`` (and ``Origin``)."""
    headers = [("Origin", origin)] if origin is not None else []
    status, _, body = raw_handshake(server, path, headers, host=host)
    return status, body


def info(server: Any, headers: Any, origin: str | None = None) -> dict[str, Any]:
    """What the consumer's request says about the client (``/ws/info/``)."""
    with connect(ws_url(server, "/ws/info/"), additional_headers=headers, origin=origin) as ws:
        return json.loads(ws.recv(timeout=TIMEOUT))


# ------------------------------------------------------------------- origin


class TestOrigin:
    """A page on another site must not open a socket that carries our cookies."""

    @pytest.fixture(autouse=True)
    def _host(self, settings: Any) -> None:
        settings.ALLOWED_HOSTS = ["example.com"]

    @pytest.mark.parametrize(
        "origin",
        [
            "http://example.com",
            "HTTP://EXAMPLE.COM",  # scheme and host compare case-insensitively
            "http://example.com:80",  # the default port, explicit
        ],
    )
    def test_the_sites_own_origin_is_accepted(self, origin: str) -> None:
        with running_server() as server:
            assert answer(server, "example.com", origin)[0] == 101

    @pytest.mark.parametrize(
        "origin",
        [
            "null",  # sandboxed iframe, file: page, some redirects
            "Null",
            "http://evil-example.com",  # a look-alike that ends with the name
            "http://example.com.evil.com",  # a look-alike that starts with it
            "http://evil.com/example.com",
            "http://example.com@evil.com",  # user info: the host is evil.com
            "http://evil.com@example.com",  # user info: browsers never send it
            "http://example.com\\@evil.com",
            "http://evil.com#@example.com",
            "http://evil.com?@example.com",
            "http://example.com%2F@evil.com",
            "https://example.com",  # another scheme is another origin
            "ws://example.com",
            "http://example.com:8080",  # another port is another origin
            "http://example.com.",  # the trailing dot names another host for a browser
            "http://example.com, http://evil.com",  # a list where one origin belongs
            "http://xn--exmple-cua.com",  # a homograph in punycode
            "example.com",  # no scheme
            "http://",
            "",
        ],
    )
    def test_a_look_alike_or_malformed_origin_is_refused(self, origin: str) -> None:
        with running_server() as server:
            assert answer(server, "example.com", origin) == ORIGIN_REFUSED

    def test_a_second_origin_header_cannot_smuggle_a_foreign_one(self) -> None:
        with running_server() as server:
            status, _, _ = raw_handshake(
                server,
                "/ws/echo/",
                [("Origin", "http://example.com"), ("Origin", "http://evil.com")],
                host="example.com",
            )
        assert status == 403

    def test_the_origin_follows_the_port_the_host_header_names(self) -> None:
        with running_server() as server:
            assert answer(server, "example.com:8080", "http://example.com:8080")[0] == 101
            assert answer(server, "example.com:8080", "http://example.com") == ORIGIN_REFUSED
            assert answer(server, "example.com", "http://example.com:8080") == ORIGIN_REFUSED

    def test_a_host_with_a_trailing_dot_is_its_own_origin(self) -> None:
        with running_server() as server:
            assert answer(server, "example.com.", "http://example.com.")[0] == 101
            assert answer(server, "example.com.", "http://example.com") == ORIGIN_REFUSED


# --------------------------------------------------------------------- host


class TestHost:
    @pytest.fixture(autouse=True)
    def _hosts(self, settings: Any) -> None:
        settings.ALLOWED_HOSTS = ["example.com", ".example.org"]

    @pytest.mark.parametrize(
        "host",
        [
            "evil-example.com",
            "example.com.evil.com",
            "example.com@evil.com",
            "evil.com@example.com",
            "evil.com#example.com",
            "evil-example.org",
            "example.org.evil.com",
            "example.com\\evil.com",
            "[::1]:80@example.com",
        ],
    )
    def test_a_look_alike_host_gets_400(self, host: str) -> None:
        with running_server() as server:
            assert answer(server, host) == HOST_REFUSED

    @pytest.mark.parametrize(
        "host", ["EXAMPLE.COM", "example.com.", "example.com:8080", "a.example.org", "example.org"]
    )
    def test_the_forms_django_accepts_are_accepted(self, host: str) -> None:
        with running_server() as server:
            assert answer(server, host)[0] == 101

    def test_the_host_is_checked_before_the_origin(self) -> None:
        with running_server() as server:
            assert answer(server, "evil.com", "http://evil.com") == HOST_REFUSED


class TestAnyHost:
    """``ALLOWED_HOSTS = ['*']`` turns the Host check off; the origin check must still hold."""

    @pytest.fixture(autouse=True)
    def _any_host(self, settings: Any) -> None:
        settings.ALLOWED_HOSTS = ["*"]

    @pytest.mark.parametrize(
        "origin", ["http://evil.com", "null", "http://example.com.evil.com", "https://example.com"]
    )
    def test_a_cross_site_page_is_still_refused(self, origin: str) -> None:
        # The browser addresses our host; the page's origin is what the attacker controls.
        with running_server() as server:
            assert answer(server, "example.com", origin) == ORIGIN_REFUSED

    def test_any_host_is_accepted_and_is_its_own_origin(self) -> None:
        """DNS rebinding: a name the attacker points at us is its own origin. ALLOWED_HOSTS is the defence;
        the browser then sends the attacker's cookies, never ours (docs/security.md)."""
        with running_server() as server:
            assert answer(server, "rebound.evil.com", "http://rebound.evil.com")[0] == 101

    def test_a_forwarded_host_from_a_direct_client_is_not_its_own_origin(self) -> None:
        with (
            rawws(TRUSTED_PROXIES=["10.0.0.0/8"]),
            override_settings(USE_X_FORWARDED_HOST=True),
            running_server() as server,
        ):
            host = f"127.0.0.1:{server.address[1]}"
            status, _, _ = raw_handshake(
                server,
                "/ws/echo/",
                [("X-Forwarded-Host", "evil.com"), ("Origin", "http://evil.com")],
                host=host,
            )
            assert status == 403


# ------------------------------------------------------------------- proxy


SPOOFED = {
    "X-Forwarded-For": "203.0.113.5",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.com",
    "X-Forwarded-Port": "443",
}


@pytest.fixture
def proxy_settings() -> Any:
    """Django set up for a proxy, as a site behind one is."""
    with override_settings(
        SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
        USE_X_FORWARDED_HOST=True,
        USE_X_FORWARDED_PORT=True,
        ALLOWED_HOSTS=["127.0.0.1", "evil.com"],
    ):
        yield


@pytest.mark.usefixtures("proxy_settings")
class TestProxyHeadersFromAnUntrustedPeer:
    """The test client (127.0.0.1) is not in TRUSTED_PROXIES: what it claims is not believed."""

    def test_no_forwarded_header_changes_the_client_scheme_or_host(self) -> None:
        with rawws(TRUSTED_PROXIES=["10.0.0.0/8"]), running_server() as server:
            seen = info(server, SPOOFED)
            port = server.address[1]
        assert seen["remote_addr"] == "127.0.0.1"
        assert seen["secure"] is False
        assert seen["host"] == f"127.0.0.1:{port}"
        assert seen["absolute_uri"].startswith("http://127.0.0.1:")

    def test_a_spoofed_https_does_not_make_an_https_origin_ours(self) -> None:
        with rawws(TRUSTED_PROXIES=["10.0.0.0/8"]), running_server() as server:
            host, port = server.address
            headers = [("X-Forwarded-Proto", "https"), ("Origin", f"https://{host}:{port}")]
            assert raw_handshake(server, "/ws/echo/", headers)[0] == 403
            headers = [("X-Forwarded-Proto", "https"), ("Origin", f"http://{host}:{port}")]
            assert raw_handshake(server, "/ws/echo/", headers)[0] == 101

    def test_without_trusted_proxies_x_forwarded_for_is_ignored(self) -> None:
        with running_server() as server:
            assert info(server, {"X-Forwarded-For": "203.0.113.5"})["remote_addr"] == "127.0.0.1"

    def test_an_underscored_header_cannot_pose_as_a_forwarded_one_even_from_a_trusted_proxy(self) -> None:
        with rawws(TRUSTED_PROXIES=["127.0.0.1"]), running_server() as server:
            seen = info(server, {"X_Forwarded_For": "203.0.113.5", "X_Forwarded_Proto": "https"})
        assert (seen["remote_addr"], seen["secure"]) == ("127.0.0.1", False)


@pytest.mark.usefixtures("proxy_settings")
class TestProxyHeadersFromATrustedProxy:
    """127.0.0.1 stands for the proxy: it appends the client to what the client sent."""

    @pytest.mark.parametrize(
        "forwarded_for",
        [
            "6.6.6.6, 198.51.100.7",  # the client wrote 6.6.6.6, the proxy appended the real address
            "198.51.100.7, 10.0.0.3",  # two proxies: the rightmost untrusted entry is the client
            "6.6.6.6, 198.51.100.7, 10.0.0.3",
        ],
    )
    def test_the_client_is_the_rightmost_untrusted_entry(self, forwarded_for: str) -> None:
        with rawws(TRUSTED_PROXIES=["127.0.0.1", "10.0.0.0/8"]), running_server() as server:
            assert info(server, {"X-Forwarded-For": forwarded_for})["remote_addr"] == "198.51.100.7"

    def test_a_second_header_line_cannot_hide_the_address_the_proxy_appended(self) -> None:
        # Lines are joined in order ("6.6.6.6,198.51.100.7"): the proxy's own line is still the last.
        lines = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.7")]
        with rawws(TRUSTED_PROXIES=["127.0.0.1"]), running_server() as server:
            assert info(server, lines)["remote_addr"] == "198.51.100.7"

    def test_the_proxy_sets_the_scheme_and_host_the_origin_is_checked_against(self) -> None:
        with rawws(TRUSTED_PROXIES=["127.0.0.1"]), running_server() as server:
            headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.com"}
            seen = info(server, headers, origin="https://evil.com")
        assert (seen["secure"], seen["host"]) == (True, "evil.com")


# -------------------------------------------------------- the AUTHENTICATE hook


def hook(request: Any, handshake: Any) -> Any:
    """An AUTHENTICATE hook misbehaving on demand: ``?as=<what>``."""
    what = request.GET.get("as")
    if what is None:
        return None
    if what == "raise":
        raise RuntimeError("a bug in the hook")
    if what == "denied":
        raise PermissionDenied
    if what == "anonymous":
        return AnonymousUser()
    garbage = {
        "str": "ada",
        "true": True,
        "int": 1,
        "dict": {"pk": 1, "is_authenticated": True},
        "no-pk": SimpleNamespace(is_authenticated=True, pk=None),
        "method": SimpleNamespace(is_authenticated=lambda: True, pk=1),  # the Django 1.x API
    }
    if what in garbage:
        return garbage[what]
    return get_user_model().objects.get(username=what)


@pytest.mark.django_db(transaction=True)
class TestAuthenticateHook:
    @pytest.fixture(autouse=True)
    def _hook(self) -> Any:
        with rawws(AUTHENTICATE="tests.test_security.hook"):
            yield

    def user_info(self, server: Any, query: str, cookie: str | None = None) -> tuple[dict, list[str]]:
        headers = {"Cookie": f"sessionid={cookie}"} if cookie else {}
        with connect(ws_url(server, f"/ws/user/{query}"), additional_headers=headers) as ws:
            who = json.loads(ws.recv(timeout=TIMEOUT))
            ws.send("groups?")
            return who, json.loads(ws.recv(timeout=TIMEOUT))

    def test_an_inactive_user_is_refused_with_403(self) -> None:
        get_user_model().objects.create_user("gone", is_active=False)
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/user/?as=gone")
        assert (status, body) == (403, b"Forbidden: inactive user\n")

    def test_a_hook_that_raises_is_a_logged_500(self, caplog: pytest.LogCaptureFixture) -> None:
        with running_server() as server:
            status, _, body = raw_handshake(server, "/ws/user/?as=raise")
        assert (status, body) == (500, b"Internal Server Error\n")
        [record] = [
            r for r in caplog.records if r.name == "django_rawws.consumers" and r.levelno == logging.ERROR
        ]
        assert record.exc_info[1].args == ("a bug in the hook",)

    def test_a_hook_that_raises_permission_denied_is_a_quiet_403(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with running_server() as server:
            assert raw_handshake(server, "/ws/user/?as=denied")[0] == 403
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    @pytest.mark.parametrize("what", ["str", "true", "int", "dict", "no-pk", "method"])
    def test_a_hook_returning_something_that_is_not_a_user_is_a_logged_500(
        self, what: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        with running_server() as server:
            assert raw_handshake(server, f"/ws/login/?as={what}")[0] == 500
            assert raw_handshake(server, f"/ws/user/?as={what}")[0] == 500
        errors = [
            r for r in caplog.records if r.name == "django_rawws.consumers" and r.levelno == logging.ERROR
        ]
        assert len(errors) == 2
        assert "it must return a user" in str(errors[0].exc_info[1])

    def test_anonymous_user_from_the_hook_overrides_a_logged_in_session(self) -> None:
        ada = get_user_model().objects.create_user("ada")
        client = Client()
        client.force_login(ada)
        key = client.cookies["sessionid"].value
        with running_server() as server:
            who, groups = self.user_info(server, "?as=anonymous", key)
            assert (
                raw_handshake(server, "/ws/login/?as=anonymous", [("Cookie", f"sessionid={key}")])[0] == 403
            )
        assert who == {"authenticated": False, "username": None}
        assert f"user:{ada.pk}" not in groups

    def test_the_hooks_user_never_joins_the_group_of_the_sessions_user(self) -> None:
        ada = get_user_model().objects.create_user("ada")
        bob = get_user_model().objects.create_user("bob")
        client = Client()
        client.force_login(bob)
        with running_server() as server:
            who, groups = self.user_info(server, "?as=ada", client.cookies["sessionid"].value)
        assert who == {"authenticated": True, "username": "ada"}
        assert f"user:{ada.pk}" in groups and f"user:{bob.pk}" not in groups

    def test_returning_none_keeps_the_sessions_user(self) -> None:
        ada = get_user_model().objects.create_user("ada")
        client = Client()
        client.force_login(ada)
        with running_server() as server:
            who, groups = self.user_info(server, "", client.cookies["sessionid"].value)
        assert who == {"authenticated": True, "username": "ada"}
        assert f"user:{ada.pk}" in groups


# ------------------------------------------------------------------ the docs


def test_the_security_page_lists_every_limit_with_its_default() -> None:
    import re
    from pathlib import Path

    from django_rawws.conf import DEFAULTS

    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", text, re.MULTILINE))
    limits = {
        key
        for key in DEFAULTS
        if key.startswith("MAX_")
        or key.endswith(("_TIMEOUT", "_INTERVAL", "_WORKERS", "_RATE", "_BURST", "_DELAY"))
    } | {"WORKERS", "SHUTDOWN_GRACE", "SLOW_HANDLER_WARNING", "BACKLOG", "COMPRESSION_WINDOW_BITS"}
    assert limits <= set(rows), f"docs/security.md lacks the limits {sorted(limits - set(rows))}"
    for key, default in rows.items():
        assert key in DEFAULTS, f"docs/security.md lists {key}, which is not an option"
        assert default == repr(DEFAULTS[key]), (
            f"docs/security.md: {key} documented as {default}, default is {DEFAULTS[key]!r}"
        )


def test_the_security_page_says_how_to_report_a_vulnerability_privately() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    section = text.split("## Reporting a vulnerability", 1)[1].split("\n## ", 1)[0]
    assert "privately" in section and "do not open a public issue" in section
    assert "security@" in section
