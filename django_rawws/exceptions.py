"""Every exception django-rawws raises, in one hierarchy.

Each class carries what it means on the wire: a handshake failure carries the
HTTP status the client receives, a protocol failure the close code the
connection is failed with. The mapping to bytes lives in one place per
direction (``protocol.handshake.build_reject`` for statuses, the failure path of
``protocol.connection.Connection`` for close codes), so nothing else needs to
know the numbers::

    RawWSError
    ├── HandshakeError                 HTTP status, default 400
    │   ├── BadRequest                 400 malformed request, reason in body
    │   ├── Forbidden                  403 origin, permissions
    │   ├── NotFound                   404 no WebSocket route
    │   ├── MethodNotAllowed           405 with Allow: GET
    │   ├── RequestLineTooLong         414
    │   ├── UpgradeRequired            426 with the headers it needs
    │   ├── TooManyRequests            429 with Retry-After
    │   ├── HeadersTooLarge            431 line, count or head size
    │   └── ServiceUnavailable         503 with Retry-After
    ├── InvalidResponse                the client role's view of a bad 101
    ├── ProtocolError                  close code, default 1002
    │   ├── UnsupportedData            1003
    │   ├── InvalidPayload             1007 bad UTF-8, bad JSON
    │   ├── PolicyViolation            1008
    │   └── MessageTooBig              1009
    ├── ConnectionClosed               the connection is closed; has code, reason
    ├── GroupBackendUnavailable        a group send could not reach the backend
    └── InvalidState                   misuse of the API by the caller
"""

from __future__ import annotations

from .protocol.codes import CloseCode

__all__ = [
    "RawWSError",
    "HandshakeError",
    "BadRequest",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "RequestLineTooLong",
    "UpgradeRequired",
    "TooManyRequests",
    "HeadersTooLarge",
    "ServiceUnavailable",
    "InvalidResponse",
    "ProtocolError",
    "UnsupportedData",
    "InvalidPayload",
    "PolicyViolation",
    "MessageTooBig",
    "ConnectionClosed",
    "GroupBackendUnavailable",
    "InvalidState",
]


class RawWSError(Exception):
    """Base class of every exception of django-rawws."""


class HandshakeError(RawWSError):
    """The opening handshake cannot succeed; the client gets ``status_code``.

    ``reason`` becomes the short plain-text body of the response, and
    ``headers`` are added to it (``Allow``, ``Retry-After``...).
    """

    status_code = 400
    default_reason = "Bad Request"

    def __init__(self, reason: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        self.reason = reason or self.default_reason
        self.headers = list(headers or self.default_headers())
        super().__init__(self.reason)

    def default_headers(self) -> list[tuple[str, str]]:
        return []


class BadRequest(HandshakeError):
    status_code = 400
    default_reason = "Bad Request"


class Forbidden(HandshakeError):
    status_code = 403
    default_reason = "Forbidden"


class NotFound(HandshakeError):
    status_code = 404
    default_reason = "Not Found"


class MethodNotAllowed(HandshakeError):
    status_code = 405
    default_reason = "Method Not Allowed: a WebSocket handshake is a GET"

    def default_headers(self) -> list[tuple[str, str]]:
        return [("Allow", "GET")]


class RequestLineTooLong(HandshakeError):
    status_code = 414
    default_reason = "Request line too long"


class UpgradeRequired(HandshakeError):
    """426: the client must speak WebSocket version 13 (RFC 6455 §4.4)."""

    status_code = 426
    default_reason = "Upgrade Required: only WebSocket version 13 is supported"

    def default_headers(self) -> list[tuple[str, str]]:
        return [("Sec-WebSocket-Version", "13")]


class TooManyRequests(HandshakeError):
    status_code = 429
    default_reason = "Too Many Requests"

    def __init__(self, reason: str | None = None, headers: list[tuple[str, str]] | None = None, retry_after: int = 5) -> None:
        self.retry_after = retry_after
        super().__init__(reason, headers)

    def default_headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class HeadersTooLarge(HandshakeError):
    status_code = 431
    default_reason = "Request Header Fields Too Large"


class ServiceUnavailable(TooManyRequests):
    status_code = 503
    default_reason = "Service Unavailable"


class InvalidResponse(RawWSError):
    """The client role received a handshake response it must refuse.

    ``response`` is the parsed response when there was one to parse.
    """

    response: object | None = None


class ProtocolError(RawWSError):
    """The peer broke RFC 6455 or RFC 7692; the connection fails with ``close_code``."""

    close_code: int = CloseCode.PROTOCOL_ERROR

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason)


class UnsupportedData(ProtocolError):
    close_code = CloseCode.UNSUPPORTED_DATA


class InvalidPayload(ProtocolError):
    close_code = CloseCode.INVALID_PAYLOAD


class PolicyViolation(ProtocolError):
    close_code = CloseCode.POLICY_VIOLATION


class MessageTooBig(ProtocolError):
    close_code = CloseCode.MESSAGE_TOO_BIG


class ConnectionClosed(RawWSError):
    """Raised when sending on a connection that is closed or closing."""

    def __init__(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class GroupBackendUnavailable(RawWSError):
    """The group backend can't take a send now (closed, or its server unreachable).

    Raised by ``push(..., immediate=True)`` and by a push outside any
    transaction; a push deferred to commit logs and counts the failure instead.
    """


class InvalidState(RawWSError, AssertionError):
    """The caller used the API in a way its state does not allow."""
