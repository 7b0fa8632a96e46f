"""CPU pacing: a process's CPU-bound work takes `factor` times as long, as on a slower chip.

A thread reads the paced process's CPU clock (all its threads; Linux lets any process read another's,
no privileges) and, for every CPU second the process used, stops it (SIGSTOP, then SIGCONT, through
a pidfd so that a reused pid is never signalled) for factor - 1 seconds. A process blocked in poll()
uses no CPU and so is never stopped: an idle board answers at once, a busy one at the modelled speed.

Pacing is after the fact. Between two reads the process runs at host speed, so what it prints can run
ahead of the modelled speed by at most (factor - 1) times the CPU it used since the last read; reads
come every BUSY_POLL_S while it computes and every IDLE_POLL_S once it has been idle for IDLE_AFTER_S.
The thread's own CPU and the worst gap between reads (the run-ahead bound) are in `stats()`.

The virtual board (rmkit.vboard.supervisor) paces each MicroPython process from the moment the
simulator's own setup is done (`ready`), and forgets it before killing or reaping it; Ctrl-C releases
a stopped process at once (`interrupt()`), since a board stops computing where the interrupt finds it.

The simulator's own modules (sim/vb_*.py: Python here, C in ROM on a board) are paced too, which makes
the board slower than an ESP32, never faster.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

log = logging.getLogger(__name__)

# How often the CPU clock is read: often while the process computes (this bounds the run-ahead), a
# little less often once it has been idle a while (each read costs ~20-40 us: mostly the wake-up)
BUSY_POLL_S = 0.0005
IDLE_POLL_S = 0.001
IDLE_AFTER_S = 1.0
READY_POLL_S = 0.0005
# Stop the process only for a debt worth a SIGSTOP/SIGCONT pair; smaller debts are carried over
MIN_PAUSE_S = 0.001
# A pause that overshoots (sleep latency) is credited, but never more than this: credit is CPU
# the process may then use unpaced
MAX_CREDIT_S = 0.002


def cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU time, all threads (clock_getcpuclockid(3)): CPUCLOCK_SCHED
    for the whole thread group, encoded as the kernel's posix-cpu-timers expect."""
    return ((~pid) << 3) | 2


def _fine_timer_slack() -> None:
    """Let this thread's sleeps end when asked, not up to 50 us later (Linux's default timer slack):
    the poll interval is the run-ahead bound."""
    try:
        ctypes.CDLL(None).prctl(29, 1)  # PR_SET_TIMERSLACK, 1 ns
    except (OSError, AttributeError):
        pass


@dataclass
class _Paced:
    pid: int
    pidfd: int
    clock: int
    ready: Callable[[], bool]
    charging: bool = False     # once ready() said so: CPU from then on is board work
    last_cpu_ns: int = 0
    stopped: bool = False


@dataclass
class PacerStats:
    polls: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    charged_cpu_s: float = 0.0          # the paced processes' CPU since they were ready
    worst_unpaid_cpu_s: float = 0.0     # most CPU a process used between two reads (run-ahead bound)
    own_cpu_s: float = 0.0              # this thread's own CPU
    processes: int = 0


class CpuPacer(threading.Thread):
    """Paces one process at a time (follow() switches to the next one, as a board reboots)."""

    def __init__(self, factor: float, name: str = "cpu-pacer"):
        if factor < 1:
            raise ValueError(f"a CPU factor below 1 ({factor}) would make the board faster than the host")
        super().__init__(name=name, daemon=True)
        self.factor = float(factor)
        self._lock = threading.Lock()   # guards _paced and every signal sent to it
        self._wake = threading.Event()
        self._paced: Optional[_Paced] = None
        self._debt_s = 0.0              # stopped time still owed by the current process
        self._closing = False
        self._stats = PacerStats()

    # ---- from other threads ----------------------------------------------------------------

    def follow(self, pid: int, ready: Callable[[], bool]) -> None:
        """Pace process `pid` (alive and not yet reaped) from the first read at which `ready()` is true;
        stop pacing the previous one."""
        pidfd = os.pidfd_open(pid)
        with self._lock:
            self._release_locked()
            self._paced = _Paced(pid=pid, pidfd=pidfd, clock=cpu_clock(pid), ready=ready)
            self._debt_s = 0.0
            self._stats.processes += 1
        self._wake.set()

    def forget(self, pid: Optional[int] = None) -> None:
        """Stop pacing `pid` (any process if None) and continue it if it is stopped. Call before the
        process is killed or reaped, so that its clock is never read under a reused pid."""
        with self._lock:
            if self._paced is not None and pid in (None, self._paced.pid):
                self._release_locked()
        self._wake.set()

    def interrupt(self, pid: int) -> None:
        """Continue `pid` now and cancel what it still owes: Ctrl-C stops a board's computation where
        it is, so the work the host did ahead of the modelled speed is not charged any more."""
        with self._lock:
            paced = self._paced
            if paced is not None and paced.pid == pid:
                self._continue_locked(paced)
                self._debt_s = 0.0
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """End the thread; the process it paced is continued, never left stopped. Idempotent."""
        self._closing = True
        self.forget()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def stats(self) -> PacerStats:
        with self._lock:
            return PacerStats(**{f.name: getattr(self._stats, f.name) for f in fields(PacerStats)})

    # ---- the pacing thread -----------------------------------------------------------------

    def run(self) -> None:
        _fine_timer_slack()
        idle_since = time.monotonic()
        try:
            while not self._closing:
                paced = self._paced
                if paced is None:
                    self._wake.wait()
                    self._wake.clear()
                    continue
                if not paced.charging:
                    if not self._start_charging(paced):
                        time.sleep(READY_POLL_S)
                        continue
                used_ns = self._read(paced)
                if used_ns is None:
                    continue
                now = time.monotonic()
                if used_ns:
                    idle_since = now
                if self._debt_s >= MIN_PAUSE_S:
                    self._pause(paced)
                time.sleep(BUSY_POLL_S if now - idle_since < IDLE_AFTER_S else IDLE_POLL_S)
        except Exception:  # never leave a process stopped because pacing failed
            log.exception("%s: pacing failed; the board runs at host speed from here", self.name)
        finally:
            self._closing = True
            self.forget()
            self._stats.own_cpu_s = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)

    def _start_charging(self, paced: _Paced) -> bool:
        try:
            if not paced.ready():
                return False
            cpu_ns = time.clock_gettime_ns(paced.clock)
        except OSError:  # gone before it was ready: forget() follows
            return False
        with self._lock:
            if self._paced is paced:
                paced.last_cpu_ns, paced.charging = cpu_ns, True
        return True

    def _read(self, paced: _Paced) -> Optional[int]:
        """CPU the process used since the last read (ns), now owed as stopped time; None once it is no
        longer paced."""
        with self._lock:
            if self._paced is not paced:
                return None
            try:
                cpu_ns = time.clock_gettime_ns(paced.clock)
            except OSError:  # exited and reaped; the supervisor forgets it
                self._release_locked()
                return None
            used_ns, paced.last_cpu_ns = cpu_ns - paced.last_cpu_ns, cpu_ns
            self._debt_s = max(self._debt_s + used_ns / 1e9 * (self.factor - 1), -MAX_CREDIT_S)
            stats = self._stats
            stats.polls += 1
            stats.charged_cpu_s += used_ns / 1e9
            stats.worst_unpaid_cpu_s = max(stats.worst_unpaid_cpu_s, used_ns / 1e9)
            stats.own_cpu_s = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
        return used_ns

    def _pause(self, paced: _Paced) -> None:
        with self._lock:
            if self._paced is not paced or not self._signal(paced, signal.SIGSTOP):
                return
            paced.stopped = True
            self._wake.clear()
        started = time.monotonic()
        self._wake.wait(self._debt_s)  # forget(), interrupt() and close() end the pause early
        with self._lock:
            paused = time.monotonic() - started
            if self._paced is paced and paced.stopped:
                self._continue_locked(paced)
                self._debt_s = max(self._debt_s - paused, -MAX_CREDIT_S)
            self._stats.pauses += 1
            self._stats.paused_s += paused

    # ---- with self._lock held ---------------------------------------------------------------

    def _signal(self, paced: _Paced, signum: int) -> bool:
        try:
            signal.pidfd_send_signal(paced.pidfd, signum)
            return True
        except ProcessLookupError:  # exited: nothing left to stop or continue
            return False

    def _continue_locked(self, paced: _Paced) -> None:
        if paced.stopped:
            self._signal(paced, signal.SIGCONT)
            paced.stopped = False

    def _release_locked(self) -> None:
        paced, self._paced = self._paced, None
        if paced is None:
            return
        self._continue_locked(paced)
        os.close(paced.pidfd)
        self._debt_s = 0.0
