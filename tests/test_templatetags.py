"""``{% load rawws %}``: ``{% ws_url %}`` builds the URL a browser must open, ``{% rawws_client %}`` the script tag.

The URL is checked against what the page's request says (TLS, proxy header,
host, script prefix) and ``RAWWS["PUBLIC_URL"]``; one URL is opened for real
against the server, and the example chat's room page is checked end to end.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.template import Context, TemplateSyntaxError
from django.template.backends.django import DjangoTemplates
from django.test import RequestFactory, override_settings
from django.urls import NoReverseMatch, set_script_prefix
from websockets.sync.client import connect

from django_rawws.templatetags.rawws import websocket_url
from django_rawws.testing import WebSocketTestClient
from tests.test_chat import Browser, Site, alice, site  # noqa: F401 - fixtures of the example site
from tests.utils_server import TIMEOUT, running_server

RAWWS = {"URLCONF": "tests.wsurls"}


def render(source: str, request: Any = None, **context: Any) -> str:
    """Render ``{% load rawws %}`` + ``source`` with the installed libraries, as a project's engine would."""
    backend = DjangoTemplates({"NAME": "tests", "DIRS": [], "APP_DIRS": False, "OPTIONS": {}})
    template = backend.engine.from_string("{% load rawws %}" + source)
    return template.render(Context({"request": request, **context}))


@pytest.fixture
def factory() -> RequestFactory:
    return RequestFactory()


@pytest.fixture(autouse=True)
def _default_prefix() -> Any:
    """Each test starts with the script prefix Django sets at startup, and leaves it so."""
    set_script_prefix("/")
    yield
    set_script_prefix("/")


# ------------------------------------------------------------------ the page's own host


@override_settings(RAWWS=RAWWS)
def test_plain_http_page_gets_a_ws_url_on_its_own_host(factory: RequestFactory) -> None:
    request = factory.get("/page/")
    assert render('{% ws_url "echo" %}', request) == "ws://testserver/ws/echo/"


@override_settings(RAWWS=RAWWS)
def test_https_page_gets_wss(factory: RequestFactory) -> None:
    request = factory.get("/page/", secure=True)
    assert render('{% ws_url "echo" %}', request) == "wss://testserver/ws/echo/"


@override_settings(RAWWS=RAWWS, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_tls_terminated_by_a_proxy_gets_wss_through_secure_proxy_ssl_header(factory: RequestFactory) -> None:
    # The proxy talks plain HTTP to Django; the browser's Host header has no port.
    behind_tls = factory.get("/page/", HTTP_HOST="testserver", HTTP_X_FORWARDED_PROTO="https")
    plain = factory.get("/page/", HTTP_HOST="testserver", HTTP_X_FORWARDED_PROTO="http")
    assert render('{% ws_url "echo" %}', behind_tls) == "wss://testserver/ws/echo/"
    assert render('{% ws_url "echo" %}', plain) == "ws://testserver/ws/echo/"


@override_settings(RAWWS=RAWWS)
def test_the_host_and_port_are_the_ones_the_browser_used(factory: RequestFactory) -> None:
    request = factory.get("/page/", HTTP_HOST="localhost:8443")
    assert render('{% ws_url "echo" %}', request) == "ws://localhost:8443/ws/echo/"


@override_settings(RAWWS=RAWWS, USE_X_FORWARDED_HOST=True, ALLOWED_HOSTS=["www.example.com"])
def test_the_forwarded_host_is_used_when_django_is_told_to_trust_it(factory: RequestFactory) -> None:
    request = factory.get("/page/", HTTP_X_FORWARDED_HOST="www.example.com")
    assert render('{% ws_url "echo" %}', request) == "ws://www.example.com/ws/echo/"


@override_settings(RAWWS=RAWWS)
def test_a_page_mounted_under_script_name_gets_the_prefix_once(factory: RequestFactory) -> None:
    request = factory.get("/page/", SCRIPT_NAME="/app")
    assert request.path == "/app/page/"
    assert render('{% ws_url "echo" %}', request) == "ws://testserver/app/ws/echo/"
    # During a real request Django's handler has set the prefix for reverse(): not doubled.
    set_script_prefix("/app/")
    assert render('{% ws_url "echo" %}', request) == "ws://testserver/app/ws/echo/"


@override_settings(RAWWS=RAWWS, FORCE_SCRIPT_NAME="/site/")
def test_force_script_name_prefixes_the_path(factory: RequestFactory) -> None:
    request = factory.get("/page/", SCRIPT_NAME="/ignored")
    set_script_prefix("/site/")
    assert render('{% ws_url "echo" %}', request) == "ws://testserver/site/ws/echo/"


@override_settings(RAWWS=RAWWS)
def test_an_ipv6_host_keeps_its_brackets(factory: RequestFactory) -> None:
    request = factory.get("/page/", HTTP_HOST="[::1]:8000")
    assert render('{% ws_url "echo" %}', request) == "ws://[::1]:8000/ws/echo/"


# ------------------------------------------------------------------ PUBLIC_URL


@override_settings(RAWWS={**RAWWS, "PUBLIC_URL": "wss://ws.example.com"})
def test_an_absolute_public_url_replaces_scheme_host_and_prefix(factory: RequestFactory) -> None:
    request = factory.get("/page/", SCRIPT_NAME="/app")
    assert render('{% ws_url "echo" %}', request) == "wss://ws.example.com/ws/echo/"


@override_settings(RAWWS={**RAWWS, "PUBLIC_URL": "wss://example.com/realtime/"})
def test_an_absolute_public_url_may_carry_a_path_prefix() -> None:
    assert websocket_url("echo") == "wss://example.com/realtime/ws/echo/"


@override_settings(RAWWS={**RAWWS, "PUBLIC_URL": "wss://ws.example.com"})
def test_an_absolute_public_url_needs_no_request() -> None:
    assert render('{% ws_url "echo" %}') == "wss://ws.example.com/ws/echo/"


@override_settings(RAWWS={**RAWWS, "PUBLIC_URL": "//ws.example.com:8443"})
def test_a_scheme_relative_public_url_follows_the_page_scheme(factory: RequestFactory) -> None:
    assert (
        render('{% ws_url "echo" %}', factory.get("/", secure=True)) == "wss://ws.example.com:8443/ws/echo/"
    )
    assert render('{% ws_url "echo" %}', factory.get("/")) == "ws://ws.example.com:8443/ws/echo/"


@override_settings(RAWWS={**RAWWS, "PUBLIC_URL": ":8001"})
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:8000", "ws://localhost:8001/ws/echo/"),
        ("localhost", "ws://localhost:8001/ws/echo/"),
        ("[::1]:8000", "ws://[::1]:8001/ws/echo/"),
    ],
)
def test_a_port_alone_keeps_the_page_host_and_changes_the_port(
    factory: RequestFactory, host: str, expected: str
) -> None:
    assert render('{% ws_url "echo" %}', factory.get("/", HTTP_HOST=host)) == expected


# ------------------------------------------------------------------ arguments


@override_settings(RAWWS=RAWWS)
def test_keyword_arguments_fill_the_route_converters(factory: RequestFactory) -> None:
    request = factory.get("/")
    out = render('{% ws_url "room" room=room.pk name="red" %}', request, room={"pk": 12})
    assert out == "ws://testserver/ws/rooms/12/red/"


@override_settings(RAWWS=RAWWS)
def test_positional_arguments_fill_a_regex_route(factory: RequestFactory) -> None:
    assert render('{% ws_url "positional" 5 "xyz" %}', factory.get("/")) == "ws://testserver/ws/re/5/xyz/"


@override_settings(RAWWS=RAWWS)
def test_a_namespaced_route_from_an_include(factory: RequestFactory) -> None:
    item = "5b4e5a3e-4f7b-4d25-9a43-5a2a1d6f4c11"
    out = render('{% ws_url "api:item" item=item %}', factory.get("/"), item=item)
    assert out == f"ws://testserver/ws/api/items/{item}/"


@override_settings(RAWWS=RAWWS)
def test_non_ascii_paths_are_percent_encoded(factory: RequestFactory) -> None:
    assert render('{% ws_url "unicode" word="été" %}', factory.get("/")) == (
        "ws://testserver/ws/caf%C3%A9/%C3%A9t%C3%A9/"
    )


@override_settings(RAWWS=RAWWS)
def test_the_url_is_html_escaped_when_autoescaping(factory: RequestFactory) -> None:
    source = '<a data-url="{% ws_url "unicode" word=word %}">'
    assert (
        render(source, factory.get("/"), word="a&b") == '<a data-url="ws://testserver/ws/caf%C3%A9/a&amp;b/">'
    )


@override_settings(RAWWS=RAWWS)
def test_as_stores_the_url_in_a_variable_and_prints_nothing(factory: RequestFactory) -> None:
    source = '{% ws_url "echo" as url %}[{{ url }}]'
    assert render(source, factory.get("/")) == "[ws://testserver/ws/echo/]"


@override_settings(RAWWS=RAWWS)
def test_the_route_name_may_be_a_variable(factory: RequestFactory) -> None:
    assert render("{% ws_url name %}", factory.get("/"), name="echo") == "ws://testserver/ws/echo/"


@override_settings(RAWWS=RAWWS)
def test_websocket_url_is_the_same_for_python_code(factory: RequestFactory) -> None:
    request = factory.get("/", secure=True)
    assert (
        websocket_url("room", kwargs={"room": 3, "name": "x"}, request=request)
        == "wss://testserver/ws/rooms/3/x/"
    )
    assert websocket_url("positional", [7, "ab"], request=request) == "wss://testserver/ws/re/7/ab/"


# ------------------------------------------------------------------ mistakes


def test_the_tag_needs_a_route_name() -> None:
    with pytest.raises(TemplateSyntaxError, match="'ws_url' takes at least one argument"):
        render("{% ws_url %}")


def test_positional_and_keyword_arguments_do_not_mix() -> None:
    with pytest.raises(TemplateSyntaxError, match="positional or keyword arguments, not both"):
        render('{% ws_url "room" 1 name="x" %}')


@override_settings(RAWWS=RAWWS)
def test_an_unknown_route_name_is_no_reverse_match(factory: RequestFactory) -> None:
    with pytest.raises(NoReverseMatch, match="'nope'"):
        render('{% ws_url "nope" %}', factory.get("/"))


@override_settings(RAWWS=RAWWS)
def test_without_the_request_in_the_context_the_error_says_what_to_add() -> None:
    with pytest.raises(ImproperlyConfigured) as excinfo:
        render('{% ws_url "echo" %}')
    message = str(excinfo.value)
    assert "'django.template.context_processors.request'" in message
    assert 'RAWWS["PUBLIC_URL"]' in message


@override_settings(RAWWS={"URLCONF": None})
def test_without_a_websocket_urlconf_the_error_names_the_setting(factory: RequestFactory) -> None:
    with pytest.raises(ImproperlyConfigured, match=r'RAWWS\["URLCONF"\] must name the module'):
        render('{% ws_url "echo" %}', factory.get("/"))


# ------------------------------------------------------------------ the client script


@override_settings(STATIC_URL="/static/")
def test_rawws_client_is_the_script_tag_of_the_shipped_client() -> None:
    assert render("{% rawws_client %}") == '<script src="/static/django_rawws/rawws.js"></script>'


@override_settings(
    STATIC_URL="/assets/",
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.staticfiles",
        "django_rawws",
    ],
)
def test_rawws_client_goes_through_staticfiles_storage() -> None:
    assert render("{% rawws_client %}") == '<script src="/assets/django_rawws/rawws.js"></script>'


@override_settings(STATIC_URL="/static/")
def test_rawws_client_keyword_arguments_become_escaped_attributes() -> None:
    out = render('{% rawws_client defer=True async=False nonce=nonce data_x="1" %}', nonce='a"b')
    assert out == '<script src="/static/django_rawws/rawws.js" defer nonce="a&quot;b" data-x="1"></script>'


# ------------------------------------------------------------------ for real


@pytest.mark.django_db(transaction=True)
@override_settings(RAWWS=RAWWS)
def test_the_url_of_the_tag_opens_a_websocket_on_the_server(factory: RequestFactory) -> None:
    with running_server() as server:
        host, port = server.address
        request = factory.get("/page/", HTTP_HOST=f"{host}:{port}")
        url = render('{% ws_url "echo" %}', request)
        assert url == f"ws://{host}:{port}/ws/echo/"
        with connect(url, origin=f"http://{host}:{port}", open_timeout=TIMEOUT) as ws:
            ws.send("through the tag")
            assert ws.recv(timeout=TIMEOUT) == "through the tag"


def test_the_example_room_page_renders_its_websocket_url_and_the_client(site: Site, alice: Browser) -> None:  # noqa: F811
    page = alice.get("/rooms/lobby/")
    assert page.status == 200
    match = re.search(r'<section id="chat" class="card chat" data-ws-url="([^"]+)">', page.text)
    assert match, page.text
    assert match.group(1) == f"ws://{site.host}:{site.port}/ws/rooms/lobby/"
    assert '<script src="/static/django_rawws/rawws.js"></script>' in page.text
    # What room.js opens: the rendered URL, with the page's cookies and origin.
    with WebSocketTestClient(
        match.group(1), cookies=alice.cookies, origin=site.origin, timeout=TIMEOUT
    ) as ws:
        # The room's presence snapshot comes first, then the history.
        first = ws.receive_json()
        assert first["type"] == "rawws.presence"
        assert ws.receive_json()["type"] == "history"
