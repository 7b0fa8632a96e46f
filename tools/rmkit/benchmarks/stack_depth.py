"""The firmware's deepest C stack use on the unix port against the 15 KiB an ESP32 gives MicroPython
(`rmkit bench --stack-depth`): benchmarks/stack_workload.py runs in a thread with the ESP32's budget
(benchmarks/esp32_stack.py), and a bisection finds how much of it can be burnt first before it fails."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from rmkit import FIRMWARE_DIR
from rmkit.benchmarks import BENCH_DIR


def _bisect(low: int, high: int, like_low) -> tuple[int, int]:
    """The adjacent (low, high) where an outcome changes, given that it differs at the two ends:
    like_low(mid) says whether mid behaves as low does."""
    while high - low > 1:
        mid = (low + high) // 2
        if like_low(mid):
            low = mid
        else:
            high = mid
    return low, high


ESP32_STACK_BUDGET = 15 * 1024  # the ESP32 port's MicroPython task: 16 KiB, 1 KiB kept as a margin


def bench_stack_depth(step: int = 256) -> None:
    """The firmware's deepest C stack use on the unix port: benchmarks/stack_workload.py runs in a thread
    with the ESP32's 15 KiB (benchmarks/esp32_stack.py), its modules compiled beforehand as a board gets
    them (.mpy); bisect how much of the budget can be burnt first (FW_STACK_PAD) before it fails."""
    micropython = str(Path(sys.executable).with_name("micropython"))

    def passes(pad: int) -> bool:
        print(f"  stack: the workload with {ESP32_STACK_BUDGET - pad} bytes of stack left ...", end="", flush=True)
        with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
            env = {"MICROPYPATH": f"{FIRMWARE_DIR}:{BENCH_DIR}", "PATH": "/usr/bin:/bin", "FW_TMP": tmp,
                   "FW_STACK_PAD": str(pad)}
            result = subprocess.run([micropython, str(BENCH_DIR / "stack_workload.py")], cwd=tmp, env=env,
                                    capture_output=True, text=True, timeout=300)
        ok = result.returncode == 0 and "\nDONE" in "\n" + result.stdout
        print(" passes" if ok else " fails", flush=True)
        return ok

    print(f"stack: bisecting the {ESP32_STACK_BUDGET}-byte budget in {step}-byte steps", flush=True)
    if not passes(0):
        print("stack: the firmware workload fails on an ESP32-sized stack (15 KiB)")
        return
    # in steps: no padding passes, burning the whole budget is taken to fail
    low, _ = _bisect(0, ESP32_STACK_BUDGET // step, lambda mid: passes(mid * step))
    deepest = ESP32_STACK_BUDGET - low * step
    print(f"firmware's deepest C stack use (provisioning session, bad requests, MQTT packets; 64-bit unix port): "
          f"about {deepest} bytes of the {ESP32_STACK_BUDGET} an ESP32 gives MicroPython ({step}-byte steps)")
