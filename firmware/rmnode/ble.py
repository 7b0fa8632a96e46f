"""BLE (GATT) transport for protocomm, as ESP-IDF's protocomm_nimble serves it (docs/protocol.md 1.2).

One primary service; one READ|WRITE characteristic per endpoint, each with a 0x2901 descriptor naming
the endpoint (clients build their endpoint table from those). A client writes its request, then reads
the response from the same characteristic; requests and responses longer than the MTU travel as ATT
long writes and reads. The session is the connection: one central at a time.

_IRQ_GATTS_READ_REQUEST reaches Python on an ESP32: its port runs BLE events synchronously
(MICROPY_PY_BLUETOOTH_USE_SYNC_EVENTS in ports/esp32/mpconfigport.h), though MicroPython's documentation
still says the event is STM32-only.

Each request is served inside the write's IRQ handler, and the read that follows only returns what is
already there, as ESP-IDF's protocomm_nimble computes its response in the write callback. The handler
must never wait (docs/protocol.md 1.2): on an ESP32 it runs on the NimBLE host task, which is not a
MicroPython thread (extmod/modbluetooth.c invoke_irq_handler, v1.24-v1.26), so a garbage collection by
the main task never scans its stack (ports/esp32/gccollect.c, mpthreadport.c mp_thread_gc_others); a
Python call whose state exceeds 11 words keeps it on the GC heap (py/objfun.c VM_MAX_STATE_ON_STACK), so
a handler that released the GIL and blocked (a sleep, a print of more than 20 characters, a socket, a
Wi-Fi scan or join) could have its own frames freed and reused under it. Holding the GIL from entry to
return, the handler is the only Python running (the VM's periodic GIL hand-over is skipped while the
scheduler is locked, py/vm.c, and invoke_irq_handler locks it, mp_sched_lock); a collection it triggers
itself scans its own stack and every MicroPython thread's. So: no sleeping, log lines held for the main
task (HeldLines), a Wi-Fi scan or join left to the main task (rmnode.prov_endpoints, may_block=False). The price is stack: Python gets
4 KiB of C stack there (CONFIG_BT_NIMBLE_TASK_STACK_SIZE 6144 in ports/esp32/boards/sdkconfig.ble, less
1024 in mpconfigport.h and the 1024 stack-check margin), about ten Python call levels, which is why the
handler calls protocomm directly and the Security 1 path is kept shallow.

Bad input from a central costs that central an ATT error or its connection and one log line: a read
before any write, a read of a response that failed, a second central while one is connected, a central
silent for `idle_s` (connected without a request, or leaving its response unread). Writes longer than
the attribute buffer are truncated by the stack (then fail to decrypt or decode: an ATT error on the read).
"""

import asyncio

import time
from binascii import unhexlify

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log

try:
    from _thread import get_ident
except ImportError:  # a port without threads runs no IRQ handler on another task
    def get_ident():
        return 0

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


class HeldLines:
    """The lines the IRQ handler logs, held for the main task to print (rmnode.log's sink): on an ESP32 printing
    more than 20 characters releases the GIL (ports/esp32/mphalport.c mp_hal_stdout_tx_strn,
    MICROPY_PY_STRING_TX_GIL_THRESHOLD in mpconfigport.h, v1.24-v1.26) and waits on the UART. A ring that the
    handler's thread fills and the main task empties: one writer, one reader, so no lock is needed (the unix
    port runs both at once). Allocated once; lines beyond it are counted, not kept."""

    def __init__(self, size=12):
        self._lines = [None] * size
        self._in = 0  # lines written so far: the holder alone moves it
        self._out = 0  # lines printed so far: flush alone moves it
        self._lost = 0
        self._holder = None  # the thread whose lines are held, while it holds

    def hold(self):
        self._holder = get_ident()

    def unhold(self):
        self._holder = None

    def take(self, line):
        if self._holder is None or self._holder != get_ident():
            return False
        size = len(self._lines)
        if line is None or self._in - self._out >= size:
            self._lost += 1
        else:
            self._lines[self._in % size] = line
            self._in += 1
        return True

    def flush(self):
        """Main task: print the held lines, in order. Returns how many it printed."""
        printed = 0
        size = len(self._lines)
        while self._out != self._in:
            slot = self._out % size
            line, self._lines[slot] = self._lines[slot], None
            self._out += 1
            print(line)
            printed += 1
        if self._lost:
            lost, self._lost = self._lost, 0
            print("log: %d lines dropped while held" % lost)
        return printed


class ProvBleServer:
    """Protocomm over GATT. `dispatch(session_id, endpoint, body, may_block) -> bytes` raises on failure (as
    rmnode.protocomm.Protocomm.dispatch; called here with may_block=False, from the IRQ handler);
    `session_closed(session_id)` when a central's session ends. `bluetooth` is the module to use
    (MicroPython's; a test may pass another)."""

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
        self._handle = None  # the characteristic last written, whose response a read returns
        self._code = 0  # that read's answer: 0, or the ATT error when the request failed
        self._read = True  # whether the central read that response
        self._since = 0  # ticks of the central's last sign of life (connect, write, read)
        self._tasks = []
        self._held = HeldLines()

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
        log.sink = self._held.take
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
            log.sink = None
            self._held.flush()
            log.info(_TAG, "stopped, radio off")

    def response_read(self):
        """Whether no response waits to be read: the central read the last one, or there is no central."""
        return self._conn is None or self._read

    def _advertise(self):
        # Service UUID in the advertisement, name in the scan response (docs/protocol.md 1.2)
        uuid = bytes(reversed(unhexlify(self.service_uuid.replace("-", ""))))
        self._ble.gap_advertise(_ADV_INTERVAL_US, _advert(0x01, b"\x06") + _advert(0x07, uuid),
                                resp_data=_advert(0x09, self.name.encode()))

    # -- IRQ handler: the BLE host task, GIL held throughout, ~4 KiB of stack; never waits ------------------
    def _irq(self, event, data):
        # An exception escaping the handler makes MicroPython drop the handler for good (extmod/modbluetooth.c):
        # the node would stop serving BLE. None is expected; if one comes, one line and the central gets an error.
        self._held.hold()
        try:
            if event == _IRQ_GATTS_WRITE:
                # served right here, not in a method of its own: every call level costs ~400 bytes of the 4 KiB
                handle = data[1]
                if data[0] != self._conn or handle not in self._names:
                    return None
                request = self._ble.gatts_read(handle)
                if not request:  # ESP-IDF ignores an empty write
                    return None
                self._handle, self._read, self._since = handle, False, time.ticks_ms()
                try:
                    response, self._code = self._dispatch(self._session, self._names[handle], request, False), 0
                except Exception:  # protocomm logged why (one line); the central gets an ATT error on its read
                    response, self._code = b"", _ATT_INVALID_PDU  # what ESP-IDF's NimBLE transport answers
                self._ble.gatts_write(handle, response)
            elif event == _IRQ_GATTS_READ_REQUEST:
                return self._answer_read(data[0], data[1])
            elif event == _IRQ_CENTRAL_CONNECT:
                self._connected(data[0])
            elif event == _IRQ_CENTRAL_DISCONNECT:
                self._disconnected(data[0])
        except Exception as e:
            log.error(_TAG, "BLE event %d failed: %s" % (event, type(e).__name__))
            return _ATT_UNLIKELY_ERROR if event == _IRQ_GATTS_READ_REQUEST else None
        finally:
            self._held.unhold()
            self._flag.set()  # the main task prints what was logged here, closes sessions
        return None

    def _answer_read(self, conn, handle):
        if handle not in self._names:
            return 0  # a descriptor: its endpoint name
        if conn != self._conn:
            return _ATT_UNLIKELY_ERROR
        if handle != self._handle:
            log.warning(_TAG, "read of %s before any write refused" % self._names[handle])
            return _ATT_READ_NOT_PERMITTED
        self._read, self._since = True, time.ticks_ms()
        return self._code

    def _connected(self, conn):
        if self._conn is not None:
            log.warning(_TAG, "second central refused: one at a time")
            self._ble.gap_disconnect(conn)
            return
        self._conn, self._session = conn, self._session + 1
        self._handle, self._read, self._since = None, True, time.ticks_ms()
        log.info(_TAG, "central connected (session %d)" % self._session)

    def _disconnected(self, conn):
        if conn != self._conn:
            return
        self._conn, self._handle, self._read = None, None, True
        self._closed.append(self._session)
        log.info(_TAG, "central disconnected (session %d); advertising again" % self._session)
        self._advertise()

    # -- main task: held log lines, sessions, the idle watch ------------------------------------------
    async def _serve(self):
        while True:
            await self._flag.wait()
            self._held.flush()
            while self._closed:
                self._session_closed(self._closed.pop(0))

    async def _watch(self):
        # One central at a time: a silent one (never sending, or never reading its response) must not
        # keep the node from the next central.
        while True:
            await asyncio.sleep_ms(500)
            conn = self._conn
            if conn is None:
                continue
            if time.ticks_diff(time.ticks_ms(), self._since) > self.idle_ms:
                log.warning(_TAG, "central silent for %d s%s (session %d): disconnecting"
                            % (self.idle_ms // 1000, "" if self._read else ", its response unread", self._session))
                self._since = time.ticks_ms()
                self._ble.gap_disconnect(conn)
