# Simulated ESP32 `time` for the virtual board: the unix port's time module with the ESP32 port's
# epoch, 2000-01-01 (MicroPython ports/esp32 leaves MICROPY_EPOCH_IS_1970 off through v1.26, so
# time.time() counts from 2000 and time.gmtime(0) is 2000-01-01), integer time.time() as on a board,
# and localtime() == gmtime() (the ESP32 port has no time zones).
# The wall clock itself comes from the host's clock shifted by libfaketime (preloaded by the host
# into the whole process, so mbedtls's certificate-date check sees it too): it starts at
# 2000-01-01 00:00:00 at power-on and moves only when firmware sets machine.RTC (vb_machine).
# The monotonic clock behind ticks_ms()/sleep is left real.
# Installed as sys.modules["time"] by vb_boot.py.
from time import *  # noqa: F401,F403 - ticks_ms, ticks_diff, sleep_ms, ... unchanged
import time as _host
import _thread

# Milliseconds each thread spent in sleep_ms(), so that vb_bluetooth can tell an IRQ handler that waits
# (sleeping lets the main task run, on a board as here) from one that computes (which blocks the BLE host task).
slept_ms = {}


def sleep_ms(ms):
    t0 = _host.ticks_ms()
    _host.sleep_ms(ms)
    me = _thread.get_ident()
    slept_ms[me] = slept_ms.get(me, 0) + _host.ticks_diff(_host.ticks_ms(), t0)

EPOCH_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01


def days_from_civil(year, month, day):
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def unix_seconds(year, month, day, hour=0, minute=0, second=0):
    return days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def time():
    return int(_host.time()) - EPOCH_2000


def time_ns():
    return _host.time_ns() - EPOCH_2000 * 1000000000


def gmtime(secs=None):
    if secs is None:
        return _host.gmtime(int(_host.time()))
    return _host.gmtime(int(secs) + EPOCH_2000)


localtime = gmtime


def mktime(t):
    return unix_seconds(t[0], t[1], t[2], t[3], t[4], t[5]) - EPOCH_2000


__name__ = "time"
