"""P-256 signing on the node (rmnode.p256), on the MicroPython unix port with the .mpy a board gets
(benchmarks/p256_sign.py): sign() time at this host's speed, the heap its import keeps, its garbage and C
stack per signature. Its time at ESP32 speed is measured on a virtual board by `make bench` (row 6,
benchmarks/esp32_crypto.py), not derived from this one.

    .venv/bin/python -m rmkit.benchmarks.p256_timing [--runs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rmkit.benchmarks import BENCH_DIR
from rmkit.deploy import build

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))


def _run(firmware: Path, tmp: str) -> dict:
    env = {"MICROPYPATH": f"{firmware}:{BENCH_DIR}", "PATH": "/usr/bin:/bin", "FW_TMP": tmp}
    out = subprocess.run([MICROPYTHON, str(BENCH_DIR / "p256_sign.py")], cwd=tmp, env=env, capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(runs: int, say) -> dict:
    """The median sign() time of each of `runs` script runs (ms), and from the last run the heap its import
    keeps (bytes: module, key reader, table), its garbage per signature and its C stack bounds."""
    sign_ms = []
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        firmware = build(Path(tmp) / "firmware")  # .mpy, as deployed: what a board loads into its heap
        (firmware / "rmnode" / "p256.mpy").stat()  # a build without the module fails here, not in MicroPython
        for run in range(1, runs + 1):
            figures = _run(firmware, tmp)
            sign_ms.append(statistics.median(figures["sign_us"]) / 1000)
            say(f"  p256, run {run}/{runs}: sign() median {sign_ms[-1]:.2f} ms of {len(figures['sign_us'])}")
        flash_bytes = (firmware / "rmnode" / "p256.mpy").stat().st_size
        key_flash_bytes = (firmware / "rmnode" / "p256_key.mpy").stat().st_size
    figures.pop("sign_us")
    return {"sign_ms": sign_ms, "flash_bytes": flash_bytes, "key_flash_bytes": key_flash_bytes, **figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="script runs (each times sign() 50 times)")
    args = parser.parse_args()
    result = measure(args.runs, print)
    median = statistics.median(result["sign_ms"])
    runs = ", ".join(f"{ms:.2f}" for ms in result["sign_ms"])
    print(f"sign(): median {median:.2f} ms on the unix port (runs: {runs}); at ESP32 speed: make bench, row 6")
    print(f"import rmnode.p256: {result['import_bytes']} bytes of GC heap kept, the comb table {result['table_bytes']} "
          f"of them; p256.mpy {result['flash_bytes']} bytes of flash")
    print(f"import rmnode.p256_key: {result['key_import_bytes']} bytes of GC heap; p256_key.mpy "
          f"{result['key_flash_bytes']} bytes of flash")
    print(f"one sign(): {result['garbage_bytes']} bytes of short-lived garbage")
    print(f"C stack of sign() (64-bit unix port): fails with {result['stack_fails_at']} bytes left, works with "
          f"{result['stack_passes_at']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
