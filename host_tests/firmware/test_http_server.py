"""rmnode.http.ProvHttpServer against real clients (http.client, raw sockets), under CPython and the unix port.

Each test ends by checking that a well-behaved client is still served: bad input costs one connection only.
"""

import http.client
import os
import re
import socket
import time

import pytest

COOKIE_RE = re.compile(r"^session=(\d+)$")


def post(conn: http.client.HTTPConnection, endpoint: str, body: bytes, cookie: str | None = None):
    # same headers as Espressif's client (docs/protocol.md 1.1)
    headers = {"Content-type": "application/x-www-form-urlencoded", "Accept": "text/plain"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("POST", "/" + endpoint, body, headers)
    resp = conn.getresponse()
    return resp, resp.read()


def session_of(body: bytes) -> int:
    return int(re.match(rb"sid=(\d+) ", body).group(1))


def set_cookie(resp) -> str | None:
    # Espressif's client compares the header name case-sensitively
    values = [v for k, v in resp.getheaders() if k == "Set-Cookie"]
    assert len(values) <= 1
    return values[0] if values else None


def closed_sessions(port: int) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        resp, body = post(conn, "closed", b"?")
        assert resp.status == 200
        return [int(x) for x in body.split(b",") if x]
    finally:
        conn.close()


def assert_still_serving(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        resp, body = post(conn, "echo", b"still here")
        assert resp.status == 200
        assert body.endswith(b"body=still here")
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data`, then read until the server closes; returns everything received (b"" on reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


# --- sessions and cookies (docs/protocol.md 1.1) ---

def test_first_response_sets_session_cookie_and_keep_alive_continues(http_echo_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    resp, body = post(conn, "echo", b"---")
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(body))
    cookie = set_cookie(resp)
    assert cookie is not None and COOKIE_RE.match(cookie)
    sid = int(COOKIE_RE.match(cookie).group(1))
    assert 0 < sid < 2**32
    assert body == b"sid=%d ep=echo body=---" % sid
    sock = conn.sock

    resp, body = post(conn, "echo", b"\x00\xffbinary")
    assert resp.status == 200
    assert set_cookie(resp) is None  # only the first response of a session carries it
    assert body == b"sid=%d ep=echo body=\x00\xffbinary" % sid
    assert conn.sock is sock  # kept alive, no reconnect
    conn.close()


def test_cookie_continues_session_on_a_new_connection(http_echo_server):
    first = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    resp, body = post(first, "echo", b"a")
    cookie = set_cookie(resp)
    first.close()

    second = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    resp, body = post(second, "echo", b"b", cookie=cookie)
    assert resp.status == 200
    assert set_cookie(resp) is None
    assert session_of(body) == int(cookie.split("=")[1])
    second.close()
    assert closed_sessions(http_echo_server.port) == [int(cookie.split("=")[1])]  # replaced only by that probe


def test_second_client_replaces_the_session(http_echo_server):
    port = http_echo_server.port
    first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    resp, body = post(first, "echo", b"1")
    old_sid = session_of(body)

    second = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    resp, body = post(second, "echo", b"2")
    assert resp.status == 200
    new_sid = session_of(body)
    assert new_sid != old_sid
    assert set_cookie(resp) == "session=%d" % new_sid

    # the first client's cookie is now stale: its next request opens yet another session
    resp, body = post(first, "echo", b"3", cookie="session=%d" % old_sid)
    assert resp.status == 200
    assert session_of(body) not in (old_sid, new_sid)
    assert set_cookie(resp) == "session=%d" % session_of(body)
    first.close()
    second.close()
    closed = closed_sessions(port)
    assert closed[:2] == [old_sid, new_sid]


def test_foreign_cookie_opens_a_new_session(http_echo_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    resp, body = post(conn, "echo", b"x")
    sid = session_of(body)
    resp, body = post(conn, "echo", b"y", cookie="session=%d" % ((sid + 1) % 2**32))
    assert resp.status == 200
    assert session_of(body) != sid
    assert set_cookie(resp) is not None
    resp, body = post(conn, "echo", b"z", cookie="session=not-a-number")
    assert resp.status == 200 and set_cookie(resp) is not None
    conn.close()


def test_pipelined_requests_are_answered_in_order(http_echo_server):
    request = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
               b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntwo")
    raw = raw_exchange(http_echo_server.port, request)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.index(b"body=one") < raw.index(b"body=two")
    assert raw.count(b"Set-Cookie: session=") == 1


# --- errors answered with a status ---

@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_non_post_is_405(http_echo_server, method):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    conn.request(method, "/echo", body=b"x" if method != "GET" else None)
    resp = conn.getresponse()
    assert resp.status == 405
    assert resp.getheader("Allow") == "POST"
    conn.close()
    assert_still_serving(http_echo_server.port)


@pytest.mark.parametrize("path", ["/nope", "/", "/gone", "/echo/extra"])
def test_unknown_endpoint_is_404(http_echo_server, path):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    conn.request("POST", path, b"x")
    assert conn.getresponse().status == 404
    conn.close()
    assert_still_serving(http_echo_server.port)


def test_handler_failure_is_500_and_closes_the_connection(http_echo_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    conn.request("POST", "/fail", b"x")
    resp = conn.getresponse()
    assert resp.status == 500
    assert resp.getheader("Connection") == "close"
    resp.read()
    assert conn.sock is None or read_until_closed(conn.sock) == b""
    conn.close()
    assert_still_serving(http_echo_server.port)


@pytest.mark.parametrize("length_header, status", [
    (b"", 411),
    (b"Content-Length: 0\r\n", 400),
    (b"Content-Length: -5\r\n", 400),
    (b"Content-Length: lots\r\n", 400),
    (b"Transfer-Encoding: chunked\r\n", 501),
])
def test_bad_content_length(http_echo_server, length_header, status):
    raw = raw_exchange(http_echo_server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n" + length_header + b"\r\n")
    assert status_of(raw) == status
    assert_still_serving(http_echo_server.port)


def test_oversized_body_is_refused_before_it_is_sent(http_echo_server):
    # headers only: the server must answer 413 without waiting for (or reading) the 5000 bytes
    with socket.create_connection(("127.0.0.1", http_echo_server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        raw = read_until_closed(sock)
    assert status_of(raw) == 413
    assert_still_serving(http_echo_server.port)


def test_oversized_body_sent_in_full(http_echo_server):
    raw = raw_exchange(http_echo_server.port,
                       b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"A" * 5000)
    # 413, or a reset when the kernel discards the unread body on close: never a 200
    assert raw == b"" or status_of(raw) == 413
    assert_still_serving(http_echo_server.port)


def test_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_413(http_echo_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=10)
    resp, body = post(conn, "echo", b"B" * 2048)
    assert resp.status == 200 and body.endswith(b"B" * 2048)
    conn.close()
    raw = raw_exchange(http_echo_server.port,
                       b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2049\r\n\r\n" + b"A" * 2049)
    assert raw == b"" or status_of(raw) == 413
    assert_still_serving(http_echo_server.port)


# --- garbage: connection closed, server keeps serving ---

def test_random_bytes(http_echo_server):
    for seed_len in (1, 100, 600, 3000):
        garbage = os.urandom(seed_len)
        raw = raw_exchange(http_echo_server.port, garbage)
        assert b"200 OK" not in raw
    assert_still_serving(http_echo_server.port)
    assert http_echo_server.alive()


def test_header_line_over_limit(http_echo_server):
    raw = raw_exchange(http_echo_server.port,
                       b"POST /echo HTTP/1.1\r\nX-Long: " + b"a" * 2000 + b"\r\nContent-Length: 1\r\n\r\nx")
    assert raw == b"" or status_of(raw) == 431
    assert_still_serving(http_echo_server.port)


def test_endless_header_line_without_newline(http_echo_server):
    with socket.create_connection(("127.0.0.1", http_echo_server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nX: " + b"a" * 1000)
        raw = read_until_closed(sock)
    assert status_of(raw) == 431
    assert_still_serving(http_echo_server.port)


def test_too_many_headers(http_echo_server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(40))
    raw = raw_exchange(http_echo_server.port,
                       b"POST /echo HTTP/1.1\r\n" + headers + b"Content-Length: 1\r\n\r\nx")
    assert status_of(raw) == 431
    assert_still_serving(http_echo_server.port)


# --- slow and silent clients ---

@pytest.mark.parametrize("partial", [
    b"POST /echo HTTP/1.1\r\nContent-Le",  # never finishes its headers
    b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345",  # never finishes its body
])
def test_slow_client_is_cut_off_and_does_not_block_others(http_echo_server, partial):
    port = http_echo_server.port
    with socket.create_connection(("127.0.0.1", port), timeout=15) as slow:
        slow.sendall(partial)
        # served while the slow client is still hanging
        assert_still_serving(port)
        raw = read_until_closed(slow)  # the read timeout (1 s) closes it
    assert raw == b"" or status_of(raw) == 408
    assert_still_serving(port)


def test_silent_keep_alive_connection_is_closed_after_idle_timeout(http_echo_server):
    conn = http.client.HTTPConnection("127.0.0.1", http_echo_server.port, timeout=15)
    resp, body = post(conn, "echo", b"x")
    assert resp.status == 200
    sock = conn.sock
    sock.settimeout(15)
    assert sock.recv(1) == b""  # closed by the server after ~2 s of silence
    conn.close()
    assert_still_serving(http_echo_server.port)


def test_oldest_connection_is_purged_when_a_third_arrives(http_echo_server):
    port = http_echo_server.port
    first = socket.create_connection(("127.0.0.1", port), timeout=10)
    first.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\n\r\na")
    assert b"200 OK" in first.recv(4096)
    second = socket.create_connection(("127.0.0.1", port), timeout=10)
    second.sendall(b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\n\r\nb")
    assert b"200 OK" in second.recv(4096)
    # a third client: the least recently active connection (first) makes room (ESP-IDF LRU purge)
    assert_still_serving(port)
    assert read_until_closed(first) == b""
    first.close()
    second.close()
