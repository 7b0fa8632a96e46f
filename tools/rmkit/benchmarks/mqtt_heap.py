"""Benchmark (not a test): the node's TLS connect + config + mapping publish on the unix port, precompiled by mpy-cross.

Reports the TLS connect time (TCP + TLS handshake + CONNACK), the mapping publish -> PUBACK time,
and the smallest `-X heapsize` (GC heap, KiB) at which the whole online sequence still completes:
once with only what the sequence imports, once with rmnode.wifi and rmnode.node resident as in the
real node's online phase (the node reboots after provisioning, so no provisioning module is loaded).
The launcher collects every 4 KiB (gc.threshold) as firmware/main.py does. The ESP32 figure printed
is derived (÷1.4 for 32-bit pointers), not measured.
Note: on the unix port mbedtls allocates with libc malloc, so the TLS session's own
~31 KB is NOT inside this number; on an ESP32 it comes out of internal RAM as well.

usage: .venv/bin/python -m rmkit.benchmarks.mqtt_heap [--runs 5] [--max-kib 256]   (`rmkit bench` runs it)
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rmkit import FIRMWARE_DIR
from rmkit.benchmarks import ESP32_STACK, MQTT_NODE_LAUNCHER as LAUNCHER, make_flash
from rmkit.broker import Broker
from rmkit.pki import Pki
from rmkit.streamed import run_streamed

MICROPYTHON = Path(sys.executable).with_name("micropython")
MPY_CROSS = Path(sys.executable).with_name("mpy-cross")
NODE = "BENCH0000001"
# only what the online sequence imports: the benchmark should not pay for modules it never loads
MODULES = ("__init__", "log", "store", "config", "mqtt", "mapping", "online_reports", "wifi", "credentials", "node",
           "online_phase")
# what the real node (rmnode.node with its station driver) keeps loaded besides the online sequence
RESIDENT = "wifi,node,online_phase"


def precompile(out: Path) -> Path:
    """firmware/rmnode -> out/rmnode/*.mpy, plus the launcher as out/launch_mqtt_node.mpy (and its
    esp32_stack.mpy)."""
    package = out / "rmnode"
    package.mkdir(parents=True)
    for name in MODULES:
        subprocess.run([str(MPY_CROSS), "-o", str(package / f"{name}.mpy"), "-s", f"rmnode/{name}.py",
                        str(FIRMWARE_DIR / "rmnode" / f"{name}.py")], check=True)
    subprocess.run([str(MPY_CROSS), "-o", str(out / "launch_mqtt_node.mpy"), str(LAUNCHER)], check=True)
    # the launcher runs the node on an ESP32-sized C stack with this helper
    subprocess.run([str(MPY_CROSS), "-o", str(out / "esp32_stack.mpy"), str(ESP32_STACK)],
                   check=True)
    return out


def run_once(firmware: Path, flash: Path, heap_kib: int | None, timeout: float = 30.0,
             resident: str = "") -> tuple[bool, str]:
    """One node boot on `flash` (pending mapping reset each time); (completed, output).

    Any MemoryError (also a log line dropped for lack of memory) counts as a failure even if a retry
    would get through later: the heap is too small for the sequence. The node is stopped at the first
    one, so a failing size costs milliseconds instead of the timeout.
    """
    state = flash / "state.json"
    state.write_text('{"pending_mapping": {"user_id": "bench-user", "secret_key": "bench-secret", "reset": true}}')
    code = ("import sys\nsys.argv[:] = ['launcher', %r, %r, 'online']\nsys.path.insert(0, %r)\n"
            "import launch_mqtt_node\n" % (str(firmware), str(flash), str(firmware)))
    command = [str(MICROPYTHON)] + (["-X", f"heapsize={heap_kib}K"] if heap_kib else []) + ["-c", code]
    env = {"RMNODE_TEST_EXIT_MAPPED": "1", "RMNODE_TEST_RESIDENT": resident, "PATH": "/usr/bin:/bin"}
    run = run_streamed(command, timeout=timeout, env=env,
                       on_line=lambda line: "MemoryError" in line or "out of memory" in line)
    return not run.stopped and run.returncode == 0 and "TEST mapped" in run.output, run.output


def timings(output: str) -> tuple[int, int]:
    """(connect ms, mapping publish -> PUBACK ms) from the node's log lines (uptime stamps)."""
    connect = int(re.search(r"connected in (\d+) ms", output).group(1))
    published = int(re.search(r"\((\d+)\) mqtt: published node/\S+/user/mapping", output).group(1))
    acked = int(re.findall(r"\((\d+)\) mqtt: acked msg id", output)[-1])
    return connect, acked - published


def smallest_heap(firmware: Path, flash: Path, low: int, high: int, repeats: int = 5,
                  resident: str = "") -> tuple[int, str]:
    """Binary search for the smallest KiB that completes `repeats` times in a row (scheduling moves the
    peak by about 1 KiB from run to run, so one lucky run does not count)."""
    ok, output = run_once(firmware, flash, high, resident=resident)
    if not ok:
        raise SystemExit(f"fails even with {high} KiB:\n{output[-2000:]}")
    failure = ""
    while low < high:
        middle = (low + high) // 2
        for _ in range(repeats):
            ok, output = run_once(firmware, flash, middle, resident=resident)
            if not ok:
                break
        if ok:
            high = middle
        else:
            low = middle + 1
            failure = output.strip().splitlines()[-1] if output.strip() else "no output"
    return high, failure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--min-kib", type=int, default=8)
    parser.add_argument("--max-kib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="good runs needed at a size (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        tmp = Path(tmp)
        pki = Pki(tmp / "pki")
        firmware = precompile(tmp / "fw")
        with Broker(pki, tmp / "broker") as broker:
            flash = make_flash(tmp / "flash", pki, NODE, broker.port, pending=("bench-user", "bench-secret"))
            connects, acks = [], []
            for _ in range(args.runs):
                ok, output = run_once(firmware, flash, None)
                if not ok:
                    print(output[-2000:])
                    return 1
                connect, ack = timings(output)
                connects.append(connect)
                acks.append(ack)
            started = time.monotonic()
            heap, failure = smallest_heap(firmware, flash, args.min_kib, args.max_kib, args.repeats)
            node_heap, node_failure = smallest_heap(firmware, flash, args.min_kib, args.max_kib, args.repeats,
                                                    RESIDENT)
            searched = time.monotonic() - started
    print(f"TLS connect (TCP + handshake + CONNACK), unix port: median {statistics.median(connects):.0f} ms "
          f"(min {min(connects)}, max {max(connects)}, {args.runs} runs)")
    print(f"mapping publish -> PUBACK: median {statistics.median(acks):.0f} ms (min {min(acks)}, max {max(acks)})")
    print(f"smallest GC heap for TLS connect + config + mapping publish (.mpy): {heap} KiB "
          f"(at {heap - 1} KiB: {failure or 'n/a'}; search took {searched:.1f} s)")
    print(f"the same with rmnode.wifi, node and online_phase resident, as in the node's online phase: {node_heap} KiB "
          f"(at {node_heap - 1} KiB: {node_failure or 'n/a'})")
    print(f"ESP32 estimate (derived, not measured: a 32-bit build needs ~1.4x less heap): "
          f"{heap / 1.4:.0f} KiB / {node_heap / 1.4:.0f} KiB")
    print("note: mbedtls' own ~31 KB per TLS session is malloc'd outside the GC heap on the unix port")
    return 0


if __name__ == "__main__":
    sys.exit(main())
