"""``manage.py ws_routes``: the WebSocket routes, as ``show_urls`` lists views.

One line per endpoint of ``RAWWS["URLCONF"]``, ``include()`` prefixes joined:
the pattern, the consumer class (with the ``as_consumer()`` settings, if any)
and the route's name, namespaced as ``reverse()`` and ``{% ws_url %}`` take
it. A route whose view is not a consumer is listed too, flagged, with the
system check's explanation: that is when a list is most wanted, so the
command skips the checks that would otherwise stop it first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.urls import URLPattern, URLResolver, get_resolver

from django_rawws.routing import consumer_for, get_urlconf


class Command(BaseCommand):
    help = "Lists the WebSocket routes of RAWWS['URLCONF']: pattern, consumer class and name."

    requires_system_checks: ClassVar[list[str]] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="Print a JSON list instead of a table.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            urlconf = get_urlconf()
        except ImproperlyConfigured as exc:
            raise CommandError(f"{exc} (system check rawws.E001)") from exc
        resolver = get_resolver(urlconf)
        try:
            patterns = resolver.url_patterns
        except Exception as exc:  # ImportError, ImproperlyConfigured, or the module's own error
            raise CommandError(f"The WebSocket urlconf {urlconf!r} cannot be loaded: {exc}") from exc
        routes = list(routes_of(patterns))
        if options["json"]:
            self.stdout.write(json.dumps(routes, indent=2))
            return
        if not routes:
            self.stdout.write(f"{urlconf} has no WebSocket routes.")
            return
        self.stdout.write(f"WebSocket routes of {urlconf}:")
        rows = [("pattern", "consumer", "name")]
        for route in routes:
            consumer = route["consumer"] or f"NOT A CONSUMER: {route['view']}"
            if route["initkwargs"]:
                settings = ", ".join(f"{key}={value!r}" for key, value in route["initkwargs"].items())
                consumer = f"{consumer}({settings})"
            rows.append((route["pattern"], consumer, route["name"] or "-"))
        widths = [max(len(row[column]) for row in rows) for column in range(2)]
        for index, (pattern, consumer, name) in enumerate(rows):
            line = f"{pattern.ljust(widths[0])}  {consumer.ljust(widths[1])}  {name}".rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(line) if index == 0 else line)
        problems = [route for route in routes if route["consumer"] is None]
        if problems:
            self.stderr.write(
                f"{len(problems)} route(s) lead to something that is not a consumer class: run "
                "'manage.py check' for the fix (rawws.E003)."
            )


def routes_of(patterns: Any, prefix: str = "", namespace: str = "") -> Iterator[dict[str, Any]]:
    """One dict per endpoint: pattern, consumer (dotted class or None), view, initkwargs, name."""
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            try:
                children = pattern.url_patterns
            except Exception as exc:  # noqa: BLE001 - one broken include() must not hide the rest
                yield {
                    "pattern": route,
                    "consumer": None,
                    "view": f"include() that cannot be loaded: {exc}",
                    "initkwargs": {},
                    "name": None,
                }
                continue
            yield from routes_of(children, route, inner)
        elif isinstance(pattern, URLPattern):
            found = consumer_for(pattern.callback)
            consumer = None
            initkwargs: dict[str, Any] = {}
            if found is not None:
                cls, initkwargs = found
                consumer = f"{cls.__module__}.{cls.__qualname__}"
            callback = pattern.callback
            view = getattr(callback, "__qualname__", None) or type(callback).__qualname__
            yield {
                "pattern": route,
                "consumer": consumer,
                "view": f"{getattr(callback, '__module__', '?')}.{view}",
                "initkwargs": {key: _plain(value) for key, value in initkwargs.items()},
                "name": f"{namespace}{pattern.name}" if pattern.name else None,
            }


def _plain(value: Any) -> Any:
    """A JSON-friendly rendering of an ``as_consumer()`` setting."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)
