"""The WebSocket connection after the handshake: bytes in, events out (RFC 6455 §5-§8).

A :class:`Connection` never touches a socket. The I/O layer feeds it what it
read with :meth:`~Connection.receive_data` and gets back a list of events;
whatever must go on the wire — messages sent, pongs answering pings, close
frames — accumulates until :meth:`~Connection.data_to_send` hands it over.

Reading is incremental over any chunking. A data frame's payload is moved out
of the input buffer as it arrives (unmasked, inflated and UTF-8-checked on the
way), so the parser holds at most the message being assembled plus one
incomplete frame header or control frame — never an oversized message: sizes
are checked against the limits as soon as a frame header is complete.

Errors by the peer never escape as exceptions: the connection queues the close
frame the error calls for, returns a final :class:`ConnectionFailed` event and
discards what follows. Misuse by the caller raises.
"""

from __future__ import annotations

import codecs
import enum
import io
from collections.abc import Callable

from ..exceptions import ConnectionClosed, InvalidPayload, MessageTooBig, ProtocolError
from .codes import CloseCode, Opcode
from .events import BinaryMessage, CloseReceived, ConnectionFailed, Event, Ping, Pong, TextMessage
from .frames import MAX_CONTROL_PAYLOAD, MAX_HEADER_SIZE, encode_close_payload, encode_frame, parse_close_payload, random_mask
from .masking import apply_mask, rotate_mask

__all__ = ["Connection", "Role", "State", "DEFAULT_MAX_MESSAGE_SIZE"]

DEFAULT_MAX_MESSAGE_SIZE = 1 << 20

_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")

_OP_CONTINUATION = Opcode.CONTINUATION.value
_OP_TEXT = Opcode.TEXT.value
_OP_BINARY = Opcode.BINARY.value
_OP_CLOSE = Opcode.CLOSE.value
_OP_PING = Opcode.PING.value
_OP_PONG = Opcode.PONG.value
_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)


class Role(enum.Enum):
    """Which end we are: a server reads masked frames and sends unmasked ones."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    OPEN = 1
    CLOSING = 2  # we sent a close frame and wait for the peer's
    CLOSED = 3  # both close frames exchanged, or the connection failed


class Connection:
    """One side of an open WebSocket connection.

    Args:
        role: ``Role.SERVER`` (the default) or ``Role.CLIENT``.
        max_message_size: the largest message accepted, after decompression;
            a message of exactly this size passes. Bigger fails with 1009.
        max_frame_size: the largest frame payload accepted on the wire
            (defaults to ``max_message_size``; a compressed frame may exceed
            it by deflate's worst-case growth, 1/1024 plus 64 bytes).
        deflate: the negotiated ``PerMessageDeflate`` codec, if any.
        compression_threshold: outgoing messages shorter than this are sent
            uncompressed even when compression was negotiated.
        fragment_size: split outgoing messages into frames of at most this
            many payload bytes (``None``: one frame per message).
        mask_source: client role only; returns each frame's masking key.
    """

    __slots__ = (
        "role",
        "state",
        "max_message_size",
        "max_frame_size",
        "compression_threshold",
        "fragment_size",
        "close_code_received",
        "close_reason_received",
        "close_code_sent",
        "failure",
        "frames_received",
        "control_frames_received",
        "_deflate",
        "_mask_source",
        "_expect_mask",
        "_out",
        "_buf",
        "_discarding",
        "_frame_remaining",
        "_frame_mask",
        "_frame_offset",
        "_frame_fin",
        "_msg_opcode",
        "_msg_compressed",
        "_msg_size",
        "_msg_binary",
        "_msg_text",
        "_msg_decoder",
    )

    def __init__(
        self,
        role: Role = Role.SERVER,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int | None = None,
        deflate: object | None = None,
        compression_threshold: int = 0,
        fragment_size: int | None = None,
        mask_source: Callable[[], bytes] = random_mask,
    ) -> None:
        if fragment_size is not None and fragment_size < 1:
            raise ValueError("fragment_size must be positive")
        self.role = role
        self.state = State.OPEN
        self.max_message_size = max_message_size
        self.max_frame_size = max_message_size if max_frame_size is None else max_frame_size
        self.compression_threshold = compression_threshold
        self.fragment_size = fragment_size
        self.close_code_received: int | None = None
        self.close_reason_received = ""
        self.close_code_sent: int | None = None
        self.failure: ProtocolError | None = None
        #: Frames parsed so far (all of them), and the control frames among
        #: them: what the I/O layer charges a peer's rate limit with, since a
        #: flood of pings or of empty fragments completes no message yet
        #: costs the parser as much as messages do.
        self.frames_received = 0
        self.control_frames_received = 0
        self._deflate = deflate
        self._mask_source = mask_source
        self._expect_mask = role is Role.SERVER
        self._out: list[bytes] = []
        self._buf = b""
        self._discarding = False
        self._frame_remaining = 0
        self._frame_mask: bytes | None = None
        self._frame_offset = 0
        self._frame_fin = False
        self._msg_opcode: int | None = None
        self._msg_compressed = False
        self._msg_size = 0
        self._msg_binary: bytearray | None = None
        self._msg_text: io.StringIO | None = None
        self._msg_decoder: codecs.IncrementalDecoder | None = None

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data`` and return the events it completes, in order."""
        if self._discarding or not data:
            return []
        if self._buf:
            data = self._buf + data
            self._buf = b""
        events: list[Event] = []
        try:
            pos = self._parse(data, events)
        except ProtocolError as exc:
            self._fail_with(exc, events)
            return events
        except UnicodeDecodeError:
            self._fail_with(InvalidPayload("invalid UTF-8 in a text message"), events)
            return events
        if pos < len(data) and not self._discarding:
            self._buf = bytes(data[pos:])
        return events

    def receive_eof(self) -> list[Event]:
        """Note that the peer closed TCP; nothing more will be read."""
        self._discarding = True
        self.state = State.CLOSED
        self._drop_message()
        self._buf = b""
        return []

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by the parser: the partial message plus unparsed input."""
        held = len(self._buf)
        if self._msg_binary is not None:
            held += len(self._msg_binary)
        if self._msg_text is not None:
            held += self._msg_size
        return held

    def _parse(self, data: bytes, events: list[Event]) -> int:
        """Consume frames from ``data`` and return how many bytes were used."""
        end = len(data)
        pos = 0
        while pos < end:
            remaining = self._frame_remaining
            if remaining:
                # Inside a data frame's payload: move what arrived out of the input.
                take = end - pos if end - pos < remaining else remaining
                chunk = data[pos : pos + take]
                if self._frame_mask is not None:
                    chunk = apply_mask(chunk, rotate_mask(self._frame_mask, self._frame_offset))
                pos += take
                self._frame_offset += take
                self._frame_remaining = remaining - take
                self._add_to_message(chunk)
                if self._frame_remaining == 0 and self._frame_fin:
                    self._finish_message(events)
                continue

            if end - pos < 2:
                break
            first = data[pos]
            second = data[pos + 1]
            fin = first & 0x80
            opcode = first & 0x0F
            if first & 0x30:
                raise ProtocolError("reserved bits RSV2/RSV3 set")
            rsv1 = first & 0x40
            if opcode not in _KNOWN_OPCODES:
                raise ProtocolError(f"reserved opcode {opcode}")
            masked = second & 0x80
            if bool(masked) != self._expect_mask:
                raise ProtocolError("unmasked frame from a client" if self._expect_mask else "masked frame from a server")
            length = second & 0x7F
            is_control = opcode >= _OP_CLOSE
            if is_control:
                if not fin:
                    raise ProtocolError("fragmented control frame")
                if length > MAX_CONTROL_PAYLOAD:
                    raise ProtocolError("control frame payload over 125 bytes")
                if rsv1:
                    raise ProtocolError("RSV1 set on a control frame")
            elif rsv1:
                if self._deflate is None:
                    raise ProtocolError("RSV1 set without a negotiated extension")
                if opcode == _OP_CONTINUATION:
                    raise ProtocolError("RSV1 set on a continuation frame")

            header_size = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length < 126:
                    raise ProtocolError("non-minimal 16-bit payload length")
                header_size = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                if length >> 63:
                    raise ProtocolError("64-bit payload length with the top bit set")
                if length < 65536:
                    raise ProtocolError("non-minimal 64-bit payload length")
                header_size = 10
            if masked:
                if end - pos < header_size + 4:
                    break
                mask: bytes | None = bytes(data[pos + header_size : pos + header_size + 4])
                header_size += 4
            else:
                mask = None

            if is_control:
                if end - pos < header_size + length:
                    break
                start = pos + header_size
                payload = data[start : start + length]
                if mask is not None:
                    payload = apply_mask(payload, mask)
                pos = start + length
                self.frames_received += 1
                self.control_frames_received += 1
                self._handle_control(opcode, bytes(payload), events)
                if self._discarding:
                    return end
                continue

            # A data frame header is complete: check it before reading any payload.
            if opcode == _OP_CONTINUATION:
                if self._msg_opcode is None:
                    raise ProtocolError("continuation frame without a message in progress")
            elif self._msg_opcode is not None:
                raise ProtocolError("new data frame while a fragmented message is in progress")
            compressed = self._msg_compressed if opcode == _OP_CONTINUATION else bool(rsv1)
            frame_limit = self.max_frame_size
            if compressed:
                # Deflate may grow incompressible data a little (stored blocks):
                # a message of exactly the limit must still fit in one frame.
                frame_limit += (frame_limit >> 10) + 64
            if length > frame_limit:
                raise MessageTooBig(f"frame of {length} bytes exceeds the {self.max_frame_size}-byte limit")
            if not compressed and self._msg_size + length > self.max_message_size:
                raise MessageTooBig(f"message exceeds the {self.max_message_size}-byte limit")
            pos += header_size
            self.frames_received += 1

            if opcode != _OP_CONTINUATION:
                if fin and end - pos >= length:
                    # The common case: a whole single-frame message in hand.
                    payload = data[pos : pos + length]
                    pos += length
                    if mask is not None:
                        payload = apply_mask(payload, mask)
                    if compressed:
                        payload = self._inflate(payload, final=True)
                    if opcode == _OP_TEXT:
                        events.append(TextMessage(str(payload, "utf-8")))
                    else:
                        events.append(BinaryMessage(bytes(payload)))
                    continue
                self._start_message(opcode, compressed)
            if length:
                self._frame_remaining = length
                self._frame_mask = mask
                self._frame_offset = 0
                self._frame_fin = bool(fin)
            elif fin:
                self._finish_message(events)
        return pos

    def _start_message(self, opcode: int, compressed: bool) -> None:
        self._msg_opcode = opcode
        self._msg_compressed = compressed
        self._msg_size = 0
        if opcode == _OP_TEXT:
            self._msg_text = io.StringIO()
            self._msg_decoder = _new_utf8_decoder()
        else:
            self._msg_binary = bytearray()

    def _add_to_message(self, chunk: bytes) -> None:
        if self._msg_compressed:
            chunk = self._inflate(chunk, final=False)
        self._add_decompressed(chunk)

    def _finish_message(self, events: list[Event]) -> None:
        if self._msg_compressed:
            tail = self._inflate(b"", final=True)
            if tail:
                self._add_decompressed(tail)
        if self._msg_text is not None:
            self._msg_text.write(self._msg_decoder.decode(b"", True))  # type: ignore[union-attr]
            events.append(TextMessage(self._msg_text.getvalue()))
        else:
            events.append(BinaryMessage(bytes(self._msg_binary)))  # type: ignore[arg-type]
        self._drop_message()

    def _inflate(self, chunk: bytes, *, final: bool) -> bytes:
        """Decompress a piece of the current message within what the limit leaves of it."""
        try:
            return self._deflate.decompress(  # type: ignore[union-attr,no-any-return]
                chunk, final=final, max_size=self.max_message_size - self._msg_size
            )
        except MessageTooBig:
            # The codec only knows the room left, which depends on how TCP
            # chunked the message: name the limit, so the close frame doesn't.
            raise MessageTooBig(f"message exceeds the {self.max_message_size}-byte limit") from None

    def _add_decompressed(self, chunk: bytes) -> None:
        self._msg_size += len(chunk)
        if self._msg_text is not None:
            self._msg_text.write(self._msg_decoder.decode(chunk))  # type: ignore[union-attr]
        else:
            self._msg_binary += chunk  # type: ignore[operator]

    def _drop_message(self) -> None:
        self._msg_opcode = None
        self._msg_compressed = False
        self._msg_size = 0
        self._msg_binary = None
        self._msg_text = None
        self._msg_decoder = None

    def _handle_control(self, opcode: int, payload: bytes, events: list[Event]) -> None:
        if opcode == _OP_PING:
            if self.state is State.OPEN:
                self._out.append(self._encode(_OP_PONG, payload))
            events.append(Ping(payload))
        elif opcode == _OP_PONG:
            events.append(Pong(payload))
        else:
            code, reason = parse_close_payload(payload)
            self.close_code_received = code
            self.close_reason_received = reason
            if self.state is State.OPEN:
                # Echo the code (§5.5.1); no code received means no code sent back.
                echo = None if code == CloseCode.NO_STATUS_RCVD else code
                self._out.append(self._encode(_OP_CLOSE, encode_close_payload(echo)))
                self.close_code_sent = code
            self.state = State.CLOSED
            self._discarding = True
            self._drop_message()
            events.append(CloseReceived(code, reason))

    def _fail_with(self, error: ProtocolError, events: list[Event]) -> None:
        self.failure = error
        code = int(error.close_code)
        reason = _truncate_reason(error.reason)
        if self.state is State.OPEN:
            self._out.append(self._encode(_OP_CLOSE, encode_close_payload(code, reason)))
            self.close_code_sent = code
        self.state = State.CLOSED
        self._discarding = True
        self._buf = b""
        self._frame_remaining = 0
        self._drop_message()
        events.append(ConnectionFailed(code, reason, error))

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        """Return and forget the bytes queued for the wire."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def send_text(self, text: str) -> None:
        self._send_message(_OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        self._send_message(_OP_BINARY, bytes(data))

    def send_ping(self, payload: bytes = b"") -> None:
        self._check_open()
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("a ping payload is at most 125 bytes")
        self._out.append(self._encode(_OP_PING, bytes(payload)))

    def send_pong(self, payload: bytes = b"") -> None:
        self._check_open()
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError("a pong payload is at most 125 bytes")
        self._out.append(self._encode(_OP_PONG, bytes(payload)))

    def send_close(self, code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; the peer's close frame completes it."""
        self._check_open()
        self._out.append(self._encode(_OP_CLOSE, encode_close_payload(code, reason)))
        self.close_code_sent = CloseCode.NO_STATUS_RCVD if code is None else code
        self.state = State.CLOSING

    def fail(self, code: int, reason: str = "") -> None:
        """Close at once with ``code`` without waiting for the peer; discard what follows."""
        if self.state is State.OPEN:
            self._out.append(self._encode(_OP_CLOSE, encode_close_payload(code, _truncate_reason(reason))))
            self.close_code_sent = code
        self.state = State.CLOSED
        self._discarding = True
        self._buf = b""
        self._drop_message()

    def close_expected(self) -> bool:
        """Whether TCP should now be closed: both close frames exchanged, or failed."""
        return self.state is State.CLOSED

    def encode_message(self, text_or_bytes: str | bytes, *, compress: bool | None = None) -> bytes:
        """Return the frames of one message for this connection without queuing them.

        ``compress=None`` applies the connection's compression rules. The
        bytes are queued with :meth:`queue_encoded`; splitting the two lets a
        caller encode once and queue the same bytes on many connections.
        """
        if isinstance(text_or_bytes, str):
            opcode, payload = _OP_TEXT, text_or_bytes.encode("utf-8")
        else:
            opcode, payload = _OP_BINARY, bytes(text_or_bytes)
        rsv1 = False
        if self._deflate is not None and (
            compress if compress is not None else len(payload) >= self.compression_threshold
        ):
            payload = self._deflate.compress(payload)  # type: ignore[attr-defined]
            rsv1 = True
        return self._encode_fragments(opcode, payload, rsv1)

    def queue_encoded(self, frames: bytes) -> None:
        """Queue frames built by :meth:`encode_message` (or an equivalent connection's)."""
        self._check_open()
        self._out.append(frames)

    def _send_message(self, opcode: int, payload: bytes) -> None:
        self._check_open()
        rsv1 = False
        if self._deflate is not None and len(payload) >= self.compression_threshold:
            payload = self._deflate.compress(payload)  # type: ignore[attr-defined]
            rsv1 = True
        self._out.append(self._encode_fragments(opcode, payload, rsv1))

    def _encode_fragments(self, opcode: int, payload: bytes, rsv1: bool) -> bytes:
        size = self.fragment_size
        if size is None or len(payload) <= size:
            return self._encode(opcode, payload, rsv1=rsv1)
        pieces = []
        for start in range(0, len(payload), size):
            last = start + size >= len(payload)
            pieces.append(
                self._encode(
                    opcode if start == 0 else _OP_CONTINUATION,
                    payload[start : start + size],
                    fin=last,
                    rsv1=rsv1 and start == 0,
                )
            )
        return b"".join(pieces)

    def _encode(self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
        mask = None if self._expect_mask else self._mask_source()
        return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            code = self.close_code_received or self.close_code_sent or CloseCode.ABNORMAL_CLOSURE
            raise ConnectionClosed(code, self.close_reason_received)


def _truncate_reason(reason: str) -> str:
    """Cut a reason to fit a close frame (123 bytes of UTF-8) on a character boundary."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= MAX_CONTROL_PAYLOAD - 2:
        return reason
    return encoded[: MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore")


# The bound the parser keeps: the message in progress, plus at most one
# incomplete frame header or one control frame in the input buffer.
MAX_UNPARSED_INPUT = MAX_HEADER_SIZE + MAX_CONTROL_PAYLOAD
__all__ += ["MAX_UNPARSED_INPUT"]
