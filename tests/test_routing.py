"""django_rawws.routing: Django's URL resolver over the WebSocket urlconf."""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import reverse
from websockets.sync.client import connect

from django_rawws.exceptions import NotFound
from django_rawws.routing import consumer_for, decode_path_info, get_urlconf, path_info_from_target, resolve
from tests import wsconsumers as c
from tests.utils_server import TIMEOUT, raw_handshake, running_server, ws_url


def resolve_target(target: str):
    return resolve(decode_path_info(path_info_from_target(target)))


class TestResolve:
    def test_a_path_resolves_to_its_consumer_class(self):
        route = resolve("/ws/echo/")
        assert route.consumer_class is c.EchoConsumer
        assert route.initkwargs == {}
        assert route.match.url_name == "echo"

    def test_path_converters_give_typed_kwargs(self):
        route = resolve("/ws/rooms/42/blue-room/")
        assert route.consumer_class is c.RouteConsumer
        assert route.kwargs == {"room": 42, "name": "blue-room"}
        assert route.args == ()

    def test_re_path_unnamed_groups_give_positional_args(self):
        route = resolve("/ws/re/7/abc/")
        assert route.args == ("7", "abc")
        assert route.kwargs == {}

    def test_include_with_a_namespace_resolves_and_keeps_the_namespace(self):
        item = uuid.uuid4()
        route = resolve(f"/ws/api/items/{item}/")
        assert route.kwargs == {"item": item}
        assert route.match.namespace == "api"
        assert route.match.view_name == "api:item"

    def test_as_consumer_routes_carry_their_initkwargs(self):
        route = resolve("/ws/greeting/")
        assert route.consumer_class is c.RouteWithGreeting
        assert route.initkwargs == {"greeting": "bonjour"}

    def test_reverse_with_the_websocket_urlconf_builds_paths(self):
        assert reverse("room", kwargs={"room": 3, "name": "x"}, urlconf="tests.wsurls") == "/ws/rooms/3/x/"
        item = uuid.UUID(int=1)
        assert reverse("api:item", args=[item], urlconf="tests.wsurls") == f"/ws/api/items/{item}/"

    def test_a_path_without_its_leading_slash_is_resolved_as_if_it_had_one(self):
        assert resolve("ws/echo/").consumer_class is c.EchoConsumer

    def test_an_explicit_urlconf_wins_over_the_setting(self):
        assert resolve("/ws/ok/", urlconf="tests.wsurls_bad").consumer_class is c.EchoConsumer


class TestNotFound:
    def test_no_match_raises_not_found_with_status_404(self):
        with pytest.raises(NotFound) as info:
            resolve("/ws/nowhere/")
        assert info.value.status_code == 404

    def test_without_debug_the_reason_says_nothing_about_the_routes(self):
        with override_settings(DEBUG=False), pytest.raises(NotFound) as info:
            resolve("/ws/echo")
        assert info.value.reason == "Not Found"

    def test_in_debug_a_missing_trailing_slash_is_named(self):
        with override_settings(DEBUG=True), pytest.raises(NotFound) as info:
            resolve("/ws/echo")
        assert info.value.reason == (
            "No WebSocket route matches /ws/echo.\nClosest route: /ws/echo/ (with a trailing slash)"
        )

    def test_in_debug_an_extra_trailing_slash_is_named(self):
        with override_settings(DEBUG=True), pytest.raises(NotFound) as info:
            resolve("/ws/echo//")
        assert info.value.reason == (
            "No WebSocket route matches /ws/echo//.\nClosest route: /ws/echo/ (without a trailing slash)"
        )

    def test_in_debug_the_closest_route_and_the_routes_tried_are_listed(self):
        with override_settings(DEBUG=True), pytest.raises(NotFound) as info:
            resolve("/ws/ech/")
        lines = info.value.reason.splitlines()
        assert lines[0] == "No WebSocket route matches /ws/ech/."
        assert lines[1] == "Closest route: ws/echo/"
        assert lines[2] == "Routes tried:"
        assert "  ws/rooms/<int:room>/<slug:name>/" in lines
        assert "  ws/api/items/<uuid:item>/" in lines

    def test_a_converter_that_refuses_the_value_is_not_found(self):
        with pytest.raises(NotFound):
            resolve("/ws/rooms/not-a-number/x/")

    def test_a_route_to_something_else_than_a_consumer_is_not_found(self):
        with override_settings(DEBUG=True), pytest.raises(NotFound) as info:
            resolve("/ws/view/", urlconf="tests.wsurls_bad")
        assert info.value.reason == "The route for /ws/view/ is not a WebSocket consumer."

    def test_without_a_urlconf_setting_resolving_is_improperly_configured(self):
        with override_settings(RAWWS={}), pytest.raises(ImproperlyConfigured):
            get_urlconf()


class TestPathDecoding:
    def test_percent_encoded_utf8_is_decoded_as_django_does(self):
        route = resolve_target("/ws/caf%C3%A9/na%C3%AFve/")
        assert route.match.url_name == "unicode"
        assert route.kwargs == {"word": "naïve"}

    def test_path_info_is_the_latin1_string_of_the_decoded_bytes(self):
        assert path_info_from_target("/ws/caf%C3%A9/") == "/ws/caf\xc3\xa9/"
        assert decode_path_info("/ws/caf\xc3\xa9/") == "/ws/café/"

    def test_invalid_utf8_stays_percent_encoded_instead_of_failing(self):
        assert decode_path_info(path_info_from_target("/ws/%FF/")) == "/ws/%FF/"
        with pytest.raises(NotFound):
            resolve_target("/ws/%FF/")

    def test_an_encoded_slash_is_a_slash_as_in_wsgi(self):
        assert resolve_target("/ws%2Fecho/").consumer_class is c.EchoConsumer

    def test_an_empty_path_is_the_root(self):
        assert path_info_from_target("") == "/"

    def test_force_script_name_prefix_is_stripped_when_present(self):
        with override_settings(FORCE_SCRIPT_NAME="/app"):
            assert path_info_from_target("/app/ws/echo/") == "/ws/echo/"
            assert path_info_from_target("/app") == "/"
            assert path_info_from_target("/ws/echo/") == "/ws/echo/"
            assert path_info_from_target("/application/ws/") == "/application/ws/"


class TestConsumerFor:
    def test_a_consumer_class_has_no_initkwargs(self):
        assert consumer_for(c.EchoConsumer) == (c.EchoConsumer, {})

    def test_an_as_consumer_factory_gives_its_class_and_initkwargs(self):
        factory = c.EchoConsumer.as_consumer(max_message_size=10)
        assert consumer_for(factory) == (c.EchoConsumer, {"max_message_size": 10})

    def test_anything_else_is_not_a_consumer(self):
        assert consumer_for(lambda request: None) is None
        assert consumer_for(c.EchoConsumer()) is None
        assert consumer_for(object) is None


class TestOverSockets:
    """Routing as a client sees it: kwargs reach the consumer, a miss is a plain 404."""

    def test_kwargs_and_converters_reach_the_consumer(self):
        with running_server() as server, connect(ws_url(server, "/ws/rooms/12/red/?room=99")) as ws:
            info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["kwargs"] == {"room": 12, "name": "red"}
        assert info["kwarg_types"] == {"room": "int", "name": "str"}
        assert info["url_name"] == "room"

    def test_the_query_string_is_not_part_of_the_route(self):
        with running_server() as server, connect(ws_url(server, "/ws/re/5/xyz/?a=/ws/echo/")) as ws:
            info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["args"] == ["5", "xyz"]
        assert info["path"] == "/ws/re/5/xyz/"

    def test_an_included_namespaced_route_over_a_socket(self):
        item = uuid.uuid4()
        with running_server() as server, connect(ws_url(server, f"/ws/api/items/{item}/")) as ws:
            info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["namespace"] == "api"
        assert info["kwargs"] == {"item": str(item)}

    def test_initkwargs_of_as_consumer_reach_the_instance(self):
        with running_server() as server, connect(ws_url(server, "/ws/greeting/")) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["greeting"] == "bonjour"

    def test_a_percent_encoded_path_is_routed_decoded(self):
        with running_server() as server, connect(ws_url(server, "/ws/caf%C3%A9/%C3%A9t%C3%A9/")) as ws:
            info = json.loads(ws.recv(timeout=TIMEOUT))
        assert info["kwargs"] == {"word": "été"}
        assert info["path"] == "/ws/café/été/"

    def test_an_unknown_path_gets_a_plain_404(self):
        with running_server() as server:
            status, headers, body = raw_handshake(server, "/ws/nowhere/")
        assert status == 404
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert body == b"Not Found\n"

    def test_in_debug_the_404_body_names_the_closest_route(self):
        with override_settings(DEBUG=True), running_server() as server:
            status, _, body = raw_handshake(server, "/ws/echo")
        assert status == 404
        assert (
            body
            == b"No WebSocket route matches /ws/echo.\nClosest route: /ws/echo/ (with a trailing slash)\n"
        )
