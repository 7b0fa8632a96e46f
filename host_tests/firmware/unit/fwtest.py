"""Helpers for the firmware unit tests; run under MicroPython's unix port and under CPython."""

import os

from rmnode import pb
# the client side of Security 1 on the firmware's own primitives, shared with `rmkit bench`
# (tools/rmkit/benchmarks/sec1_client.py, on sys.path / MICROPYPATH with firmware/)
from sec1_client import Sec1Client  # noqa: F401

# Enum values of the protos (protos.txt, next to this file), written down here independently of the firmware,
# which keeps its own copies as const()s.
STATUS_INVALID_ARGUMENT = 4
STATUS_INTERNAL_ERROR = 5
STA_CONNECTED = 0
STA_CONNECTING = 1
STA_DISCONNECTED = 2
STA_CONNECTION_FAILED = 3
FAIL_AUTH_ERROR = 0
FAIL_NETWORK_NOT_FOUND = 1
CTRL_RESP_RESET = 2
MAPPING_INVALID_PARAM = 1
MAPPING_INVALID_STATE = 2

HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."


def raises(exc_type, fn, *args):
    """Calls fn(*args), returns the exception it raised; fails unless it is an exc_type."""
    try:
        fn(*args)
    except exc_type as e:
        return e
    raise AssertionError("%s not raised" % exc_type.__name__)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def equal(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r" % (what, expected, actual))


class Rng:
    """Deterministic xorshift32, identical on both interpreters."""

    def __init__(self, seed):
        self.state = seed or 1

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x

    def below(self, n):
        return self.next() % n

    def bytes(self, n):
        return bytes(self.next() & 0xFF for _ in range(n))


_counter = [0]


def tmpdir(tag):
    """A fresh empty directory under $FW_TMP (or /tmp)."""
    base = os.getenv("FW_TMP") or "/tmp"
    _counter[0] += 1
    path = "%s/fw_%s_%d_%d" % (base, tag, _counter[0], int.from_bytes(os.urandom(4), "big"))
    os.mkdir(path)
    return path


def write(path, data):
    mode = "wb" if isinstance(data, (bytes, bytearray)) else "w"
    with open(path, mode) as f:
        f.write(data)


GOLDEN_SCHEMAS = {
    "prov-session": pb.SessionData,
    "cloud_user_assoc": pb.RMakerConfigPayload,
    "prov-config": pb.WiFiConfigPayload,
    "ch_resp": pb.RMakerChRespPayload,
}


def golden_vectors():
    """[(description, schema, bytes)] from golden_vectors.txt."""
    vectors = []
    with open(HERE + "/golden_vectors.txt") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            words = line.split()
            schema = GOLDEN_SCHEMAS[words[0]]
            vectors.append((" ".join(words[:-1]), schema, bytes.fromhex(words[-1])))
    return vectors


class FakeStation:
    """Stands in for rmnode.wifi.Wifi in endpoint tests: records calls, reports scripted states."""

    def __init__(self, scan_results=None):
        from rmnode.wifi import StationStatus
        self.StationStatus = StationStatus
        self.joins = []
        self.disconnects = 0
        self.current = StationStatus(STA_DISCONNECTED)
        self.scan_results = scan_results or []

    def connect(self, ssid, passphrase, bssid=None):
        self.joins.append((ssid, passphrase, bssid))
        self.current = self.StationStatus(STA_CONNECTING)

    def disconnect(self):
        self.disconnects += 1
        self.current = self.StationStatus(STA_DISCONNECTED)

    def status(self):
        return self.current

    def scan(self):
        return list(self.scan_results)


class FakeConfig:
    def __init__(self, sec_ver=1, pop="abcd1234", node_id="node-1", user_mapping="secret", key_path=None):
        self.sec_ver = sec_ver
        self.pop = pop
        self.node_id = node_id
        self.user_mapping = user_mapping
        self.key_path = key_path


def sec1_session(dispatch, session_id, pop):
    client = Sec1Client(pop)
    resp0 = dispatch(session_id, "prov-session", client.cmd0())
    resp1 = dispatch(session_id, "prov-session", client.cmd1(resp0))
    client.check_resp1(resp1)
    return client


def secured(dispatch, client, session_id, endpoint, schema, request):
    """Encrypts `request` (a dict), sends it, returns the decoded response dict."""
    body = client.crypt(pb.encode(schema, request))
    return pb.decode(schema, client.crypt(dispatch(session_id, endpoint, body)))


def with_c_stack_left(left, function):
    """function() on the unix port with no more than `left` bytes of an ESP32-sized C stack free; returns its
    result or the exception it raised (CPython: calls it directly)."""
    import sys

    if sys.implementation.name != "micropython":
        try:
            return function()
        except Exception as e:  # noqa: BLE001 - handed back as on the unix port
            return e
    import esp32_stack
    import micropython

    limit = esp32_stack.ESP32_STACK_BUDGET - left

    def burn():
        if micropython.stack_use() < limit:
            return burn()
        try:
            return function()
        except Exception as e:  # noqa: BLE001 - handed back to the test's thread
            return e

    return esp32_stack.run(burn)
