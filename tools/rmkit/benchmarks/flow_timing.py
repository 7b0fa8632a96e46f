"""One mapping flow by the secret key on a virtual board, timed end to end and split into its phases.

The phases chain, so they add up to the end-to-end time: three client steps (session, user
association, Wi-Fi apply up to `Connected`), the node's reboot into station mode (until its serial
log shows the new boot), five steps the node stamps with its own uptime in that boot (station join,
SNTP, TLS connect, config publish, mapping publish -> PUBACK), and the cloud confirm: from the PUBACK
until the client sees `confirmed` (it polls, so its poll interval is part of it).

Host times come from one Timeline: the client's steps, and the node's reboot line as a LogWatcher
sees it (5 ms polling). The same code times our client (rmkit.flow) and Espressif's
esp-rainmaker-cli (rmkit.benchmarks.espcli_flow), which report the client steps with other texts. Both
map a node whose user_mapping is the secret key only (NODE_USER_MAPPING): a node that also offers
challenge-response is mapped that way by either client, a flow without these phases
(rmkit.benchmarks.mapping_flows times both flows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from rmkit.flow import board_transport, run_flow
from rmkit.recorder import CLOUD_PATTERNS, LogWatcher
from rmkit.timeline import Timeline

PHASES = ("session", "user association", "Wi-Fi apply", "reboot", "station join", "SNTP", "TLS connect",
          "config publish", "publish→PUBACK", "cloud confirm")

#: the node's restart into station mode (rmnode.node: `machine.reset()` after provisioning)
REBOOT_LINE = r"rst:0xc \(SW_CPU_RESET\)"
REBOOT_MARK = "node reboots"
#: (phase ending at this line, its regex) in the station-mode boot, stamped `I (uptime_ms) tag: ...`
STATION_STEPS = (("station join", r"mqtt: network is up"),
                 ("SNTP", r"clock: time set"),
                 ("TLS connect", r"mqtt: connected in \d+ ms"),
                 ("config publish", r"mqtt: published \S+/user/mapping"),
                 ("publish→PUBACK", r"mapping: mapping for user \S+ acknowledged"))

#: the node's user_mapping setting (rmkit factory --user-mapping) for the flows timed here
NODE_USER_MAPPING = "secret"
#: what our client's Timeline says at the end of each client step (rmkit.flow)
RMKIT_CLIENT_MARKS = {"start": "login ", "session": "prov-session", "user association": "node_id ",
                      "Wi-Fi apply": "prov-config status: Connected", "confirmed": "request_status: confirmed"}


@dataclass
class FlowTiming:
    status: str                   # the mapping request's final status
    total_s: Optional[float]      # start -> the client sees confirmed
    phases: dict                  # phase -> seconds, in PHASES order (only when confirmed)


def station_boot_uptimes(serial_log: str) -> dict:
    """Uptime (ms) at the end of each STATION_STEPS phase in the last boot after REBOOT_LINE."""
    parts = re.split(REBOOT_LINE, serial_log)
    if len(parts) < 2:
        return {}
    boot = parts[-1]
    uptimes = {}
    for phase, pattern in STATION_STEPS:
        match = re.search(r"\((\d+)\) " + pattern, boot)
        if match:
            uptimes[phase] = int(match.group(1))
    return uptimes


def chain(timeline: Timeline, client_marks: dict, serial_log: str) -> FlowTiming:
    """The phases from a finished flow's Timeline (client marks + REBOOT_MARK) and the node's serial log."""
    def at(key: str) -> Optional[float]:
        event = timeline.first(client_marks[key])
        return event.t if event is not None else None

    start, confirmed = at("start"), at("confirmed")
    if start is None or confirmed is None:
        return FlowTiming("not confirmed", None, {})
    reboot = timeline.first(REBOOT_MARK)
    uptimes = station_boot_uptimes(serial_log)
    if reboot is None or len(uptimes) < len(STATION_STEPS):
        return FlowTiming("confirmed", confirmed - start, {})
    phases, previous = {}, start
    for phase in ("session", "user association", "Wi-Fi apply"):
        phases[phase] = at(phase) - previous
        previous = at(phase)
    phases["reboot"] = reboot.t - previous
    previous_ms = 0
    for phase, _ in STATION_STEPS:
        phases[phase] = (uptimes[phase] - previous_ms) / 1000
        previous_ms = uptimes[phase]
    phases["cloud confirm"] = confirmed - (reboot.t + previous_ms / 1000)
    return FlowTiming("confirmed", confirmed - start, phases)


def watch_node_and_cloud(board, cloud_log, timeline: Timeline) -> list:
    """LogWatchers that put the node's reboot and the cloud's verdicts on `timeline`; stop() them after."""
    return [LogWatcher(board.serial_log, timeline, ((REBOOT_LINE, "node", "node", REBOOT_MARK),)).start(),
            LogWatcher(cloud_log, timeline, CLOUD_PATTERNS).start()]


def time_rmkit_flow(stack, board, email: str, password: str) -> FlowTiming:
    """Our client (rmkit.flow.run_flow, polling every 0.2 s) maps `board`, which serves provisioning."""
    timeline = Timeline()
    watchers = watch_node_and_cloud(board, stack.cloud_log, timeline)
    try:
        result = run_flow(lambda: board_transport(board), board.pop, 1, stack.ssid, stack.passphrase,
                          stack.cloud.base_url, email, password, timeline)
    finally:
        for watcher in watchers:
            watcher.stop()
    if result.status != "confirmed":
        return FlowTiming(result.status, None, {})
    return chain(timeline, RMKIT_CLIENT_MARKS, board.read_log())


def rmkit_series(runs: int, workdir, say, heap: Optional[str] = None, email: str = "bench@example.com",
                 password: str = "bench-password-1") -> list[FlowTiming]:
    """`runs` flows by our client, each on a fresh board (new flash, new node id) of one Stack."""
    from rmkit.stack import Stack

    timings = []
    with Stack(workdir, heap=heap) as stack:
        stack.add_user(email, password)
        for run in range(1, runs + 1):
            board = stack.add_board(f"vb-bench-{run}", user_mapping=NODE_USER_MAPPING)
            try:
                board.wait_for_log(r"state: provisioning", timeout=30)
                timing = time_rmkit_flow(stack, board, email, password)
            finally:
                board.stop()
            timings.append(timing)
            shown = f"{timing.total_s:.2f} s" if timing.total_s is not None else timing.status
            say(f"  end-to-end, our client, run {run}/{runs}: {shown}")
    return timings
