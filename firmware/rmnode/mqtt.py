"""asyncio MQTT 3.1.1 client over mutual TLS: packet codec and a reconnecting QoS 1 client.

- codec functions (`connect_packet`, `publish_packet`, `read_packet`, ...) build and parse exact bytes;
- `MQTTClient` owns one connection at a time and the resilience: waits for the network, connects
  with exponential backoff and jitter, keeps the link alive with PINGREQ, detects a dead link, and
  resends unacknowledged QoS 1 publishes with DUP after a reconnect. `publish()` returns only once
  the matching PUBACK arrived.

Sized for the online phase's heap (64 KiB or less): one class and one exception class
(the message says what went wrong), private const()s, a QoS 1 message kept as its packet (built
once; a resend only sets the DUP bit). The node never subscribes, so the client has no SUBSCRIBE
and treats a PUBLISH from the broker like any other unexpected packet: the link is dropped.

A broken or hostile broker cannot take the node down with a packet header: `read_packet` checks the
fixed header before it reads a body byte (what a client may receive, §2.2; the Remaining Length a
packet of that type has, §3) and reads no body longer than `_MAX_BODY`. Any packet MQTT 3.1.1 says a
client must not accept, or one this client has no use for, ends the connection (MQTTError); the
client then reconnects with its backoff.

Runs on MicroPython (ESP32 and the unix port) and on CPython 3.11 (host unit tests).
Payloads are never logged: the mapping payload carries the secret key.
"""

import gc
import struct
import sys

import asyncio

try:
    import random
except ImportError:
    random = None

from rmnode import log
from rmnode.log import ticks_diff, ticks_ms

try:
    from micropython import const
except ImportError:
    def const(value):
        return value

_TAG = const("mqtt")
# How often the client looks whether the station is up before it connects: a status call, cheap; a
# longer pause would add itself to every boot's time to online
_NETWORK_POLL_MS = const(50)
_MICROPYTHON = sys.implementation.name == "micropython"

# packet types (MQTT 3.1.1 §2.2.1), high nibble of the first byte
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_PINGRESP = const(0xD0)

_MAX_REMAINING = const(268435455)  # 4-byte Remaining Length (§2.2.3)
# The longest packet body this client reads: a CONNACK or a PUBACK, 2 bytes (§3.2.1, §3.4.1; a PINGRESP
# has none). The node subscribes to nothing (docs/protocol.md 5.2), so a PUBLISH or SUBACK never has a
# reason to come, and a Remaining Length of up to 256 MiB is refused before anything is allocated. A
# node that subscribes raises this to the largest PUBLISH it accepts.
_MAX_BODY = const(2)
# What a client may receive, by packet type (the first byte's high nibble, §2.2.1): "x" never comes to a
# client (reserved 0, CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT, reserved 15), a digit is the
# Remaining Length every packet of that type has (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK: 2;
# PINGRESP: 0), "v" a variable one (PUBLISH, SUBACK)
_INBOUND = const("xx2v2222xvx2x0xx")
_PUBREL_TYPE = const(6)  # the one packet a client receives whose flags are not 0 but 0b0010 (§2.2.2)
_PUBLISH_TYPE = const(3)  # flags DUP, QoS, RETAIN; QoS 3 is malformed (§3.3.1.2)

# An outbox entry (a QoS 1 publish waiting for its PUBACK) is a list, not an object: a class would
# cost heap for the online phase's whole life. const() names for its fields are inlined: free.
_ACKED_EVENT = const(0)  # asyncio.Event, set on the PUBACK (or when the client closes)
_PACKET = const(1)  # the PUBLISH as a bytearray; a resend sets its DUP bit in place
_TOPIC = const(2)  # for the log line
_PAYLOAD_LEN = const(3)  # for the log line (the payload itself is never kept or logged)
_ACKED = const(4)  # True once the PUBACK came

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"

# CONNACK return codes 1..5 (§3.2.2.3)
_REFUSALS = ("unacceptable protocol version", "client id rejected", "server unavailable",
             "bad user name or password", "not authorized")


class MQTTError(Exception):
    """The peer broke the protocol or refused us, a publish timed out, or the client was closed."""


# -- time (rmnode.log's ticks; asyncio's sleep_ms where it has one) -----------------------------------

if hasattr(asyncio, "sleep_ms"):
    sleep_ms = asyncio.sleep_ms
else:
    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


def backoff_delay(failures, first_ms, cap_ms, randint=None):
    """Delay before the next attempt after `failures` consecutive failures: a random value in
    [d/2, d], d = min(cap, first * 2**failures). Half fixed, half jitter: boards that lost the
    broker together do not come back in lockstep, and below the cap each delay is at least the previous one."""
    ceiling = min(cap_ms, first_ms << min(failures, 16))
    half = ceiling // 2
    if randint is None:
        randint = random.randint if random else max
    return half + randint(0, ceiling - half)


# -- codec -------------------------------------------------------------------------------------------

def encode_length(n):
    """Remaining Length: 7 bits per byte, least significant first, high bit = more (§2.2.3)."""
    if n < 0 or n > _MAX_REMAINING:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return out


def connect_packet(client_id, keepalive_s, clean_session=True):
    """CONNECT, protocol level 4 (3.1.1). No will, no user name or password: the identity comes from
    the TLS client certificate."""
    if keepalive_s < 0 or keepalive_s > 0xFFFF:
        raise ValueError("keepalive out of range: %d" % keepalive_s)
    client_id = client_id.encode()
    # protocol name "MQTT", level 4, flags (clean session), keepalive, then the client id
    body = b"\x00\x04MQTT\x04" + bytes([2 if clean_session else 0]) + struct.pack(">HH", keepalive_s,
                                                                                     len(client_id)) + client_id
    return bytes([_CONNECT]) + encode_length(len(body)) + body


def publish_packet(topic, payload, qos=0, packet_id=0, dup=False, retain=False):
    """PUBLISH as a bytearray (a resend sets its DUP bit in place: packet[0] |= 8)."""
    if qos not in (0, 1):
        raise ValueError("unsupported QoS %r" % (qos,))
    if not isinstance(topic, str) or not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise ValueError("invalid publish topic %r" % (topic,))
    if qos and not 0 < packet_id <= 0xFFFF:
        raise ValueError("packet id out of range: %r" % (packet_id,))
    topic = topic.encode()
    if isinstance(payload, str):
        payload = payload.encode()
    packet = bytearray([_PUBLISH | dup << 3 | qos << 1 | retain])
    packet += encode_length(2 + len(topic) + 2 * qos + len(payload))
    packet += struct.pack(">H", len(topic))
    packet += topic
    if qos:
        packet += struct.pack(">H", packet_id)
    packet += payload
    return packet


def parse_connack(body):
    """session_present of an accepting CONNACK body (§3.2); MQTTError naming the reason of a refusal."""
    if len(body) != 2:
        raise MQTTError("CONNACK of %d bytes" % len(body))
    if body[0] & 0xFE:  # §3.2.2.1: bits 7-1 of the acknowledge flags are reserved, 0
        raise MQTTError("CONNACK with reserved flags 0x%02x" % body[0])
    code = body[1]
    if code:
        raise MQTTError("CONNACK return code %d (%s)" % (code, _REFUSALS[code - 1] if code <= 5 else "?"))
    return bool(body[0] & 1)


def parse_packet_id(body):
    """The packet id of a PUBACK body (exactly 2 bytes, §3.4.1)."""
    if len(body) != 2:
        raise MQTTError("PUBACK of %d bytes" % len(body))
    return body[0] << 8 | body[1]


def check_header(first_byte, length, max_body=_MAX_BODY):
    """MQTTError unless a client may receive a packet with this first byte and Remaining Length, and its
    body is at most max_body bytes. Called before any body byte is read."""
    kind = first_byte >> 4
    rule = _INBOUND[kind]
    if rule == "x":
        why = "a type never sent to a client"
    elif first_byte & 15 != (2 if kind == _PUBREL_TYPE else 0) and (kind != _PUBLISH_TYPE or first_byte & 6 == 6):
        why = "reserved flags"  # §2.2.2: a receiver closes the connection on flags other than the type's
    elif rule != "v" and length != ord(rule) - 48:
        why = "malformed"
    elif length > max_body:
        why = "more than the %d this client reads" % max_body
    else:
        return
    raise MQTTError("packet 0x%02x of %d bytes: %s" % (first_byte, length, why))


async def read_packet(reader, max_body=_MAX_BODY):
    """(first_byte, body) of the next packet; EOFError when the peer closed; MQTTError, before its body is
    read, for a packet a client must not accept or one longer than max_body (check_header).

    Every packet has at least two bytes, so a PUBACK or PINGRESP costs two reads.
    """
    head = await reader.readexactly(2)
    byte = head[1]
    length = byte & 0x7F
    shift = 0
    while byte & 0x80:
        shift += 7
        if shift > 21:  # §2.2.3: at most four bytes
            raise MQTTError("malformed remaining length")
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
    check_header(head[0], length, max_body)
    return head[0], (await reader.readexactly(length) if length else b"")


# -- TLS ---------------------------------------------------------------------------------------------

def make_ssl_context(cert_path, key_path, ca_path):
    """Client context for mutual TLS with the broker verified against `ca_path`.

    On the board all three files are DER (the unix port's mbedtls has no PEM parser); CPython's
    ssl wants PEM, so host tests pass PEM paths to this same function.
    """
    import ssl
    gc.collect()  # mbedtls contexts need a few KB in one piece; defragment first
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # MicroPython's ssl.SSLContext() sets CERT_NONE even for PROTOCOL_TLS_CLIENT: a wrong CA and a
    # wrong host name would connect fine. Never ship that.
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_path:
        context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cafile=ca_path)
    return context


class _KeepTcpSocket:
    """Passed to MicroPython's asyncio.open_connection() as `ssl`: it only calls wrap_socket(), and
    this keeps the TCP socket under the TLS one. Closing a TLS socket whose last read or write failed
    (broker gone, connection refused) leaves the TCP socket open (extmod/modtls_mbedtls.c) until the
    GC finalises it, and on an ESP32 an open socket holds lwIP's share of internal RAM: the client
    closes it itself."""

    def __init__(self, context):
        self.context = context
        self.tcp = None

    def wrap_socket(self, sock, **options):
        self.tcp = sock
        return self.context.wrap_socket(sock, **options)

    def close(self):
        tcp, self.tcp = self.tcp, None
        if tcp is not None:
            try:
                tcp.close()
            except OSError:
                pass


async def _close(writer, graceful=False):
    """Close a stream; unless graceful, do not wait on the peer (a dead link never answers a TLS close)."""
    transport = getattr(writer, "transport", None)  # CPython only; MicroPython closes at once
    try:
        writer.close()
        if transport is not None and not graceful:
            transport.abort()
        await asyncio.wait_for(writer.wait_closed(), 1)
    except Exception:  # already broken, or the peer did not answer in time
        if transport is not None:
            transport.abort()


# -- the client --------------------------------------------------------------------------------------

class MQTTClient:
    """A reconnecting MQTT client; start `run()` as a task, then `await publish(...)`.

    backoff_ms = (first, cap): the n-th consecutive failure waits a random time in
    [d/2, d] with d = min(cap, first * 2**n) ("equal jitter", so delays still grow).
    The failure count is reset once a connection stayed up for `stable_ms`.
    `connected`, `connects` (CONNACKs so far) and `last_connect_ms` (TCP + TLS + CONNACK) are
    read-only for callers; `on_connect` is called after each accepted CONNECT.
    `before_connect`, when given, is awaited once the network is up and before every connect
    (the node sets its clock there: TLS checks certificate dates).
    keepalive_s, backoff_ms and connect_timeout_ms have no defaults here: the node's come from its
    settings (rmnode.config, the one place that defines them).
    """

    def __init__(self, client_id, host, port, ssl_context=None, server_hostname=None, *, keepalive_s, backoff_ms,
                 connect_timeout_ms, is_network_up=None, stable_ms=10000, ping_timeout_ms=None, before_connect=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.keepalive_s = keepalive_s
        self.is_network_up = is_network_up or (lambda: True)
        self.backoff_ms = backoff_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.stable_ms = stable_ms
        self.ping_timeout_ms = ping_timeout_ms or max(1000, keepalive_s * 500)
        self.on_connect = None
        self.before_connect = before_connect
        self.connected = False
        self.connects = 0
        self.last_connect_ms = None
        self._reader = self._writer = None
        self._tcp = None  # MicroPython: the TCP socket under the current TLS one (_KeepTcpSocket)
        self._lock = asyncio.Lock()  # one packet at a time on the stream (keepalive vs publish)
        self._up = asyncio.Event()  # set while connected
        self._lost = asyncio.Event()  # set when the current connection ends; reason in _why
        self._why = None
        self._outbox = {}  # packet id -> entry (_ACKED_EVENT, _PACKET, ...), in send order
        self._next_id = 0
        self._closing = False
        self._failures = 0
        self._ping_sent = None
        self._last_tx = self._last_rx = 0

    # -- public API ---------------------------------------------------------------------------------

    async def run(self):
        """Connect, serve, reconnect: forever, until close(). Never raises on network errors."""
        while not self._closing:
            if not self.is_network_up():
                log.info(_TAG, "waiting for network")
                while not self._closing and not self.is_network_up():
                    await sleep_ms(_NETWORK_POLL_MS)
                if self._closing:
                    break
                log.info(_TAG, "network is up")
            if self.before_connect is not None:
                await self.before_connect()
            log.info(_TAG, "connecting to %s:%d as %s" % (self.host, self.port, self.client_id))
            started = ticks_ms()
            try:
                await asyncio.wait_for(self._open(), self.connect_timeout_ms / 1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._backoff("connect failed: " + describe(exc))
                continue
            self.last_connect_ms = ticks_diff(ticks_ms(), started)
            self.connects += 1
            log.info(_TAG, "connected in %d ms" % self.last_connect_ms)
            up_since = ticks_ms()
            await self._serve()
            if ticks_diff(ticks_ms(), up_since) >= self.stable_ms:
                self._failures = 0  # a good connection: start the backoff from the beginning
            if not self._closing:
                await self._backoff("connection lost: " + self._why)

    async def wait_connected(self, timeout_ms=None):
        if timeout_ms is None:
            await self._up.wait()
        else:
            await asyncio.wait_for(self._up.wait(), timeout_ms / 1000)

    async def publish(self, topic, payload, qos=1, timeout_ms=None):
        """Publish; with QoS 1 return only after the matching PUBACK (resent with DUP across reconnects).

        timeout_ms bounds the whole wait; then MQTTError("no PUBACK ...") and the message is dropped.
        None waits as long as it takes.
        """
        if self._closing:
            raise MQTTError("client closed")
        if qos == 0:
            if not self.connected:
                raise MQTTError("not connected")
            await self._send(publish_packet(topic, payload))
            return
        if isinstance(payload, str):
            payload = payload.encode()
        packet_id = self._allocate_id()
        packet = publish_packet(topic, payload, 1, packet_id)  # validates topic and payload first
        entry = [asyncio.Event(), packet, topic, len(payload), False]
        payload = None  # the packet holds the only copy the client keeps
        self._outbox[packet_id] = entry
        try:
            if self.connected:
                try:
                    await self._send_entry(packet_id, entry)
                except Exception as exc:  # the link broke under us: the entry is resent on reconnect
                    self._lose("send failed: " + describe(exc))
            if timeout_ms is None:
                await entry[_ACKED_EVENT].wait()
            else:
                await asyncio.wait_for(entry[_ACKED_EVENT].wait(), timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise MQTTError("no PUBACK for msg id %d on %s within %d ms" % (packet_id, topic, timeout_ms))
        finally:
            self._outbox.pop(packet_id, None)
        if not entry[_ACKED]:
            raise MQTTError("client closed before PUBACK of msg id %d" % packet_id)

    async def close(self):
        """Send DISCONNECT if connected and stop reconnecting."""
        self._closing = True
        if self.connected:
            try:
                await asyncio.wait_for(self._send(DISCONNECT_PACKET), 2)
            except Exception:
                pass
            self._lose("closed")
        for entry in self._outbox.values():
            entry[_ACKED_EVENT].set()  # wake waiters; publish() pops its entry
        log.info(_TAG, "closed")

    # -- internals ----------------------------------------------------------------------------------

    def _allocate_id(self):
        for _ in range(0xFFFF):
            self._next_id = self._next_id % 0xFFFF + 1
            if self._next_id not in self._outbox:
                return self._next_id
        raise MQTTError("no free packet id")

    async def _send(self, packet, writer=None):
        async with self._lock:
            if writer is None:
                writer = self._writer
            if writer is None:
                raise MQTTError("not connected")
            writer.write(packet)
            await writer.drain()
            self._last_tx = ticks_ms()

    async def _send_entry(self, packet_id, entry):
        packet = entry[_PACKET]
        dup = packet[0] & 8  # §4.4: a message sent before goes out again with DUP=1 and the same id
        await self._send(packet)
        packet[0] |= 8
        log.info(_TAG, "published %s (msg id %d, %d bytes%s)" % (entry[_TOPIC], packet_id, entry[_PAYLOAD_LEN],
                                                                 ", dup" if dup else ""))

    async def _backoff(self, why):
        first_ms, cap_ms = self.backoff_ms
        delay = backoff_delay(self._failures, first_ms, cap_ms)
        self._failures += 1
        log.info(_TAG, "%s; retry in %d ms" % (why, delay))
        await sleep_ms(delay)

    async def _open(self):
        gc.collect()  # the handshake allocates records and certificates: start from a compact heap
        largest = internal_ram_largest_block()
        if largest is not None:  # mbedtls's 16.7 KB input buffer must fit in one block (README, "Memory")
            log.info(_TAG, "largest free internal RAM block for TLS: %d bytes" % largest)
        context = self.ssl_context
        if context is not None and _MICROPYTHON:
            context = self._tcp = _KeepTcpSocket(context)
        try:
            if context is None:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            else:  # the host name is always checked (mbedtls needs it with CERT_REQUIRED)
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=context,
                                                               server_hostname=self.server_hostname)
        except BaseException:
            self._close_tcp()
            raise
        try:
            # with do_handshake_on_connect=False the TLS handshake (and its certificate errors)
            # happens on this first write/read
            await self._send(connect_packet(self.client_id, self.keepalive_s), writer)
            first_byte, body = await read_packet(reader)
            if first_byte != _CONNACK:  # §3.2: the server's first packet
                raise MQTTError("expected CONNACK, got packet 0x%02x" % first_byte)
            parse_connack(body)
        except BaseException:
            await _close(writer)
            self._close_tcp()
            raise
        self._reader, self._writer = reader, writer
        self._last_rx = ticks_ms()

    async def _serve(self):
        """Run one accepted connection until it is lost (the reason is then in _why)."""
        self._lost.clear()
        self._ping_sent = None
        self.connected = True
        self._up.set()
        if self.on_connect is not None:
            self.on_connect()
        tasks = (asyncio.create_task(self._read_loop()), asyncio.create_task(self._keepalive()))
        try:
            for packet_id in list(self._outbox):  # in order; new ids cannot collide with these
                entry = self._outbox.get(packet_id)
                if entry is not None and not entry[_ACKED_EVENT].is_set():
                    await self._send_entry(packet_id, entry)
        except Exception as exc:
            self._lose("send failed: " + describe(exc))
        await self._lost.wait()
        self._up.clear()
        self.connected = False
        writer = self._writer
        self._reader = self._writer = None
        for task in tasks:
            task.cancel()
        await _close(writer, self._why == "closed")
        self._close_tcp()

    def _close_tcp(self):
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    def _lose(self, reason):
        if self.connected and not self._lost.is_set():
            self._why = reason
            self._lost.set()

    async def _read_loop(self):
        try:
            while True:
                first_byte, body = await read_packet(self._reader)
                self._last_rx = ticks_ms()
                if first_byte == _PUBACK:
                    packet_id = parse_packet_id(body)
                    entry = self._outbox.get(packet_id)
                    if entry is not None:
                        log.info(_TAG, "acked msg id %d" % packet_id)
                        entry[_ACKED] = True
                        entry[_ACKED_EVENT].set()
                elif first_byte == _PINGRESP:
                    self._ping_sent = None
                elif first_byte == _CONNACK:  # §3.2: one per connection, its first packet
                    raise MQTTError("a second CONNACK")
                else:  # we never subscribe, so not even a PUBLISH is expected
                    raise MQTTError("unexpected packet 0x%02x" % first_byte)
        except asyncio.CancelledError:
            raise
        except EOFError:
            self._lose("closed by broker")
        except Exception as exc:
            self._lose(describe(exc))

    async def _keepalive(self):
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
                elif half_ms and (ticks_diff(now, self._last_tx) >= half_ms or ticks_diff(now, self._last_rx) >= half_ms):
                    self._ping_sent = now
                    await self._send(PINGREQ_PACKET)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lose("ping failed: " + describe(exc))


def internal_ram_largest_block():
    """The largest free block of the ESP-IDF heap (internal RAM outside the GC heap, where mbedtls and
    lwIP allocate), or None where there is no `esp32` module (CPython, the plain unix port). A TLS
    session needs one block of ~16.7 KB for its input buffer, however much is free in pieces; each
    region's tuple is (total, free, largest free block, minimum free) (ports/esp32/modesp32.c)."""
    try:
        import esp32
    except ImportError:
        return None
    return max(region[2] for region in esp32.idf_heap_info(esp32.HEAP_DATA))


def describe(exc):
    """One-line description; mbedtls messages come wrapped in newlines, which would split log lines."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return "%s(%s)" % (name, text) if text else name
