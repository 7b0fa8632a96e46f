# Simulated ESP32 `machine` for the virtual board: the unix port's machine module plus what an
# ESP32 has and firmware uses: reset() (restarts the MicroPython process, like a chip reset),
# unique_id() (the board's MAC), reset_cause() and its constants, freq(), RTC (the wall clock),
# WDT (the task watchdog; the host resets the board when it is not fed) and Pin (GPIO0 is a DevKit's
# BOOT button, which the host presses: VirtualBoard.press_button, `rmkit vboard-button`).
# Installed as sys.modules["machine"] by vb_boot.py; firmware never imports this name directly.
import os
import time as _host_time  # the unix port's: imported before vb_time is installed as `time`
import _thread

import micropython
import vfs
import vb_irq

from machine import *  # noqa: F401,F403 - the unix port's idle, soft_reset, mem8, Signal, ...

# ESP32 port values (ports/esp32/modmachine.c)
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_mac = bytes(int(part, 16) for part in os.getenv("VBOARD_MAC").split(":"))
_cause = int(os.getenv("VBOARD_RESET_CAUSE") or PWRON_RESET)
_freq = 160000000


_state = vfs.VfsPosix(os.getenv("VBOARD_STATE"))  # the host's state directory (the flash is mounted at /)


def _vboard_exit(signal_name):
    # The host restarts the process; a signal (not SystemExit) so no `except` can swallow it,
    # just as nothing survives a real reset.
    os.system("kill -%s $PPID" % signal_name)
    # the signal ends the process long before this; not the board's time.sleep, which would report a
    # machine.reset() in a BLE IRQ handler as a fault (on an ESP32 it restarts the chip at once)
    _host_time.sleep(5)
    raise SystemExit  # host gone or signal lost: at least reboot softly


class RTC:
    """The ESP32's real-time clock: 2000-01-01 00:00:00 at power-on until firmware sets it.

    The clock is the host's shifted by an offset that libfaketime reads from $FAKETIME on every
    call (FAKETIME_NO_CACHE), so setting it here moves time.time(), gmtime() and mbedtls's
    certificate-date check together. The offset is also written to the board's state directory:
    the host keeps it across soft resets and machine.reset(), and drops it at power-on, as the
    ESP32's RTC does.
    """

    def __init__(self, id=0):
        pass

    def datetime(self, value=None):
        # tuple order of the ESP32 port (machine_rtc.c): year, month, day, weekday, hours, minutes,
        # seconds, microseconds
        import time
        if value is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        year, month, day, _, hour, minute, second = value[:7]
        if not (1 <= month <= 12 and 1 <= day <= 31 and 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60):
            raise ValueError("invalid datetime")
        target = time.unix_seconds(year, month, day, hour, minute, second)
        _set_clock_offset(_clock_offset() + target - (time.time() + time.EPOCH_2000))

    def init(self, value):
        self.datetime(value)


def _clock_offset():
    return int(os.getenv("FAKETIME") or 0)


def _set_clock_offset(offset):
    text = "%+d" % offset
    os.putenv("FAKETIME", text)
    _state_write("/rtc", text)


def _state_write(name, text):
    f = _state.open(name, "w")
    f.write(text)
    f.close()


def reset():
    _vboard_exit("USR1")


def unique_id():
    return _mac


def reset_cause():
    return _cause


def freq(hz=None):
    global _freq
    if hz is None:
        return _freq
    _freq = hz


# -- the task watchdog -------------------------------------------------------------------------------
# ports/esp32/machine_wdt.c (v1.24.0 = v1.26.1): WDT(id=0, timeout=5000) subscribes a user,
# "mpy_machine_wdt", to ESP-IDF's task watchdog (esp_task_wdt_reconfigure with trigger_panic, then
# esp_task_wdt_add_user once); every later WDT() returns the same object and only reconfigures the
# timeout, which restarts the count (esp_task_wdt_reconfigure stops and restarts the timer, ESP-IDF
# components/esp_system/task_wdt/task_wdt.c). There is no deinit: a soft reset keeps the user subscribed
# and the timer running, only a chip reset ends it. Expiry panics the chip (task_wdt_timeout_abort:
# "Aborting.", reset hint ESP_RST_TASK_WDT), it restarts (rst:0xc SW_CPU_RESET) and reset_cause() is
# WDT_RESET (ports/esp32/modmachine.c).
# Here the host keeps the timer (rmkit/vboard/supervisor.py): a write of the state file /wdt (the timeout
# in ms) is a feed, its mtime the moment; the host resets the board when it is older than the timeout,
# and removes the file at every reset but a soft one (a soft reboot's new process rewrites it when the
# firmware makes its WDT again: until then the file's last feed counts, as the running timer does).
_wdt = []


class _WDT:
    def __init__(self):
        # kept open and rewritten in place, a fixed-width number: a feed allocates nothing on the GC heap,
        # where the firmware's share is counted (a board's feed is a register write)
        self._file = _state.open("/wdt", "w")
        self._text = ""

    def _write(self):
        f = self._file
        f.seek(0)
        f.write(self._text)
        f.flush()

    def feed(self):
        # On an ESP32 a BLE IRQ handler runs on the NimBLE task holding the GIL (vb_irq): the main task
        # cannot run, so cannot feed, until it returns. A feed made meanwhile here does not count.
        running = vb_irq._handler_thread[0]
        if running is None or running == _thread.get_ident():
            self._write()


def WDT(id=0, timeout=5000):
    if id != 0:
        raise ValueError
    if timeout <= 0:
        raise ValueError("WDT timeout too short")
    if not _wdt:
        _wdt.append(_WDT())
    wdt = _wdt[0]
    wdt._text = "%010d" % timeout
    wdt._write()  # the reconfigure restarts the count
    return wdt


# -- GPIO ----------------------------------------------------------------------------------------------
# ports/esp32/machine_pin.c (v1.26.1): constants, irq(handler, trigger) with both edges by default and no
# `hard` option: the ISR only schedules the handler (mp_sched_schedule) and wakes the main task, so it runs
# on the main task between bytecodes. Here a thread waits for the host's level changes of GPIO0 ("0" or
# "1" written to the FIFO /gpio0.fifo in the state directory; the level itself is in /gpio0) and
# schedules the handler the same way; on the unix port the main thread runs it at its next bytecode or
# wait (py/scheduler.c runs callbacks on the main thread only; an idle REPL waits in read() and runs none
# until the next code runs), not at once as an ESP32 woken by the ISR: later, never sooner. Other pins have nothing attached: an input reads 0, an output its own level.
# A soft reset removes the handlers (machine_pins_deinit), as the new process here has none.
_BUTTON_PIN = 0


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    _gpio0 = []  # GPIO0's [level, IRQ handler, trigger, the Pin whose irq() set them], shared with its watcher

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or not 0 <= id <= 39 or id in (20, 24, 28, 29, 30, 31):
            raise ValueError("invalid pin")
        self._id = id
        self._out = 0
        if value is not None:
            self._out = 1 if value else 0
        if id == _BUTTON_PIN and not Pin._gpio0:
            Pin._gpio0[:] = [_button_level(), None, 0, None]
            _thread.start_new_thread(_watch_button, ())

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self._out = 1 if value else 0

    def value(self, *level):
        if level:
            self._out = 1 if level[0] else 0
            return None
        if self._id == _BUTTON_PIN:
            return Pin._gpio0[0]
        return self._out

    def on(self):
        self._out = 1

    def off(self):
        self._out = 0

    def irq(self, handler=None, trigger=3, wake=None):
        if self._id == _BUTTON_PIN:
            Pin._gpio0[1:] = [handler, trigger if handler is not None else 0, self]
        return None

    def __repr__(self):
        return "Pin(%d)" % self._id


def _button_level():
    try:
        f = _state.open("/gpio0", "r")
        text = f.read()
        f.close()
        return 0 if text.strip() == "0" else 1
    except OSError:
        return 1  # released: a DevKit pulls GPIO0 up


def _watch_button():
    # read-write: the open never waits for a writer, and the FIFO never reads as ended between the
    # host's writes (each opens it, writes one level, closes it)
    try:
        fifo = _state.open("/gpio0.fifo", "r+b")
    except OSError:  # a host without a button: GPIO0 stays where it is
        return
    gpio0 = Pin._gpio0
    level = _button_level()  # a press the host made before the FIFO had a reader is only in the file
    while True:
        if level == gpio0[0]:
            level = 0 if fifo.read(1) == b"0" else 1
            continue
        gpio0[0] = level
        edge = Pin.IRQ_RISING if level else Pin.IRQ_FALLING
        if gpio0[1] is not None and gpio0[2] & edge:
            try:
                micropython.schedule(gpio0[1], gpio0[3])
            except RuntimeError:  # the queue is full: an ESP32's ISR drops the edge too
                pass


__name__ = "machine"
