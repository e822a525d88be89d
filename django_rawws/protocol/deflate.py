"""permessage-deflate (RFC 7692): negotiation and the per-message codec.

Two halves, both sans-I/O:

* negotiation: ``negotiate`` (server role) picks the first acceptable offer
  from an already-parsed ``Sec-WebSocket-Extensions`` header and returns the
  answer; ``client_offer`` / ``accept_answer`` do the client role's half;
* ``PerMessageDeflate``: compresses whole outgoing messages and inflates
  incoming ones piece by piece, with the output bounded *while* inflating so
  that a zip bomb costs at most ``max_size`` bytes, never its inflated size.

Memory per connection, measured with tracemalloc over 200 objects (CPython
3.11, zlib 1.2.13; CPython's zlib allocates through PyMem_RawMalloc, which
tracemalloc sees; RSS grows less until the pages are touched):

* a compressor with wbits 12 and memLevel 5 holds about 38 KiB (zlib's own
  defaults, wbits 15 and memLevel 8, about 262 KiB);
* an inflater holds about 7 KiB of state, plus a window of ``2**wbits`` bytes
  that zlib allocates on its first output: about 11 KiB in all at wbits 12,
  39 KiB at wbits 15.

Hence both objects are created on first use, never in ``__init__``, and the
object of a direction without context takeover is dropped at the end of each
message, so an idle connection holds no zlib memory for that direction. With
the project defaults (server without context takeover, client window not
capped) an idle connection keeps only the inflater of a client that keeps its
context: about 39 KiB, or 11 KiB with ``client_max_window_bits=12``. The price
of a fresh compressor per message is small: creating one takes about 0.3 us.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from ..exceptions import InvalidResponse, MessageTooBig, ProtocolError

__all__ = [
    "EXTENSION_NAME",
    "DeflateOptions",
    "DeflateParams",
    "PerMessageDeflate",
    "accept_answer",
    "client_offer",
    "compress_once",
    "negotiate",
]

EXTENSION_NAME = "permessage-deflate"

# Parsed extension header: [(name, [(param, value or None), ...]), ...].
ExtensionParams = Sequence[tuple[str, str | None]]
Extensions = Sequence[tuple[str, ExtensionParams]]
BytesLike = bytes | bytearray | memoryview

_SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
_CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
_SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
_CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"
_KNOWN_PARAMS = frozenset(
    {_SERVER_NO_CONTEXT_TAKEOVER, _CLIENT_NO_CONTEXT_TAKEOVER, _SERVER_MAX_WINDOW_BITS, _CLIENT_MAX_WINDOW_BITS}
)

# §7.1.2.1: "a decimal integer value without leading zeroes between 8 to 15".
_WINDOW_BITS_VALUES = {str(bits): bits for bits in range(8, 16)}
_DEFAULT_WINDOW_BITS = 15

# zlib refuses a raw deflate stream with an 8-bit window (deflateInit2 returns
# Z_STREAM_ERROR; with a zlib header it silently uses 9). The smallest window
# we can compress with is therefore 9.
_MIN_COMPRESS_WINDOW_BITS = 9

# §7.2.1: a message compressed with a sync flush ends with an empty stored
# block, 00 00 ff ff, which the sender removes and the receiver puts back.
_EMPTY_BLOCK_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class DeflateOptions:
    """What our side is willing to do; the project defaults live here.

    The fields are named after the RFC 7692 parameters and mean the same in
    both roles: ``server_*`` describes the server's compressor, ``client_*``
    the client's. The server role uses them to shape its answer; the client
    role (our test client) to build its offer: there, ``server_max_window_bits``
    is the cap asked of the server (not offered when 15),
    ``client_max_window_bits`` the window we compress with (``None``: offer the
    parameter without a value and compress with 15 unless the server caps it),
    and the two ``*_no_context_takeover`` flags are offered when set.
    """

    enabled: bool = True
    #: Window the server compresses with; a smaller cap asked by the client
    #: wins. 9..15: zlib can't compress with 8 (see _MIN_COMPRESS_WINDOW_BITS).
    server_max_window_bits: int = 12
    #: Cap asked of the client when it offers ``client_max_window_bits``;
    #: ``None`` asks nothing (the client compresses with up to 15).
    client_max_window_bits: int | None = None
    #: The server resets its compressor per message, so one compressed frame
    #: can be shared by every connection with the same encoding (broadcast),
    #: and an idle connection holds no compressor. False keeps context
    #: takeover: a better ratio on similar messages, compressed per connection.
    server_no_context_takeover: bool = True
    #: Ask the client to reset per message. It doesn't shrink the window we
    #: inflate with, but lets us drop the inflater between messages.
    client_no_context_takeover: bool = False
    #: Sizes zlib's hash table and symbol buffer: 5 instead of zlib's 8 takes
    #: the compressor from ~150 KiB to ~38 KiB at wbits 12, with the same
    #: ratio (to 0.01%) on the chat-like messages measured below.
    mem_level: int = 5
    #: zlib's own default. Measured on 125 chat-like JSON messages of ~340 bytes
    #: (wbits 12, memLevel 5): with context takeover level 1 gives 23.0% of the
    #: size at 5.5 us/message, 6 gives 19.7% at 6.5 us, 9 gives 19.6% at 7.4 us;
    #: without context takeover all levels land at ~63%. 6 is the knee.
    compress_level: int = 6

    def __post_init__(self) -> None:
        if not _MIN_COMPRESS_WINDOW_BITS <= self.server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 9 and 15 (zlib can't compress with 8)")
        if self.client_max_window_bits is not None and not 8 <= self.client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be None or between 8 and 15")
        if not 1 <= self.mem_level <= 9:
            raise ValueError("mem_level must be between 1 and 9")
        if not 0 <= self.compress_level <= 9:
            raise ValueError("compress_level must be between 0 and 9")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The negotiated agreement, seen from neither side.

    The window bits are those each side's compressor may use (15 when not
    limited); the receiving side inflates with at least that window.
    """

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int


@dataclass(slots=True)
class _Offer:
    """The parameters of one element of the header, validated."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    # True: present without a value (only valid in an offer).
    client_max_window_bits: int | bool | None = None


def _parse_params(params: ExtensionParams, *, value_optional_for_client_bits: bool) -> _Offer | None:
    """Return the validated parameters, or None for an unknown, duplicated or invalid one (§7.1)."""
    offer = _Offer()
    seen: set[str] = set()
    for raw_name, value in params:
        name = raw_name.lower()
        if name not in _KNOWN_PARAMS or name in seen:
            return None
        seen.add(name)
        if name == _SERVER_NO_CONTEXT_TAKEOVER or name == _CLIENT_NO_CONTEXT_TAKEOVER:
            if value is not None:
                return None
            setattr(offer, name, True)
            continue
        if value is None:
            if name == _CLIENT_MAX_WINDOW_BITS and value_optional_for_client_bits:
                offer.client_max_window_bits = True
                continue
            return None
        bits = _WINDOW_BITS_VALUES.get(value)
        if bits is None:
            return None
        setattr(offer, name, bits)
    return offer


def _answer(params: list[str]) -> str:
    return "; ".join([EXTENSION_NAME, *params])


def negotiate(offers: Extensions, options: DeflateOptions) -> tuple[str, DeflateParams] | None:
    """Server role: accept the first permessage-deflate offer we can honour.

    Returns the element to put in the response's ``Sec-WebSocket-Extensions``
    and the negotiated parameters, or None when nothing is acceptable or
    ``options.enabled`` is false. An offer we must decline (unknown,
    duplicated or invalid parameter, §7; ``server_max_window_bits=8``) is
    skipped, not fatal: offers come in the client's order of preference and a
    fallback may follow (§5).
    """
    if not options.enabled:
        return None
    for name, params in offers:
        if name.lower() != EXTENSION_NAME:
            continue
        offer = _parse_params(params, value_optional_for_client_bits=True)
        if offer is None:
            continue
        accepted = _accept_offer(offer, options)
        if accepted is not None:
            return accepted
    return None


def _accept_offer(offer: _Offer, options: DeflateOptions) -> tuple[str, DeflateParams] | None:
    answer: list[str] = []

    # §7.1.1.1: if the client asks, we must reset (we may also choose to).
    server_nct = offer.server_no_context_takeover or options.server_no_context_takeover
    if server_nct:
        answer.append(_SERVER_NO_CONTEXT_TAKEOVER)

    # §7.1.1.2: the client's flag is only a hint; the answer makes it binding.
    client_nct = offer.client_no_context_takeover or options.client_no_context_takeover
    if client_nct:
        answer.append(_CLIENT_NO_CONTEXT_TAKEOVER)

    # §7.1.2.1: accepting a cap means answering with the same or a smaller
    # value; without one we may still declare our (smaller) window.
    if offer.server_max_window_bits is not None:
        if offer.server_max_window_bits < _MIN_COMPRESS_WINDOW_BITS:
            return None  # =8: zlib would use 9, which the client can't decode.
        server_bits = min(offer.server_max_window_bits, options.server_max_window_bits)
        answer.append(f"{_SERVER_MAX_WINDOW_BITS}={server_bits}")
    else:
        server_bits = options.server_max_window_bits
        if server_bits != _DEFAULT_WINDOW_BITS:
            answer.append(f"{_SERVER_MAX_WINDOW_BITS}={server_bits}")

    # §7.1.2.2: we may cap the client only if it offered the parameter, and
    # not above a value it offered; a value it offered binds it even if we
    # don't repeat it. Without the parameter the client may use 15.
    cap = options.client_max_window_bits
    if offer.client_max_window_bits is None:
        client_bits = _DEFAULT_WINDOW_BITS
    elif offer.client_max_window_bits is True:
        client_bits = _DEFAULT_WINDOW_BITS if cap is None else cap
        if cap is not None:
            answer.append(f"{_CLIENT_MAX_WINDOW_BITS}={cap}")
    else:
        client_bits = offer.client_max_window_bits
        if cap is not None and cap < client_bits:
            client_bits = cap
            answer.append(f"{_CLIENT_MAX_WINDOW_BITS}={cap}")

    params = DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )
    return _answer(answer), params


def client_offer(options: DeflateOptions) -> str:
    """Client role: the ``Sec-WebSocket-Extensions`` value to offer.

    ``client_max_window_bits`` is always offered (with our window when set)
    so that the server may cap our compressor.
    """
    offer: list[str] = []
    if options.server_no_context_takeover:
        offer.append(_SERVER_NO_CONTEXT_TAKEOVER)
    if options.client_no_context_takeover:
        offer.append(_CLIENT_NO_CONTEXT_TAKEOVER)
    if options.server_max_window_bits != _DEFAULT_WINDOW_BITS:
        offer.append(f"{_SERVER_MAX_WINDOW_BITS}={options.server_max_window_bits}")
    if options.client_max_window_bits is None:
        offer.append(_CLIENT_MAX_WINDOW_BITS)
    elif options.client_max_window_bits < _MIN_COMPRESS_WINDOW_BITS:
        raise ValueError("the client role can't compress with an 8-bit window")
    else:
        offer.append(f"{_CLIENT_MAX_WINDOW_BITS}={options.client_max_window_bits}")
    return _answer(offer)


def accept_answer(
    answer: Extensions | tuple[str, ExtensionParams],
    options: DeflateOptions,
) -> DeflateParams:
    """Client role: check the server's answer to ``client_offer(options)``.

    ``answer`` is the parsed ``Sec-WebSocket-Extensions`` of the response
    (a list of ``(name, params)``; a single ``(name, params)`` is accepted
    too). It must hold exactly one permessage-deflate element, since that is
    all we offered (RFC 6455 §9.1), with parameters that honour our offer
    (RFC 7692 §7.1). Raises InvalidResponse otherwise.
    """
    elements: list[tuple[str, ExtensionParams]]
    if len(answer) == 2 and isinstance(answer[0], str):
        elements = [cast("tuple[str, ExtensionParams]", answer)]
    else:
        elements = list(cast("Extensions", answer))
    if len(elements) != 1:
        raise InvalidResponse(f"expected one {EXTENSION_NAME} extension, got {len(elements)}")
    name, raw_params = elements[0]
    if name.lower() != EXTENSION_NAME:
        raise InvalidResponse(f"unexpected extension {name!r}")
    parsed = _parse_params(raw_params, value_optional_for_client_bits=False)
    if parsed is None:
        raise InvalidResponse(f"invalid {EXTENSION_NAME} parameters in the response")

    if options.server_no_context_takeover and not parsed.server_no_context_takeover:
        raise InvalidResponse(f"the server ignored {_SERVER_NO_CONTEXT_TAKEOVER}")

    # We offered a cap only below 15 (see client_offer).
    server_bits = parsed.server_max_window_bits
    asked = options.server_max_window_bits
    if asked != _DEFAULT_WINDOW_BITS:
        if server_bits is None:
            raise InvalidResponse(f"the server ignored {_SERVER_MAX_WINDOW_BITS}={asked}")
        if server_bits > asked:
            raise InvalidResponse(f"{_SERVER_MAX_WINDOW_BITS}={server_bits} is above the {asked} we offered")
    if server_bits is None:
        server_bits = _DEFAULT_WINDOW_BITS

    client_bits = parsed.client_max_window_bits
    ours = options.client_max_window_bits
    if client_bits is None:
        client_bits = _DEFAULT_WINDOW_BITS if ours is None else ours
    elif ours is not None and client_bits > ours:
        raise InvalidResponse(f"{_CLIENT_MAX_WINDOW_BITS}={client_bits} is above the {ours} we offered")
    if client_bits < _MIN_COMPRESS_WINDOW_BITS:
        raise InvalidResponse(f"can't compress with {_CLIENT_MAX_WINDOW_BITS}={client_bits}")

    return DeflateParams(
        server_no_context_takeover=parsed.server_no_context_takeover,
        # Having offered it, we keep our word even if the server didn't echo it.
        client_no_context_takeover=parsed.client_no_context_takeover or options.client_no_context_takeover,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )


def compress_once(data: BytesLike, *, window_bits: int, mem_level: int, compress_level: int) -> bytes:
    """Compress one message with a fresh compressor, trailing 00 00 ff ff removed.

    This is exactly what every connection without context takeover and the
    same (window bits, mem_level, level) sends, so a broadcast compresses a
    message once per encoding and shares the bytes.
    """
    compressor = zlib.compressobj(compress_level, zlib.DEFLATED, -window_bits, mem_level)
    return _strip_tail(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))


def _strip_tail(data: bytes) -> bytes:
    # A sync flush always ends with the empty stored block (§7.2.1). For an
    # empty message zlib's flush yields 00 00 00 ff ff, so what remains is the
    # single 0x00 of §7.2.3.6, never an empty payload (which, with the tail
    # put back, would be an incomplete block that desynchronises the peer).
    if data.endswith(_EMPTY_BLOCK_TAIL):
        return data[:-4]
    return data  # pragma: no cover - zlib's sync flush always ends with the tail


class PerMessageDeflate:
    """The codec of one connection, once permessage-deflate is negotiated.

    ``compress`` takes whole messages (the connection sends the result as one
    frame with RSV1, or fragments it itself); ``decompress`` takes the
    payloads of the frames of a compressed message, in as many pieces as the
    caller likes. Not thread-safe: the connection calls it under its lock.
    """

    __slots__ = (
        "_compress_bits",
        "_compress_level",
        "_compressor",
        "_decompressor",
        "_inflate_bits",
        "_local_no_context_takeover",
        "_mem_level",
        "_message_started",
        "_remote_no_context_takeover",
    )

    def __init__(
        self,
        params: DeflateParams,
        *,
        is_server: bool,
        mem_level: int = 5,
        compress_level: int = 6,
    ) -> None:
        if is_server:
            local_bits, remote_bits = params.server_max_window_bits, params.client_max_window_bits
            local_nct, remote_nct = params.server_no_context_takeover, params.client_no_context_takeover
        else:
            local_bits, remote_bits = params.client_max_window_bits, params.server_max_window_bits
            local_nct, remote_nct = params.client_no_context_takeover, params.server_no_context_takeover
        if not _MIN_COMPRESS_WINDOW_BITS <= local_bits <= 15:
            raise ValueError(f"can't compress with a window of {local_bits} bits")
        self._compress_bits = local_bits
        # Inflating with a larger window than the compressor used is always
        # safe. max(bits, 9) rather than 15 keeps the window small, and covers
        # peers whose zlib was asked for 8 and silently compressed with 9.
        self._inflate_bits = max(remote_bits, _MIN_COMPRESS_WINDOW_BITS)
        self._local_no_context_takeover = local_nct
        self._remote_no_context_takeover = remote_nct
        self._mem_level = mem_level
        self._compress_level = compress_level
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        # Whether decompress() has seen bytes of the current message.
        self._message_started = False

    @property
    def shareable(self) -> bool:
        """Whether our compressed bytes are the same for every connection with our encoding_key."""
        return self._local_no_context_takeover

    @property
    def encoding_key(self) -> tuple[int, int, int] | None:
        """(window bits, mem_level, level) when shareable, else None: the broadcast cache key."""
        if not self._local_no_context_takeover:
            return None
        return (self._compress_bits, self._mem_level, self._compress_level)

    def compress(self, data: BytesLike) -> bytes:
        """Compress one whole outgoing message into the payload of its RSV1 frame.

        The trailing 00 00 ff ff is removed (§7.2.1). Without context takeover
        on our side a fresh compressor is used and dropped, so nothing is kept
        between messages.
        """
        if self._local_no_context_takeover:
            return compress_once(
                data,
                window_bits=self._compress_bits,
                mem_level=self._mem_level,
                compress_level=self._compress_level,
            )
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                self._compress_level, zlib.DEFLATED, -self._compress_bits, self._mem_level
            )
        return _strip_tail(compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))

    def decompress(self, fragment: BytesLike, *, final: bool, max_size: int) -> bytes:
        """Inflate one piece of an incoming compressed message.

        ``final`` marks the last piece: 00 00 ff ff is put back before
        inflating (§7.2.2). ``max_size`` is how many bytes the message may
        still grow by; output is capped at ``max_size + 1`` inside zlib (the
        rest of the input stays in ``unconsumed_tail``) so that a zip bomb
        stops at the limit. Pieces may split the data anywhere.

        Raises MessageTooBig (1009) past ``max_size`` and ProtocolError (1002)
        for data that isn't valid DEFLATE. After either, the inflater is
        dropped: the connection is failing.
        """
        if final and not fragment and not self._message_started:
            # An empty payload is how some peers send an empty message; with
            # the tail put back it would be an incomplete stored block.
            self._end_message()
            return b""
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._inflate_bits)
        if fragment:
            self._message_started = True
        data = b"".join((fragment, _EMPTY_BLOCK_TAIL)) if final else fragment
        # max_length=0 would mean "no limit": ask for one byte more than
        # allowed, so that reaching exactly max_size is told apart from more.
        limit = max(max_size, 0) + 1
        try:
            output = decompressor.decompress(data, limit)
        except zlib.error:
            self._drop_decompressor()
            raise ProtocolError("invalid compressed data") from None
        if len(output) >= limit:
            # Input may remain in unconsumed_tail: it is never inflated.
            self._drop_decompressor()
            raise MessageTooBig(f"decompressed message over {max_size} bytes")
        if decompressor.eof:
            # A block with BFINAL set ended the stream (§7.2.3.3). Only the
            # tail we appended may follow it; the next message needs a fresh
            # inflater, since the peer's compressor was reset too.
            if decompressor.unused_data != (_EMPTY_BLOCK_TAIL if final else b""):
                self._drop_decompressor()
                raise ProtocolError("invalid compressed data")
            if final:
                self._decompressor = None
        if final:
            self._end_message()
        return output

    def _end_message(self) -> None:
        self._message_started = False
        if self._remote_no_context_takeover:
            self._decompressor = None

    def _drop_decompressor(self) -> None:
        self._decompressor = None
        self._message_started = False
