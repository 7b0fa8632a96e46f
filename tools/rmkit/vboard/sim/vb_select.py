# Simulated `select` for the virtual board: the unix port's poll objects, with the one wait that an
# ESP32 does without the GIL reported from a BLE IRQ handler (vb_irq). The ESP32 port polls once and,
# when nothing is ready and the timeout is not 0, waits in MICROPY_EVENT_POLL_HOOK, which releases
# the GIL and blocks for a FreeRTOS tick (extmod/modselect.c poll_set_poll_until_ready_or_timeout,
# py/scheduler.c mp_event_wait_ms, ports/esp32/mpconfigport.h; v1.26.1).
# asyncio's loop calls ipoll() on every turn: register/modify/unregister are the unix port's own
# bound methods, and poll/ipoll add one test outside a handler.
# Installed as sys.modules["select"] by vb_boot.py, before anything imports asyncio.
from select import *  # noqa: F401,F403 - POLLIN, POLLOUT, POLLERR, POLLHUP
import select as _unix

import vb_irq


class _Poll:
    def __init__(self):
        poller = _unix.poll()
        self._poller = poller
        self.register = poller.register
        self.unregister = poller.unregister
        self.modify = poller.modify

    def _would_wait(self, timeout, call):
        if timeout != 0 and vb_irq.in_handler() and not self._poller.poll(0):
            vb_irq.released_gil("%s(%s)" % (call, timeout), "extmod/modselect.c")

    def poll(self, timeout=-1):
        self._would_wait(timeout, "poll.poll")
        return self._poller.poll(timeout)

    def ipoll(self, timeout=-1, flags=0):
        self._would_wait(timeout, "poll.ipoll")
        return self._poller.ipoll(timeout, flags)


def poll():
    return _Poll()


__name__ = "select"
