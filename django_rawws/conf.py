"""The ``RAWWS`` setting: every option with its default, in one place.

Projects set only what they change::

    RAWWS = {"URLCONF": "mysite.wsurls", "WORKERS": 16}

Everything in django-rawws reads options through :func:`get_config`, which
merges that dict over :data:`DEFAULTS` once and is cleared whenever a test
overrides ``RAWWS`` (``setting_changed``). The server itself reads no
settings: :func:`server_config` turns the options into the plain
:class:`~django_rawws.server.ServerConfig` it takes. Each key is documented in
``docs/settings.md``; the system checks in :mod:`django_rawws.checks` validate
them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

if TYPE_CHECKING:
    from .protocol.deflate import DeflateOptions
    from .server.config import ServerConfig

__all__ = ["DEFAULTS", "deflate_options", "get_config", "on_config_change", "server_config"]

DEFAULTS: dict[str, Any] = {
    # Routing
    "URLCONF": None,  # dotted path of the WebSocket urlconf (required)
    "PUBLIC_URL": None,  # where browsers reach runws, for {% ws_url %}; None: the page's own host
    # Threads and capacity
    "WORKERS": None,  # None: 4 per core, at most 32
    "MAX_CONNECTIONS": 10_000,
    # Per-client limits (docs/hardening.md); None disables each
    "MAX_CONNECTIONS_PER_ADDRESS": 256,  # per client IP (IPv6: per /64); past it, 429
    "MAX_CONNECTIONS_PER_USER": 32,  # per logged-in user, in this process; past it, 429
    "MESSAGE_RATE": 1000.0,  # messages (and pings) a second per connection, on average; past it, 1008
    "MESSAGE_BURST": 2000,  # ... and at once
    "OVERLOAD_DELAY": 5.0,  # seconds work may wait for a worker before load is shed (503, 1013)
    # Size limits
    "MAX_MESSAGE_SIZE": 1 << 20,
    "MAX_FRAME_SIZE": None,  # None: MAX_MESSAGE_SIZE
    "MAX_REQUEST_LINE": 8192,
    "MAX_HEADERS": 128,
    "MAX_HEAD": 16384,
    "MAX_OUTGOING_BUFFER": 4 << 20,
    "MAX_PENDING_MESSAGES": 16,
    "MAX_PENDING_EVENTS": 1024,
    "HTTP_WORKERS": 4,  # threads for plain HTTP on the same port; 0 answers 426
    # Timeouts (seconds)
    "HANDSHAKE_TIMEOUT": 10.0,
    "PING_INTERVAL": 20.0,  # None disables keepalive pings
    "PING_TIMEOUT": 20.0,
    "CLOSE_TIMEOUT": 10.0,
    "LINGER_TIMEOUT": 2.0,
    "SHUTDOWN_GRACE": 10.0,
    "SLOW_HANDLER_WARNING": 1.0,  # None disables the warning
    # permessage-deflate
    "COMPRESSION": True,
    "COMPRESSION_WINDOW_BITS": 12,
    "COMPRESSION_MEM_LEVEL": 5,
    "COMPRESSION_LEVEL": 6,
    "COMPRESSION_CONTEXT_TAKEOVER": False,
    "COMPRESSION_THRESHOLD": 128,
    # Listening socket
    "BACKLOG": 4096,
    "REUSE_PORT": False,
    "HEALTH_PATH": "/healthz",  # None disables
    # Security
    "CHECK_ORIGIN": True,
    "ALLOWED_ORIGINS": [],
    "REQUIRE_ORIGIN": False,
    "TRUSTED_PROXIES": [],
    "AUTHENTICATE": None,  # dotted path of fn(request, handshake) -> user | None
    "SESSION_RECHECK_INTERVAL": 60.0,  # seconds between re-checks of a session-bound socket; None disables
    # Groups
    "GROUP_BACKEND": "django_rawws.groups.memory.MemoryGroupBackend",
    "GROUP_OPTIONS": {},
    # Logging
    "ACCESS_LOG": True,
    # Live state for manage.py ws_status (a Unix socket only this user can open); None disables
    "INSPECT_SOCKET": "{tmp}/rawws-{uid}/{port}-{pid}.sock",
}

_listeners: list[Callable[[], None]] = []


@functools.cache
def get_config() -> dict[str, Any]:
    """Return the options: ``settings.RAWWS`` merged over :data:`DEFAULTS`.

    Unknown keys are kept (the checks report them as likely typos) so that a
    misspelt option is visible rather than silently dropped.
    """
    config = dict(DEFAULTS)
    config.update(getattr(settings, "RAWWS", None) or {})
    return config


def on_config_change(function: Callable[[], None]) -> Callable[[], None]:
    """Register ``function`` to run when ``RAWWS`` changes.

    Modules that cache something derived from the options (parsed proxy
    networks, an imported hook) register their ``cache_clear`` here, so that
    ``override_settings(RAWWS=...)`` reaches them too.
    """
    _listeners.append(function)
    return function


@functools.cache
def deflate_options() -> DeflateOptions:
    """The server-wide permessage-deflate options, built from the COMPRESSION_* keys.

    ``enabled`` follows ``COMPRESSION``; a consumer with ``compression = True``
    uses the same options with ``enabled`` forced on.
    """
    from .protocol.deflate import DeflateOptions

    config = get_config()
    return DeflateOptions(
        enabled=bool(config["COMPRESSION"]),
        server_max_window_bits=config["COMPRESSION_WINDOW_BITS"],
        server_no_context_takeover=not config["COMPRESSION_CONTEXT_TAKEOVER"],
        mem_level=config["COMPRESSION_MEM_LEVEL"],
        compress_level=config["COMPRESSION_LEVEL"],
    )


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "RAWWS":
        get_config.cache_clear()
        deflate_options.cache_clear()
        for listener in _listeners:
            listener()


def server_config(**overrides: Any) -> ServerConfig:
    """Build the server's :class:`~django_rawws.server.ServerConfig` from the options.

    ``overrides`` are ``ServerConfig`` fields (lower case) that win over the
    setting: the ``runws`` command and the tests use them.
    """
    # Imported here: reading the options must not pull the socket layer in.
    from .server.config import LOOPBACK, ServerConfig, default_worker_count

    config = get_config()
    values: dict[str, Any] = {
        "workers": config["WORKERS"] or default_worker_count(),
        "max_connections": config["MAX_CONNECTIONS"],
        "max_connections_per_address": config["MAX_CONNECTIONS_PER_ADDRESS"],
        # A trusted proxy's address is every client's behind it: the Django
        # side counts those clients by their X-Forwarded-For address instead.
        "quota_exempt": (*LOOPBACK, *(config["TRUSTED_PROXIES"] or ())),
        "message_rate": config["MESSAGE_RATE"],
        "message_burst": config["MESSAGE_BURST"],
        "overload_delay": config["OVERLOAD_DELAY"],
        "max_message_size": config["MAX_MESSAGE_SIZE"],
        "max_frame_size": config["MAX_FRAME_SIZE"],
        "max_request_line": config["MAX_REQUEST_LINE"],
        "max_headers": config["MAX_HEADERS"],
        "max_head": config["MAX_HEAD"],
        "handshake_timeout": config["HANDSHAKE_TIMEOUT"],
        "ping_interval": config["PING_INTERVAL"],
        "ping_timeout": config["PING_TIMEOUT"],
        "close_timeout": config["CLOSE_TIMEOUT"],
        "linger_timeout": config["LINGER_TIMEOUT"],
        "max_outgoing_buffer": config["MAX_OUTGOING_BUFFER"],
        "max_pending_messages": config["MAX_PENDING_MESSAGES"],
        "max_pending_events": config["MAX_PENDING_EVENTS"],
        "http_workers": config["HTTP_WORKERS"],
        "access_log": bool(config["ACCESS_LOG"]),
        "deflate": deflate_options(),
        "compression_threshold": config["COMPRESSION_THRESHOLD"],
        "health_path": config["HEALTH_PATH"] or None,
        "backlog": config["BACKLOG"],
        "reuse_port": bool(config["REUSE_PORT"]),
    }
    values.update(overrides)
    return ServerConfig(**values)
