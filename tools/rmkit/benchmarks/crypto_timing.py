"""The node's crypto on the bare MicroPython unix port, at this host's speed (benchmarks/node_crypto.py on
the deployed .mpy): X25519, AES-256-CTR per KiB, the device side of a Security 1 handshake, P-256 sign().

Each script run times every operation INNER_RUNS times in one fresh process; a run's figure is the median
of those, and the report gives the median of the runs with their min-max. The same operations at ESP32
speed are measured on a virtual board (esp32_crypto.py), not derived from these.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rmkit.benchmarks import BENCH_DIR
from rmkit.deploy import BUILD_DIR, build

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))
INNER_RUNS = 20
#: node_crypto's figures, by the names the report uses (ms)
OPERATIONS = {"x25519_us": "x25519_ms", "aes_ctr_kib_us": "aes_ctr_kib_ms", "sec1_handshake_us": "sec1_handshake_ms",
              "p256_sign_us": "p256_sign_ms"}


def run_node_crypto(firmware: Path, tmp: str, runs: tuple[int, int, int, int]) -> dict:
    """One fresh unix-port process running node_crypto.main(*runs) on `firmware` (a .mpy build)."""
    env = {"MICROPYPATH": f"{firmware}:{BENCH_DIR}", "PATH": "/usr/bin:/bin", "FW_TMP": tmp}
    code = "import node_crypto; node_crypto.main(%d, %d, %d, %d)" % runs
    out = subprocess.run([MICROPYTHON, "-c", code], cwd=tmp, env=env, capture_output=True, text=True, check=True,
                         timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def per_operation_ms(figures: dict, statistic=statistics.median) -> dict:
    """node_crypto's lists (us) as one figure each (ms), under OPERATIONS' names."""
    return {name: statistic(figures[key]) / 1000 for key, name in OPERATIONS.items()}


def measure(runs: int, say) -> dict:
    """Per operation, one median (ms) per script run: {"x25519_ms": [...], ...}."""
    result: dict = {name: [] for name in OPERATIONS.values()}
    firmware = build(BUILD_DIR)  # .mpy, as deployed
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        for run in range(1, runs + 1):
            figures = per_operation_ms(run_node_crypto(firmware, tmp, (INNER_RUNS,) * 4))
            for name, value in figures.items():
                result[name].append(value)
            say(f"  crypto, unix port, run {run}/{runs}: X25519 {figures['x25519_ms']:.2f} ms, AES-CTR "
                f"{figures['aes_ctr_kib_ms']:.3f} ms/KiB, Security 1 handshake {figures['sec1_handshake_ms']:.2f} ms, "
                f"P-256 sign() {figures['p256_sign_ms']:.2f} ms")
    result["inner_runs"] = INNER_RUNS
    return result
