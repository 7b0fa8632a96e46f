"""MQTT 3.1.1 packets byte for byte, the reply parser, and the backoff schedule (firmware rmnode.mqtt)."""

import sys

if sys.implementation.name == "micropython" and ".frozen" not in sys.path:
    sys.path.append(".frozen")  # the runner's MICROPYPATH drops the frozen asyncio package
import asyncio

from rmnode import mqtt
from fwtest import raises, check, equal


def test_remaining_length_boundaries():
    # MQTT 3.1.1 §2.2.3, table 2.4
    equal(mqtt.encode_length(0), b"\x00", "0")
    equal(mqtt.encode_length(127), b"\x7f", "127")
    equal(mqtt.encode_length(128), b"\x80\x01", "128")
    equal(mqtt.encode_length(16383), b"\xff\x7f", "16383")
    equal(mqtt.encode_length(16384), b"\x80\x80\x01", "16384")
    equal(mqtt.encode_length(268435455), b"\xff\xff\xff\x7f", "max")
    raises(ValueError, mqtt.encode_length, 268435456)


def test_connect_packet_exact_bytes():
    equal(mqtt.connect_packet("node1", 120),
          bytes.fromhex("1011" "00044d515454" "04" "02" "0078" "0005") + b"node1", "CONNECT")
    packet = mqtt.connect_packet("n", 60, clean_session=False)
    equal(packet, bytes.fromhex("100d00044d5154540400003c00016e"), "CONNECT keeping the session")
    raises(ValueError, mqtt.connect_packet, "n", 70000)


def test_publish_packet_exact_bytes():
    equal(mqtt.publish_packet("a/b", b"hi", 1, 1), bytes.fromhex("3209" "0003612f62" "0001" "6869"), "QoS 1")
    equal(mqtt.publish_packet("a/b", "hi", 1, 258, dup=True), bytes.fromhex("3a090003612f6201026869"), "DUP")
    equal(mqtt.publish_packet("a/b", b"", 0), bytes.fromhex("30050003612f62"), "QoS 0 empty")
    equal(mqtt.publish_packet("t", b"x", 0, retain=True), bytes.fromhex("3104000174" "78"), "retain")


def test_publish_refuses_wildcards_bad_qos_and_ids():
    for topic in ("", "node/+/x", "node/#", 5):
        raises(ValueError, mqtt.publish_packet, topic, b"", 0)
    raises(ValueError, mqtt.publish_packet, "t", b"", 2, 1)
    raises(ValueError, mqtt.publish_packet, "t", b"", 1, 0)
    raises(ValueError, mqtt.publish_packet, "t", b"", 1, 65536)


def test_small_packets():
    equal(mqtt.PINGREQ_PACKET, b"\xc0\x00", "PINGREQ")
    equal(mqtt.DISCONNECT_PACKET, b"\xe0\x00", "DISCONNECT")


def test_resend_sets_dup_in_place():
    packet = mqtt.publish_packet("a/b", b"hi", 1, 258)
    packet[0] |= 8  # what the client does before a resend after reconnect (§4.4)
    equal(packet, mqtt.publish_packet("a/b", b"hi", 1, 258, dup=True), "DUP resend")


def test_long_payload_uses_multibyte_length():
    packet = mqtt.publish_packet("t", b"x" * 200, 1, 1)
    equal(packet[:3], b"\x32\xcd\x01", "header")  # 2+1+2+200 = 205: 0x4d | 0x80, then 0x01
    equal(len(packet), 3 + 205, "length")


class _Bytes:
    """A StreamReader over fixed bytes (readexactly like asyncio's)."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    async def readexactly(self, n):
        if self.pos + n > len(self.data):
            raise EOFError("stream ended")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk


def _read_all(data, max_body=2):
    reader = _Bytes(data)
    packets = []

    async def main():
        while reader.pos < len(reader.data):
            packets.append(await mqtt.read_packet(reader, max_body))

    asyncio.run(main())
    return packets


def test_read_packet_splits_a_stream():
    stream = b"\x20\x02\x00\x00" + b"\x40\x02\x00\x07" + b"\xd0\x00" + mqtt.publish_packet("x/y", b"z" * 130, 1, 9)
    packets = _read_all(stream, max_body=200)  # a client that subscribes reads PUBLISH bodies too
    equal([p[0] for p in packets], [0x20, 0x40, 0xD0, 0x32], "types")
    equal(mqtt.parse_connack(packets[0][1]), False, "CONNACK")
    equal(mqtt.parse_packet_id(packets[1][1]), 7, "PUBACK id")
    equal(packets[3][1], b"\x00\x03x/y\x00\x09" + b"z" * 130, "PUBLISH body (2-byte length)")


def test_read_packet_rejects_malformed_input():
    raises(mqtt.MQTTError, _read_all, b"\x20\xff\xff\xff\xff\x01")
    raises(EOFError, _read_all, b"\x40\x02\x00")
    raises(mqtt.MQTTError, mqtt.parse_connack, b"\x00")
    raises(mqtt.MQTTError, mqtt.parse_connack, b"\x02\x00")  # reserved acknowledge flag (§3.2.2.1)
    raises(mqtt.MQTTError, mqtt.parse_packet_id, b"\x01")
    raises(mqtt.MQTTError, mqtt.parse_packet_id, b"\x00\x01\x00")


class _Announcing(_Bytes):
    """A stream whose header announces a body it never sends; counts what the reader asked for."""

    def __init__(self, data):
        _Bytes.__init__(self, data)
        self.asked = 0

    async def readexactly(self, n):
        self.asked = max(self.asked, n)
        return await _Bytes.readexactly(self, n)


def _refused(header, max_body=2):
    """The MQTTError read_packet raises for `header`, having asked the stream for no body byte."""
    reader = _Announcing(header)
    error = raises(mqtt.MQTTError, asyncio.run, mqtt.read_packet(reader, max_body))
    check(reader.asked <= 2, "asked for %d bytes of 0x%s" % (reader.asked, header.hex()))
    return str(error)


def test_a_hostile_length_is_refused_before_the_body_is_read():
    # a PUBLISH of 268435455 bytes (256 MiB): one header, no allocation
    check("268435455 bytes: more than the 2" in _refused(b"\x30\xff\xff\xff\x7f"), "256 MiB PUBLISH")
    check("more than the 200" in _refused(b"\x30\xc9\x01", max_body=200), "201 bytes over a bound of 200")
    check("3 bytes: more than the 2" in _refused(b"\x90\x03"), "a SUBACK of 3 bytes")


def test_packets_a_client_must_not_accept_are_refused_by_their_header():
    # §2.2.1: types a server never sends to a client
    for first_byte in (0x00, 0x10, 0x82, 0xA2, 0xC0, 0xE0, 0xF0):
        check("never sent to a client" in _refused(bytes([first_byte, 0])), "type 0x%02x" % first_byte)
    # §2.2.2: reserved flags, and PUBLISH with QoS 3 (§3.3.1.2)
    for header in (b"\x21\x02", b"\x42\x02", b"\x6a\x02", b"\x60\x02", b"\xd8\x00", b"\x36\x02"):
        check("reserved flags" in _refused(header), "flags of 0x%s" % header.hex())
    # §3: fixed-size packets with another Remaining Length
    for header in (b"\x20\x03", b"\x40\x01", b"\x40\x03", b"\xd0\x01", b"\xb0\x00"):
        check("malformed" in _refused(header), "length of 0x%s" % header.hex())


def test_packets_a_client_may_receive_pass_their_header_check():
    for first_byte, length in ((0x20, 2), (0x40, 2), (0x50, 2), (0x62, 2), (0x70, 2), (0xB0, 2), (0xD0, 0),
                               (0x30, 2), (0x3B, 2), (0x90, 2)):
        mqtt.check_header(first_byte, length)


def test_connect_refused_names_the_reason():
    error = raises(mqtt.MQTTError, mqtt.parse_connack, b"\x00\x05")
    check("return code 5 (not authorized)" in str(error), str(error))
    error = raises(mqtt.MQTTError, mqtt.parse_connack, b"\x00\x09")
    check("return code 9 (?)" in str(error), str(error))
    equal(mqtt.parse_connack(b"\x01\x00"), True, "session present")


def test_backoff_grows_with_jitter_up_to_the_cap():
    lowest = lambda low, high: low
    highest = lambda low, high: high
    equal([mqtt.backoff_delay(n, 1000, 60000, lowest) for n in range(8)],
          [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000], "lower bounds")
    equal([mqtt.backoff_delay(n, 1000, 60000, highest) for n in range(8)],
          [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000], "upper bounds")
    equal(mqtt.backoff_delay(100, 1000, 60000, highest), 60000, "no overflow after many failures")
    # with real randomness, below the cap the n-th delay never undercuts the (n-1)-th
    previous = 0
    for n in range(5):  # 200 << 4 = 3200 < cap
        delay = mqtt.backoff_delay(n, 200, 5000)
        check(previous <= delay <= 200 << n, "delay %d after %d failures" % (delay, n))
        previous = delay
    for n in range(5, 12):
        delay = mqtt.backoff_delay(n, 200, 5000)
        check(2500 <= delay <= 5000, "capped delay %d" % delay)


class _Esp32:
    """esp32.idf_heap_info(HEAP_DATA) of a board whose internal RAM lies in pieces: (total, free, largest
    free block, minimum free) per region (ports/esp32/modesp32.c)."""
    HEAP_DATA = 4

    @staticmethod
    def idf_heap_info(capabilities):
        return [(15072, 14656, 14336, 14656), (87144, 12536, 12288, 12536), (113840, 12964, 12800, 4)]


def test_internal_ram_for_tls_is_the_largest_free_block_not_the_free_total():
    equal(mqtt.internal_ram_largest_block(), None, "no esp32 module")
    sys.modules["esp32"] = _Esp32
    try:
        # 40 KB free, but a TLS session's 16.7 KB input buffer needs one block
        equal(mqtt.internal_ram_largest_block(), 14336, "largest block")
    finally:
        del sys.modules["esp32"]
