"""WebSocket routing with Django's own URL resolver.

The WebSocket urlconf (``RAWWS["URLCONF"]``) is an ordinary Django urlconf
whose views are consumer classes::

    urlpatterns = [
        path("ws/echo/", EchoConsumer, name="echo"),
        path("ws/chat/<slug:room>/", ChatConsumer.as_consumer(history=50)),
        path("ws/api/", include("api.wsurls", namespace="api")),
    ]

Because resolution goes through :func:`django.urls.get_resolver`, ``path()``,
``re_path()``, ``include()``, converters, namespaces and
``reverse(name, urlconf=...)`` all behave as for views. A path is resolved
before the 101 is sent, so an unknown path costs the client a plain 404 and
the server no consumer.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import Resolver404, ResolverMatch, URLPattern, URLResolver, get_resolver
from django.utils.encoding import repercent_broken_unicode

from .conf import get_config
from .exceptions import NotFound

if TYPE_CHECKING:
    from .consumers import WebSocketConsumer

__all__ = [
    "Route",
    "consumer_for",
    "decode_path_info",
    "get_urlconf",
    "iter_routes",
    "path_info_from_target",
    "resolve",
]

#: How many routes a DEBUG 404 lists at most.
_MAX_LISTED_ROUTES = 20


@dataclass(frozen=True)
class Route:
    """What a path resolved to: the consumer class, its init kwargs, the match."""

    consumer_class: type[WebSocketConsumer]
    initkwargs: dict[str, Any]
    match: ResolverMatch

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.match.args)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.match.kwargs)


def get_urlconf() -> str:
    """The dotted path of the WebSocket urlconf.

    Raises:
        ImproperlyConfigured: ``RAWWS["URLCONF"]`` is not set (check rawws.E001).
    """
    urlconf: str | None = get_config()["URLCONF"]
    if not urlconf:
        raise ImproperlyConfigured('RAWWS["URLCONF"] must name the module holding the WebSocket urlpatterns.')
    return urlconf


def path_info_from_target(raw_path: str) -> str:
    """Return the WSGI ``PATH_INFO`` for a percent-encoded request path.

    As a WSGI server does: percent-decoded to bytes, then carried as an
    ISO-8859-1 string, which Django turns back into UTF-8 text in
    ``get_path_info()``. With ``FORCE_SCRIPT_NAME`` set, a path under that
    prefix loses it (the proxy did not strip it), so ``request.path`` is not
    prefixed twice.
    """
    path = unquote_to_bytes(raw_path).decode("iso-8859-1") or "/"
    script_name = settings.FORCE_SCRIPT_NAME
    if script_name:
        prefix = script_name.rstrip("/").encode("utf-8").decode("iso-8859-1")
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix) :] or "/"
    return path


def decode_path_info(path_info: str) -> str:
    """Turn a WSGI ``PATH_INFO`` into the text Django resolves (``get_path_info``)."""
    return repercent_broken_unicode(path_info.encode("iso-8859-1")).decode() or "/"


def consumer_for(callback: Any) -> tuple[type[WebSocketConsumer], dict[str, Any]] | None:
    """Return ``(consumer class, initkwargs)`` for a route's callback, or None.

    A route may name a consumer class directly or the factory returned by
    ``Consumer.as_consumer(**initkwargs)``.
    """
    from .consumers import WebSocketConsumer

    if isinstance(callback, type) and issubclass(callback, WebSocketConsumer):
        return callback, {}
    consumer_class = getattr(callback, "consumer_class", None)
    if isinstance(consumer_class, type) and issubclass(consumer_class, WebSocketConsumer):
        return consumer_class, dict(getattr(callback, "consumer_initkwargs", {}))
    return None


def resolve(path: str, urlconf: str | None = None) -> Route:
    """Resolve ``path`` (decoded, as in ``request.path_info``) to a consumer.

    Raises:
        NotFound: nothing matches (in DEBUG the reason names the closest
            route), or the route's view is not a consumer.
        ImproperlyConfigured: no WebSocket urlconf is set.
    """
    if urlconf is None:
        urlconf = get_urlconf()
    if not path.startswith("/"):
        path = "/" + path
    resolver = get_resolver(urlconf)
    try:
        match = resolver.resolve(path)
    except Resolver404:
        raise NotFound(_not_found_reason(path, resolver)) from None
    found = consumer_for(match.func)
    if found is None:
        # rawws.E003 reports this at startup; a request must still get an answer.
        raise NotFound(f"The route for {path} is not a WebSocket consumer." if settings.DEBUG else None)
    consumer_class, initkwargs = found
    return Route(consumer_class, initkwargs, match)


def _not_found_reason(path: str, resolver: Any) -> str | None:
    """A plain-text 404 body: generic in production, helpful in DEBUG."""
    if not settings.DEBUG:
        return None
    lines = [f"No WebSocket route matches {path}."]
    alternative = path[:-1] if path.endswith("/") and path != "/" else path + "/"
    try:
        resolver.resolve(alternative)
    except Resolver404:
        routes = [route for route, _ in iter_routes(resolver.url_patterns)]
        closest = difflib.get_close_matches(path.lstrip("/"), routes, n=1, cutoff=0.0)
        if closest:
            lines.append(f"Closest route: {closest[0]}")
        if routes:
            lines.append("Routes tried:")
            lines.extend(f"  {route}" for route in routes[:_MAX_LISTED_ROUTES])
            if len(routes) > _MAX_LISTED_ROUTES:
                lines.append(f"  ... and {len(routes) - _MAX_LISTED_ROUTES} more")
    else:
        slash = "with" if len(alternative) > len(path) else "without"
        lines.append(f"Closest route: {alternative} ({slash} a trailing slash)")
    return "\n".join(lines)


def iter_routes(patterns: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(full route, callback)`` for every endpoint, ``include()`` prefixes joined.

    An ``include()`` that cannot be loaded is skipped here; resolving reports it.
    """
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            try:
                children = pattern.url_patterns
            except Exception:  # noqa: BLE001 - reported by the checks and at resolve time
                continue
            yield from iter_routes(children, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.callback
