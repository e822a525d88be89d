"""The usual first-day mistakes get a message that names the fix.

Routing to something that is not a consumer class (an un-called
``as_consumer``, a Channels consumer left over), no WebSocket urlconf,
``async def`` on a consumer. This module is also the WebSocket urlconf with
those mistakes. (An unreachable group backend: tests/test_commands.py.)
"""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import pytest
from django.core.checks import Error
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django.urls import path

from django_rawws.checks import check_urlconf
from django_rawws.consumers import WebSocketConsumer
from django_rawws.management.commands.runws import Command as RunwsCommand
from tests.test_runws import FakeServer


class EchoConsumer(WebSocketConsumer):
    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        self.send(text=text, bytes=bytes)


class ChannelsStyleConsumer:
    """What a Channels consumer looks like to a urlconf: ``as_asgi()`` returns an app with ``consumer_class``."""

    @classmethod
    def as_asgi(cls) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            pass

        app.consumer_class = cls  # type: ignore[attr-defined]
        return app


urlpatterns = [
    path("ws/ok/", EchoConsumer),
    path("ws/factory/", EchoConsumer.as_consumer),  # the parentheses forgotten
    path("ws/channels/", ChannelsStyleConsumer.as_asgi()),
]


@override_settings(RAWWS={"URLCONF": "tests.test_error_messages"})
def test_an_uncalled_as_consumer_and_a_channels_consumer_get_their_own_fix() -> None:
    assert check_urlconf() == [
        Error(
            "The WebSocket route 'ws/factory/' leads to EchoConsumer.as_consumer, a method of the consumer "
            "class, not a consumer.",
            hint="Call it: EchoConsumer.as_consumer(...), or route to the class itself.",
            id="rawws.E003",
        ),
        Error(
            "The WebSocket route 'ws/channels/' leads to a Channels (ASGI) consumer, not a django-rawws one.",
            hint="Subclass django_rawws.consumers.WebSocketConsumer (synchronous methods, no as_asgi()); "
            "see docs/migrating-from-channels.md.",
            id="rawws.E003",
        ),
    ]


@pytest.mark.django_db
@override_settings(RAWWS={})
def test_runws_without_a_websocket_urlconf_stops_before_binding_and_says_what_to_add() -> None:
    class Server(FakeServer):
        # Were the checks to let it through, stop at once rather than serve until killed.
        on_start = staticmethod(lambda: os.kill(os.getpid(), signal.SIGTERM))

    class Command(RunwsCommand):
        server_cls = Server  # type: ignore[assignment]

    stdout = io.StringIO()
    with pytest.raises(SystemCheckError) as excinfo:
        call_command(Command(), "127.0.0.1:0", "--noreload", skip_checks=False, stdout=stdout)
    message = str(excinfo.value)
    assert '?: (rawws.E001) RAWWS["URLCONF"] is not set: the WebSocket server has no routes.' in message
    assert 'HINT: Add RAWWS = {"URLCONF": "yourproject.wsurls"} to your settings' in message
    assert "Starting WebSocket server" not in stdout.getvalue()


def test_async_def_on_a_consumer_is_refused_with_the_fix_in_the_message() -> None:
    with pytest.raises(TypeError) as excinfo:

        class Chat(WebSocketConsumer):
            async def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
                pass

    assert str(excinfo.value) == (
        "tests.test_error_messages.test_async_def_on_a_consumer_is_refused_with_the_fix_in_the_message."
        "<locals>.Chat.receive is 'async def', but django-rawws consumers are synchronous: their methods run "
        "on worker threads, where the ORM works as in views. Write 'def receive(...)'."
    )


def test_an_async_group_event_handler_is_refused_too() -> None:
    with pytest.raises(
        TypeError, match=r"Chat\.chat_message is 'async def'.*Write 'def chat_message\(\.\.\.\)'"
    ):

        class Chat(WebSocketConsumer):
            async def chat_message(self, event: dict[str, Any]) -> None:
                pass
