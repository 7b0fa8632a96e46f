"""BLE (GATT) transport for protocomm, as ESP-IDF's protocomm_nimble serves it (docs/protocol.md 1.2).

One primary service; one READ|WRITE characteristic per endpoint, each with a 0x2901 descriptor naming
the endpoint (clients build their endpoint table from those). A client writes its request, then reads
the response from the same characteristic; requests and responses longer than the MTU travel as ATT
long writes and reads. The session is the connection: one central at a time.

_IRQ_GATTS_READ_REQUEST reaches Python on an ESP32: its port runs BLE events synchronously
(MICROPY_PY_BLUETOOTH_USE_SYNC_EVENTS in ports/esp32/mpconfigport.h), though MicroPython's documentation
still says the event is STM32-only.

The work is not done in the IRQ handler: on an ESP32 it runs in the BLE host task on a ~4 KiB stack,
too small for protocomm and X25519. A write is queued and the main task (asyncio, `serve`) dispatches
it; the read request that follows waits in the handler, sleeping, until the response is there. The host
task waits meanwhile, as it does in ESP-IDF, whose handlers run synchronously in that task.

Bad input from a central costs that central an ATT error or its connection and one log line: a read
before any write, a read of a response that failed, a second central while one is connected, a central
silent for `idle_s` (connected without a request, or leaving its response unread). Writes longer than
the attribute buffer are truncated by the stack (then fail to decrypt or decode: an ATT error on the read).
"""

try:
    import asyncio
except ImportError:  # older MicroPython firmware
    import uasyncio as asyncio

import time
from binascii import unhexlify

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log

_TAG = const("ble")

# MicroPython's bluetooth IRQ events and flags (docs.micropython.org, library/bluetooth)
_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_READ_REQUEST = const(4)
_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
# ATT error codes (Bluetooth Core, Vol 3 Part F 3.4.1.1)
_ATT_READ_NOT_PERMITTED = const(0x02)
_ATT_INVALID_PDU = const(0x04)
_ATT_UNLIKELY_ERROR = const(0x0E)

# docs/protocol.md 1.2: the service RainMaker's examples provision on
DEFAULT_SERVICE_UUID = const("021a9004-0382-4aea-bff4-6b3f1c5adfb4")
# The ATT MTU the node offers; ESP-IDF's provisioning settles on 256 with phones.
MTU = const(256)
# Bytes a central's write may carry. NimBLE's attribute buffers are 20 bytes and truncate longer writes
# unless enlarged; each costs its size in the GC heap. The largest request is a cloud_user_assoc with a
# 128-character user id and secret key, about 280 bytes; ESP-IDF's Bluedroid build takes 257.
MAX_REQUEST = const(512)
_ADV_INTERVAL_US = const(160000)  # 0x100 * 0.625 ms, as ESP-IDF's simple_ble
# Sleep steps of the read handler's wait: two FreeRTOS ticks (10 ms each on an ESP32), so that sleep_ms
# blocks with the GIL released; a shorter sleep busy-waits holding it (ports/esp32/mphalport.c).
_WAIT_STEP_MS = const(20)
# The longest a read waits for its response: a Wi-Fi scan blocks the interpreter for up to 3 s and a
# Security 1 handshake costs a few seconds on an ESP32; a central's ATT transaction times out at 30 s.
_WAIT_MS = const(25000)

# An exchange's state: which characteristic was written, and whether its response is ready
_NONE = const(0)
_PENDING = const(1)
_READY = const(2)

# docs/protocol.md 1.2: the 16-bit ids of the fixed endpoints, 0xFF4F upwards in this order; other
# endpoints get 0xFF54 upwards (sorted by name: MicroPython's dicts keep no insertion order)
_FIXED = ("prov-ctrl", "prov-scan", "prov-session", "prov-config", "proto-ver")
_FIRST_FIXED = const(0xFF4F)
_FIRST_EXTRA = const(0xFF54)


def characteristic_uuid(service_uuid, short):
    """The endpoint's UUID: the service UUID with its third and fourth bytes (string positions 4..7) replaced."""
    return service_uuid[:4] + "%04x" % short + service_uuid[8:]


def endpoint_ids(endpoints):
    """[(endpoint name, 16-bit id)] in registration order."""
    ids = [(name, _FIRST_FIXED + i) for i, name in enumerate(_FIXED) if name in endpoints]
    extra = sorted(name for name in endpoints if name not in _FIXED)
    return ids + [(name, _FIRST_EXTRA + i) for i, name in enumerate(extra)]


def valid_service_uuid(text):
    """A 128-bit UUID string as 8-4-4-4-12 hex digits."""
    if not isinstance(text, str) or len(text) != 36:
        return False
    for i, ch in enumerate(text):
        if (ch != "-") if i in (8, 13, 18, 23) else ch not in "0123456789abcdefABCDEF":
            return False
    return True


def _advert(kind, payload):
    return bytes((len(payload) + 1, kind)) + payload


class ProvBleServer:
    """Protocomm over GATT. `dispatch(session_id, endpoint, body) -> bytes` raises on failure (as
    rmnode.prov.Provisioning.dispatch); `session_closed(session_id)` when a central's session ends.
    `bluetooth` is the module to use (MicroPython's; a test may pass another)."""

    def __init__(self, name, service_uuid, endpoints, dispatch, session_closed, idle_s=60, bluetooth=None):
        self.name = name
        self.service_uuid = service_uuid.lower()
        self._endpoints = endpoints
        self._dispatch = dispatch
        self._session_closed = session_closed
        self.idle_ms = idle_s * 1000
        self._bt = bluetooth
        self._ble = None
        self._names = {}  # value handle -> endpoint name
        self._flag = None
        self._conn = None  # the connected central's handle
        self._session = 0  # its session id: a counter (NimBLE reuses connection handles)
        self._closed = []  # session ids whose central left, for the main task to close
        # the current exchange; _seq tells a response from one a newer write replaced
        self._seq = 0
        self._handle = None
        self._request = None
        self._state = _NONE
        self._code = 0
        self._read = False  # whether the central read the ready response
        self._since = 0  # ticks of the central's last sign of life (connect, write, read)
        self._tasks = []

    # -- lifecycle (main task) ------------------------------------------------------------------
    async def start(self):
        bt = self._bt
        if bt is None:
            import bluetooth as bt
        self._flag = asyncio.ThreadSafeFlag()
        ble = bt.BLE()
        ble.active(True)
        ble.config(gap_name=self.name, mtu=MTU)
        ids = endpoint_ids(self._endpoints)
        chars = tuple((bt.UUID(characteristic_uuid(self.service_uuid, short)), _FLAG_READ | _FLAG_WRITE,
                       ((bt.UUID(0x2901), _FLAG_READ),)) for _, short in ids)
        (handles,) = ble.gatts_register_services(((bt.UUID(self.service_uuid), chars),))
        for i, (name, _) in enumerate(ids):
            value_handle = handles[2 * i]
            ble.gatts_write(handles[2 * i + 1], name.encode())
            ble.gatts_set_buffer(value_handle, MAX_REQUEST)
            self._names[value_handle] = name
        self._ble = ble
        ble.irq(self._irq)
        self._advertise()
        self._tasks = [asyncio.create_task(self._serve()), asyncio.create_task(self._watch())]
        log.info(_TAG, "advertising %s, service %s, %d endpoints" % (self.name, self.service_uuid, len(ids)))

    def stop(self):
        """Radio off (the node reboots into station mode next); the central, if any, is dropped."""
        ble, self._ble = self._ble, None
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if ble is not None:
            ble.irq(None)
            ble.active(False)
            if self._conn is not None:
                self._conn = None
                self._session_closed(self._session)
            log.info(_TAG, "stopped, radio off")

    def response_read(self):
        """Whether no response waits to be read: the central read the last one, or there is no central."""
        return self._conn is None or self._state != _READY or self._read

    def _advertise(self):
        # Service UUID in the advertisement, name in the scan response (docs/protocol.md 1.2)
        uuid = bytes(reversed(unhexlify(self.service_uuid.replace("-", ""))))
        self._ble.gap_advertise(_ADV_INTERVAL_US, _advert(0x01, b"\x06") + _advert(0x07, uuid),
                                resp_data=_advert(0x09, self.name.encode()))

    # -- IRQ handler: BLE host task, small stack; queue work, answer reads -------------------------
    def _irq(self, event, data):
        # An exception escaping the handler makes MicroPython drop the handler for good (extmod/modbluetooth.c):
        # the node would stop serving BLE. None is expected; if one comes, one line and the central gets an error.
        try:
            return self._on_event(event, data)
        except Exception as e:
            log.error(_TAG, "BLE event %d failed: %s" % (event, type(e).__name__))
            return _ATT_UNLIKELY_ERROR if event == _IRQ_GATTS_READ_REQUEST else None

    def _on_event(self, event, data):
        if event == _IRQ_GATTS_WRITE:
            conn, handle = data[0], data[1]
            if conn == self._conn and handle in self._names:
                request = self._ble.gatts_read(handle)
                if request:  # ESP-IDF ignores an empty write
                    self._seq += 1
                    self._handle, self._request, self._state = handle, request, _PENDING
                    self._since = time.ticks_ms()
                    self._flag.set()
        elif event == _IRQ_GATTS_READ_REQUEST:
            if data[1] not in self._names:
                return 0  # a descriptor: its endpoint name
            if data[0] != self._conn:
                return _ATT_UNLIKELY_ERROR
            return self._await_response(data[1])
        elif event == _IRQ_CENTRAL_CONNECT:
            conn = data[0]
            if self._conn is not None:
                log.warning(_TAG, "second central refused: one at a time")
                self._ble.gap_disconnect(conn)
                return None
            self._conn, self._session = conn, self._session + 1
            self._handle, self._request, self._state = None, None, _NONE
            self._since = time.ticks_ms()
            log.info(_TAG, "central connected (session %d)" % self._session)
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] == self._conn:
                self._conn = None
                self._handle, self._request, self._state = None, None, _NONE
                self._closed.append(self._session)
                self._flag.set()
                log.info(_TAG, "central disconnected (session %d); advertising again" % self._session)
                self._advertise()
        return None

    def _await_response(self, handle):
        if handle != self._handle or self._state == _NONE:
            log.warning(_TAG, "read of %s before any write refused" % self._names[handle])
            return _ATT_READ_NOT_PERMITTED
        self._since = time.ticks_ms()
        waited = 0
        while self._state == _PENDING and handle == self._handle and waited < _WAIT_MS:
            time.sleep_ms(_WAIT_STEP_MS)  # lets the main task run (the GIL is released while sleeping)
            waited += _WAIT_STEP_MS
        if handle != self._handle or self._state != _READY:
            log.warning(_TAG, "no response from %s within %d ms" % (self._names[handle], waited))
            return _ATT_UNLIKELY_ERROR
        self._since = time.ticks_ms()
        self._read = True
        return self._code

    # -- main task: protocomm work, sessions, the idle watch ----------------------------------------
    async def _serve(self):
        while True:
            await self._flag.wait()
            while self._closed:
                self._session_closed(self._closed.pop(0))
            if self._state != _PENDING:
                continue
            seq, handle, request, session = self._seq, self._handle, self._request, self._session
            self._request = None
            try:
                response, code = self._dispatch(session, self._names[handle], request), 0
            except Exception:  # protocomm logged why (one line); the central gets an ATT error on its read
                response, code = b"", _ATT_INVALID_PDU  # what ESP-IDF's NimBLE transport answers a handler error
            if seq == self._seq and session == self._session and self._ble is not None:
                if not code:
                    self._ble.gatts_write(handle, response)
                self._code, self._read, self._state = code, False, _READY

    async def _watch(self):
        # One central at a time: a silent one (never sending, or never reading its response) must not
        # keep the node from the next central.
        while True:
            await asyncio.sleep_ms(500)
            conn = self._conn
            if conn is None or self._state == _PENDING:
                continue
            if time.ticks_diff(time.ticks_ms(), self._since) > self.idle_ms:
                log.warning(_TAG, "central silent for %d s%s (session %d): disconnecting"
                            % (self.idle_ms // 1000, ", its response unread" if self._state == _READY and
                               not self._read else "", self._session))
                self._since = time.ticks_ms()
                self._ble.gap_disconnect(conn)
