"""SoftAP HTTP transport for protocomm: `POST /<endpoint>` in, raw bytes out, one session at a time (docs/protocol.md 1.1).

Runs on MicroPython's asyncio (ESP32 and unix port) and on CPython's asyncio (host unit tests).

Session rules, as ESP-IDF's protocomm_httpd (docs/protocol.md 1.1):
- a request whose `Cookie` carries `session=<current id>` continues the current session;
- a request without a session cookie on the connection that opened the current session continues it;
- anything else (a second client, a stale or foreign cookie) closes the current session
  (`session_closed(old_id)`) and opens a new one with a random u32 id, sent once as
  `Set-Cookie: session=<id>` on that session's first successful response.
A closed TCP connection does not end the session: the client may reconnect and continue by cookie.

Choice about a second client: ESP-IDF runs its server with max_open_sockets=1 and LRU purge, so a new
connection evicts the old one. Here up to `max_connections` connections are served at once (default 2)
and the least recently active one is closed when another arrives; the *session* is still single: the
first request of the second client replaces the first client's session. Serving two connections keeps a
slow or silent client from delaying the next one until its timeout fires.

Bad input (garbage, oversized header lines, too many headers, bodies over `max_body`, missing or
non-positive Content-Length, slow or silent clients) costs one log line and that one connection; the
server keeps serving. Bodies are read with `readexactly` only after their length has been checked.
"""

import os

import asyncio

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log

_TAG = const("http")
_CHUNK = const(256)  # bytes per socket read while looking for the end of the header block
_MAX_LINE = const(512)  # request line or one header line, CRLF included
# The largest request body served: half of ESP-IDF's 4096 (why: docs/protocol.md 1.1, "Body limit")
MAX_BODY = const(2048)
_MAX_HEADERS = const(24)
_MAX_CONNECTIONS = const(2)

# reason phrases of the statuses we send, looked up by their "NNN " prefix (a string, not a dict: less heap)
_REASONS = ("200 OK\n400 Bad Request\n404 Not Found\n405 Method Not Allowed\n408 Request Timeout\n"
            "411 Length Required\n413 Payload Too Large\n431 Request Header Fields Too Large\n"
            "500 Internal Server Error\n501 Not Implemented\n")


class HttpError(Exception):
    """A request we refuse: HttpError(status, reason); the status is sent back before the connection is closed."""


def _reason(status):
    start = _REASONS.find("%d " % status)
    if start < 0:
        return "Error"
    return _REASONS[start + 4:_REASONS.find("\n", start)]


def _keep_alive(version, headers):
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return connection == "keep-alive"
    return connection != "close"


def _session_cookie(headers):
    """The u32 in `Cookie: session=<n>`, -1 for a malformed one, None when there is no session cookie."""
    cookie = headers.get("cookie")
    if cookie is None:
        return None
    for part in cookie.split(";"):
        part = part.strip()
        if part.startswith("session="):
            try:
                return int(part[8:])
            except ValueError:
                return -1
    return None


class _Connection:
    """One client socket plus the bytes read past the last request (pipelining)."""

    def __init__(self, reader, writer, number):
        self.reader = reader
        self.writer = writer
        self.number = number
        self.buf = b""
        self.task = None
        self.last_active = 0

    async def fill(self):
        chunk = await self.reader.read(_CHUNK)
        if not chunk:
            raise EOFError("peer closed")
        self.buf += chunk

    async def readline(self):
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end + 1 > _MAX_LINE:
                    raise HttpError(431, "header line of %d bytes" % (end + 1))
                line = self.buf[:end + 1]
                self.buf = self.buf[end + 1:]
                return line
            if len(self.buf) >= _MAX_LINE:
                raise HttpError(431, "header line over %d bytes" % _MAX_LINE)
            await self.fill()

    async def readexactly(self, count):
        if len(self.buf) >= count:
            data = self.buf[:count]
            self.buf = self.buf[count:]
            return data
        head = self.buf
        self.buf = b""
        return head + await self.reader.readexactly(count - len(head))


def _new_session_id(avoid):
    while True:
        sid = int.from_bytes(os.urandom(4), "big")
        if sid != 0 and sid != avoid:
            return sid


class ProvHttpServer:
    """HTTP/1.1 server that hands `POST /<endpoint>` bodies to protocomm's `dispatch(session_id, endpoint, body)`.

    dispatch returns the response bytes or raises; LookupError means "no such endpoint" (404),
    anything else is a handler failure (500, connection closed, like ESP-IDF closing the socket).
    `endpoints`, if given, is any container (checked with `in` on every request, so a live registry
    works): unknown paths are then answered 404 before the body is read and without touching the session.
    `session_closed(session_id)` is called when a session is replaced or the server stops.
    """

    def __init__(self, host, port, dispatch, session_closed=None, max_body=MAX_BODY,
                 read_timeout_s=5, idle_timeout_s=30, endpoints=None,
                 max_connections=_MAX_CONNECTIONS):
        self.host = host
        self.port = port
        self._dispatch = dispatch
        self._session_closed = session_closed
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.endpoints = endpoints
        self.max_connections = max_connections
        self.running = False
        self.session_id = None  # current protocomm session, None before the first request
        self._session_conn = None  # connection that opened the current session (cookie-less clients)
        self._server = None
        self._conns = []
        self._count = 0

    async def start(self):
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.running = True
        log.info(_TAG, "serving protocomm on %s:%d" % (self.host, self.port))

    def stop(self):
        """Close the listener and every connection; ends the current session."""
        if not self.running:
            return
        self.running = False
        if self._server is not None:
            # MicroPython closes the listening socket when the cancelled accept task next runs:
            # await wait_closed() to be sure no new client is accepted
            self._server.close()
        for conn in self._conns:
            if conn.task is not None:
                conn.task.cancel()
            else:
                _close_quietly(conn.writer)
        self._end_session()
        log.info(_TAG, "stopped")

    async def wait_closed(self):
        """After stop(): returns once the listener and every connection are closed."""
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        while self._conns:
            await asyncio.sleep(0.01)

    # --- sessions (docs/protocol.md 1.1) ---

    def _end_session(self):
        old = self.session_id
        self.session_id = None
        self._session_conn = None
        if old is not None and self._session_closed is not None:
            try:
                self._session_closed(old)
            except Exception as exc:  # a failing callback must not take the server down
                log.error(_TAG, "session_closed(%d) failed: %r" % (old, exc))

    def _resolve_session(self, conn, headers):
        """Return (session_id, is_new) for this request, replacing the current session when needed."""
        cookie = _session_cookie(headers)
        if cookie is not None:
            if self.session_id is not None and cookie == self.session_id:
                return self.session_id, False
        elif self.session_id is not None and conn is self._session_conn:
            return self.session_id, False
        if self.session_id is not None:
            log.info(_TAG, "conn %d: new session replaces session %d" % (conn.number, self.session_id))
        old = self.session_id
        self._end_session()
        self.session_id = _new_session_id(old)
        self._session_conn = conn
        return self.session_id, True

    # --- connections ---

    async def _serve(self, reader, writer):
        self._count += 1
        conn = _Connection(reader, writer, self._count)
        try:
            conn.task = asyncio.current_task()
        except AttributeError:
            conn.task = None
        conn.last_active = log.ticks_ms()
        self._purge_for(conn)
        self._conns.append(conn)
        try:
            while self.running:
                if not conn.buf:
                    try:
                        await asyncio.wait_for(conn.fill(), self.idle_timeout_s)
                    except asyncio.TimeoutError:
                        log.info(_TAG, "conn %d: idle for %s s, closing" % (conn.number, self.idle_timeout_s))
                        break
                try:
                    request = await asyncio.wait_for(self._read_request(conn), self.read_timeout_s)
                except asyncio.TimeoutError:
                    raise HttpError(408, "request not complete within %s s" % self.read_timeout_s)
                conn.last_active = log.ticks_ms()
                if not await self._handle(conn, request):
                    break
        except HttpError as exc:
            status, reason = exc.args
            log.warning(_TAG, "conn %d: %d %s" % (conn.number, status, reason))
            await self._send_error(conn, status)
        except EOFError:
            pass  # the client closed between or in the middle of requests
        except asyncio.CancelledError:
            pass  # stop() or LRU purge
        except OSError as exc:
            log.info(_TAG, "conn %d: socket error %r" % (conn.number, exc))
        except Exception as exc:  # never let one client crash the node
            log.error(_TAG, "conn %d: unexpected %r" % (conn.number, exc))
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            if conn is self._session_conn:
                self._session_conn = None  # session lives on for cookie holders (docs/protocol.md 1.1)
            _close_quietly(conn.writer)
            try:
                await conn.writer.wait_closed()
            except BaseException:
                pass

    def _purge_for(self, newcomer):
        """Close the least recently active connection when the limit is reached (ESP-IDF's LRU purge)."""
        while len(self._conns) >= self.max_connections:
            oldest = self._conns[0]
            for conn in self._conns:
                if log.ticks_diff(conn.last_active, oldest.last_active) < 0:  # ticks wrap: never compare with <
                    oldest = conn
            self._conns.remove(oldest)
            log.info(_TAG, "conn %d: closed to make room for conn %d" % (oldest.number, newcomer.number))
            if oldest.task is not None:
                oldest.task.cancel()
            else:
                _close_quietly(oldest.writer)

    async def _read_request(self, conn):
        line = await conn.readline()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise HttpError(400, "bad request line (%d bytes)" % len(line))
        try:
            method = parts[0].decode()
            path = parts[1].decode()
            version = parts[2].decode()
        except UnicodeError:
            raise HttpError(400, "request line is not ASCII")
        headers = {}
        while True:
            line = await conn.readline()
            if line in (b"\r\n", b"\n"):
                break
            if len(headers) >= _MAX_HEADERS:
                raise HttpError(431, "more than %d headers" % _MAX_HEADERS)
            colon = line.find(b":")
            if colon <= 0:
                raise HttpError(400, "malformed header line")
            try:
                name = line[:colon].decode().strip().lower()
                value = line[colon + 1:].decode().strip()
            except UnicodeError:
                raise HttpError(400, "header is not ASCII")
            headers[name] = value
        if method != "POST":
            raise HttpError(405, "method %s" % method[:16])
        if "transfer-encoding" in headers:
            raise HttpError(501, "transfer-encoding not supported")
        if self.endpoints is not None and path[1:] not in self.endpoints:
            raise HttpError(404, "unknown endpoint %s" % path[:64])
        length = headers.get("content-length")
        if length is None:
            raise HttpError(411, "no Content-Length")
        try:
            length = int(length)
        except ValueError:
            raise HttpError(400, "bad Content-Length")
        # refused: Content-Length <= 0 (as ESP-IDF does) or over max_body; checked before reading a body byte
        if length <= 0:
            raise HttpError(400, "Content-Length %d" % length)
        if length > self.max_body:
            raise HttpError(413, "Content-Length %d over %d" % (length, self.max_body))
        return path, version, headers, await conn.readexactly(length)

    async def _handle(self, conn, request):
        """Dispatch one request (path, version, headers, body) and answer it; returns False when the connection must close."""
        path, version, headers, body = request
        if not path.startswith("/") or len(path) < 2:
            raise HttpError(404, "bad path")
        endpoint = path[1:]
        session_id, is_new = self._resolve_session(conn, headers)
        try:
            response = self._dispatch(session_id, endpoint, body)
        except LookupError:
            raise HttpError(404, "unknown endpoint %s" % endpoint[:64])
        except Exception as exc:
            # ESP-IDF closes the socket when a handler fails (docs/protocol.md 1.1); 500 is equally fatal to clients
            raise HttpError(500, "%s failed in session %d: %s" % (endpoint, session_id, type(exc).__name__))
        keep_alive = _keep_alive(version, headers)
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n" % len(response)
        if is_new:
            # docs/protocol.md 1.1: exact spelling `Set-Cookie`, no attributes; Espressif's client compares case-sensitively
            head += "Set-Cookie: session=%d\r\n" % session_id
        if not keep_alive:
            head += "Connection: close\r\n"
        conn.writer.write(head.encode() + b"\r\n" + response)
        await conn.writer.drain()
        return keep_alive

    async def _send_error(self, conn, status):
        head = "HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n" % (status, _reason(status))
        if status == 405:
            head += "Allow: POST\r\n"
        try:
            conn.writer.write(head.encode() + b"\r\n")
            await asyncio.wait_for(conn.writer.drain(), 1)
        except BaseException:
            pass  # the client may be gone already; the connection is closed next anyway


def _close_quietly(writer):
    try:
        writer.close()
    except BaseException:
        pass
