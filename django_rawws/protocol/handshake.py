"""The WebSocket opening handshake (RFC 6455 §4), both roles, without I/O.

Server side: :class:`ServerHandshake` (or :class:`~.http.RequestParser`)
turns bytes into a :class:`~.http.Request`; :func:`is_websocket_upgrade`
tells a handshake from plain HTTP; :func:`validate_request` checks it and
returns a :class:`HandshakeRequest`, or raises the :class:`HandshakeError`
whose status the client must get; :func:`build_accept` and
:func:`build_reject` produce the response bytes. The decision in between
(routing, origin, the consumer's ``connect``) belongs to the caller.

:func:`validate_request` checks, in this order, and raises on the first
failure (the response body is the exception's ``reason``):

=====  ===========================================================  ======  ===========================
step   requirement                                                  status  exception / extra headers
=====  ===========================================================  ======  ===========================
1      method is ``GET`` (case-sensitive)                           405     ``MethodNotAllowed``,
                                                                            ``Allow: GET``
2      HTTP version is 1.1 or later                                 400     ``BadRequest``
3      exactly one ``Host`` header, not empty                       400     ``BadRequest``
4      ``Upgrade`` list contains ``websocket`` (any case)           400     ``BadRequest``
5      ``Connection`` list contains ``upgrade`` (any case)          400     ``BadRequest``
6      exactly one ``Sec-WebSocket-Version``, equal to ``13``       426     ``UpgradeRequired``,
                                                                            ``Sec-WebSocket-Version: 13``
7      exactly one ``Sec-WebSocket-Key``, strict base64 of 16 bytes 400     ``BadRequest``
8      no body: no ``Transfer-Encoding``, ``Content-Length`` only 0 400     ``BadRequest``
9      ``Sec-WebSocket-Protocol`` elements are tokens;              400     ``BadRequest``
       ``Sec-WebSocket-Extensions`` follows RFC 6455 §9.1
=====  ===========================================================  ======  ===========================

Parsing the head comes first and has its own statuses (see
:mod:`django_rawws.protocol.http`): 400 malformed, 414 request line too long,
431 header line too long, too many headers or head too large.

Lists (``Upgrade``, ``Connection``, ``Sec-WebSocket-Protocol``,
``Sec-WebSocket-Extensions``) may be split over several header lines; the
lines are merged as RFC 9110 §5.3 says. Host is not checked against anything:
that is Django's ``ALLOWED_HOSTS``, applied by the caller.

Every rejection response carries ``Connection: close``. A 426 also carries
``Upgrade: websocket`` (and ``Connection: Upgrade, close``), because RFC 9110
§15.5.22 says a 426 MUST name the protocol to upgrade to.

Client side: :class:`ClientHandshake` writes the request and checks the
server's answer (RFC 6455 §4.1), raising ``InvalidResponse``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..exceptions import (
    BadRequest,
    HandshakeError,
    InvalidResponse,
    InvalidState,
    MethodNotAllowed,
    UpgradeRequired,
)
from . import deflate
from .http import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    build_request,
    build_response,
    is_token,
)

if TYPE_CHECKING:
    from .deflate import DeflateOptions, DeflateParams

__all__ = [
    "GUID",
    "ClientHandshake",
    "ClientResult",
    "Extension",
    "HandshakeRequest",
    "ServerHandshake",
    "accept_key",
    "build_accept",
    "build_reject",
    "is_websocket_upgrade",
    "negotiate_extensions",
    "parse_extensions",
    "select_subprotocol",
    "validate_request",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: One parsed element of ``Sec-WebSocket-Extensions``: the extension name and
#: its parameters in order, each with its value (unquoted) or None.
Extension = tuple[str, list[tuple[str, str | None]]]

# Headers build_accept() writes itself, or that would turn the 101 into
# something else; extra headers may not set them.
_RESERVED_ACCEPT_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "content-length",
        "transfer-encoding",
    }
)
# Headers build_reject() writes itself; the exception's headers may not repeat them.
_RESERVED_REJECT_HEADERS = frozenset({"content-type", "content-length", "connection", "transfer-encoding"})

# RFC 6455 §9.1, with the implied OWS around the separators:
#   extension = extension-token *( ";" extension-param )
#   extension-param = token [ "=" (token | quoted-string) ]
_TCHARS = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_EXT_OWS_RE = re.compile(r"[ \t]*")
_EXT_TOKEN_RE = re.compile(rf"[{_TCHARS}]+")
# quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE (RFC 9110 §5.6.4)
_EXT_QUOTED_RE = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value for ``key`` (RFC 6455 §1.3).

    It proves the server read the handshake: base64 of SHA-1 of the key
    followed by the protocol's GUID.
    """
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def is_websocket_upgrade(request: Request) -> bool:
    """Return whether ``request`` asks to upgrade to WebSocket.

    Only the ``Upgrade`` header decides: a request that asks for WebSocket
    but gets the rest wrong deserves a handshake error, not a page from the
    HTTP application.
    """
    return any(token.lower() == "websocket" for token in request.headers.get_list("Upgrade"))


@dataclass(frozen=True)
class HandshakeRequest:
    """A request that passed :func:`validate_request`, with what it asked for."""

    request: Request
    key: str
    subprotocols: list[str]
    extensions: list[Extension]
    host: str
    path: str
    query_string: str

    @property
    def headers(self) -> Headers:
        return self.request.headers


def validate_request(request: Request) -> HandshakeRequest:
    """Check ``request`` against RFC 6455 §4.2.1 (steps in the module docstring).

    Raises:
        MethodNotAllowed: not a GET (405).
        UpgradeRequired: missing or unsupported ``Sec-WebSocket-Version`` (426).
        BadRequest: anything else wrong (400).
    """
    headers = request.headers

    if request.method != "GET":
        raise MethodNotAllowed()
    if request.version < (1, 1):
        raise BadRequest("a WebSocket handshake needs HTTP/1.1 or later")

    hosts = headers.get_all("Host")
    if not hosts:
        raise BadRequest("missing Host header")
    if len(hosts) > 1:
        raise BadRequest("duplicate Host header")
    host = hosts[0]
    if not host:
        raise BadRequest("empty Host header")

    if not any(token.lower() == "websocket" for token in headers.get_list("Upgrade")):
        raise BadRequest("missing Upgrade: websocket")
    if not any(token.lower() == "upgrade" for token in headers.get_list("Connection")):
        raise BadRequest("missing Connection: Upgrade")

    versions = headers.get_all("Sec-WebSocket-Version")
    if not versions:
        raise UpgradeRequired("missing Sec-WebSocket-Version header; only version 13 is supported")
    if len(versions) > 1:
        raise UpgradeRequired("duplicate Sec-WebSocket-Version header; only version 13 is supported")
    if versions[0] != "13":
        raise UpgradeRequired(
            f"unsupported Sec-WebSocket-Version {versions[0]!r}; only version 13 is supported"
        )

    keys = headers.get_all("Sec-WebSocket-Key")
    if not keys:
        raise BadRequest("missing Sec-WebSocket-Key header")
    if len(keys) > 1:
        raise BadRequest("duplicate Sec-WebSocket-Key header")
    key = keys[0]
    try:
        raw_key = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        raise BadRequest("Sec-WebSocket-Key is not valid base64") from None
    if len(raw_key) != 16:
        raise BadRequest("Sec-WebSocket-Key does not decode to 16 bytes")

    if "Transfer-Encoding" in headers or any(value != "0" for value in headers.get_all("Content-Length")):
        raise BadRequest("a WebSocket handshake has no body")

    subprotocols = headers.get_list("Sec-WebSocket-Protocol")
    for subprotocol in subprotocols:
        if not is_token(subprotocol):
            raise BadRequest(f"invalid subprotocol name {subprotocol!r}")
    extensions = parse_extensions(headers.get_all("Sec-WebSocket-Extensions"))

    return HandshakeRequest(
        request=request,
        key=key,
        subprotocols=subprotocols,
        extensions=extensions,
        host=host,
        path=request.path,
        query_string=request.query_string,
    )


def parse_extensions(values: Sequence[str]) -> list[Extension]:
    """Parse ``Sec-WebSocket-Extensions`` values, merged in order (RFC 6455 §9.1).

    Quoted parameter values come back unquoted; they must then be tokens, as
    the RFC requires. Empty list elements are ignored (RFC 9110 §5.6.1). Names
    keep their case; what they mean is the extension's business.

    Raises:
        BadRequest: the value does not follow the grammar.
    """
    extensions: list[Extension] = []
    for value in values:
        _parse_extension_value(value, extensions)
    return extensions


def _parse_extension_value(value: str, extensions: list[Extension]) -> None:
    end = len(value)
    pos = _skip_ows(value, 0)
    while pos < end:
        if value[pos] == ",":  # empty list element
            pos = _skip_ows(value, pos + 1)
            continue
        name, pos = _expect_token(value, pos)
        params: list[tuple[str, str | None]] = []
        pos = _skip_ows(value, pos)
        while pos < end and value[pos] == ";":
            param, pos = _expect_token(value, _skip_ows(value, pos + 1))
            param_value: str | None = None
            pos = _skip_ows(value, pos)
            if pos < end and value[pos] == "=":
                pos = _skip_ows(value, pos + 1)
                param_value, pos = _expect_param_value(value, pos)
                pos = _skip_ows(value, pos)
            params.append((param, param_value))
        extensions.append((name, params))
        if pos < end:
            if value[pos] != ",":
                raise BadRequest(f"malformed Sec-WebSocket-Extensions at {value[pos:]!r}")
            pos = _skip_ows(value, pos + 1)


def _skip_ows(value: str, pos: int) -> int:
    match = _EXT_OWS_RE.match(value, pos)
    assert match is not None  # matches the empty string at worst
    return match.end()


def _expect_token(value: str, pos: int) -> tuple[str, int]:
    match = _EXT_TOKEN_RE.match(value, pos)
    if match is None:
        raise BadRequest(f"malformed Sec-WebSocket-Extensions: expected a token at {value[pos:]!r}")
    return match.group(), match.end()


def _expect_param_value(value: str, pos: int) -> tuple[str, int]:
    if value.startswith('"', pos):
        match = _EXT_QUOTED_RE.match(value, pos)
        if match is None:
            raise BadRequest(f"malformed Sec-WebSocket-Extensions: bad quoted string at {value[pos:]!r}")
        unquoted = _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
        if not is_token(unquoted):
            raise BadRequest(f"malformed Sec-WebSocket-Extensions: quoted value {unquoted!r} is not a token")
        return unquoted, match.end()
    return _expect_token(value, pos)


def select_subprotocol(offered: Sequence[str], supported: Iterable[str]) -> str | None:
    """Return the first of ``supported`` (server preference) that the client offered.

    Names compare exactly. Returns None when nothing matches; never a name
    the client did not offer.
    """
    offered_set = set(offered)
    for name in supported:
        if name in offered_set:
            return name
    return None


def negotiate_extensions(
    hs: HandshakeRequest, deflate_options: DeflateOptions | None
) -> tuple[str | None, DeflateParams | None]:
    """Choose the extensions to accept: permessage-deflate or nothing.

    Returns the ``Sec-WebSocket-Extensions`` response value and the agreed
    parameters, or ``(None, None)`` when compression is off or the client
    offered nothing acceptable. Offers of other extensions are ignored.
    """
    if deflate_options is None:
        return None, None
    agreed = deflate.negotiate(hs.extensions, deflate_options)
    if agreed is None:
        return None, None
    return agreed


def build_accept(
    hs: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return the ``101 Switching Protocols`` response accepting ``hs``.

    Args:
        subprotocol: the one the server chose; it must be one the client offered.
        extensions: the ``Sec-WebSocket-Extensions`` value from
            :func:`negotiate_extensions`.
        headers: extra headers (``Set-Cookie``...). They may not set the
            handshake's own headers, nor a body.

    Raises:
        InvalidState: ``subprotocol`` was not offered by the client.
        ValueError: an extra header is invalid (CR, LF, control characters,
            bad name) or one that build_accept writes itself.
    """
    if subprotocol is not None and subprotocol not in hs.subprotocols:
        raise InvalidState(f"subprotocol {subprotocol!r} was not offered by the client")
    extra = list(headers)
    for name, _ in extra:
        if name.lower() in _RESERVED_ACCEPT_HEADERS:
            raise ValueError(f"build_accept() sets {name} itself")
    fields = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(hs.key)),
    ]
    if subprotocol is not None:
        fields.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions:
        fields.append(("Sec-WebSocket-Extensions", extensions))
    fields.extend(extra)
    return build_response(101, fields)


def build_reject(exc: HandshakeError) -> bytes:
    """Return the plain-text error response for ``exc``; the connection then closes.

    The body is ``exc.reason`` and a newline. ``exc.headers`` are added, except
    those this function writes itself (``Content-Type``, ``Content-Length``,
    ``Transfer-Encoding``, ``Connection``): a response carrying two framings
    is how response splitting starts.

    Raises:
        ValueError: one of ``exc.headers`` is invalid.
    """
    body = (exc.reason + "\n").encode("utf-8")
    extra = [(name, value) for name, value in exc.headers if name.lower() not in _RESERVED_REJECT_HEADERS]
    connection = "close"
    if exc.status_code == 426:
        # RFC 9110 §15.5.22 and §7.8: a 426 names the protocol in Upgrade, and
        # Upgrade is a connection option.
        connection = "Upgrade, close"
        if not any(name.lower() == "upgrade" for name, _ in extra):
            extra.append(("Upgrade", "websocket"))
    fields = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", connection),
        *extra,
    ]
    return build_response(exc.status_code, fields, body)


class ServerHandshake:
    """Read a request head from the wire: a RequestParser with the server's vocabulary."""

    __slots__ = ("_parser",)

    def __init__(
        self, *, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD
    ) -> None:
        self._parser = RequestParser(max_line=max_line, max_headers=max_headers, max_head=max_head)

    def receive_data(self, data: bytes) -> Request | None:
        """Feed bytes read from the socket; return the Request once complete.

        Raises:
            BadRequest, RequestLineTooLong, HeadersTooLarge: see :mod:`.http`.
            InvalidState: the request was already returned or parsing failed.
        """
        return self._parser.feed(data)

    @property
    def trailing(self) -> bytes:
        """Bytes that came after the request head: the start of the frame stream."""
        return self._parser.trailing


@dataclass(frozen=True)
class ClientResult:
    """A handshake the client accepted: the response and what was agreed."""

    response: Response
    subprotocol: str | None
    deflate_params: DeflateParams | None


class ClientHandshake:
    """The client role of the opening handshake (RFC 6455 §4.1).

    Send :meth:`request_bytes`, feed what the server answers to
    :meth:`receive_data` until it returns a :class:`ClientResult`; then
    ``trailing`` holds the first bytes of the frame stream.

    Raises:
        ValueError: at construction, for a target, subprotocol or header that
            cannot go on the wire.
    """

    __slots__ = ("_parser", "_request", "deflate_options", "host", "key", "subprotocols", "target")

    def __init__(
        self,
        host: str,
        target: str = "/",
        *,
        subprotocols: Sequence[str] = (),
        deflate_options: DeflateOptions | None = None,
        headers: Sequence[tuple[str, str]] = (),
        key: str | None = None,
    ) -> None:
        self.host = host
        self.target = target
        self.subprotocols = list(subprotocols)
        self.deflate_options = deflate_options
        self.key = key if key is not None else base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        for subprotocol in self.subprotocols:
            if not is_token(subprotocol):
                raise ValueError(f"invalid subprotocol name: {subprotocol!r}")
        fields = [
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self.key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if self.subprotocols:
            fields.append(("Sec-WebSocket-Protocol", ", ".join(self.subprotocols)))
        if self._deflate_enabled:
            assert deflate_options is not None
            fields.append(("Sec-WebSocket-Extensions", deflate.client_offer(deflate_options)))
        fields.extend(headers)
        self._request = build_request("GET", target, fields)
        self._parser = ResponseParser()

    @property
    def _deflate_enabled(self) -> bool:
        return self.deflate_options is not None and self.deflate_options.enabled

    def request_bytes(self) -> bytes:
        """Return the handshake request to send."""
        return self._request

    def receive_data(self, data: bytes) -> ClientResult | None:
        """Feed bytes from the server; return the result once the response is complete.

        Raises:
            InvalidResponse: the server refused, or answered in a way RFC 6455
                §4.1 says to fail on; ``.response`` holds the Response when one
                was parsed.
            InvalidState: the response was already handled.
        """
        response = self._parser.feed(data)
        if response is None:
            return None
        try:
            return self._check(response)
        except InvalidResponse as exc:
            exc.response = response
            raise

    @property
    def trailing(self) -> bytes:
        """Bytes that came after the response head: the start of the frame stream."""
        return self._parser.trailing

    def _check(self, response: Response) -> ClientResult:
        headers = response.headers
        if response.status != 101:
            raise InvalidResponse(
                f"server rejected the WebSocket handshake: HTTP {response.status} {response.reason}"
            )

        upgrade = headers.get_list("Upgrade")
        if [token.lower() for token in upgrade] != ["websocket"]:
            raise InvalidResponse(f"expected Upgrade: websocket, got {', '.join(upgrade) or 'nothing'}")
        if not any(token.lower() == "upgrade" for token in headers.get_list("Connection")):
            raise InvalidResponse("missing Connection: Upgrade in the response")

        accepts = headers.get_all("Sec-WebSocket-Accept")
        if len(accepts) != 1:
            raise InvalidResponse(f"expected one Sec-WebSocket-Accept header, got {len(accepts)}")
        if accepts[0] != accept_key(self.key):
            raise InvalidResponse("wrong Sec-WebSocket-Accept: the server did not answer our key")

        chosen = headers.get_list("Sec-WebSocket-Protocol")
        if len(chosen) > 1:
            raise InvalidResponse(f"the server chose more than one subprotocol: {', '.join(chosen)}")
        subprotocol = chosen[0] if chosen else None
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise InvalidResponse(f"the server chose subprotocol {subprotocol!r}, which we did not offer")

        try:
            answer = parse_extensions(headers.get_all("Sec-WebSocket-Extensions"))
        except BadRequest as exc:
            raise InvalidResponse(exc.reason) from None
        params: DeflateParams | None = None
        if answer:
            for name, _ in answer:
                if name.lower() != deflate.EXTENSION_NAME or not self._deflate_enabled:
                    raise InvalidResponse(f"the server accepted extension {name!r}, which we did not offer")
            if len(answer) > 1:
                raise InvalidResponse("the server accepted permessage-deflate more than once")
            assert self.deflate_options is not None
            params = deflate.accept_answer(answer, self.deflate_options)

        return ClientResult(response=response, subprotocol=subprotocol, deflate_params=params)
