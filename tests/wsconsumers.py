"""Consumers the Django-side socket tests route to (see tests/wsurls.py).

They report what they see to :data:`journal`, which tests wait on instead
of sleeping.
"""

from __future__ import annotations

import contextvars
import json
import threading
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.utils import timezone, translation

from django_rawws.consumers import JsonWebSocketConsumer, WebSocketConsumer


class Journal:
    """A thread-safe list of what consumers did, with a blocking wait."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._entries: list[tuple[Any, ...]] = []

    def add(self, *entry: Any) -> None:
        with self._condition:
            self._entries.append(entry)
            self._condition.notify_all()

    def entries(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        with self._condition:
            return [entry for entry in self._entries if kind is None or entry[0] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        """Wait until ``count`` entries of ``kind`` were added; return them."""
        with self._condition:
            done = self._condition.wait_for(
                lambda: sum(1 for entry in self._entries if entry[0] == kind) >= count, timeout
            )
            found = [entry for entry in self._entries if entry[0] == kind]
        assert done, f"expected {count} {kind!r} entries within {timeout}s, got {found}"
        return found

    def clear(self) -> None:
        with self._condition:
            self._entries.clear()


journal = Journal()

#: Set by a test to let SlowConsumer.receive return.
release_slow = threading.Event()

favourite = contextvars.ContextVar("favourite", default="unset")


class RecordingConsumer(WebSocketConsumer):
    """Records connect and disconnect (with the code) in the journal."""

    def connect(self) -> None:
        journal.add("connect", type(self).__name__, self.id)
        self.accept()

    def disconnect(self, code: int) -> None:
        journal.add("disconnect", type(self).__name__, code)


class EchoConsumer(RecordingConsumer):
    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        journal.add("receive", type(self).__name__)
        if text is not None:
            self.send(text=text)
        else:
            self.send(bytes=bytes)


class RouteConsumer(WebSocketConsumer):
    """Sends what the route captured, then closes."""

    def connect(self) -> None:
        self.accept()
        match = self.request.resolver_match
        self.send(
            text=json.dumps(
                {
                    "args": list(self.args),
                    "kwargs": {
                        key: str(value) if not isinstance(value, int) else value
                        for key, value in self.kwargs.items()
                    },
                    "kwarg_types": {key: type(value).__name__ for key, value in self.kwargs.items()},
                    "url_name": match.url_name,
                    "namespace": match.namespace,
                    "path": self.request.path,
                    "path_info": self.request.path_info,
                    "greeting": getattr(self, "greeting", None),
                }
            )
        )


class RouteWithGreeting(RouteConsumer):
    greeting = "hello"


class RequestInfoConsumer(WebSocketConsumer):
    """Sends what ``self.request`` says, as a view would see it."""

    def connect(self) -> None:
        self.accept()
        request = self.request
        self.send(
            text=json.dumps(
                {
                    "host": request.get_host(),
                    "secure": request.is_secure(),
                    "absolute_uri": request.build_absolute_uri(),
                    "remote_addr": request.META.get("REMOTE_ADDR"),
                    "path": request.path,
                    "get": {key: request.GET.getlist(key) for key in request.GET},
                    "cookies": request.COOKIES,
                    "header_custom": request.headers.get("X-Custom"),
                    "meta_keys": sorted(key for key in request.META if key.startswith("HTTP_")),
                    "content_length": request.META.get("CONTENT_LENGTH"),
                    "method": request.method,
                    "subprotocols": self.subprotocols,
                    "user_evaluated": getattr(request.user, "_wrapped", None).__class__.__name__,
                }
            )
        )


class SubprotocolConsumer(WebSocketConsumer):
    """Accepts "chat.v2" when offered; with ?force=x accepts x whether offered or not."""

    def connect(self) -> None:
        forced = self.request.GET.get("force")
        if forced:
            self.accept(forced)
        elif "chat.v2" in self.subprotocols:
            self.accept("chat.v2")
        else:
            self.reject(400, "this endpoint speaks chat.v2")

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        self.send(text=self.subprotocol or "")


class UserConsumer(WebSocketConsumer):
    """Sends who the user is, once accepted."""

    def connect(self) -> None:
        self.accept()
        user = self.request.user
        self.send(
            text=json.dumps(
                {
                    "authenticated": user.is_authenticated,
                    "username": user.get_username() if user.is_authenticated else None,
                }
            )
        )

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        from django_rawws.groups import get_backend

        self.send(text=json.dumps(sorted(get_backend().groups_of(self.connection))))


class LoginRequiredConsumer(UserConsumer):
    login_required = True


class PermissionConsumer(UserConsumer):
    permission_required = "auth.view_user"


class DeniedConsumer(RecordingConsumer):
    def connect(self) -> None:
        journal.add("connect", type(self).__name__, self.id)
        raise PermissionDenied


class RejectConsumer(RecordingConsumer):
    def connect(self) -> None:
        journal.add("connect", type(self).__name__, self.id)
        self.reject(self.kwargs["status"], f"refused with {self.kwargs['status']}")


class FailingConsumer(RecordingConsumer):
    """Raises in receive("boom") and in an event handler."""

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        if text == "boom":
            raise RuntimeError("boom from a consumer")
        self.send(text=text)

    def explode(self, event: dict[str, Any]) -> None:
        raise RuntimeError("boom from an event")


class ConnectFailingConsumer(RecordingConsumer):
    """Raises in connect, before accept (?after=1: after accept)."""

    def connect(self) -> None:
        journal.add("connect", type(self).__name__, self.id)
        if self.request.GET.get("after"):
            self.accept()
        raise RuntimeError("boom in connect")


class DisconnectFailingConsumer(RecordingConsumer):
    def disconnect(self, code: int) -> None:
        super().disconnect(code)
        raise RuntimeError("boom in disconnect")


class EchoJsonConsumer(JsonWebSocketConsumer):
    def receive_json(self, content: Any) -> None:
        self.send_json({"echo": content})

    def disconnect(self, code: int) -> None:
        journal.add("disconnect", type(self).__name__, code)


class LanguageConsumer(WebSocketConsumer):
    """ "activate:<lang>", "tz:<zone>", "set:<value>" change this call's state; "get" reports it."""

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        assert text is not None
        command, _, argument = text.partition(":")
        if command == "activate":
            translation.activate(argument)
        elif command == "tz":
            timezone.activate(argument)
        elif command == "set":
            favourite.set(argument)
        elif command == "wait":
            release_slow.wait(5)
        self.send(
            text=json.dumps(
                {
                    "language": translation.get_language(),
                    "timezone": timezone.get_current_timezone_name(),
                    "favourite": favourite.get(),
                    "thread": threading.current_thread().name,
                    "cache": id(caches["default"]),
                }
            )
        )


class AtomicConsumer(WebSocketConsumer):
    """ "probe" reports whether the call runs in a transaction; "create:<name>" creates a user then
    raises when the name starts with "fail"."""

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        assert text is not None
        if text == "probe":
            self.send(text=json.dumps({"in_atomic_block": connection.in_atomic_block}))
            return
        _, _, username = text.partition(":")
        get_user_model().objects.create(username=username)
        if username.startswith("fail"):
            raise RuntimeError("rolled back")
        self.send(text="created")

    @transaction.non_atomic_requests
    def chat_probe(self, event: dict[str, Any]) -> None:
        self.send(text=json.dumps({"in_atomic_block": connection.in_atomic_block}))


class SlowConsumer(WebSocketConsumer):
    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        release_slow.wait(5)
        self.send(text="done")


class GroupConsumer(RecordingConsumer):
    groups = ("lobby",)

    def receive(self, text: str | None = None, bytes: bytes | None = None) -> None:
        from django_rawws.groups import get_backend

        if text == "groups":
            self.send(text=json.dumps(sorted(get_backend().groups_of(self.connection))))
        elif text and text.startswith("join:"):
            self.join(text[5:])
            self.send(text="joined")
        elif text and text.startswith("leave:"):
            self.leave(text[6:])
            self.send(text="left")

    def chat_message(self, event: dict[str, Any]) -> None:
        self.send(text=event["text"])
