# Simulated ESP32 `machine` for the virtual board: the unix port's machine module plus what an
# ESP32 has and firmware uses: reset() (restarts the MicroPython process, like a chip reset),
# unique_id() (the board's MAC), reset_cause() and its constants, freq(), RTC (the wall clock).
# Installed as sys.modules["machine"] by vb_boot.py; firmware never imports this name directly.
import os
import time as _host_time  # the unix port's: imported before vb_time is installed as `time`

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
    import vfs
    # the host's state directory, not the flash mounted at /
    f = vfs.VfsPosix(os.getenv("VBOARD_STATE")).open("/rtc", "w")
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


__name__ = "machine"
