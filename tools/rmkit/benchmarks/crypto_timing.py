"""Crypto on the node, on the MicroPython unix port: X25519, AES-256-CTR per KiB (benchmarks/crypto.py)
and the device side of the Security 1 handshake (benchmarks/sec1.py), with an ESP32 estimate.

The estimate multiplies the unix-port time by how much slower an ESP32 runs the same MicroPython
work, from MicroPython's own benchmark suite (tests/perf_bench, scores normalised for the work done,
higher is faster): an ESP32 at 240 MHz scored bm_pidigits 475-587 and misc_pystone 1166-1732
(micropython issue #6565, v1.13 and v1.13-180), a desktop running the unix port bm_pidigits 8358 and
misc_pystone 83769 (micropython PR #7999). X25519 and the handshake are big-integer arithmetic
(bm_pidigits: 14-18x); AES-CTR is a bytecode loop around C calls (misc_pystone: 48-72x). It assumes
this host runs the unix port as fast as that desktop: it is not calibrated against it, so read the
estimate as a range, not a measurement.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rmkit import FIRMWARE_DIR
from rmkit.benchmarks import BENCH_DIR

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))

ESP32_SCORES = {"bm_pidigits": (475.01, 586.65), "misc_pystone": (1166.32, 1731.94)}
DESKTOP_SCORES = {"bm_pidigits": 8357.80, "misc_pystone": 83768.68}
ESTIMATE_BASIS = ("MicroPython perf_bench scores, ESP32 240 MHz (micropython issue #6565) vs a desktop's unix "
                  "port (micropython PR #7999); this host not calibrated against that desktop")


def slowdown(benchmark: str) -> tuple[float, float]:
    """(low, high) factor by which an ESP32 is slower than the desktop at `benchmark`."""
    low_score, high_score = ESP32_SCORES[benchmark]
    return DESKTOP_SCORES[benchmark] / high_score, DESKTOP_SCORES[benchmark] / low_score


def _run(script: str, tmp: str) -> str:
    env = {"MICROPYPATH": f"{FIRMWARE_DIR}:{BENCH_DIR}", "PATH": "/usr/bin:/bin", "FW_TMP": tmp}
    return subprocess.run([MICROPYTHON, str(BENCH_DIR / script)], cwd=tmp, env=env, capture_output=True,
                          text=True, check=True, timeout=300).stdout


def measure(runs: int, say) -> dict:
    """Per operation: the unix-port medians of `runs` script runs (ms), and the estimate's factors."""
    x25519, aes, handshake = [], [], []
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        for run in range(1, runs + 1):
            figures = json.loads(_run("crypto.py", tmp).strip().splitlines()[-1])
            x25519.append(statistics.median(figures["x25519_us"]) / 1000)
            aes.append(statistics.median(figures["aes_ctr_kib_us"]) / 1000)
            handshake.append(float(re.search(r"handshake total:\s+([\d.]+) ms", _run("sec1.py", tmp)).group(1)))
            say(f"  crypto, run {run}/{runs}: X25519 {x25519[-1]:.2f} ms, AES-CTR {aes[-1]:.3f} ms/KiB, "
                f"Security 1 handshake {handshake[-1]:.2f} ms")
    return {"x25519_ms": x25519, "aes_ctr_kib_ms": aes, "sec1_handshake_ms": handshake,
            "slowdown": {"bm_pidigits": slowdown("bm_pidigits"), "misc_pystone": slowdown("misc_pystone")},
            "basis": ESTIMATE_BASIS}
