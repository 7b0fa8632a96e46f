"""The whole mapping flow by our client over SoftAP and over BLE, by challenge-response (ch_resp, what the node
offers by default) and by the secret key (`--mapping secret`), on virtual boards at this host's speed and at an
ESP32's (VirtualBoard(cpu="esp32")): the time from login to the client seeing `confirmed`, phase by phase, and
each of the node's boots' RAM figures from the board's RAM model (ram_phases.py).

The phases chain from the client's login, each ending at a step the client or the node's log shows
(MAPPING_PHASES), so they add up to the time to confirmed; what follows confirmed (ch_resp maps the node before
its Wi-Fi is set) is timed on from there (AFTER_CONFIRMED). A run ends once the node is online: its MQTT session
for ch_resp, the mapping publish acknowledged for the secret-key flow; the RAM log is read then. At ESP32 speed
the four flows of a run go at once (measure()).
"""

from __future__ import annotations

import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from rmkit.benchmarks.ram_phases import boots
from rmkit.flow import board_transport, run_flow
from rmkit.provision.mapping import CHALLENGE_RESPONSE, SECRET_KEY
from rmkit.recorder import NODE_PATTERNS, LogWatcher
from rmkit.timeline import Timeline

PASSWORD = "flows-password-1"
#: (transport, mapping) in the report's order
FLOWS = (("softap", CHALLENGE_RESPONSE), ("ble", CHALLENGE_RESPONSE), ("softap", SECRET_KEY), ("ble", SECRET_KEY))
SPEEDS = {"host": None, "esp32": "esp32"}  # the report's name -> VirtualBoard(cpu=)
START_MARK = "login "
#: (phase, the start of the timeline text that ends it), rmkit.flow's steps and the recorder's node lines
MAPPING_PHASES = {
    CHALLENGE_RESPONSE: (("session (connect, proto-ver, Security 1)", "prov-session"),
                         ("challenge from the cloud", "request_id "),
                         ("ch_resp: the node signs", "signature ("), ("verify", "success: node mapped")),
    # one phase from Connected to confirmed: the node's "published" line is no time to cut at, since at ESP32
    # speed the pacer may stop the node between its publish and that line while the cloud confirms (a run had
    # the client see confirmed 11 ms before the line)
    SECRET_KEY: (("session (connect, proto-ver, Security 1)", "prov-session"), ("user association", "node_id "),
                 ("Wi-Fi apply", "prov-config status: Connected"),
                 ("reboot, node online, mapping published and confirmed", "request_status: confirmed")),
}
AFTER_CONFIRMED = {CHALLENGE_RESPONSE: (("Wi-Fi apply", "prov-config status: Connected"),
                                        ("reboot, node online", "MQTT connected")),
                   SECRET_KEY: ()}
#: the node's last line of a run, as make demo waits for it
NODE_DONE = {CHALLENGE_RESPONSE: r"online: config reported", SECRET_KEY: r"mapping for user \S+ acknowledged"}
# A BLE request at ESP32 speed waits for a Security 1 handshake the board computes for seconds
TRANSPORT_TIMEOUT_S = 30.0
NODE_DONE_TIMEOUT_S = 60.0


@dataclass
class FlowRun:
    transport: str
    mapping: str
    speed: str                        # "host" or "esp32"
    status: str                       # the mapping request's final status
    confirmed_s: Optional[float]      # login -> the client sees confirmed
    phases: dict = field(default_factory=dict)   # MAPPING_PHASES, then AFTER_CONFIRMED, seconds
    boots: list = field(default_factory=list)    # ram_phases.BootRam of each boot, as dicts
    crashes: list = field(default_factory=list)  # the board's MicroPython process crashes (board.crashes)
    replaced: list = field(default_factory=list)  # an earlier attempt whose board crashed, and how it ended


def chain(timeline: Timeline, mapping: str) -> tuple[Optional[float], dict]:
    """(seconds to confirmed, {phase: seconds}) from a run's timeline; phases whose end is missing are left out,
    and so is the time to confirmed."""
    start = timeline.first(START_MARK)
    if start is None:
        return None, {}
    phases, previous, confirmed = {}, start.t, None
    steps = MAPPING_PHASES[mapping] + AFTER_CONFIRMED[mapping]
    for index, (phase, mark) in enumerate(steps):
        event = timeline.first(mark)
        if event is None:
            break
        phases[phase] = event.t - previous
        previous = event.t
        if index == len(MAPPING_PHASES[mapping]) - 1:
            confirmed = event.t - start.t
    return confirmed, phases


def _flow(stack, name: str, email: str, transport: str, mapping: str, speed: str) -> FlowRun:
    """One flow by `email`'s client on a fresh board serving `transport` (the node offers both mappings). Only
    the client's steps and the node's own log go on the timeline: the cloud's log holds every concurrent flow's
    lines. A flow that fails is a FlowRun saying why, with the board's crashes if it had any."""
    board = None
    try:
        with _STARTING:
            board = stack.add_board(name, transport=transport, cpu=SPEEDS[speed])
        board.wait_for_log(r"state: provisioning", timeout=NODE_DONE_TIMEOUT_S)
        timeline = Timeline()
        watcher = LogWatcher(board.serial_log, timeline, NODE_PATTERNS).start()
        try:
            result = run_flow(lambda: board_transport(board, timeout=TRANSPORT_TIMEOUT_S), board.pop, 1, stack.ssid,
                              stack.passphrase, stack.cloud.base_url, email, PASSWORD, timeline, mapping=mapping)
            if result.status == "confirmed":
                board.wait_for_log(NODE_DONE[mapping], timeout=NODE_DONE_TIMEOUT_S)
        finally:
            watcher.stop()
        confirmed, phases = chain(timeline, mapping) if result.status == "confirmed" else (None, {})
        return FlowRun(transport, mapping, speed, result.status, confirmed, phases,
                       [asdict(boot) for boot in boots(board.ram_log())], board.crashes)
    except Exception as exc:  # noqa: BLE001 - one failed run is a row's count, not the end of the bench
        crashes = board.crashes if board is not None else []
        return FlowRun(transport, mapping, speed, f"failed: {type(exc).__name__}: {exc}"[:200], None, crashes=crashes)
    finally:
        if board is not None:
            board.stop()


# the Stack deploys the firmware and issues a certificate for one new board at a time
_STARTING = threading.Lock()


def _flow_or_again(stack, name: str, email: str, transport: str, mapping: str, speed: str) -> FlowRun:
    """_flow, once more on a new board if the first one's MicroPython process crashed and the flow failed: a
    crash is the simulator's (the firmware is Python; a signal killed the interpreter), not the flow's, and the
    run keeps what it was (`replaced`) for the report."""
    flow = _flow(stack, name, email, transport, mapping, speed)
    if flow.status == "confirmed" or not flow.crashes:
        return flow
    again = _flow(stack, name + "-again", email, transport, mapping, speed)
    again.replaced = [f"{flow.status}; crashes: {'; '.join(flow.crashes)}"[:300]]
    return again


def _round(stack, number: int, flows: tuple, speed: str, at_once: bool) -> Iterator[FlowRun]:
    """One run of each flow at `speed`, one after the other or all at once (each by its own user)."""
    def run(index: int, transport: str, mapping: str) -> FlowRun:
        return _flow_or_again(stack, f"vb-flow-{speed}-{number}-{index}", user_email(index), transport, mapping,
                              speed)

    if not at_once:
        for index, (transport, mapping) in enumerate(flows):
            yield run(index, transport, mapping)
        return
    with ThreadPoolExecutor(max_workers=len(flows)) as pool:
        futures = [pool.submit(run, index, transport, mapping) for index, (transport, mapping) in enumerate(flows)]
        for future in futures:
            yield future.result()


def user_email(index: int) -> str:
    return f"flows-{index}@example.com"


def measure(runs: dict, say: Callable[[str], None], flows: tuple = FLOWS, at_once: tuple = ("esp32",)) -> list[dict]:
    """`runs[speed]` runs of each (transport, mapping) of `flows` at each speed ("host", "esp32"), each on a fresh
    board of one Stack; a flow that fails is a run with its status (and no times). At the speeds in `at_once` a
    run's flows go together: a board paced to an ESP32's speed uses about 1/k of a core and the host waits on it,
    so they hardly meet, where one after the other they would take minutes. At host speed they would compete
    for the cores and time each other."""
    from rmkit.stack import Stack

    results = []
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-flows-") as tmp, Stack(Path(tmp)) as stack:
        for index in range(len(flows)):
            stack.add_user(user_email(index), PASSWORD)
        for speed, count in runs.items():
            for number in range(1, count + 1):
                for flow in _round(stack, number, flows, speed, speed in at_once):
                    results.append(asdict(flow))
                    shown = f"confirmed in {flow.confirmed_s:.2f} s" if flow.confirmed_s is not None else flow.status
                    say(f"  flow, {flow.mapping} over {flow.transport}, {speed} speed, run {number}/{count}: {shown}")
    return results
