# Simulated `_thread` for the virtual board: the unix port's threads, with locks whose acquire() reports,
# from a BLE IRQ handler (vb_irq), the wait an ESP32 does without the GIL. thread_lock_acquire releases
# the GIL around every acquire (py/modthread.c, v1.26.1); the handler's task blocks, and so lets the
# main task run, only when the lock is held. A lock that is free, or a non-blocking acquire, is fine.
# The simulated modules keep the unix port's own locks (they import _thread before this is installed).
# Installed as sys.modules["_thread"] by vb_boot.py.
from _thread import *  # noqa: F401,F403 - start_new_thread, get_ident, stack_size, exit, LockType
import _thread as _unix

import vb_irq


class _Lock:
    def __init__(self):
        lock = _unix.allocate_lock()
        self._lock = lock
        self.release = lock.release
        self.locked = lock.locked

    def acquire(self, waitflag=1, timeout=-1):
        lock = self._lock
        if waitflag and vb_irq.in_handler():
            if lock.acquire(0):
                return True
            vb_irq.released_gil("lock.acquire()", "py/modthread.c")
        return lock.acquire(waitflag, timeout)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self._lock.release()


def allocate_lock():
    return _Lock()


__name__ = "_thread"
