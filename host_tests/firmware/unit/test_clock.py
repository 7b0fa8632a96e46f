"""rmnode.clock: SNTP replies (RFC 4330) checked field by field, eras, and the retry loop of ensure()."""

import struct
import sys

if sys.implementation.name == "micropython" and ".frozen" not in sys.path:
    sys.path.append(".frozen")  # the runner's MICROPYPATH drops the frozen asyncio package

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode import clock
from fwtest import raises, check, equal

NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08"
NTP_2026 = 3973276800  # 2025-11-28 00:00:00 UTC in NTP seconds (era 0)


def reply(seconds=NTP_2026, fraction=0, flags=0x24, stratum=2, originate=NONCE):
    """A server reply: LI 0, version 4, mode 4 unless `flags` says otherwise."""
    return (bytes([flags, stratum, 6, 0xEC]) + bytes(20) + originate + bytes(8)
            + struct.pack(">II", seconds, fraction))


def test_request_is_a_version_4_client_packet_carrying_the_nonce():
    packet = clock.request_packet(NONCE)
    equal(len(packet), 48, "length")
    equal(packet[0], 0x23, "LI 0, VN 4, mode 3")
    equal(packet[40:48], NONCE, "transmit timestamp")


def test_reply_gives_unix_seconds_rounded_by_the_fraction():
    equal(clock.parse_reply(reply(), NONCE), NTP_2026 - 2208988800, "seconds")
    equal(clock.parse_reply(reply(fraction=0x80000000), NONCE), NTP_2026 - 2208988800 + 1, "rounded up")


def test_after_2036_the_seconds_wrap_into_era_1():
    unix_2040 = 2208988800  # 2040-01-01 00:00:00 UTC (1970-2040 has as many leap days as 1900-1970)
    ntp_era1 = (unix_2040 + 2208988800) % 4294967296
    check(ntp_era1 < 0x80000000, "era 1 value has its top bit clear")
    equal(clock.parse_reply(reply(seconds=ntp_era1), NONCE), unix_2040, "2040")


def test_replies_that_cannot_be_trusted_are_refused():
    cases = (
        (reply()[:47], "47 bytes"),
        (reply(flags=0x23), "mode 3 (a client request)"),
        (reply(flags=0xE4), "leap indicator 3 (unsynchronised)"),
        (reply(stratum=0), "kiss-o'-death"),
        (reply(stratum=16), "stratum 16"),
        (reply(originate=b"\x00" * 8), "another request's answer"),
        (reply(seconds=0), "no transmit time"),
    )
    for data, what in cases:
        raises(clock.ClockError, clock.parse_reply, data, NONCE)


def test_ensure_returns_at_once_when_the_clock_is_plausible():
    # the host's clock (CPython, unix port) is past the build date: no SNTP traffic at all
    check(clock.plausible(), "host clock is after BUILD_DATE")
    def never(seconds):
        raise AssertionError("the clock was set although it was plausible")

    asyncio.run(clock.ensure("192.0.2.1", 9, set_clock=never))


def test_ensure_retries_until_an_answer_sets_the_clock():
    answers = [clock.ClockError("no SNTP answer within 5 ms"), OSError(113), 1796000000]
    asked, set_to, plausible = [], [], [False]

    async def fake_query(host, port, timeout_ms):
        asked.append((host, port))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def fake_set(seconds):
        set_to.append(seconds)
        plausible[0] = True

    real_query, real_plausible = clock.query, clock.plausible
    clock.query, clock.plausible = fake_query, lambda: plausible[0]
    try:
        asyncio.run(clock.ensure("time.test", 1123, backoff_ms=(1, 2), set_clock=fake_set))
    finally:
        clock.query, clock.plausible = real_query, real_plausible
    equal(asked, [("time.test", 1123)] * 3, "asked until answered")
    equal(set_to, [1796000000], "clock set once")
