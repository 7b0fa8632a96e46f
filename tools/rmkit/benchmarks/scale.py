"""The local cloud at scale: N nodes and N logged-in clients map at once against one broker + cloud.

    python -m rmkit.benchmarks.scale --nodes 100 1000 --runs 5 [--json PATH] [--py-spy PROFILE] [--http-processes K]

Each run starts broker and cloud the project's way (rmkit.stack.Stack, a fresh work directory),
issues N node certificates from the run's CA, creates N users with one session each, and starts
load processes (rmkit.benchmarks.scale_load) that connect the N nodes (paho, mutual TLS). Then, all
at once, every client does the secret-key flow: `PUT v1/user/nodes/mapping`, its node publishes the
mapping with QoS 1, the client polls `GET v1/user/nodes/mapping` every 0.2 s until the request is
final (docs/protocol.md 5.3, 6). Measured: PUT->confirmed p50/p99, mappings/s, the CPU the cloud and
the broker used meanwhile; then, in the same run, the broker alone: every node publishes a payload
of the same size with QoS 1 at once (to a topic nobody subscribes to), publish->PUBACK rate and p99.

The users and sessions are made in the cloud's process (Accounts.open_session), not by N password
logins: each login is a scrypt check, and a thousand would take half a minute of the cloud's CPU
before anything is measured. Everything a run starts is stopped and its work directory removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from rmkit.cloud.storage import User
from rmkit.cloud.tokens import hash_password
from rmkit.stack import Stack

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_ALNUM = string.ascii_letters + string.digits


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 1000 values is the 990th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else float("nan")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (their threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    return total / _CLK_TCK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cloud_pids(stack: Stack) -> list[int]:
    """The processes of the cloud: this one (CloudService runs in it) and any it started."""
    return [os.getpid(), *getattr(stack.cloud, "worker_pids", lambda: [])()]


# ------------------------------------------------------------------------------------------- setup

def issue_mappings(stack: Stack, count: int, say) -> list[dict]:
    """`count` nodes (certificate from the run's CA, CN = node id) and as many users with a session each."""
    started = time.monotonic()
    node_ids = [f"5CA1E{i:07X}" for i in range(count)]  # 12 hex digits, like a MAC-derived id (docs/protocol.md 7.3)
    identities = [stack.pki.node_identity(node_id) for node_id in node_ids]
    say(f"issued {count} node certificates in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    password_hash = hash_password(secrets.token_hex(8))  # nobody logs in with it: sessions are opened directly
    users, now = [], time.time()
    with stack.cloud.storage.transaction() as tx:
        for i in range(count):
            user = User("".join(secrets.choice(_ALNUM) for _ in range(22)), f"scale{i}@example.com", password_hash, now)
            tx.add_user(user.user_id, user.email, user.password_hash, now)
            users.append(user)
    mappings = []
    for node_id, identity, user in zip(node_ids, identities, users):
        tokens = stack.cloud.accounts.open_session(user)
        mappings.append({"node_id": node_id, "cert_pem": str(identity.cert_pem), "key_pem": str(identity.key_pem),
                         "user_id": user.user_id, "access_token": tokens.accesstoken, "secret_key": str(uuid.uuid4())})
    say(f"created {count} users with a session each in {time.monotonic() - started:.1f} s")
    return mappings


class LoadProcesses:
    """The scale_load processes: one job each, commands broadcast, their JSON lines merged in one queue."""

    def __init__(self, jobs: list[dict]):
        self.events: queue.Queue = queue.Queue()
        self.procs: list[subprocess.Popen] = []
        for job in jobs:
            proc = subprocess.Popen([sys.executable, "-m", "rmkit.benchmarks.scale_load"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True, bufsize=1)
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(len(self.procs) - 1, proc), daemon=True).start()
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()

    def _read(self, index: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self.events.put((index, json.loads(line)))
            except ValueError:
                log.warning("load process %d: %s", index, line.rstrip())
        self.events.put((index, {"event": "exit", "code": proc.wait()}))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def send(self, command: str) -> None:
        for proc in self.procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()

    def collect(self, event: str, timeout: float, on_progress=None) -> list[dict]:
        """One `event` answer from every process (in process order)."""
        answers: dict[int, dict] = {}
        progress: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(self.procs):
            try:
                index, message = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"load processes gave no {event!r} answer within {timeout:.0f} s") from None
            if message["event"] == event:
                answers[index] = message
            elif message["event"] == "progress":
                progress[index] = message["confirmed"]
                if on_progress is not None and len(progress) == len(self.procs):
                    on_progress(sum(progress.values()))
                    progress.clear()
            elif message["event"] == "exit":
                raise RuntimeError(f"load process {index} ended (exit code {message['code']}) before {event!r}")
        return [answers[i] for i in range(len(self.procs))]

    def stop(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.write("stop\n")
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Profiler:
    """py-spy recording this process (the cloud's main process: Stack runs CloudService in it) and its
    children (the cloud's other REST processes, and the load processes: each sample names its process)
    while the mappings run; needs py-spy installed. --nonblocking: stopping the processes to sample
    them slowed the cloud past the benchmark's own timeout (measured)."""

    def __init__(self, output: Path, pid: int):
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        fmt = "raw" if output.suffix == ".txt" else ("speedscope" if output.suffix == ".json" else "flamegraph")
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--subprocesses", "--threads", "--nonblocking", "--rate", "100",
                                      "--format", fmt, "--output", str(output)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------- run

def run_once(nodes: int, load_processes: int, poll_s: float, say, py_spy: Optional[Path] = None,
             http_processes: Optional[int] = None) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="rmkit-scale-"))
    stack = Stack(workdir, cloud_http_processes=http_processes)
    load: Optional[LoadProcesses] = None
    profiler: Optional[Profiler] = None
    try:
        stack.start()
        mappings = issue_mappings(stack, nodes, say)
        job = {"cloud": [stack.cloud.host, stack.cloud.port], "broker": [stack.broker.host, stack.broker.port],
               "ca_pem": str(stack.pki.ca_pem), "poll_s": poll_s, "give_up_s": stack.mapping_timeout + 5}
        share = math.ceil(nodes / load_processes)
        load = LoadProcesses([dict(job, mappings=mappings[i:i + share]) for i in range(0, nodes, share)])
        started = time.monotonic()
        load.collect("ready", timeout=300)
        say(f"{nodes} nodes connected over mutual TLS ({len(load.procs)} load processes) in "
            f"{time.monotonic() - started:.1f} s; mapping all at once (load {loadavg()})")
        if py_spy is not None:
            profiler = Profiler(py_spy, os.getpid())
            time.sleep(1.0)  # py-spy attaches
        pids_cloud, pid_broker = cloud_pids(stack), stack.broker.pid
        cpu_before = (cpu_seconds(pids_cloud), cpu_seconds([pid_broker]), cpu_seconds(load.pids()))
        load_at_start = loadavg()
        started = time.monotonic()
        load.send("map")
        answers = load.collect("map", timeout=stack.mapping_timeout + 120,
                               on_progress=lambda n: say(f"  {time.monotonic() - started:5.1f} s: {n}/{nodes} confirmed"))
        cpu_after = (cpu_seconds(pids_cloud), cpu_seconds([pid_broker]), cpu_seconds(load.pids()))
        if profiler is not None:
            profiler.stop()
            profiler = None
            say(f"profile of the cloud written to {py_spy}")
        results = [r for answer in answers for r in answer["results"]]
        say("the broker alone: every node publishes the same size with QoS 1 at once")
        raw = _raw_phase(load)
        return summarize(nodes, results, answers, raw, cpu_before, cpu_after, load_at_start, loadavg())
    finally:
        if profiler is not None:
            profiler.stop()
        if load is not None:
            load.stop()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _raw_phase(load: LoadProcesses) -> list[list[float]]:
    load.send("raw")
    return [pair for answer in load.collect("raw", timeout=120) for pair in answer["acks"]]


def summarize(nodes: int, results: list[dict], answers: list[dict], raw: list[list[float]],
              cpu_before: tuple, cpu_after: tuple, load_start: str, load_end: str) -> dict:
    confirmed = [r for r in results if r["status"] == "confirmed"]
    latencies = [r["final"] - r["put"] for r in confirmed]
    first = min(r["put"] for r in results)
    last = max((r.get("final", first) for r in results), default=first)
    wall = max(last - first, 1e-9)
    raw_latencies = [acked - sent for sent, acked in raw]
    raw_wall = max(max(a for _, a in raw) - min(s for s, _ in raw), 1e-9) if raw else float("nan")
    failures: dict[str, int] = {}
    for r in results:
        if r["status"] != "confirmed":
            key = r.get("error") or r["status"]
            failures[key] = failures.get(key, 0) + 1
    cloud_cpu, broker_cpu, load_cpu = (after - before for before, after in zip(cpu_before, cpu_after))
    return {
        "nodes": nodes, "confirmed": len(confirmed), "failures": failures,
        "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
        "max_s": max(latencies, default=float("nan")),
        "mappings_per_s": len(confirmed) / wall, "wall_s": wall,
        "polls": sum(r["polls"] for r in results), "http_retries": sum(a["http_retries"] for a in answers),
        "put_p99_s": percentile([r["put_answered"] - r["put"] for r in results if "put_answered" in r], 99),
        "puback_p99_s": percentile([r["puback"] - r["published"] for r in results if "puback" in r], 99),
        "cloud_cpu_pct": 100 * cloud_cpu / wall, "broker_cpu_pct": 100 * broker_cpu / wall,
        "load_cpu_pct": 100 * load_cpu / wall,
        "raw_qos1_per_s": len(raw) / raw_wall, "raw_qos1_p50_s": percentile(raw_latencies, 50),
        "raw_qos1_p99_s": percentile(raw_latencies, 99),
        "loadavg_start": load_start, "loadavg_end": load_end,
    }


# ------------------------------------------------------------------------------------------ report

_COLUMNS = (("N", "nodes", "{}"), ("confirmed", "confirmed", "{}"), ("mappings/s", "mappings_per_s", "{:.0f}"),
            ("p50 s", "p50_s", "{:.2f}"), ("p99 s", "p99_s", "{:.2f}"), ("max s", "max_s", "{:.2f}"),
            ("PUT p99 s", "put_p99_s", "{:.2f}"), ("cloud CPU", "cloud_cpu_pct", "{:.0f} %"), ("broker CPU", "broker_cpu_pct", "{:.1f} %"),
            ("load CPU", "load_cpu_pct", "{:.0f} %"), ("raw QoS1/s", "raw_qos1_per_s", "{:.0f}"),
            ("raw p99 ms", "raw_qos1_p99_s", "{:.0f}", 1000), ("loadavg at start", "loadavg_start", "{}"))


def table(rows: list[dict]) -> str:
    header = [c[0] for c in _COLUMNS]
    cells = [[(c[2].format(row[c[1]] * c[3]) if len(c) > 3 else c[2].format(row[c[1]])) for c in _COLUMNS]
             for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmkit.benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100], metavar="N",
                        help="nodes (and clients) mapping at once; several values run one after another (default 100)")
    parser.add_argument("--runs", type=int, default=1, help="runs per N, each on a fresh stack (default 1)")
    parser.add_argument("--load-processes", type=int, default=2, metavar="P",
                        help="processes the simulated nodes and clients are spread over (default 2)")
    parser.add_argument("--poll", type=float, default=0.2, metavar="S", help="client poll interval (default 0.2 s)")
    parser.add_argument("--http-processes", type=int, metavar="K",
                        help="the cloud's REST processes (default: Stack's, two per core, at most 8)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every run's figures here")
    parser.add_argument("--py-spy", type=Path, metavar="PROFILE",
                        help="record the cloud with py-spy during the mapping phase of each run, one file per run "
                        "(PROFILE.txt: collapsed stacks per thread and process, .json: speedscope, else an SVG flame "
                        "graph; py-spy must be installed: it is not in requirements-dev.txt)")
    args = parser.parse_args(argv)
    if min(args.nodes) < 1 or args.runs < 1 or args.load_processes < 1:
        parser.error("--nodes, --runs and --load-processes must be 1 or more")
    # waitress warns of its queue depth and connection limit on every request past them: true, and all over the output
    logging.getLogger("waitress").setLevel(logging.ERROR)
    rows = []

    def say(text: str) -> None:
        print(text, flush=True)

    for nodes in args.nodes:
        for run in range(1, args.runs + 1):
            say(f"run {run}/{args.runs}, N = {nodes} (load {loadavg()})")
            profile = None
            if args.py_spy is not None:
                profile = args.py_spy.with_name(f"{args.py_spy.stem}-n{nodes}-run{run}{args.py_spy.suffix}")
            row = run_once(nodes, min(args.load_processes, nodes), args.poll, say, profile, args.http_processes)
            row["run"] = run
            rows.append(row)
            say(table([row]).splitlines()[1] + (f"   not confirmed: {row['failures']}" if row["failures"] else ""))
    say("")
    say(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
        say(f"figures written to {args.json}")
    return 0 if all(row["confirmed"] == row["nodes"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
