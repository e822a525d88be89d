"""Incremental, bounded parsing of HTTP/1.1 message heads (RFC 9110, RFC 9112).

A WebSocket connection starts as one HTTP request; the server must read its
head from a socket that delivers bytes in arbitrary pieces, from a peer it
does not trust. So the parsers here take bytes as they come (``feed``), keep a
scan offset so that feeding one byte at a time stays O(n), refuse anything
ambiguous instead of guessing (the same bytes must mean the same thing to us
and to any proxy in front of us), and stop as soon as a limit is passed, even
while the head is still incomplete:

====================================  ======================================
condition                             request parser raises
====================================  ======================================
request line over ``max_line`` bytes  ``RequestLineTooLong`` (414)
header line over ``max_line`` bytes   ``HeadersTooLarge`` (431)
more than ``max_headers`` fields      ``HeadersTooLarge`` (431)
head over ``max_head`` bytes          ``HeadersTooLarge`` (431)
anything malformed (below)            ``BadRequest`` (400)
====================================  ======================================

Line lengths count the bytes before the CRLF: a line of exactly ``max_line``
bytes passes. The head size counts every byte of the head including all line
terminators and the final empty line: a head of exactly ``max_head`` bytes
passes.

Malformed means: a line ending in a bare LF; a request line that is not
``token SP visible-ASCII SP HTTP/DIGIT.DIGIT``; obsolete line folding (a field
line starting with SP or HTAB); a field name that is not a token (including
whitespace before the colon and non-ASCII); a control character other than
HTAB, or DEL, in a field value. Bytes 0x80-0xFF in values are obs-text and
decode as latin-1.

One empty line before the request line is ignored, as RFC 9112 §2.2 asks
("SHOULD ignore at least one"): it is what a client leaves behind when it
ends a POST body with an extra CRLF. It is not part of ``Request.head``. A
second one is a 400: nothing legitimate sends two.

The response parser (client role) applies the same rules and limits and
raises ``InvalidResponse`` for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus

from ..exceptions import (
    BadRequest,
    HeadersTooLarge,
    InvalidResponse,
    InvalidState,
    RawWSError,
    RequestLineTooLong,
)

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "Headers",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "build_request",
    "build_response",
    "is_token",
]

MAX_LINE = 8192
MAX_HEADERS = 128
MAX_HEAD = 16384

# RFC 9110 §5.6.2: token = 1*tchar.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN_RE = re.compile(rb"[" + _TCHAR + rb"]+")
_TOKEN_STR_RE = re.compile("[" + _TCHAR.decode() + "]+")
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, with
# exactly one SP each; the target is any run of visible ASCII (its finer
# grammar is the application's business, but spaces and controls never are).
_REQUEST_LINE_RE = re.compile(rb"([" + _TCHAR + rb"]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
# The SP before an empty reason is tolerated when missing, as most clients do.
_STATUS_LINE_RE = re.compile(rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# Field values: field-content allows HTAB, SP, VCHAR and obs-text. Everything
# else below 0x20, and DEL, is refused (NUL, a bare CR and friends are how
# request smuggling starts).
_BAD_VALUE_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_VALUE_STR_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
_OWS = b" \t"
_TARGET_STR_RE = re.compile("[\x21-\x7e]+")

# get_list(): one element of a comma-separated list, quoted strings kept whole.
_LIST_PIECE_RE = re.compile(r'"(?:[^"\\]|\\.)*"?|,|[^,"]+', re.DOTALL)


def is_token(value: str) -> bool:
    """Return whether ``value`` is an RFC 9110 token (non-empty, tchar only)."""
    return _TOKEN_STR_RE.fullmatch(value) is not None


class Headers:
    """Header fields in arrival order, looked up case-insensitively.

    Repeated fields stay separate entries so that validation can tell "one
    header with two values" from "two headers", which matters for fields such
    as ``Host`` or ``Sec-WebSocket-Key`` that must appear exactly once.
    Instances do not change after construction.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(items)
        index: dict[str, list[str]] = {}
        for name, value in self._items:
            index.setdefault(name.lower(), []).append(value)
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of ``name``, or ``default``."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` in arrival order (empty if absent)."""
        return list(self._index.get(name.lower(), ()))

    def get_one(self, name: str) -> str | None:
        """Return the only value of ``name``, None when absent.

        Raises:
            BadRequest: the field appears more than once.
        """
        values = self._index.get(name.lower())
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(f"duplicate {name} header")
        return values[0]

    def get_list(self, name: str) -> list[str]:
        """Return the elements of a comma-separated list field (RFC 9110 §5.6.1).

        Values of repeated lines are concatenated, each element is stripped of
        OWS and empty elements are dropped. Commas inside quoted strings do not
        split. Elements come back as sent (no unquoting, no case folding).
        """
        elements: list[str] = []
        for value in self._index.get(name.lower(), ()):
            if '"' not in value:
                pieces: Iterable[str] = value.split(",")
            else:
                pieces = _split_quoted_list(value)
            for piece in pieces:
                piece = piece.strip(" \t")
                if piece:
                    elements.append(piece)
        return elements

    def items(self) -> Iterator[tuple[str, str]]:
        """Iterate over ``(name, value)`` in arrival order, names as spelled."""
        return iter(self._items)

    def raw_items(self) -> list[tuple[str, str]]:
        """Return a new list of ``(name, value)`` in arrival order, names as spelled."""
        return list(self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _split_quoted_list(value: str) -> list[str]:
    """Split ``value`` on commas that are outside quoted strings."""
    elements: list[str] = []
    current: list[str] = []
    for match in _LIST_PIECE_RE.finditer(value):
        piece = match.group()
        if piece == ",":
            elements.append("".join(current))
            current = []
        else:
            current.append(piece)
    elements.append("".join(current))
    return elements


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head.

    ``head`` keeps the exact bytes received, final CRLFCRLF included, so that a
    request which turns out not to be a WebSocket handshake can be handed on
    unchanged to an HTTP application.
    """

    method: str
    target: str
    version: tuple[int, int]
    headers: Headers
    head: bytes

    @property
    def path(self) -> str:
        """The request-target without its query, still percent-encoded.

        For the absolute form (``http://host/a?b``, RFC 9112 §3.2.2, which a
        server must accept) this is the path part alone, ``/`` when empty.
        """
        return _split_target(self.target)[0]

    @property
    def query_string(self) -> str:
        """What follows the first ``?`` of the target, ``""`` when there is none."""
        return _split_target(self.target)[1]


def _split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        scheme, sep, rest = path.partition("://")
        if sep and is_token(scheme):
            slash = rest.find("/")
            path = rest[slash:] if slash >= 0 else "/"
    return path, query


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed response head (client role); ``head`` holds the exact bytes."""

    status: int
    reason: str
    version: tuple[int, int]
    headers: Headers
    head: bytes


class _HeadParser:
    """Line splitting, limits and field parsing shared by both parsers.

    Complete lines are parsed as soon as they arrive, so the buffer is scanned
    once: ``_scan`` is where the search for the next LF resumes and
    ``_line_start`` where the current line began. Subclasses parse the start
    line and build the result; they choose the exception classes.
    """

    __slots__ = (
        "_buffer",
        "_failed",
        "_fields",
        "_finished",
        "_head_start",
        "_line_start",
        "_scan",
        "_skipped_empty_line",
        "_start_line_seen",
        "max_head",
        "max_headers",
        "max_line",
        "trailing",
    )

    _malformed: type[RawWSError]
    _start_line_too_long: type[RawWSError]
    _too_large: type[RawWSError]
    _start_line_name: str
    _head_name: str

    def __init__(
        self, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD
    ) -> None:
        self.max_line = max_line
        self.max_headers = max_headers
        self.max_head = max_head
        #: Bytes received after the end of the head; set when the head completes.
        self.trailing = b""
        self._buffer = bytearray()
        self._scan = 0
        self._line_start = 0
        self._head_start = 0
        self._skipped_empty_line = False
        self._start_line_seen = False
        self._fields: list[tuple[str, str]] = []
        self._finished = False
        self._failed = False

    def _feed(self, data: bytes) -> bytes | None:
        """Consume ``data``; return the complete head bytes once, else None."""
        if self._finished:
            raise InvalidState("the head is complete; read the rest from .trailing")
        if self._failed:
            raise InvalidState("the parser already failed")
        try:
            return self._consume(data)
        except BaseException:
            self._failed = True
            raise

    def _consume(self, data: bytes) -> bytes | None:
        buffer = self._buffer
        buffer += data
        while True:
            lf = buffer.find(b"\n", self._scan)
            if lf < 0:
                self._scan = len(buffer)
                self._check_incomplete()
                return None
            start = self._line_start
            if lf == start or buffer[lf - 1] != 0x0D:
                raise self._malformed("line ends with a bare LF instead of CRLF")
            length = lf - 1 - start
            self._check_line_length(length)
            if lf + 1 - self._head_start > self.max_head:
                raise self._too_large(f"{self._head_name} larger than {self.max_head} bytes")
            line = bytes(buffer[start : lf - 1])
            self._scan = self._line_start = lf + 1
            if not self._start_line_seen:
                if not line and not self._skipped_empty_line:
                    self._skipped_empty_line = True
                    self._head_start = lf + 1
                    continue
                if not line:
                    raise self._malformed(f"empty lines before the {self._start_line_name}")
                self._parse_start_line(line)
                self._start_line_seen = True
            elif line:
                self._fields.append(self._parse_field(line))
                if len(self._fields) > self.max_headers:
                    raise self._too_large(f"more than {self.max_headers} header fields")
            else:
                self._finished = True
                head = bytes(buffer[self._head_start : lf + 1])
                self.trailing = bytes(buffer[lf + 1 :])
                self._buffer = bytearray()
                return head

    def _check_line_length(self, length: int) -> None:
        if length <= self.max_line:
            return
        if self._start_line_seen:
            raise self._too_large(f"header line longer than {self.max_line} bytes")
        raise self._start_line_too_long(f"{self._start_line_name} longer than {self.max_line} bytes")

    def _check_incomplete(self) -> None:
        """Apply the limits to an unterminated line, so no one can make us buffer forever."""
        buffer = self._buffer
        pending = len(buffer) - self._line_start
        if pending and buffer[-1] == 0x0D:
            pending -= 1  # may be the CR of the CRLF still to come
        self._check_line_length(pending)
        if len(buffer) - self._head_start > self.max_head:
            raise self._too_large(f"{self._head_name} larger than {self.max_head} bytes")

    def _parse_field(self, line: bytes) -> tuple[str, str]:
        """Parse ``field-name ":" OWS field-value OWS`` (RFC 9112 §5)."""
        if line[0] in _OWS:
            raise self._malformed("obsolete line folding is not allowed")
        name, colon, value = line.partition(b":")
        if not colon:
            raise self._malformed("header line without a colon")
        if _TOKEN_RE.fullmatch(name) is None:
            if name and name[-1] in _OWS:
                raise self._malformed("whitespace between header name and colon")
            raise self._malformed("invalid header name")
        value = value.strip(_OWS)
        if _BAD_VALUE_RE.search(value) is not None:
            raise self._malformed(f"invalid character in {name.decode('ascii')} header value")
        return name.decode("ascii"), value.decode("latin-1")

    def _parse_start_line(self, line: bytes) -> None:
        raise NotImplementedError


class RequestParser(_HeadParser):
    """Parse one request head from bytes fed in any chunking.

    ``feed()`` returns None until the head is complete, then the
    :class:`Request` once; the bytes that followed the head are then in
    ``trailing`` (a client may send its first frame in the same packet as the
    end of its handshake). Feeding again raises ``InvalidState``, as does
    feeding after an error.
    """

    __slots__ = ("_method", "_target", "_version")

    _malformed = BadRequest
    _start_line_too_long = RequestLineTooLong
    _too_large = HeadersTooLarge
    _start_line_name = "request line"
    _head_name = "request head"

    def __init__(
        self, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD
    ) -> None:
        super().__init__(max_line, max_headers, max_head)
        self._method = ""
        self._target = ""
        self._version = (0, 0)

    def feed(self, data: bytes) -> Request | None:
        """Consume ``data``; return the Request once the head is complete.

        Raises:
            BadRequest, RequestLineTooLong, HeadersTooLarge: see the module docstring.
            InvalidState: the head was already returned, or parsing failed before.
        """
        head = self._feed(data)
        if head is None:
            return None
        return Request(self._method, self._target, self._version, Headers(self._fields), head)

    def _parse_start_line(self, line: bytes) -> None:
        match = _REQUEST_LINE_RE.fullmatch(line)
        if match is None:
            raise BadRequest("malformed request line")
        method, target, major, minor = match.groups()
        self._method = method.decode("ascii")
        self._target = target.decode("ascii")
        self._version = (int(major), int(minor))


class ResponseParser(_HeadParser):
    """Parse one response head (client role); same contract as RequestParser.

    Every failure, limits included, raises ``InvalidResponse``: to a client a
    bad response is a bad response, whatever the reason.
    """

    __slots__ = ("_reason", "_status", "_version")

    _malformed = InvalidResponse
    _start_line_too_long = InvalidResponse
    _too_large = InvalidResponse
    _start_line_name = "status line"
    _head_name = "response head"

    def __init__(
        self, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD
    ) -> None:
        super().__init__(max_line, max_headers, max_head)
        self._status = 0
        self._reason = ""
        self._version = (0, 0)

    def feed(self, data: bytes) -> Response | None:
        """Consume ``data``; return the Response once the head is complete.

        Raises:
            InvalidResponse: malformed or over a limit.
            InvalidState: the head was already returned, or parsing failed before.
        """
        head = self._feed(data)
        if head is None:
            return None
        return Response(self._status, self._reason, self._version, Headers(self._fields), head)

    def _parse_start_line(self, line: bytes) -> None:
        match = _STATUS_LINE_RE.fullmatch(line)
        if match is None:
            raise InvalidResponse("malformed status line")
        major, minor, status, reason = match.groups()
        self._version = (int(major), int(minor))
        self._status = int(status)
        self._reason = (reason or b"").decode("latin-1")


def _serialize_fields(headers: Iterable[tuple[str, str]]) -> bytes:
    """Serialize header fields, refusing what could split or corrupt the message.

    Raises:
        ValueError: a name that is not a token; a value with CR, LF, NUL or
            another control character, with leading or trailing whitespace
            (the peer would strip it), or that is not latin-1.
    """
    lines = []
    for name, value in headers:
        if not is_token(name):
            raise ValueError(f"invalid header name: {name!r}")
        if _BAD_VALUE_STR_RE.search(value) is not None or value != value.strip(" \t"):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)


def build_response(status: int, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """Return ``HTTP/1.1 <status> <reason>``, the headers, an empty line and ``body``.

    The reason phrase is the standard one (``http.HTTPStatus``), empty for a
    status it does not know. ``Content-Length`` is the caller's business.

    Raises:
        ValueError: status outside 100-999, or a header that fails validation.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid status code: {status}")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return f"HTTP/1.1 {status} {reason}\r\n".encode("ascii") + _serialize_fields(headers) + b"\r\n" + body


def build_request(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Return an HTTP/1.1 request head: request line, headers, empty line.

    Raises:
        ValueError: a method that is not a token, a target that is empty or
            not visible ASCII, or a header that fails validation.
    """
    if not is_token(method):
        raise ValueError(f"invalid method: {method!r}")
    if _TARGET_STR_RE.fullmatch(target) is None:
        raise ValueError(f"invalid request target: {target!r}")
    return f"{method} {target} HTTP/1.1\r\n".encode("ascii") + _serialize_fields(headers) + b"\r\n"
