"""The harness's SNTP server against the firmware's own request and reply checks (rmnode.clock under
CPython): a real exchange over UDP on 127.0.0.1, and datagrams a server must ignore."""

import asyncio
import socket
import time

from rmkit.sntp import NTP_TO_UNIX, SntpServer, ntp_timestamp, reply_for

from support import paths

paths.use_firmware()
from rmnode import clock  # noqa: E402


def test_the_node_reads_the_host_clock_from_the_server():
    with SntpServer() as server:
        seconds = asyncio.run(clock.query("127.0.0.1", server.port, timeout_ms=2000))
        assert server.requests == 1
    assert abs(seconds - time.time()) < 2


def test_the_reply_echoes_the_nonce_and_parses_back():
    nonce = b"12345678"
    reply = reply_for(clock.request_packet(nonce), 1796000000.75)
    assert len(reply) == 48 and reply[24:32] == nonce
    assert clock.parse_reply(reply, nonce) == 1796000001  # .75 rounds up


def test_what_is_not_a_client_request_gets_no_answer():
    request = clock.request_packet(b"abcdefgh")
    assert reply_for(request[:47], time.time()) is None
    assert reply_for(b"\x24" + request[1:], time.time()) is None  # mode 4: a server's packet
    with SntpServer() as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(b"hello", ("127.0.0.1", server.port))
        try:
            sock.recv(64)
            answered = True
        except socket.timeout:
            answered = False
        assert not answered and server.requests == 0


def test_ntp_seconds_wrap_in_2036():
    assert ntp_timestamp(0) == (NTP_TO_UNIX, 0)
    assert ntp_timestamp(2085978496)[0] == 0  # 2036-02-07 06:28:16 UTC: the first second of era 1
