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
import vb_irq

# Sleeping in a BLE IRQ handler (vb_irq): mp_hal_delay_ms releases the GIL, then either blocks its task
# for a FreeRTOS tick (ulTaskNotifyTake) or, when less than a tick is left, only yields and busy-waits
# the rest (ports/esp32/mphalport.c, v1.26.1). A yield never lets the main task run: it runs at
# ESP_TASK_PRIO_MIN + 1 (MP_TASK_PRIORITY, ports/esp32/main.c), far below the NimBLE host task, on
# the same core 1 (MP_TASK_COREID; CONFIG_BT_NIMBLE_PINNED_TO_CORE in boards/sdkconfig.ble). So a sleep longer than a
# tick (10 ms at ESP-IDF's default CONFIG_FREERTOS_HZ of 100) is a fault there, a shorter one is not.
# sleep_us() busy-waits with the GIL held (mp_hal_delay_us) and is left as it is.
_TICK_MS = 10


def sleep_ms(ms):
    if ms > _TICK_MS and vb_irq.in_handler():  # formatted only in a handler: no garbage elsewhere
        vb_irq.released_gil("time.sleep_ms(%d)" % ms, "ports/esp32/mphalport.c")
    _host.sleep_ms(ms)


def sleep(seconds):
    if seconds * 1000 > _TICK_MS and vb_irq.in_handler():  # mp_hal_delay_ms(1000 * seconds): extmod/modtime.c
        vb_irq.released_gil("time.sleep(%s)" % seconds, "ports/esp32/mphalport.c")
    _host.sleep(seconds)


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
