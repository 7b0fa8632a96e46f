"""A small SNTP server (RFC 4330) on 127.0.0.1 for virtual boards, which start at 2000-01-01 and must
set their clock before a TLS handshake can pass the certificate-date check.

It answers each client request (mode 3) with the host's clock, stratum 2, echoing the client's
transmit timestamp as the originate timestamp (the node checks that echo). Anything that is not a
48-byte-or-longer client request is ignored, as a real server would. Started and stopped with the
broker by rmkit.stack (make demo, make sandbox, make cloud and the end-to-end tests).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

NTP_TO_UNIX = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_PACKET = struct.Struct("!BBbb11I")  # 48 bytes: flags, stratum, poll, precision, 11 32-bit words
_LI_NONE, _VERSION, _MODE_CLIENT, _MODE_SERVER = 0, 4, 3, 4


def ntp_timestamp(unix_seconds: float) -> tuple[int, int]:
    """(seconds, fraction) of an NTP timestamp; seconds wrap at 2**32 (era 1 starts in 2036)."""
    seconds = int(unix_seconds)
    fraction = int((unix_seconds - seconds) * (1 << 32)) & 0xFFFFFFFF
    return (seconds + NTP_TO_UNIX) & 0xFFFFFFFF, fraction


def reply_for(request: bytes, now: float) -> Optional[bytes]:
    """The server's answer to one datagram, or None when it is not a client request."""
    if len(request) < _PACKET.size:
        return None
    flags = request[0]
    if flags & 0x07 != _MODE_CLIENT:
        return None
    version = (flags >> 3) & 0x07 or _VERSION
    originate = request[40:48]  # the client's transmit timestamp, echoed back unchanged
    seconds, fraction = ntp_timestamp(now)
    head = struct.pack("!BBbb", _LI_NONE << 6 | version << 3 | _MODE_SERVER, 2, 6, -20)
    # root delay, root dispersion, reference id "LOCL", reference timestamp
    body = struct.pack("!II4sII", 0, 0, b"LOCL", seconds, fraction)
    return head + body + originate + struct.pack("!IIII", seconds, fraction, seconds, fraction)


class SntpServer:
    """UDP SNTP server in a thread; `port` is chosen when 0. Use start()/stop() or `with`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port
        self.requests = 0
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def start(self) -> "SntpServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"SNTP server cannot bind {self.host}:{self.port}: {exc.strerror}") from None
        sock.settimeout(0.2)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="sntp", daemon=True)
        self._thread.start()
        log.info("sntp: serving the host clock on udp %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "SntpServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            try:
                request, peer = sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            answer = reply_for(request, time.time())
            if answer is None:
                continue
            self.requests += 1
            try:
                sock.sendto(answer, peer)
            except OSError:
                pass  # the client went away; UDP has nobody to tell
