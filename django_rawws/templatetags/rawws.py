"""``{% load rawws %}``: WebSocket URLs and the shipped client in templates.

A page should not assemble ``ws://`` URLs in JavaScript: the scheme depends on
whether the page came over TLS (perhaps terminated by a proxy), the path on
the project's URL prefix, and the host on whether WebSockets are served by
the page's own host at all. The server already knows all three::

    {% load rawws %}
    {% rawws_client %}
    <div id="chat" data-ws-url="{% ws_url 'room' slug=room.slug %}"></div>

``{% ws_url %}`` reverses a named route of the WebSocket urlconf
(``RAWWS["URLCONF"]``) as ``{% url %}`` reverses views, and makes it absolute:

* the scheme is ``wss`` when ``request.is_secure()`` (so
  ``SECURE_PROXY_SSL_HEADER`` counts), ``ws`` otherwise;
* the host is ``request.get_host()`` (``ALLOWED_HOSTS``,
  ``USE_X_FORWARDED_HOST``);
* the path carries the page's script prefix (``SCRIPT_NAME`` from the WSGI
  server, or ``FORCE_SCRIPT_NAME``), where ``runws`` behind the same proxy
  is reached too;
* ``RAWWS["PUBLIC_URL"]`` overrides what is not the page's: an absolute
  ``"wss://ws.example.com"`` (scheme, host and prefix), ``"//ws.example.com"``
  (the page's scheme) or ``":8001"`` (the page's host, another port).

The tag needs ``request`` in the context (the ``request`` context processor,
on in Django's default project template) unless ``PUBLIC_URL`` is absolute.
:func:`websocket_url` is the same thing for Python code.
"""

from __future__ import annotations

import re
from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.utils.html import conditional_escape, format_html, format_html_join

from ..conf import get_config
from ..routing import get_urlconf

__all__ = ["CLIENT_SCRIPT", "rawws_client", "websocket_url", "ws_url"]

register = template.Library()

#: The shipped JavaScript client, as a staticfiles path.
CLIENT_SCRIPT = "django_rawws/rawws.js"

_KWARG = re.compile(r"^(\w+)=(.+)$")


def websocket_url(
    viewname: str,
    args: list[Any] | tuple[Any, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    request: Any = None,
) -> str:
    """The absolute ``ws://`` or ``wss://`` URL of a named WebSocket route, for ``request``'s page.

    ``request`` may be None only when ``RAWWS["PUBLIC_URL"]`` is an absolute
    ``ws(s)://`` URL.

    Raises:
        NoReverseMatch: no route of that name and arguments.
        ImproperlyConfigured: no WebSocket urlconf, or no request to take the
            scheme and host from.
    """
    path = reverse(viewname, urlconf=get_urlconf(), args=args, kwargs=kwargs)
    # reverse() prefixed the current thread's script prefix; ours is placed below.
    current = get_script_prefix()
    if current != "/" and path.startswith(current):
        path = "/" + path[len(current) :]
    public: str | None = get_config()["PUBLIC_URL"]
    if public and re.match(r"wss?://", public, re.IGNORECASE):
        return public.rstrip("/") + path
    if request is None:
        raise ImproperlyConfigured(
            f"ws_url({viewname!r}) needs the request to know the page's scheme and host: add "
            "'django.template.context_processors.request' to the context_processors of TEMPLATES, "
            'or set RAWWS["PUBLIC_URL"] to an absolute URL such as "wss://ws.example.com".'
        )
    scheme = "wss" if request.is_secure() else "ws"
    if public and public.startswith("//"):
        return f"{scheme}:{public.rstrip('/')}{path}"
    host = request.get_host()
    if public and public.startswith(":"):
        host = _hostname(host) + public
    return f"{scheme}://{host}{_script_prefix(request)}{path}"


def _hostname(host: str) -> str:
    """``host`` without its port: ``example.com:8000`` → ``example.com``, ``[::1]:80`` → ``[::1]``."""
    if host.startswith("["):
        return host[: host.index("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


def _script_prefix(request: Any) -> str:
    """The page's mount point, without a trailing slash: what Django put before ``path_info``.

    ``request.path`` is the script name (``FORCE_SCRIPT_NAME`` or the WSGI
    ``SCRIPT_NAME``) followed by ``path_info``, so the difference is the
    prefix whichever of the two set it.
    """
    path, path_info = request.path, request.path_info
    if path_info and path.endswith(path_info):
        return str(path[: len(path) - len(path_info)].rstrip("/"))
    return ""


class WebSocketURLNode(template.Node):
    def __init__(
        self,
        viewname: template.base.FilterExpression,
        args: list[template.base.FilterExpression],
        kwargs: dict[str, template.base.FilterExpression],
        asvar: str | None,
    ) -> None:
        self.viewname = viewname
        self.args = args
        self.kwargs = kwargs
        self.asvar = asvar

    def render(self, context: template.Context) -> str:
        viewname = self.viewname.resolve(context)
        args = [arg.resolve(context) for arg in self.args]
        kwargs = {key: value.resolve(context) for key, value in self.kwargs.items()}
        url = websocket_url(viewname, args or None, kwargs or None, request=context.get("request"))
        if self.asvar:
            context[self.asvar] = url
            return ""
        return str(conditional_escape(url)) if context.autoescape else url


@register.tag
def ws_url(parser: template.base.Parser, token: template.base.Token) -> WebSocketURLNode:
    """``{% ws_url "name" arg1 arg2 %}``, ``{% ws_url "ns:name" key=value %}``, ``{% ws_url ... as var %}``.

    Arguments are positional or keyword, not both, as for ``{% url %}``.
    """
    bits = token.split_contents()
    tag = bits[0]
    if len(bits) < 2:
        raise template.TemplateSyntaxError(
            f"{tag!r} takes at least one argument, the name of a WebSocket route."
        )
    asvar = None
    if len(bits) >= 4 and bits[-2] == "as":
        asvar = bits[-1]
        bits = bits[:-2]
    viewname = parser.compile_filter(bits[1])
    args: list[template.base.FilterExpression] = []
    kwargs: dict[str, template.base.FilterExpression] = {}
    for bit in bits[2:]:
        match = _KWARG.match(bit)
        if match:
            kwargs[match.group(1)] = parser.compile_filter(match.group(2))
        else:
            args.append(parser.compile_filter(bit))
    if args and kwargs:
        raise template.TemplateSyntaxError(f"{tag!r} takes positional or keyword arguments, not both.")
    return WebSocketURLNode(viewname, args, kwargs, asvar)


@register.simple_tag
def rawws_client(**attributes: Any) -> str:
    """``<script src="/static/django_rawws/rawws.js"></script>``, through staticfiles.

    Keyword arguments become attributes: ``{% rawws_client defer=True nonce=request.csp_nonce %}``
    (``True``: a bare attribute; ``False`` or ``None``: left out; ``_`` in a
    name becomes ``-``).
    """
    bare = [(name.replace("_", "-"),) for name, value in attributes.items() if value is True]
    valued = [
        (name.replace("_", "-"), value)
        for name, value in attributes.items()
        if value is not True and value is not False and value is not None
    ]
    extra = format_html_join("", " {}", bare) + format_html_join("", ' {}="{}"', valued)
    return format_html('<script src="{}"{}></script>', static(CLIENT_SCRIPT), extra)
