"""The wall clock for TLS: set the RTC by SNTP before the first handshake.

An ESP32's RTC reads 2000-01-01 after power-on, and the ESP32 port's mbedtls checks certificate
validity dates (since MicroPython v1.22), so a handshake before the clock is set fails with "The
certificate validity starts in the future". `ensure()` returns at once when the clock is plausible
(not before the firmware's build date, e.g. after a soft reset, which keeps the RTC) and otherwise
asks an SNTP server (RFC 4330) until it answers, with growing delays and a log line each time.

Works with either epoch: the ESP32 port counts time.time() from 2000, the unix port and CPython
from 1970; only gmtime() and machine.RTC are used to set and read the date.
"""

import errno
import os
import socket
import struct
import time

from rmnode import BUILD_DATE, log
from rmnode.log import ticks_diff, ticks_ms
from rmnode.mqtt import backoff_delay, describe, sleep_ms

_TAG = "clock"
_NTP_TO_UNIX = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01
_ERA = 4294967296  # NTP seconds wrap at 2**32 (7 February 2036)
_POLL_MS = 20


class ClockError(ValueError):
    """An SNTP answer that cannot be trusted, or none at all."""


def plausible():
    """True when the clock is not before the firmware's build date."""
    return tuple(time.gmtime()[:3]) >= BUILD_DATE


def request_packet(nonce):
    """A 48-byte SNTP client request (LI 0, version 4, mode 3) carrying `nonce` (8 bytes) as its
    transmit timestamp, which the server echoes as the originate timestamp."""
    return b"\x23" + bytes(39) + nonce


def parse_reply(reply, nonce):
    """Unix seconds from a server's reply to the request that carried `nonce`; ClockError if the
    reply is not one (wrong mode, unsynchronised server, kiss-o'-death, another request's answer)."""
    if len(reply) < 48:
        raise ClockError("SNTP reply of %d bytes" % len(reply))
    if reply[0] & 7 != 4:
        raise ClockError("SNTP reply in mode %d, not 4 (server)" % (reply[0] & 7))
    if reply[0] >> 6 == 3:
        raise ClockError("SNTP server is not synchronised (leap indicator 3)")
    if not 0 < reply[1] < 16:
        raise ClockError("SNTP server stratum %d (0 is kiss-o'-death)" % reply[1])
    if reply[24:32] != nonce:
        raise ClockError("SNTP reply does not answer our request")
    seconds, fraction = struct.unpack(">II", reply[40:48])
    if seconds == 0:
        raise ClockError("SNTP reply without a transmit time")
    if seconds < 0x80000000:  # RFC 4330 section 3: with bit 0 clear the time is in era 1 (2036-2104)
        seconds += _ERA
    return seconds - _NTP_TO_UNIX + (fraction >> 31)


async def query(host, port, timeout_ms=3000):
    """Unix seconds from one SNTP exchange with host:port (never blocks the event loop past DNS)."""
    address = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        nonce = os.urandom(8)
        sock.sendto(request_packet(nonce), address)
        started = ticks_ms()
        while True:
            try:
                reply = sock.recv(64)
                # an answer to an earlier, timed-out request fails the nonce check: try again later
                return parse_reply(reply, nonce)
            except OSError as exc:
                if exc.args[0] != errno.EAGAIN:  # nothing yet (EWOULDBLOCK is EAGAIN on Linux and lwIP)
                    raise
            if ticks_diff(ticks_ms(), started) >= timeout_ms:
                raise ClockError("no SNTP answer within %d ms" % timeout_ms)
            await sleep_ms(_POLL_MS)
    finally:
        sock.close()  # every socket costs internal RAM on a board: never leave one to the GC


def set_rtc(unix_seconds):
    """Set the board's RTC to a time given in seconds since 1970."""
    import machine

    epoch_offset = 946684800 if time.gmtime(0)[0] == 2000 else 0  # the ESP32 port counts from 2000
    t = time.gmtime(unix_seconds - epoch_offset)
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


def _stamp():
    t = time.gmtime()
    return "%04d-%02d-%02d %02d:%02d:%02d UTC" % t[:6]


async def ensure(host, port, backoff_ms=(1000, 60000), timeout_ms=3000, set_clock=set_rtc):
    """Return once the clock is plausible, asking host:port by SNTP for as long as it takes."""
    failures = 0
    while not plausible():
        try:
            set_clock(await query(host, port, timeout_ms))
            if plausible():
                log.info(_TAG, "time set by SNTP from %s:%d: %s" % (host, port, _stamp()))
                return
            why = "its time %s is before this firmware was built" % _stamp()
        except Exception as exc:  # DNS, network, a bad answer: all mean "ask again later"
            why = describe(exc)
        delay = backoff_delay(failures, backoff_ms[0], backoff_ms[1])
        failures += 1
        log.warning(_TAG, "time not set by SNTP %s:%d: %s; no TLS until it is; retry in %d ms"
                    % (host, port, why, delay))
        await sleep_ms(delay)
