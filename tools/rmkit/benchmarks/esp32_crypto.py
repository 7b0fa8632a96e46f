"""The node's crypto on virtual boards, at ESP32 speed (VirtualBoard(cpu="esp32")) and, as its reference, at
this host's speed: benchmarks/node_crypto.py on the deployed .mpy at the board's REPL (main.py not run), and
bm_pidigits' work (the CPU model's calibration workload) on the ESP32-speed board beside the ESP32's own time.

At ESP32 speed the board's MicroPython process is stopped for (k - 1) times every CPU second it uses
(rmkit.vboard.cpu), k calibrated on this machine against bm_pidigits on an ESP32 at 160 MHz
(rmkit.vboard.cpu_speed), so the times its own ticks_us give are the board's. They are measured, not derived
from the host-speed figures: the pacing, the simulator's objects in the same GC heap and the host's changing
speed all show in them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from rmkit.benchmarks import BENCH_DIR
from rmkit.benchmarks.crypto_timing import OPERATIONS
from rmkit.deploy import deploy_to_flash_dir
from rmkit.vboard import VirtualBoard
from rmkit.vboard.cpu_speed import ESP32_PIDIGITS_MS, ESP32_REFERENCE, WORKLOAD

#: what node_crypto imports besides the firmware
SCRIPTS = ("node_crypto.py", "sec1.py", "sec1_client.py")
#: node_crypto.main's runs (X25519, AES-CTR, handshakes, signatures), back to back on one board; at ESP32 speed
#: ~17 s with the untimed first runs and the handshakes' clients (the client side runs on the board too)
HOST_SPEED_RUNS = (20, 20, 20, 20)
ESP32_SPEED_RUNS = (8, 8, 3, 10)
# A paced board takes seconds per handshake (its client's side, untimed, as much again); room for a loaded machine
EXEC_TIMEOUT_S = 600

_PIDIGITS_TIMING = """
import time
pi_digits()  # untimed, as node_crypto does (the pacer stops a process after the fact)
_times = []
for _ in range(%d):
    _t = time.ticks_us()
    pi_digits()
    _times.append(time.ticks_diff(time.ticks_us(), _t))
print(_times)
"""


def _flash_with_scripts(directory: Path) -> Path:
    """A board's flash with the firmware (.mpy) and node_crypto's scripts, and a tmp directory at its root, where
    sec1.py writes its Store file."""
    directory.mkdir(parents=True)
    deploy_to_flash_dir(directory)
    for script in SCRIPTS:
        shutil.copy(BENCH_DIR / script, directory / script)
    (directory / "tmp").mkdir()
    return directory


def _last_json_line(output: str):
    return json.loads(output.strip().splitlines()[-1])


def _on_board(workdir: Path, name: str, cpu: Optional[str], runs: tuple[int, int, int, int],
              pidigits_runs: int) -> dict:
    """Each operation's back-to-back times (ms) on one fresh board; bm_pidigits' too when asked."""
    flash = _flash_with_scripts(workdir / name)
    with VirtualBoard(name, flash, cpu=cpu, run_main=False, log_path=workdir / f"{name}.log") as board:
        code = "import node_crypto; node_crypto.main(%d, %d, %d, %d)" % runs
        times_us = _last_json_line(board.exec(code, timeout=EXEC_TIMEOUT_S))
        figures: dict = {name: [us / 1000 for us in times_us[key]] for key, name in OPERATIONS.items()}
        if pidigits_runs:
            times_us = _last_json_line(board.exec(WORKLOAD.read_text() + _PIDIGITS_TIMING % pidigits_runs,
                                                  timeout=EXEC_TIMEOUT_S))
            figures["pidigits_ms"] = [us / 1000 for us in times_us]
        if board.cpu_speed is not None:
            speed = board.cpu_speed
            figures["cpu"] = {"factor": speed.factor, "host_ms": speed.host_ms, "reference_ms": speed.reference_ms,
                              "reference": speed.reference, "cached": speed.cached}
    return figures


def measure(say, host_runs: tuple[int, int, int, int] = HOST_SPEED_RUNS,
            esp32_runs: tuple[int, int, int, int] = ESP32_SPEED_RUNS, pidigits_runs: int = 3) -> dict:
    """{"host": {...}, "esp32": {...}}: each operation's back-to-back times (ms) on a fresh board at host speed
    and at ESP32 speed (the report takes their means); at ESP32 speed also bm_pidigits' times and the CPU
    model's factor with its reference. The runs are node_crypto.main's (X25519, AES-CTR, handshakes, signatures)."""
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-crypto-") as tmp:
        tmp = Path(tmp)
        host = _on_board(tmp, "vb-crypto-host", None, host_runs, 0)
        say("  crypto, virtual board at host speed: " + _summary(host))
        esp32 = _on_board(tmp, "vb-crypto-esp32", "esp32", esp32_runs, pidigits_runs)
        say(f"  crypto, virtual board at ESP32 speed (k = {esp32['cpu']['factor']:.1f}): {_summary(esp32)}, "
            f"bm_pidigits {statistics.fmean(esp32['pidigits_ms']):.1f} ms (an ESP32: {ESP32_PIDIGITS_MS:.1f} ms)")
    return {"host": host, "esp32": esp32, "pidigits_reference_ms": ESP32_PIDIGITS_MS,
            "pidigits_reference": ESP32_REFERENCE}


def _summary(figures: dict) -> str:
    return (f"X25519 {statistics.fmean(figures['x25519_ms']):.2f} ms, Security 1 handshake "
            f"{statistics.fmean(figures['sec1_handshake_ms']):.2f} ms, P-256 sign() "
            f"{statistics.fmean(figures['p256_sign_ms']):.2f} ms (means)")
