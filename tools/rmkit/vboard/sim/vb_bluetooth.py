# Simulated `bluetooth` for the virtual board: MicroPython's BLE API (the subset a peripheral uses)
# over a host-side radio, rmkit/vboard/ble_radio.py (a Bumble host stack holding the GATT server),
# reached on 127.0.0.1:$VBOARD_BLE, one JSON object a line. Installed as sys.modules["bluetooth"].
#
# As on an ESP32 (MicroPython's NimBLE binding):
# - attribute buffers are 20 bytes; a central's longer write is silently truncated (the radio does
#   it) unless gatts_set_buffer() enlarged the buffer; a local gatts_write() grows it;
# - the MTU offered is 23 until config(mtu=N); the central's exchange raises _IRQ_MTU_EXCHANGED;
# - the IRQ handler runs in another context, the BLE host task: here a thread of its own (the reader of
#   the radio's wire) while the firmware's own code keeps running, and while it runs vb_irq knows it:
#   what would release the GIL and block on an ESP32 (a sleep, a long print, a socket, a wait in
#   select or on a lock, Wi-Fi connect or scan) is reported as a FAULT on the console.
# - the handler gets the C stack a board gives it, HANDLER_STACK bytes, see _HandlerStack; deeper calls
#   raise RuntimeError("maximum recursion depth exceeded"), as on a board.
# - computing in the handler is legitimate: ESP-IDF's own protocomm_nimble computes its responses,
#   X25519 included, in the NimBLE host task. Only a handler running longer than IRQ_SLOW_MS gets a
#   warning (see _call).
#   An exception escaping the handler is printed and the handler dropped (no more IRQs), as on a board.
# - gatts_set_buffer() takes its bytes from the GC heap, as MicroPython's attribute buffers do.
# - every method but active() and irq() raises OSError(EPERM) while the radio is off.
import socket as _s
import json
import micropython
import os
import sys
import time
import _thread
import vb_esp32  # the internal-RAM model: NimBLE's controller, pools and host task
import vb_irq

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020
# The C stack a BLE IRQ handler has for Python on an ESP32: the NimBLE host task's 6144 bytes
# (CONFIG_BT_NIMBLE_TASK_STACK_SIZE, boards/sdkconfig.ble) less 1024 for NimBLE's own frames
# (MICROPY_PY_BLUETOOTH_SYNC_EVENT_STACK_SIZE) less the stack-check margin of 1024
# (MICROPY_STACK_CHECK_MARGIN, py/cstack.h mp_cstack_init_with_top; ports/esp32/mpconfigport.h, v1.26.1).
HANDLER_STACK = 4096
# Bytes of this 64-bit unix port's C stack per byte of an ESP32's for the same Python calls, in percent.
# Measured here with micropython.stack_use(): a call level takes 416 bytes (a function or a method),
# 448-464 with a try block, 320 when its state is over 11 words and so on the GC heap. On an ESP32
# (Xtensa) a BLE IRQ handler with the same 4096 bytes (v1.23) raised RuntimeError on its 11th nested
# method call (github.com/antirez/freakwan/issues/21): about 370-410 bytes a level there. Here a handler's chain of
# plain methods fails at its 11th call too (with a try block in each, at its 10th): 100, no kinder.
STACK_RATIO_PERCENT = 100
# The thread reading the radio, whose handler calls are the BLE host task's: the smallest stack the
# unix port gives (PTHREAD_STACK_MIN), of which it lets Python use all but THREAD_STACK_OVERFLOW_MARGIN
# (ports/unix/mpthreadport.c, v1.26.1); the handler gets HANDLER_STACK of that, see _HandlerStack.
IRQ_THREAD_STACK = 16 * 1024
_UNIX_OVERFLOW_MARGIN = 8192
_THREAD_STARTS = 8  # attempts at a thread whose stack limit is right, see _HandlerStack.measure
# A handler that runs this long nears a central's 30 s ATT transaction timeout: the central gives up on the
# request. Shorter ones are not reported: a board computes in the handler too (ESP-IDF's protocomm_nimble does,
# X25519 included). Measured on the board's own clock: on a board paced to an ESP32's speed (--cpu esp32,
# rmkit.vboard.cpu) that is an ESP32's time already; at full speed a handler takes some 100 times less here
# than on a board, which is why the BLE flows are also tested paced (host_tests/e2e/test_esp32_speed.py).
IRQ_SLOW_MS = int(os.getenv("VBOARD_IRQ_SLOW_MS") or 20000)  # the variable: for the simulator's own tests
_EPERM = 1
_EINVAL = 22


class UUID:
    def __init__(self, value):
        if isinstance(value, UUID):
            self._s = value._s
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFF:
                raise ValueError("invalid UUID")
            self._s = "%04X" % value
        elif isinstance(value, str):
            hexpart = value.replace("-", "")
            if len(hexpart) != 32:
                raise ValueError("invalid UUID")
            int(hexpart, 16)
            self._s = value.upper()
        else:
            raise TypeError("invalid UUID")

    def __eq__(self, other):
        return isinstance(other, UUID) and other._s == self._s

    def __hash__(self):
        return hash(self._s)

    def __str__(self):
        return "UUID(0x%s)" % self._s.lower() if len(self._s) == 4 else "UUID('%s')" % self._s.lower()

    __repr__ = __str__


class _HandlerStack:
    """Calls an IRQ handler with the C stack a board's BLE host task leaves it: HANDLER_STACK bytes, times
    STACK_RATIO_PERCENT. The unix port checks each call against the limit its thread started with,
    counting from the thread's top as micropython.stack_use() does; so the handler is called from deep
    enough in the thread, reached by recursing. Made and used in the thread that runs the handlers."""

    def __init__(self, top):
        self.top = top

    @staticmethod
    def measure():
        """The calling thread's _HandlerStack, found by recursing until the stack check stops it; None when
        the thread has no overflow margin below its limit. The unix port takes the margin off the thread's
        size after starting it (mp_thread_create, ports/unix/mpthreadport.c) while the thread reads the size
        as it starts (thread_entry, py/modthread.c; v1.26.1): a thread that wins that race may recurse past
        the end of its stack, a SIGSEGV. Measuring stops short of that."""
        seen = []
        try:
            _probe(seen, IRQ_THREAD_STACK - _UNIX_OVERFLOW_MARGIN + 1024)
            return None  # no RuntimeError where the margin should have begun
        except RuntimeError:  # the call after seen[-1] failed the stack check, the one after seen[-2] passed
            pass
        step = seen[-1] - seen[-2]
        limit = seen[-1] - step // 2
        # recursing stops within a step past `top`: on average the handler has its stack left
        return _HandlerStack(limit - HANDLER_STACK * STACK_RATIO_PERCENT // 100 - step // 2)

    def call(self, handler, ev, data):
        return _descend(self.top, handler, ev, data)


def _print_handler_exception(exc):
    # as a board prints it: the handler's frames only, not this module's that called it
    import io

    text = io.StringIO()
    sys.print_exception(exc, text)
    for line in text.getvalue().split("\n"):
        if line and 'vb_bluetooth.py"' not in line:
            print(line)


def _probe(seen, bound):
    used = micropython.stack_use()
    if used > bound:
        return
    seen.append(used)
    _probe(seen, bound)


def _descend(top, handler, ev, data):
    if micropython.stack_use() < top:
        return _descend(top, handler, ev, data)
    return handler(ev, data)


class BLE:
    _instance = None

    def __new__(cls):
        if BLE._instance is None:
            BLE._instance = object.__new__(cls)
            BLE._instance._init()
        return BLE._instance

    def __init__(self):
        pass

    def _init(self):
        self._sock = None
        self._on = False
        self._handler = None
        self._values = {}
        self._buffers = {}  # value handle -> the GC-heap buffer gatts_set_buffer() sized
        self._mtu = 23
        self._name = b"MPY ESP32"
        self._send_lock = _thread.allocate_lock()
        self._reply_lock = _thread.allocate_lock()
        self._reply = None

    # ---- wire -------------------------------------------------------------------------------
    def _send(self, msg):
        line = json.dumps(msg) + "\n"
        with self._send_lock:
            self._sock.write(line)

    def _check(self):
        if not self._on:
            raise OSError(_EPERM)

    def _start_reader(self, sock, attempt=1):
        _thread.stack_size(IRQ_THREAD_STACK)
        _thread.start_new_thread(self._reader, (sock, attempt))
        _thread.stack_size(0)

    def _reader(self, sock, attempt):
        stack = _HandlerStack.measure()
        if stack is None and attempt < _THREAD_STARTS:
            self._start_reader(sock, attempt + 1)  # another thread, which will most likely have its margin
            return
        if stack is None:
            print("vb_bluetooth: no thread with a stack margin; IRQ handlers get the unix port's stack")
            stack = _HandlerStack(0)
        while True:
            try:
                line = sock.readline()
            except OSError:
                line = b""
            if not line:
                return
            msg = json.loads(line)
            if "re" in msg:
                self._reply = msg["re"]
                self._reply_lock.release()
                continue
            ev = msg["ev"]
            if ev == 3:  # the radio already truncated it to the attribute's buffer
                self._values[msg["h"]] = bytes.fromhex(msg["v"])
                data = (msg["c"], msg["h"])
            elif ev == 4:
                data = (msg["c"], msg["h"])
            elif ev == 21:
                data = (msg["c"], msg["mtu"])
            else:
                data = (msg["c"], msg["at"], memoryview(bytes.fromhex(msg["a"])))
            result = self._call(stack, ev, data)
            if ev == 4:
                self._send({"op": "rr", "id": msg["id"], "code": result or 0})

    def _call(self, stack, ev, data):
        handler = self._handler
        if handler is None:
            return None
        t0 = time.ticks_ms()
        vb_irq.enter()
        try:
            result = stack.call(handler, ev, data)
        except Exception as exc:  # as on the board: printed, and the handler is dropped for good
            vb_irq.leave()  # printed by MicroPython, not by the handler
            print("Unhandled exception in IRQ callback handler")
            _print_handler_exception(exc)
            self._handler = None  # extmod/modbluetooth.c: "Disable the BLE IRQ handler"
            result = None
        finally:
            vb_irq.leave()
        spent = time.ticks_diff(time.ticks_ms(), t0)
        if spent > IRQ_SLOW_MS:
            print("vb_bluetooth: IRQ handler (event %d) ran %d ms; a central's ATT transaction times out at 30 s"
                  % (ev, spent))
        return result

    # ---- API ----------------------------------------------------------------------------------
    def active(self, value=None):
        if value is None:
            return self._on
        value = bool(value)
        if value and self._sock is None:
            port = int(os.getenv("VBOARD_BLE") or 0)
            if not port:
                raise OSError(19)  # ENODEV: this board has no radio
            sock = _s.socket()
            sock.connect(_s.getaddrinfo("127.0.0.1", port)[0][-1])
            self._sock = sock
            self._start_reader(sock)
        if value and not self._on:  # after the radio's link: a failure here leaves nothing to undo
            vb_esp32.nimble_start()  # a board without the RAM for it panics and resets here
        elif not value and self._on:
            vb_esp32.nimble_stop()
        if value != self._on and self._sock is not None:
            self._send({"op": "on" if value else "off"})
            if not value:
                self._values = {}
                self._buffers = {}
                self._mtu = 23
        self._on = value
        return value

    def irq(self, handler):
        self._handler = handler

    def config(self, *args, **kwargs):
        self._check()
        if args:
            name = args[0]
            if name == "mac":
                mac = os.getenv("VBOARD_MAC").split(":")
                value = int("".join(mac), 16) + 2
                return (0, bytes((value >> (8 * i)) & 0xFF for i in range(5, -1, -1)))
            if name == "mtu":
                return self._mtu
            if name == "gap_name":
                return self._name
            raise ValueError("unknown config param")
        for key, value in kwargs.items():
            if key == "mtu":
                if not 23 <= value <= 517:
                    raise OSError(_EINVAL)
                self._mtu = value
                self._send({"op": "mtu", "mtu": value})
            elif key == "gap_name":
                self._name = value.encode() if isinstance(value, str) else bytes(value)
                self._send({"op": "name", "name": self._name.decode()})
            else:
                raise ValueError("unknown config param")

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        self._check()
        self._send({"op": "adv", "interval_us": interval_us,
                    "adv": None if adv_data is None else bytes(adv_data).hex(),
                    "resp": None if resp_data is None else bytes(resp_data).hex(), "conn": connectable})

    def gap_disconnect(self, conn_handle):
        self._check()
        self._send({"op": "disc", "c": conn_handle})
        return True

    def gatts_register_services(self, services):
        self._check()
        spec = []
        for service_uuid, characteristics in services:
            chars = []
            for char in characteristics:
                descs = [[d[0]._s, d[1]] for d in (char[2] if len(char) > 2 else ())]
                chars.append([char[0]._s, char[1], descs])
            spec.append([service_uuid._s, chars])
        self._reply_lock.acquire()  # released by the reader thread when the reply comes
        self._send({"op": "reg", "services": spec})
        self._reply_lock.acquire()
        self._reply_lock.release()
        handles = self._reply
        self._values = {}
        for row in handles:
            for handle in row:
                self._values[handle] = b""
        return tuple(tuple(row) for row in handles)

    def gatts_read(self, value_handle):
        self._check()
        if value_handle not in self._values:
            raise OSError(_EINVAL)
        return self._values[value_handle]

    def gatts_write(self, value_handle, data, send_update=False):
        self._check()
        if value_handle not in self._values:
            raise OSError(_EINVAL)
        data = data.encode() if isinstance(data, str) else bytes(data)  # any buffer, str included, as on a board
        self._values[value_handle] = data
        self._send({"op": "write", "h": value_handle, "v": data.hex()})

    def gatts_notify(self, conn_handle, value_handle, data=None):
        self._check()
        self._send({"op": "notify", "c": conn_handle, "h": value_handle,
                    "v": None if data is None else bytes(data).hex()})

    def gatts_set_buffer(self, value_handle, length, append=False):
        self._check()
        if value_handle not in self._values:
            raise OSError(_EINVAL)
        self._buffers[value_handle] = bytearray(length)  # MemoryError when the heap cannot hold it, as on a board
        self._send({"op": "buf", "h": value_handle, "len": length, "append": append})


__name__ = "bluetooth"
