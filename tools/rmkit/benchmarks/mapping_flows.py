"""The whole mapping flow by our client over SoftAP and over BLE, by challenge-response (ch_resp, what the node
offers by default) and by the secret key (`--mapping secret`), on virtual boards at this host's speed and at an
ESP32's (VirtualBoard(cpu="esp32")): the time from login to the client seeing `confirmed`, phase by phase, and
each of the node's boots' RAM figures from the board's RAM model (ram_phases.py).

The phases chain from the client's login, each ending at a step the client or the node's log shows
(MAPPING_PHASES), so they add up to the time to confirmed; what follows confirmed (ch_resp maps the node before
its Wi-Fi is set) is timed on from there (AFTER_CONFIRMED). A run ends once the node is online: its MQTT session
for ch_resp, the mapping publish acknowledged for the secret-key flow; the RAM log is read then.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rmkit.benchmarks.ram_phases import boots
from rmkit.flow import board_transport, run_flow
from rmkit.provision.mapping import CHALLENGE_RESPONSE, SECRET_KEY
from rmkit.recorder import CLOUD_PATTERNS, NODE_PATTERNS, LogWatcher
from rmkit.timeline import Timeline

EMAIL, PASSWORD = "flows@example.com", "flows-password-1"
#: (transport, mapping) in the report's order
FLOWS = (("softap", CHALLENGE_RESPONSE), ("ble", CHALLENGE_RESPONSE), ("softap", SECRET_KEY), ("ble", SECRET_KEY))
SPEEDS = {"host": None, "esp32": "esp32"}  # the report's name -> VirtualBoard(cpu=)
START_MARK = "login "
#: (phase, the start of the timeline text that ends it), rmkit.flow's steps and the recorder's node lines
MAPPING_PHASES = {
    CHALLENGE_RESPONSE: (("session (connect, proto-ver, Security 1)", "prov-session"),
                         ("challenge from the cloud", "request_id "),
                         ("ch_resp: the node signs", "signature ("), ("verify", "success: node mapped")),
    SECRET_KEY: (("session (connect, proto-ver, Security 1)", "prov-session"), ("user association", "node_id "),
                 ("Wi-Fi apply", "prov-config status: Connected"),
                 ("reboot, node online, mapping published", "MQTT user/mapping"),
                 ("cloud confirm", "request_status: confirmed")),
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


def one_flow(stack, name: str, transport: str, mapping: str, speed: str) -> FlowRun:
    """One flow on a fresh board serving `transport` (the node offers both mappings)."""
    board = stack.add_board(name, transport=transport, cpu=SPEEDS[speed])
    try:
        board.wait_for_log(r"state: provisioning", timeout=NODE_DONE_TIMEOUT_S)
        timeline = Timeline()
        watchers = [LogWatcher(board.serial_log, timeline, NODE_PATTERNS).start(),
                    LogWatcher(stack.cloud_log, timeline, CLOUD_PATTERNS).start()]
        try:
            result = run_flow(lambda: board_transport(board, timeout=TRANSPORT_TIMEOUT_S), board.pop, 1, stack.ssid,
                              stack.passphrase, stack.cloud.base_url, EMAIL, PASSWORD, timeline, mapping=mapping)
            if result.status == "confirmed":
                board.wait_for_log(NODE_DONE[mapping], timeout=NODE_DONE_TIMEOUT_S)
        finally:
            for watcher in watchers:
                watcher.stop()
        confirmed, phases = chain(timeline, mapping) if result.status == "confirmed" else (None, {})
        return FlowRun(transport, mapping, speed, result.status, confirmed, phases,
                       [asdict(boot) for boot in boots(board.ram_log())])
    finally:
        board.stop()


def measure(runs: dict, say: Callable[[str], None], flows: tuple = FLOWS) -> list[dict]:
    """`runs[speed]` runs of each (transport, mapping) of `flows` at each speed ("host", "esp32"), each on a fresh
    board of one Stack; a flow that fails is a run with its status (and no times)."""
    from rmkit.stack import Stack

    results = []
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-flows-") as tmp, Stack(Path(tmp)) as stack:
        stack.add_user(EMAIL, PASSWORD)
        for speed, count in runs.items():
            for transport, mapping in flows:
                for run in range(1, count + 1):
                    try:
                        flow = one_flow(stack, f"vb-flow-{len(results)}", transport, mapping, speed)
                    except Exception as exc:  # noqa: BLE001 - one failed run is a row's count, not the end
                        flow = FlowRun(transport, mapping, speed, f"failed: {type(exc).__name__}: {exc}"[:200], None)
                    results.append(asdict(flow))
                    shown = f"confirmed in {flow.confirmed_s:.2f} s" if flow.confirmed_s is not None else flow.status
                    say(f"  flow, {mapping} over {transport}, {speed} speed, run {run}/{count}: {shown}")
    return results
