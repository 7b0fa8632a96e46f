"""CPU pacing: a process's CPU-bound work takes `factor` times as long, as on a slower chip.

A thread follows the paced process's CPU time (its CPU clock, all threads: Linux lets any process read
another's, no privileges) and, for every CPU second the process used, keeps it stopped (SIGSTOP, then
SIGCONT, through a pidfd so that a reused pid is never signalled) for factor - 1 seconds. A process
blocked in poll() uses no CPU and is not stopped: an idle board answers at once, a busy one at the
modelled speed.

Linux brings the CPU clock of a process running on another core up to date only at scheduler ticks
(CONFIG_HZ: every 4 ms at 250 Hz) and context switches, so reading it often does not show a computing
process early enough. The thread therefore also reads the process's state (/proc/PID/stat): while it
is running it is run in slices, stopped after each (a stop is a context switch: its clock is then
exact), charged exactly what it used, kept stopped for the debt and continued.

Pacing is after the fact: within a slice the process runs at host speed, so what it prints can run
ahead of the modelled speed by (factor - 1) times the CPU of one slice, SLICE_S or, for a burst that
starts while the process was idle, IDLE_POLL_S or DEEP_IDLE_POLL_S (plus however late this thread
wakes up). `stats()` has the worst CPU charged at once (the run-ahead bound seen) and the thread's own CPU.

The virtual board (rmkit.vboard.supervisor) paces each MicroPython process from the moment the
simulator's own setup is done (`ready`), and forgets it before killing or reaping it; Ctrl-C releases
a stopped process at once (`interrupt()`), since a board stops computing where the interrupt finds it.

Why SLICE_S and the poll intervals are what they are, the pacer's own CPU, the run-ahead seen, and the
simulator's share of a board's CPU: docs/measurements.md, "CPU pacing". The simulator's modules
(sim/vb_*.py, Python here, C in ROM on a board) run in the board's process and are paced too, which makes
the board slower than an ESP32, never faster.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import signal
import struct
import threading
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

log = logging.getLogger(__name__)

# How often the state is read: every SLICE_S while the process computes (one slice: this bounds the
# run-ahead, and shorter slices cost the process more CPU, see above), every IDLE_POLL_S while it waits,
# DEEP_IDLE_POLL_S once it has not computed for DEEP_IDLE_AFTER_S.
# Computing = it used at least half a slice of CPU since the last stop; an idle node's short periodic
# wake-ups (an asyncio loop's polls) do not count.
SLICE_S = 0.001
IDLE_POLL_S = 0.001
DEEP_IDLE_POLL_S = 0.002
DEEP_IDLE_AFTER_S = 1.0
READY_POLL_S = 0.0005
# An idle process that used a little CPU (an asyncio loop's periodic wake-up) is stopped only once its
# debt is worth a stop: stopping a process blocked in poll() wakes it (EINTR), which costs it CPU
MIN_PAUSE_S = 0.002
# How long a stopped process may take to show state T before its clock is read anyway
STOP_SETTLE_S = 0.002


def cpu_clock(pid: int) -> int:
    """The clock id of process `pid`'s CPU time, all threads (clock_getcpuclockid(3)): CPUCLOCK_SCHED
    for the whole thread group, encoded as the kernel's posix-cpu-timers expect."""
    return ((~pid) << 3) | 2


def _wake_on_time() -> None:
    """Let this thread run when its sleep ends, not later: the slice it lets the process run is the
    run-ahead bound. Both are Linux-only and best effort:
    - timer slack 1 ns instead of 50 us (prctl PR_SET_TIMERSLACK);
    - a 0.1 ms scheduler slice (sched_setattr with sched_runtime; EEVDF, Linux 6.6+; no privileges),
      so that its wake-up preempts the paced process when both share a core (see _batch)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.prctl(29, 1)
    except AttributeError:
        pass
    # struct sched_attr (56 bytes): size, policy SCHED_OTHER, flags, nice, priority, runtime, deadline,
    # period, util_min, util_max
    attr = ctypes.create_string_buffer(struct.pack("=IIQiIQQQII", 56, 0, 0, os.nice(0), 0, 100_000, 0, 0, 0, 0))
    if platform.machine() == "x86_64":
        libc.syscall(314, 0, attr, 0)  # SYS_sched_setattr on x86-64; elsewhere the default slice stays


def _batch(pid: int) -> None:
    """Run every thread of `pid` as SCHED_BATCH (lowering one's own processes' policy needs no privileges):
    a batch task that wakes up does not preempt the running one. Continued, the paced process is often
    woken on this thread's core and, as a normal task, took it from this thread for a whole scheduler
    slice: slices meant to be 0.2 ms ran 1.5-2.7 ms at the 90th percentile, 0.45-0.6 ms as a batch task
    (the VM this was written on). Best effort: the policy is only a scheduling hint."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setscheduler(int(task), os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


@dataclass
class _Paced:
    pid: int
    pidfd: int
    stat_fd: int               # /proc/PID/stat, opened while the process is ours: never another's
    clock: int
    ready: Callable[[], bool]
    charging: bool = False     # once ready() said so: CPU from then on is board work
    last_cpu_ns: int = 0
    stopped: bool = False

    def state(self) -> bytes:
        """The main thread's state letter (R running, S sleeping, T stopped...); b"" once gone."""
        try:
            stat = os.pread(self.stat_fd, 512, 0)
        except OSError:
            return b""
        at = stat.rfind(b")")  # the command name before it may hold anything
        return stat[at + 2:at + 3] if at >= 0 else b""


@dataclass
class PacerStats:
    polls: int = 0
    pauses: int = 0
    paused_s: float = 0.0
    charged_cpu_s: float = 0.0          # the paced processes' CPU since they were ready
    worst_unpaid_cpu_s: float = 0.0     # most CPU charged at once: the run-ahead bound seen
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
        try:
            stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        except OSError:
            os.close(pidfd)
            raise
        _batch(pid)
        with self._lock:
            self._release_locked()
            self._paced = _Paced(pid=pid, pidfd=pidfd, stat_fd=stat_fd, clock=cpu_clock(pid), ready=ready)
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
        _wake_on_time()
        computed_at = -DEEP_IDLE_AFTER_S
        computing = False
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
                running = paced.state() == b"R"
                used_ns = self._read(paced)
                if used_ns is None:
                    continue
                computing = False
                if running or (used_ns and self._debt_s >= MIN_PAUSE_S):
                    charged_ns = self._pay(paced)
                    computing = used_ns + charged_ns >= SLICE_S / 2 * 1e9
                    if computing:
                        computed_at = time.monotonic()
                if computing:
                    time.sleep(SLICE_S)
                elif time.monotonic() - computed_at < DEEP_IDLE_AFTER_S:
                    time.sleep(IDLE_POLL_S)
                else:
                    time.sleep(DEEP_IDLE_POLL_S)
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
            self._debt_s += used_ns / 1e9 * (self.factor - 1)
            stats = self._stats
            stats.polls += 1
            stats.charged_cpu_s += used_ns / 1e9
            stats.worst_unpaid_cpu_s = max(stats.worst_unpaid_cpu_s, used_ns / 1e9)
            stats.own_cpu_s = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
        return used_ns

    def _pay(self, paced: _Paced) -> int:
        """Stop the process, charge it exactly what it used, keep it stopped for its debt, continue it.
        Returns the CPU (ns) charged once it had stopped."""
        with self._lock:
            if self._paced is not paced or not self._signal(paced, signal.SIGSTOP):
                return 0
            paced.stopped = True
            self._wake.clear()
        stopped_at = time.monotonic()
        while paced.state() not in (b"T", b"") and time.monotonic() - stopped_at < STOP_SETTLE_S:
            time.sleep(0.00005)
        charged_ns = self._read(paced)  # exact now: it stopped
        if charged_ns is None:
            return 0
        self._wake.wait(max(0.0, self._debt_s - (time.monotonic() - stopped_at)))  # forget/interrupt/close end it early
        with self._lock:
            paused = time.monotonic() - stopped_at
            if self._paced is paced and paced.stopped:
                self._continue_locked(paced)
                # An overshoot (sleep latency) is credited, up to one slice's worth: on a loaded machine this
                # thread wakes up late by a hundred ms and more, and a full credit would let the board run that
                # long unpaced, a burst at host speed (a 1.5 ms computation took 1.5 ms, not 100). Slower than
                # an ESP32 then, never faster.
                self._debt_s = max(self._debt_s - paused, -SLICE_S * (self.factor - 1))
            self._stats.pauses += 1
            self._stats.paused_s += paused
        return charged_ns

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
        os.close(paced.stat_fd)
        self._debt_s = 0.0
