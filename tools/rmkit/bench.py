"""`rmkit bench` (make bench): benchmarks, not tests. Prints medians; nothing here asserts a time.

1. provisioning on a virtual board: Security 1 handshake and cloud_user_assoc round trip as the client
   sees them (proto-ver + prov-session + cloud_user_assoc), median of N sessions;
2. the whole mapping flow (the demo's steps): elapsed time to node id, Connected, PUT, confirmed,
   median of N runs, each on a fresh stack;
3. the smallest virtual-board heap at which the whole flow still confirms (firmware as .mpy), and the
   internal-RAM headroom (ESP-IDF heap model) at the online phase's worst moment, the TLS handshake;
   the smallest heap at which provisioning alone (session, scan, mapping, Wi-Fi to Connected) succeeds,
   over SoftAP, over BLE and with both served, in the same run;
4. the firmware's deepest C stack use in a representative workload (benchmarks/stack_workload.py: a
   provisioning session with bad requests, MQTT packets, mapping payloads), against the 15 KiB an ESP32
   gives MicroPython;
5. the device-side Security 1 cost and the MQTT/TLS heap floor (benchmarks/sec1.py, benchmarks/mqtt_heap.py).

The scripts that run on the MicroPython unix port live in rmkit/benchmarks/.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rmkit import FIRMWARE_DIR
from rmkit.benchmarks import BENCH_DIR
from rmkit.flow import board_transport, run_flow
from rmkit.provision.client import Provisioner
from rmkit.provision.transport import HttpTransport
from rmkit.stack import Stack
from rmkit.timeline import Timeline

EMAIL, PASSWORD = "bench@example.com", "bench-password-1"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_sessions(runs: int, heap: str) -> None:
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp, Stack(Path(tmp), heap=heap) as stack:
        board = stack.add_board("vb-bench")
        board.wait_for_log(r"state: provisioning", timeout=30)
        host, port = board.softap
        handshake, assoc = [], []
        for _ in range(runs):
            with HttpTransport(host, port) as transport:
                client = Provisioner(transport, sec=1, pop=board.pop)
                client.proto_ver()
                started = time.perf_counter()
                client.start_session()
                handshake.append(time.perf_counter() - started)
                started = time.perf_counter()
                client.set_user_mapping("bench-user", str(uuid.uuid4()))
                assoc.append(time.perf_counter() - started)
        print(f"provisioning over HTTP, virtual board ({heap} heap), median of {runs} sessions:")
        print(f"  Security 1 handshake (2 round trips)   {_ms(statistics.median(handshake))}"
              f"  (min {_ms(min(handshake))}, max {_ms(max(handshake))})")
        print(f"  cloud_user_assoc round trip (persisted) {_ms(statistics.median(assoc))}"
              f"  (min {_ms(min(assoc))}, max {_ms(max(assoc))})")


def _flow_once(heap: str, workdir: Path, transport: str = "softap") -> dict:
    with Stack(workdir, heap=heap) as stack:
        stack.add_user(EMAIL, PASSWORD)
        board = stack.add_board("vb-bench", transport=transport)
        board.wait_for_log(r"state: provisioning", timeout=30)
        host, port = board.softap
        timeline = Timeline()
        result = run_flow(lambda: board_transport(board), board.pop, 1, stack.ssid, stack.passphrase, stack.cloud.base_url,
                          EMAIL, PASSWORD, timeline)
        marks = {"status": result.status}
        if result.status == "confirmed":
            marks["internal RAM"] = internal_ram(board)
        for label, prefix in (("node id", "node_id "), ("Connected", "prov-config status: Connected"),
                              ("PUT", "PUT user/nodes/mapping"), ("confirmed", "request_status: confirmed")):
            event = timeline.first(prefix)
            if event is not None:
                marks[label] = event.t
        return marks


def internal_ram(board) -> tuple[int, int]:
    """(free now, lowest free since the online phase's boot) of the modelled ESP-IDF heap, bytes: the
    lowest point is the TLS handshake's peak (sim/vb_esp32.py)."""
    total, free, _, lowest = map(int, board.exec(
        "import esp32; print(*esp32.idf_heap_info(esp32.HEAP_DATA)[0])").split())
    return free, lowest


def bench_flow(runs: int, heap: str) -> None:
    samples = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
            samples.append(_flow_once(heap, Path(tmp)))
    confirmed = [s for s in samples if s["status"] == "confirmed"]
    print(f"whole mapping flow (demo steps, {heap} heap), {len(confirmed)}/{runs} confirmed; "
          f"median elapsed since login:")
    for label in ("node id", "Connected", "PUT", "confirmed"):
        values = [s[label] for s in confirmed if label in s]
        if values:
            print(f"  {label:<10} {statistics.median(values):6.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    ram = [s["internal RAM"] for s in confirmed]
    if ram:
        print(f"internal RAM outside the GC heap (ESP32_GENERIC model, {heap} heap, Wi-Fi on): "
              f"headroom at the TLS handshake {min(low for _, low in ram)} bytes, "
              f"{min(free for free, _ in ram)} bytes free once online")


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


def bench_heap_floor(low_kib: int = 64, high_kib: int = 120, step_kib: int = 8, transport: str = "softap") -> None:
    """Smallest heap (multiple of step) at which the flow confirms, by bisection. Above ~121K the
    internal-RAM model leaves no room for a TLS session (sim/vb_esp32.py), so the search starts there."""
    def works(kib: int) -> bool:
        started = time.perf_counter()
        print(f"  heap floor: the whole flow over {transport} at {kib}K ...", end="", flush=True)
        with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
            try:
                ok = _flow_once(f"{kib}K", Path(tmp), transport)["status"] == "confirmed"
            except Exception:
                ok = False
        print(f" {'confirms' if ok else 'fails'} ({time.perf_counter() - started:.1f} s)", flush=True)
        return ok

    print(f"heap floor: bisecting {low_kib}K..{high_kib}K in {step_kib}K steps, one whole flow per try",
          flush=True)

    if not works(high_kib):
        print(f"heap floor: the flow does not confirm even at {high_kib}K")
        return
    # in steps; high works, low is taken to fail
    low, high = _bisect(low_kib // step_kib, high_kib // step_kib, lambda mid: not works(mid * step_kib))
    print(f"smallest virtual-board heap at which the whole flow over {transport} confirms: {high * step_kib}K "
          f"(fails at {low * step_kib}K; firmware as .mpy)")


def _provisions(kib: int, transport: str) -> bool:
    """Whether a board with a `kib` heap, serving `transport`, is provisioned to Connected (Security 1, with a
    scan) by a client over BLE when it serves BLE, else over SoftAP."""
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp, Stack(Path(tmp), heap=f"{kib}K") as stack:
        board = stack.add_board("vb-bench", transport=transport)
        try:
            board.wait_for_log(r"state: provisioning", timeout=30)
            with board_transport(board, over="softap" if transport == "softap" else "ble") as client_transport:
                Provisioner(client_transport, sec=1, pop=board.pop, poll_interval_s=0.1).provision(
                    stack.ssid, stack.passphrase, "bench-user", str(uuid.uuid4()), scan=True)
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not fit"
            return False


def bench_provisioning_floor(low_kib: int = 40, high_kib: int = 110) -> dict:
    """Per transport, the smallest heap (1K steps) at which provisioning succeeds, by bisection."""
    floors = {}
    for transport in ("softap", "ble", "both"):
        def works(kib: int) -> bool:
            started = time.perf_counter()
            print(f"  provisioning floor ({transport}): {kib}K ...", end="", flush=True)
            ok = _provisions(kib, transport)
            print(f" {'provisioned' if ok else 'fails'} ({time.perf_counter() - started:.1f} s)", flush=True)
            return ok

        if not works(high_kib):
            print(f"provisioning over {transport} fails even at {high_kib}K")
            continue
        _, floors[transport] = _bisect(low_kib, high_kib, lambda mid: not works(mid))
    print("smallest virtual-board heap at which provisioning succeeds (Security 1, scan, mapping, Wi-Fi; .mpy): "
          + ", ".join(f"{t} {k}K" for t, k in floors.items()), flush=True)
    return floors


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


def run_firmware_benches() -> None:
    env_py = sys.executable
    micropython = str(Path(env_py).with_name("micropython"))
    print("device-side Security 1 on the unix port (rmkit/benchmarks/sec1.py):", flush=True)
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        subprocess.run([micropython, str(BENCH_DIR / "sec1.py")], cwd=tmp,
                       env={"MICROPYPATH": f"{FIRMWARE_DIR}:{BENCH_DIR}", "PATH": "/usr/bin:/bin", "FW_TMP": tmp})
    print("MQTT/TLS on the unix port (rmkit/benchmarks/mqtt_heap.py):", flush=True)
    subprocess.run([env_py, "-m", "rmkit.benchmarks.mqtt_heap"])


def _cmd_bench(args: argparse.Namespace) -> int:
    bench_sessions(args.sessions, args.heap)
    bench_flow(args.runs, args.heap)
    if not args.quick:
        bench_heap_floor()
        bench_heap_floor(transport="ble")
        bench_provisioning_floor()
        bench_stack_depth()
        run_firmware_benches()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: provisioning timings, flow timings, heap floor (make bench)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=20, help="provisioning sessions to time (default 20)")
    p.add_argument("--runs", type=int, default=5, help="whole-flow runs to time (default 5)")
    p.add_argument("--heap", default="110K", help="virtual board heap for the timings (default 110K)")
    p.add_argument("--quick", action="store_true", help="timings only: skip the heap search and firmware benches")
    p.set_defaults(func=_cmd_bench)
