"""System checks: misconfiguration reported at startup, with a hint naming the fix.

Registered by :meth:`django_rawws.apps.RawWSConfig.ready` under the ``rawws``
tag; ``manage.py check`` and ``runws`` run them.

====== ===========================================================================
id     problem
====== ===========================================================================
E001   ``RAWWS["URLCONF"]`` is not set
E002   the WebSocket urlconf cannot be imported, or has no ``urlpatterns``
E003   a WebSocket route's view is not a consumer class (or is an instance)
E004   an option has an invalid value (type or range)
E005   a ``TRUSTED_PROXIES`` entry is not an IP network
E006   an ``ALLOWED_ORIGINS`` entry is not ``scheme://host[:port]``
E007   ``GROUP_BACKEND`` cannot be imported
E008   ``AUTHENTICATE`` cannot be imported or is not callable
W001   an unknown key in ``RAWWS`` (likely a typo)
W002   the in-memory group backend with ``DEBUG = False``
W003   ``WORKERS`` above 64: that many database connections per alias
====== ===========================================================================
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import connections
from django.utils.module_loading import import_string

from .conf import DEFAULTS, get_config

__all__ = ["check_backends", "check_settings", "check_urlconf"]

MEMORY_BACKEND = "django_rawws.groups.memory.MemoryGroupBackend"
MANY_WORKERS = 64


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _or_none(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or rule(value)


def _int_between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _string_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def _health_path(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.startswith("/"))


def _dotted_path_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value))


def _public_url(value: Any) -> bool:
    """None, ``ws(s)://host[:port][/prefix]``, ``//host[:port][/prefix]`` or ``:port`` (see ws_url)."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    if value.startswith(":"):
        return value[1:].isdigit() and 0 < int(value[1:]) < 65536
    parts = urlsplit(value)
    return (
        (parts.scheme in ("ws", "wss") or (not parts.scheme and value.startswith("//")))
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
    )


def _socket_path(value: Any) -> bool:
    """None, or a path whose only placeholders are {tmp}, {uid}, {port} and {pid}."""
    if value is None:
        return True
    if not isinstance(value, str) or not value:
        return False
    try:
        value.format(tmp="", uid=0, port=0, pid=0)
    except (KeyError, IndexError, ValueError):
        return False
    return True


#: key -> (rule, what a valid value is)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "URLCONF": (_dotted_path_or_none, "a dotted module path"),
    "PUBLIC_URL": (_public_url, "None, 'wss://host[:port][/prefix]', '//host[:port]' or ':port'"),
    "WORKERS": (_or_none(_positive_int), "a positive integer, or None for the default"),
    "MAX_CONNECTIONS": (_positive_int, "a positive integer"),
    "MAX_CONNECTIONS_PER_ADDRESS": (_or_none(_positive_int), "a positive integer, or None"),
    "MAX_CONNECTIONS_PER_USER": (_or_none(_positive_int), "a positive integer, or None"),
    "MESSAGE_RATE": (_or_none(_positive_number), "a positive number of messages a second, or None"),
    "MESSAGE_BURST": (_positive_int, "a positive integer (messages)"),
    "OVERLOAD_DELAY": (_or_none(_positive_number), "a positive number of seconds, or None"),
    "MAX_MESSAGE_SIZE": (_positive_int, "a positive integer (bytes)"),
    "MAX_FRAME_SIZE": (_or_none(_positive_int), "a positive integer (bytes), or None"),
    "MAX_REQUEST_LINE": (_positive_int, "a positive integer (bytes)"),
    "MAX_HEADERS": (_positive_int, "a positive integer"),
    "MAX_HEAD": (_positive_int, "a positive integer (bytes)"),
    "MAX_OUTGOING_BUFFER": (_positive_int, "a positive integer (bytes)"),
    "MAX_PENDING_MESSAGES": (_positive_int, "a positive integer"),
    "HANDSHAKE_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "PING_INTERVAL": (_or_none(_positive_number), "a positive number of seconds, or None"),
    "PING_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "CLOSE_TIMEOUT": (_positive_number, "a positive number of seconds"),
    "LINGER_TIMEOUT": (_non_negative_number, "a number of seconds, 0 or more"),
    "SHUTDOWN_GRACE": (_non_negative_number, "a number of seconds, 0 or more"),
    "SLOW_HANDLER_WARNING": (_or_none(_positive_number), "a positive number of seconds, or None"),
    "COMPRESSION": (_is_bool, "True or False"),
    "COMPRESSION_WINDOW_BITS": (_int_between(9, 15), "an integer from 9 to 15"),
    "COMPRESSION_MEM_LEVEL": (_int_between(1, 9), "an integer from 1 to 9"),
    "COMPRESSION_LEVEL": (_int_between(0, 9), "an integer from 0 to 9"),
    "COMPRESSION_CONTEXT_TAKEOVER": (_is_bool, "True or False"),
    "COMPRESSION_THRESHOLD": (_non_negative_int, "an integer, 0 or more (bytes)"),
    "BACKLOG": (_positive_int, "a positive integer"),
    "REUSE_PORT": (_is_bool, "True or False"),
    "HEALTH_PATH": (_health_path, "a path starting with '/', or None"),
    "CHECK_ORIGIN": (_is_bool, "True or False"),
    "ALLOWED_ORIGINS": (_string_list, "a list of origins such as 'https://example.com'"),
    "REQUIRE_ORIGIN": (_is_bool, "True or False"),
    "TRUSTED_PROXIES": (_string_list, "a list of IP networks such as '10.0.0.0/8'"),
    "AUTHENTICATE": (_dotted_path_or_none, "a dotted path to a function, or None"),
    "SESSION_RECHECK_INTERVAL": (_or_none(_positive_number), "a positive number of seconds, or None"),
    "GROUP_BACKEND": (lambda value: isinstance(value, str) and bool(value), "a dotted path to a class"),
    "GROUP_OPTIONS": (lambda value: isinstance(value, dict), "a dict"),
    "ACCESS_LOG": (_is_bool, "True or False"),
    "INSPECT_SOCKET": (_socket_path, "a file path (placeholders {tmp}, {uid}, {port}, {pid}), or None"),
}


@register("rawws")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E004, E005, E006, W001, W003: the values of the ``RAWWS`` dict."""
    raw = getattr(settings, "RAWWS", None)
    if raw is not None and not isinstance(raw, dict):
        return [
            Error(
                f"RAWWS must be a dict, not {type(raw).__name__}.",
                hint='Write RAWWS = {"URLCONF": "yourproject.wsurls", ...}.',
                id="rawws.E004",
            )
        ]
    messages: list[CheckMessage] = []
    for key in raw or {}:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            messages.append(
                Warning(
                    f"RAWWS has an unknown key {key!r}; it is ignored.",
                    hint=f"Did you mean {close[0]!r}?"
                    if close
                    else "See docs/settings.md for the valid keys.",
                    id="rawws.W001",
                )
            )
    config = get_config()
    for key, (rule, expected) in _RULES.items():
        value = config[key]
        if not rule(value):
            messages.append(
                Error(
                    f"RAWWS[{key!r}] is {value!r}; it must be {expected}.",
                    hint=f"Fix the value or remove the key to use the default, {DEFAULTS[key]!r}.",
                    id="rawws.E004",
                )
            )
    if _string_list(config["TRUSTED_PROXIES"]):
        for entry in config["TRUSTED_PROXIES"]:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                messages.append(
                    Error(
                        f"RAWWS['TRUSTED_PROXIES'] has {entry!r}, which is not an IP address or network.",
                        hint="Use addresses or CIDR networks, such as '10.0.0.1' or '10.0.0.0/8'.",
                        id="rawws.E005",
                    )
                )
    if _string_list(config["ALLOWED_ORIGINS"]):
        for entry in config["ALLOWED_ORIGINS"]:
            parts = urlsplit(entry)
            if not parts.scheme or not parts.netloc:
                messages.append(
                    Error(
                        f"RAWWS['ALLOWED_ORIGINS'] has {entry!r}, which is not an origin.",
                        hint="Write origins with their scheme, as for CSRF_TRUSTED_ORIGINS: "
                        "'https://example.com' or 'https://*.example.com'.",
                        id="rawws.E006",
                    )
                )
    workers = config["WORKERS"]
    if _positive_int(workers) and workers > MANY_WORKERS:
        aliases = len(connections.settings)
        messages.append(
            Warning(
                f"RAWWS['WORKERS'] is {workers}: the WebSocket server may hold up to {workers * aliases} "
                f"database connections ({workers} workers x {aliases} database alias(es)).",
                hint="Workers mostly wait on the database; fewer of them usually serve as well. "
                "Lower WORKERS, or make sure the database accepts that many connections "
                "(PostgreSQL max_connections).",
                id="rawws.W003",
            )
        )
    return messages


@register("rawws", Tags.urls)
def check_urlconf(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E001, E002, E003: the WebSocket urlconf and its routes."""
    urlconf = get_config()["URLCONF"]
    if not urlconf:
        return [
            Error(
                'RAWWS["URLCONF"] is not set: the WebSocket server has no routes.',
                hint='Add RAWWS = {"URLCONF": "yourproject.wsurls"} to your settings, naming a module whose '
                'urlpatterns map paths to consumers: path("ws/echo/", EchoConsumer).',
                id="rawws.E001",
            )
        ]
    if not isinstance(urlconf, str):
        return []  # E004 reports it
    from django.urls import get_resolver

    resolver = get_resolver(urlconf)
    try:
        patterns = resolver.url_patterns
    except Exception as error:  # ImportError, ImproperlyConfigured, or the module's own error
        return [
            Error(
                f"The WebSocket urlconf {urlconf!r} cannot be loaded: {error}",
                hint='Check RAWWS["URLCONF"] and the module\'s imports; it must define urlpatterns.',
                id="rawws.E002",
            )
        ]
    from .routing import iter_routes

    errors = [_bad_route(route, callback) for route, callback in iter_routes(patterns)]
    return [error for error in errors if error is not None]


def _bad_route(route: str, callback: Any) -> Error | None:
    from .consumers import WebSocketConsumer
    from .routing import consumer_for

    if consumer_for(callback) is not None:
        return None
    if isinstance(callback, WebSocketConsumer):
        return Error(
            f"The WebSocket route {route!r} has a consumer instance; a route needs the class.",
            hint=f"Write path(..., {type(callback).__name__}) or {type(callback).__name__}.as_consumer(...): "
            "an instance would be shared by every connection.",
            id="rawws.E003",
        )
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, WebSocketConsumer):
        # path("ws/", EchoConsumer.as_consumer): the factory itself, not called.
        return Error(
            f"The WebSocket route {route!r} leads to {owner.__name__}.{callback.__name__}, "
            "a method of the consumer class, not a consumer.",
            hint=f"Call it: {owner.__name__}.as_consumer(...), or route to the class itself.",
            id="rawws.E003",
        )
    if getattr(callback, "consumer_class", None) is not None or hasattr(callback, "as_asgi"):
        # A Channels consumer (Consumer.as_asgi(), or the class) left in the urlconf.
        return Error(
            f"The WebSocket route {route!r} leads to a Channels (ASGI) consumer, not a django-rawws one.",
            hint="Subclass django_rawws.consumers.WebSocketConsumer (synchronous methods, no as_asgi()); "
            "see docs/migrating-from-channels.md.",
            id="rawws.E003",
        )
    name = getattr(callback, "__qualname__", None) or repr(callback)
    return Error(
        f"The WebSocket route {route!r} leads to {name}, which is not a WebSocketConsumer subclass.",
        hint="WebSocket urlpatterns map paths to consumer classes (subclasses of "
        "django_rawws.consumers.WebSocketConsumer); HTTP views belong in ROOT_URLCONF.",
        id="rawws.E003",
    )


@register("rawws")
def check_backends(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E007, E008, W002: the group backend and the authentication hook."""
    config = get_config()
    messages: list[CheckMessage] = []
    backend = config["GROUP_BACKEND"]
    if isinstance(backend, str) and backend:
        try:
            import_string(backend)
        except ImportError as error:
            messages.append(
                Error(
                    f"RAWWS['GROUP_BACKEND'] {backend!r} cannot be imported: {error}",
                    hint=f"Use {MEMORY_BACKEND!r} (one process) or a backend class you installed.",
                    id="rawws.E007",
                )
            )
        else:
            if backend == MEMORY_BACKEND and not settings.DEBUG:
                messages.append(
                    Warning(
                        "The in-memory group backend reaches only the connections of this process.",
                        hint="A push from another process (a web worker, a task queue, the shell) reaches "
                        "nobody. With one runws process this is fine; otherwise set "
                        "RAWWS['GROUP_BACKEND'] to a shared backend such as Redis.",
                        id="rawws.W002",
                    )
                )
    hook = config["AUTHENTICATE"]
    if isinstance(hook, str) and hook:
        try:
            function = import_string(hook)
        except ImportError as error:
            messages.append(
                Error(
                    f"RAWWS['AUTHENTICATE'] {hook!r} cannot be imported: {error}",
                    hint="Name a function authenticate(request, handshake) -> user or None.",
                    id="rawws.E008",
                )
            )
        else:
            if not callable(function):
                messages.append(
                    Error(
                        f"RAWWS['AUTHENTICATE'] {hook!r} is not callable.",
                        hint="Name a function authenticate(request, handshake) -> user or None.",
                        id="rawws.E008",
                    )
                )
    return messages
