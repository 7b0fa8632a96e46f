# Simulated ESP32 `machine` for the virtual board: the unix port's machine module plus what an
# ESP32 has and firmware uses: reset() (restarts the MicroPython process, like a chip reset),
# unique_id() (the board's MAC), reset_cause() and its constants, freq().
# Installed as sys.modules["machine"] by vb_boot.py; firmware never imports this name directly.
import os

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
    import time
    time.sleep(5)  # the signal ends the process long before this
    raise SystemExit  # host gone or signal lost: at least reboot softly


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
