"""asyncio MQTT 3.1.1 client over mutual TLS: packet codec, one-connection protocol, reconnecting QoS 1 client.

Three layers, in the spirit of mqtt_as but split so each can be tested alone:
- codec functions (`connect_packet`, `publish_packet`, ...) build and parse exact bytes;
- `Connection` speaks MQTT on one open stream pair and knows nothing about Wi-Fi or retries;
- `MQTTClient` owns the resilience: waits for the network, connects with exponential backoff and
  jitter, keeps the link alive with PINGREQ, detects a dead link, and resends unacknowledged QoS 1
  publishes with DUP after a reconnect. `publish()` returns only once the matching PUBACK arrived.

Runs on MicroPython (ESP32 and the unix port) and on CPython 3.11 (host unit tests).
Payloads are never logged: the mapping payload carries the secret key.
"""

import struct

try:
    import asyncio
except ImportError:  # MicroPython before 1.21
    import uasyncio as asyncio

try:
    import random
except ImportError:
    random = None

import gc
import time

from rmnode import log

try:
    from micropython import const
except ImportError:
    def const(value):
        return value

_TAG = "mqtt"

# packet types (MQTT 3.1.1 §2.2.1), high nibble of the first byte
CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)  # reserved flag bits 0010 (§3.8.1)
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

_MAX_REMAINING = const(268435455)  # 4-byte Remaining Length (§2.2.3)

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MQTTError(Exception):
    """The peer broke the protocol or refused us."""


class ConnectRefused(MQTTError):
    def __init__(self, return_code):
        super().__init__("CONNACK return code %d (%s)" % (return_code, CONNACK_REASONS.get(return_code, "?")))
        self.return_code = return_code


class PublishTimeout(MQTTError):
    """No PUBACK within the caller's bound; the message is no longer retransmitted."""


class ClientClosed(MQTTError):
    pass


# -- time helpers (ticks on MicroPython, monotonic on CPython) -----------------------------------

if hasattr(time, "ticks_ms"):
    def ticks_ms():
        return time.ticks_ms()

    def ticks_diff(a, b):
        return time.ticks_diff(a, b)
else:
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


async def sleep_ms(ms):
    await asyncio.sleep(ms / 1000)


def _randint(low, high):
    if random is None:
        return high
    if hasattr(random, "randint"):
        return random.randint(low, high)
    return low + random.getrandbits(16) % (high - low + 1)


def backoff_delay(failures, first_ms, cap_ms, randint=None):
    """Delay before the next attempt after `failures` consecutive failures: a random value in
    [d/2, d], d = min(cap, first * 2**failures). Half fixed, half jitter: boards that lost the
    broker together do not come back in lockstep, and below the cap each delay is at least the previous one."""
    ceiling = min(cap_ms, first_ms << min(failures, 16))
    return ceiling // 2 + (randint or _randint)(0, ceiling - ceiling // 2)


# -- codec ---------------------------------------------------------------------------------------

def encode_length(n):
    """Remaining Length: 7 bits per byte, least significant first, high bit = more (§2.2.3)."""
    if n < 0 or n > _MAX_REMAINING:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_string(value):
    """UTF-8 string with a 2-byte big-endian length prefix (§1.5.3)."""
    if isinstance(value, str):
        value = value.encode()
    if len(value) > 0xFFFF:
        raise ValueError("string too long for MQTT: %d bytes" % len(value))
    return struct.pack(">H", len(value)) + value


def _packet(first_byte, body):
    return bytes([first_byte]) + encode_length(len(body)) + body


def connect_packet(client_id, keepalive_s, clean_session=True, username=None):
    """CONNECT, protocol level 4 (3.1.1). No will, no password: identity comes from the TLS client cert."""
    if keepalive_s < 0 or keepalive_s > 0xFFFF:
        raise ValueError("keepalive out of range: %d" % keepalive_s)
    flags = 0x02 if clean_session else 0
    payload = encode_string(client_id)
    if username is not None:
        flags |= 0x80
        payload += encode_string(username)
    variable = encode_string("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive_s)
    return _packet(CONNECT, variable + payload)


def check_topic(topic):
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError("invalid publish topic %r" % (topic,))
    return topic


def publish_packet(topic, payload, qos=0, packet_id=0, dup=False, retain=False):
    if qos not in (0, 1):
        raise ValueError("unsupported QoS %r" % (qos,))
    if isinstance(payload, str):
        payload = payload.encode()
    first = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = encode_string(check_topic(topic))
    if qos:
        if not 0 < packet_id <= 0xFFFF:
            raise ValueError("packet id out of range: %r" % (packet_id,))
        body += struct.pack(">H", packet_id)
    return _packet(first, body + payload)


def puback_packet(packet_id):
    return bytes([PUBACK, 2]) + struct.pack(">H", packet_id)


def subscribe_packet(packet_id, topic, qos=1):
    return _packet(SUBSCRIBE, struct.pack(">H", packet_id) + encode_string(topic) + bytes([qos]))


PINGREQ_PACKET = bytes([PINGREQ, 0])
DISCONNECT_PACKET = bytes([DISCONNECT, 0])


def parse_connack(body):
    """(session_present, return_code) from a CONNACK body (§3.2)."""
    if len(body) != 2:
        raise MQTTError("CONNACK of %d bytes" % len(body))
    return bool(body[0] & 1), body[1]


def parse_packet_id(body):
    """The packet id of a PUBACK/SUBACK body."""
    if len(body) < 2:
        raise MQTTError("packet id missing (%d bytes)" % len(body))
    return struct.unpack(">H", body[:2])[0]


def parse_publish(first_byte, body):
    """(topic, payload, qos, packet_id) of an incoming PUBLISH."""
    qos = (first_byte >> 1) & 3
    if len(body) < 2:
        raise MQTTError("PUBLISH too short")
    topic_len = struct.unpack(">H", body[:2])[0]
    pos = 2 + topic_len
    topic = bytes(body[2:pos]).decode()
    packet_id = 0
    if qos:
        packet_id = struct.unpack(">H", body[pos:pos + 2])[0]
        pos += 2
    return topic, bytes(body[pos:]), qos, packet_id


async def read_packet(reader):
    """(first_byte, body) of the next packet; EOFError when the peer closed."""
    head = await reader.readexactly(1)
    length = 0
    shift = 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MQTTError("malformed remaining length")
    body = await reader.readexactly(length) if length else b""
    return head[0], body


# -- TLS -----------------------------------------------------------------------------------------

def make_ssl_context(cert_path, key_path, ca_path):
    """Client context for mutual TLS with the broker verified against `ca_path`.

    On the board all three files are DER (the unix port's mbedtls has no PEM parser); CPython's
    ssl wants PEM, so host tests pass PEM paths to this same function.
    """
    import ssl
    gc.collect()  # mbedtls contexts need a few KB in one piece; defragment first
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # MicroPython's ssl.SSLContext() sets CERT_NONE even for PROTOCOL_TLS_CLIENT: a wrong CA and a
    # wrong host name would connect fine. Never ship that (notes §2, pitfall 1).
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_path:
        context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cafile=ca_path)
    return context


async def open_stream(host, port, ssl_context=None, server_hostname=None):
    """TCP (+TLS) stream pair; with TLS the host name is always checked (mbedtls needs it with CERT_REQUIRED)."""
    if ssl_context is None:
        return await asyncio.open_connection(host, port)
    return await asyncio.open_connection(host, port, ssl=ssl_context, server_hostname=server_hostname or host)


# -- protocol layer: one connection ---------------------------------------------------------------

class Connection:
    """MQTT on one open (reader, writer) pair: handshake, sends, and packet dispatch to callbacks."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self._lock = asyncio.Lock()
        self.last_tx = self.last_rx = ticks_ms()

    async def send(self, packet):
        async with self._lock:
            self.writer.write(packet)
            await self.writer.drain()
            self.last_tx = ticks_ms()

    async def receive(self):
        first_byte, body = await read_packet(self.reader)
        self.last_rx = ticks_ms()
        return first_byte, body

    async def handshake(self, client_id, keepalive_s, clean_session=True, username=None):
        """Send CONNECT and wait for CONNACK; ConnectRefused on a non-zero return code."""
        await self.send(connect_packet(client_id, keepalive_s, clean_session, username))
        first_byte, body = await self.receive()
        if first_byte & 0xF0 != CONNACK:
            raise MQTTError("expected CONNACK, got packet type 0x%02x" % first_byte)
        session_present, return_code = parse_connack(body)
        if return_code:
            raise ConnectRefused(return_code)
        return session_present

    async def close(self, graceful=False):
        """Close the stream; unless graceful, do not wait on the peer (a dead link never answers a TLS close)."""
        transport = getattr(self.writer, "transport", None)  # CPython only; MicroPython closes at once
        try:
            self.writer.close()
            if transport is not None and not graceful:
                transport.abort()
            await asyncio.wait_for(self.writer.wait_closed(), 1)
        except Exception:  # already broken, or the peer did not answer in time
            if transport is not None:
                transport.abort()


# -- resilience layer ---------------------------------------------------------------------------

class _Outgoing:
    """One QoS 1 publish waiting for its PUBACK (kept across reconnects)."""

    def __init__(self, topic, payload):
        self.topic = topic
        self.payload = payload
        self.sent = False
        self.ok = False  # True once the PUBACK arrived (the event is also set by close())
        self.acked = asyncio.Event()


class MQTTClient:
    """A reconnecting MQTT client; start `run()` as a task, then `await publish(...)`.

    backoff_ms = (first, cap): the n-th consecutive failure waits a random time in
    [d/2, d] with d = min(cap, first * 2**n) ("equal jitter", so delays still grow).
    The failure count is reset once a connection stayed up for `stable_ms`.
    """

    def __init__(self, client_id, host, port, ssl_context=None, server_hostname=None, keepalive_s=120,
                 is_network_up=None, backoff_ms=(1000, 60000), connect_timeout_ms=20000, stable_ms=10000,
                 ping_timeout_ms=None, username=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.keepalive_s = keepalive_s
        self.is_network_up = is_network_up or (lambda: True)
        self.backoff_first_ms, self.backoff_cap_ms = backoff_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.stable_ms = stable_ms
        self.ping_timeout_ms = ping_timeout_ms or max(1000, keepalive_s * 500)
        self.username = username
        self.on_message = None  # callable(topic, payload) for incoming PUBLISH
        self.on_connect = None  # callable() after each accepted CONNECT
        self.connects = 0  # successful CONNACKs so far
        self.last_connect_ms = None  # TCP + TLS + CONNACK time of the last connection
        self._conn = None
        self._connected = asyncio.Event()
        self._lost = None
        self._outbox = {}  # packet id -> _Outgoing, in send order
        self._next_id = 0
        self._closing = False
        self._failures = 0
        self._ping_sent = None

    @property
    def connected(self):
        return self._conn is not None

    # -- public API ---------------------------------------------------------------------------

    async def run(self):
        """Connect, serve, reconnect: forever, until close(). Never raises on network errors."""
        while not self._closing:
            await self._wait_for_network()
            if self._closing:
                break
            log.info(_TAG, "connecting to %s:%d as %s" % (self.host, self.port, self.client_id))
            started = ticks_ms()
            try:
                await asyncio.wait_for(self._open(), self.connect_timeout_ms / 1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._backoff("connect failed: %s" % _describe(exc))
                continue
            self.last_connect_ms = ticks_diff(ticks_ms(), started)
            self.connects += 1
            log.info(_TAG, "connected in %d ms" % self.last_connect_ms)
            up_since = ticks_ms()
            reason = await self._serve()
            if ticks_diff(ticks_ms(), up_since) >= self.stable_ms:
                self._failures = 0  # a good connection: start the backoff from the beginning
            if not self._closing:
                await self._backoff("connection lost: %s" % reason)

    async def wait_connected(self, timeout_ms=None):
        if timeout_ms is None:
            await self._connected.wait()
        else:
            await asyncio.wait_for(self._connected.wait(), timeout_ms / 1000)

    async def publish(self, topic, payload, qos=1, timeout_ms=None):
        """Publish; with QoS 1 return only after the matching PUBACK (resent with DUP across reconnects).

        timeout_ms bounds the whole wait (PublishTimeout); None waits as long as it takes.
        """
        if self._closing:
            raise ClientClosed("client closed")
        check_topic(topic)
        if isinstance(payload, str):
            payload = payload.encode()
        if qos == 0:
            conn = self._conn
            if conn is None:
                raise MQTTError("not connected")
            await conn.send(publish_packet(topic, payload))
            log.info(_TAG, "published %s (QoS 0, %d bytes)" % (topic, len(payload)))
            return
        packet_id = self._allocate_id()
        entry = _Outgoing(topic, payload)
        self._outbox[packet_id] = entry
        try:
            if self._conn is not None:
                await self._send_entry(self._conn, packet_id, entry)
            if timeout_ms is None:
                await entry.acked.wait()
            else:
                await asyncio.wait_for(entry.acked.wait(), timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise PublishTimeout("no PUBACK for msg id %d on %s within %d ms" % (packet_id, topic, timeout_ms))
        finally:
            self._outbox.pop(packet_id, None)
        if not entry.ok:
            raise ClientClosed("client closed before PUBACK of msg id %d" % packet_id)

    async def close(self):
        """Send DISCONNECT if connected and stop reconnecting."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            try:
                await asyncio.wait_for(conn.send(DISCONNECT_PACKET), 2)
            except Exception:
                pass
            self._lose("closed")
        for entry in self._outbox.values():
            entry.acked.set()  # wake waiters; publish() pops its entry
        log.info(_TAG, "closed")

    # -- internals ----------------------------------------------------------------------------

    def _allocate_id(self):
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._outbox:
                return self._next_id
        raise MQTTError("no free packet id")

    async def _send_entry(self, conn, packet_id, entry):
        dup = entry.sent  # §4.4: a message sent before goes out again with DUP=1 and the same id
        entry.sent = True
        await conn.send(publish_packet(entry.topic, entry.payload, 1, packet_id, dup))
        log.info(_TAG, "published %s (msg id %d, %d bytes%s)" % (entry.topic, packet_id, len(entry.payload),
                                                                 ", dup" if dup else ""))

    async def _wait_for_network(self):
        if self.is_network_up():
            return
        log.info(_TAG, "waiting for network")
        while not self._closing and not self.is_network_up():
            await sleep_ms(250)
        if not self._closing:
            log.info(_TAG, "network is up")

    async def _backoff(self, why):
        delay = backoff_delay(self._failures, self.backoff_first_ms, self.backoff_cap_ms)
        self._failures += 1
        log.info(_TAG, "%s; retry in %d ms" % (why, delay))
        await sleep_ms(delay)

    async def _open(self):
        gc.collect()  # the handshake allocates records and certificates: start from a compact heap
        reader, writer = await open_stream(self.host, self.port, self.ssl_context, self.server_hostname)
        conn = Connection(reader, writer)
        try:
            # with do_handshake_on_connect=False the TLS handshake (and its certificate errors)
            # happens on this first write/read
            await conn.handshake(self.client_id, self.keepalive_s, True, self.username)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _serve(self):
        """Run one accepted connection until it is lost; returns the reason."""
        conn = self._conn
        self._lost = asyncio.Event()
        self._lost_reason = None
        self._ping_sent = None
        self._connected.set()
        if self.on_connect is not None:
            self.on_connect()
        reader_task = asyncio.create_task(self._reader(conn))
        keepalive_task = asyncio.create_task(self._keepalive(conn))
        try:
            for packet_id in list(self._outbox):  # in order; new ids cannot collide with these
                entry = self._outbox.get(packet_id)
                if entry is not None and not entry.acked.is_set():
                    await self._send_entry(conn, packet_id, entry)
        except Exception as exc:
            self._lose("send failed: %s" % _describe(exc))
        await self._lost.wait()
        self._connected.clear()
        self._conn = None
        for task in (reader_task, keepalive_task):
            task.cancel()
        await conn.close(graceful=self._lost_reason == "closed")
        return self._lost_reason

    def _lose(self, reason):
        if self._lost is not None and not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _reader(self, conn):
        try:
            while True:
                first_byte, body = await conn.receive()
                kind = first_byte & 0xF0
                if kind == PUBACK:
                    packet_id = parse_packet_id(body)
                    entry = self._outbox.get(packet_id)
                    if entry is not None:
                        log.info(_TAG, "acked msg id %d" % packet_id)
                        entry.ok = True
                        entry.acked.set()
                elif kind == PINGRESP:
                    self._ping_sent = None
                elif kind == PUBLISH:
                    topic, payload, qos, packet_id = parse_publish(first_byte, body)
                    if qos == 1:
                        await conn.send(puback_packet(packet_id))
                    if self.on_message is not None:
                        try:
                            self.on_message(topic, payload)
                        except Exception as exc:  # a handler bug must not take the link down
                            log.error(_TAG, "message handler failed: %s" % _describe(exc))
                elif kind == SUBACK:
                    pass
                else:
                    raise MQTTError("unexpected packet type 0x%02x" % first_byte)
        except asyncio.CancelledError:
            raise
        except EOFError:
            self._lose("closed by broker")
        except Exception as exc:
            self._lose(_describe(exc))

    async def _keepalive(self, conn):
        """PINGREQ when idle for half the keepalive; a missing PINGRESP means a dead link (§3.1.2.10)."""
        half_ms = self.keepalive_s * 500
        tick_ms = max(100, min(1000, half_ms // 4))
        try:
            while True:
                await sleep_ms(tick_ms)
                now = ticks_ms()
                if not self.is_network_up():
                    self._lose("network down")
                    return
                if self._ping_sent is not None:
                    if ticks_diff(now, self._ping_sent) > self.ping_timeout_ms:
                        self._lose("no PINGRESP within %d ms" % self.ping_timeout_ms)
                        return
                elif half_ms and (ticks_diff(now, conn.last_tx) >= half_ms or ticks_diff(now, conn.last_rx) >= half_ms):
                    self._ping_sent = now
                    await conn.send(PINGREQ_PACKET)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lose("ping failed: %s" % _describe(exc))


def _describe(exc):
    """One-line description; mbedtls messages come wrapped in newlines, which would split log lines."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return "%s(%s)" % (name, text) if text else name
