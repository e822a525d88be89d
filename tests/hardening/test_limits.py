"""The pieces the server's limits are made of, with explicit clocks: token bucket, quotas, log throttling."""

from __future__ import annotations

import logging

import pytest

from django_rawws.protocol.codes import Opcode
from django_rawws.protocol.connection import Connection
from django_rawws.protocol.frames import encode_frame
from django_rawws.server.limits import (
    QuotaTable,
    TokenBucket,
    ViolationLog,
    address_key,
    in_networks,
    parse_networks,
)

MASK = b"\x01\x02\x03\x04"


# ---------------------------------------------------------------- the bucket


def test_bucket_starts_full_and_lets_exactly_the_burst_through_at_once() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.charge(1, 0.0) for _ in range(5)] == [5, 4, 3, 2, 1]
    assert bucket.charge(1, 0.0) == 0  # the sixth finds nothing left: over the limit
    assert bucket.tokens == -1


def test_bucket_refills_at_its_rate_and_never_above_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    bucket.charge(5, 0.0)
    assert bucket.charge(0, 0.3) == pytest.approx(3.0)
    assert bucket.charge(0, 100.0) == 5


def test_time_paused_by_backpressure_is_credited_beyond_the_burst() -> None:
    """A client within its rate is not charged for what piled up while the server did not read."""
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    bucket.charge(5, 0.0)
    bucket.pause(0.0)
    bucket.resume(2.0)  # 2 s paused: 20 messages' worth, though the burst is 5
    assert bucket.charge(20, 2.0) == pytest.approx(20.0)
    assert bucket.charge(1, 2.0) == pytest.approx(0.0)


def test_a_credited_balance_is_not_cut_back_to_the_burst_by_the_next_refill() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    bucket.pause(0.0)
    bucket.resume(1.0)
    assert bucket.charge(0, 1.5) == pytest.approx(15.0)


# ------------------------------------------------------------------- quotas


def test_quota_refuses_past_its_limit_and_gives_slots_back() -> None:
    quotas = QuotaTable()
    assert [quotas.claim("addr:192.0.2.1", 2) for _ in range(3)] == [True, True, False]
    assert quotas.claim("addr:192.0.2.2", 2) is True  # another key, its own slots
    quotas.release("addr:192.0.2.1")
    assert quotas.claim("addr:192.0.2.1", 2) is True
    for key in ("addr:192.0.2.1", "addr:192.0.2.1", "addr:192.0.2.2"):
        quotas.release(key)
    assert len(quotas) == 0  # no key left behind once every slot is back


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "addr:192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "addr:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "addr:2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "addr:2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "addr:192.0.2.7"),
        ("fe80::1%eth0", "addr:fe80::/64"),
        ("/run/rawws.sock", "addr:/run/rawws.sock"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address(host: str, key: str) -> None:
    assert address_key(host) == key


def test_exempt_networks_match_addresses_and_skip_bad_entries() -> None:
    networks = parse_networks(["127.0.0.0/8", "not a network", "10.0.0.1", "::1/128"])
    assert len(networks) == 3
    assert in_networks("127.0.0.53", networks)
    assert in_networks("::ffff:10.0.0.1", networks)
    assert in_networks("::1", networks)
    assert not in_networks("10.0.0.2", networks)
    assert not in_networks("a unix socket", networks)


# ------------------------------------------------------------ log throttling


def test_a_violation_is_logged_once_per_client_per_window_with_the_count_of_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ViolationLog(logging.getLogger("tests.hardening.violations"), window=60.0)
    with caplog.at_level(logging.WARNING, "tests.hardening.violations"):
        assert log.log("rate", "addr:192.0.2.1", "client %s", "one") is True
        assert [log.log("rate", "addr:192.0.2.1", "client %s", "one") for _ in range(50)] == [False] * 50
        assert log.log("rate", "addr:192.0.2.2", "client %s", "two") is True  # another client
        assert log.log("quota", "addr:192.0.2.1", "quota %s", "one") is True  # another kind
        log._seen[("rate", "addr:192.0.2.1")][0] -= 61  # the window is over
        assert log.log("rate", "addr:192.0.2.1", "client %s", "one") is True
    assert [record.getMessage() for record in caplog.records] == [
        "client one",
        "client two",
        "quota one",
        "client one (50 more since the last report)",
    ]


def test_the_violation_table_stays_bounded() -> None:
    log = ViolationLog(logging.getLogger("tests.hardening.violations"), window=60.0, max_entries=100)
    logging.getLogger("tests.hardening.violations").disabled = True
    try:
        for index in range(1000):
            log.log("rate", f"addr:{index}", "x")
    finally:
        logging.getLogger("tests.hardening.violations").disabled = False
    assert len(log._seen) <= 100


# ------------------------------------------------------ what the parser counts


def test_the_parser_counts_every_frame_and_the_control_frames_among_them() -> None:
    """What the rate limit charges: fragments and pings complete no message, yet are counted."""
    proto = Connection()
    data = (
        encode_frame(Opcode.TEXT, b"a", fin=False, mask=MASK)
        + encode_frame(Opcode.CONTINUATION, b"", fin=False, mask=MASK) * 3
        + encode_frame(Opcode.PING, b"", mask=MASK)
        + encode_frame(Opcode.CONTINUATION, b"b", mask=MASK)
        + encode_frame(Opcode.PONG, b"", mask=MASK)
    )
    # One byte at a time: a frame is counted once, when its header is complete.
    for index in range(len(data)):
        proto.receive_data(data[index : index + 1])
    assert (proto.frames_received, proto.control_frames_received) == (7, 2)
