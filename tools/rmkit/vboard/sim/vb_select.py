# Simulated `select` for the virtual board: the unix port's poll objects, with the one wait that an
# ESP32 does without the GIL reported from a BLE IRQ handler (vb_irq). The ESP32 port polls once and,
# when nothing is ready and the timeout is not 0, waits in MICROPY_EVENT_POLL_HOOK, which releases
# the GIL and blocks for a FreeRTOS tick (extmod/modselect.c poll_set_poll_until_ready_or_timeout,
# py/scheduler.c mp_event_wait_ms, ports/esp32/mpconfigport.h; v1.26.1).
# The firmware's sockets are vb_socket's: the unix port's poll gets the sockets under them, and its
# results name the firmware's objects again (asyncio finds its waiters by the object's id).
# Installed as sys.modules["select"] by vb_boot.py, before anything imports asyncio.
from select import *  # noqa: F401,F403 - POLLIN, POLLOUT, POLLERR, POLLHUP
import select as _unix

import vb_irq
import vb_socket


class _Poll:
    def __init__(self):
        self._poller = _unix.poll()
        self._registered = {}  # the unix port's socket -> the firmware's Socket around it

    def register(self, obj, *eventmask):
        native = vb_socket.native(obj)
        if native is not obj:
            self._registered[native] = obj
        self._poller.register(native, *eventmask)

    def modify(self, obj, eventmask):
        self._poller.modify(vb_socket.native(obj), eventmask)

    def unregister(self, obj):
        native = vb_socket.native(obj)
        self._registered.pop(native, None)
        self._poller.unregister(native)

    def _would_wait(self, timeout, call):
        if timeout != 0 and vb_irq.in_handler() and not self._poller.poll(0):
            vb_irq.released_gil("%s(%s)" % (call, timeout), "extmod/modselect.c")

    def _as_registered(self, ready):
        if not self._registered:
            return ready
        return [(self._registered.get(obj, obj), events) for obj, events in ready]

    def poll(self, timeout=-1):
        self._would_wait(timeout, "poll.poll")
        return self._as_registered(self._poller.poll(timeout))

    def ipoll(self, timeout=-1, flags=0):
        self._would_wait(timeout, "poll.ipoll")
        return self._as_registered(self._poller.ipoll(timeout, flags))


def poll():
    return _Poll()


__name__ = "select"
