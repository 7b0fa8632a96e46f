"""`rmkit demo`: the whole user-node mapping flow on a virtual board, a real broker and the local cloud,
narrated step by step, ending with the node listed for the user and a sequence diagram of the run. By
default the flow RainMaker uses today (challenge-response, the node advertises it); `--mapping secret` runs
the secret-key flow (the node publishes the mapping over MQTT and the cloud matches it with the client's)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from rmkit import REPO_ROOT
from rmkit.cloud_client import CloudError
from rmkit.flow import board_transport, run_flow
from rmkit.provision.errors import ProvisionError
from rmkit.provision.mapping import AUTO, CHALLENGE_RESPONSE, CHOICES
from rmkit.recorder import CLOUD_PATTERNS, NODE_PATTERNS, LogWatcher
from rmkit.stack import Stack, check_heap, fresh_workdir
from rmkit.timeline import ACTOR_TITLES, Timeline, render_svg
from rmkit.vboard.cpu_speed import CPU_HELP, CPU_MODELS, cpu_speed
from rmkit.vboard.errors import BoardError
from rmkit.vboard.node_start import wait_for_node

DEFAULT_WORKDIR = REPO_ROOT / "build" / "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password-1"
FLOW_NAMES = {CHALLENGE_RESPONSE: "challenge-response (ch_resp: the node signs the cloud's challenge)",
              "secret": "secret key (cloud_user_assoc, then the node's MQTT publish)"}


def _say(text: str) -> None:
    print(text, flush=True)


def _print_event(event) -> None:
    if event.source == event.target:
        who = f"{ACTOR_TITLES[event.source]}:"
    else:
        who = f"{ACTOR_TITLES[event.source]} -> {ACTOR_TITLES[event.target]}:"
    _say(f"  [{event.t:6.3f} s] {who:<26} {event.text}")


def run_demo(workdir: Path, heap: Optional[str] = None, mapping_timeout: float = 60.0, transport: str = "softap",
             mapping: str = AUTO, cpu: Optional[str] = None) -> int:
    fresh_workdir(workdir)
    started = time.monotonic()

    def step(text: str) -> None:
        _say(f"[{time.monotonic() - started:6.2f} s] {text}")

    speed = cpu_speed(cpu, say=step) if cpu else None
    step(f"starting mosquitto (mutual TLS, per-node ACLs) and the local cloud in {workdir}")
    with Stack(workdir, mapping_timeout=mapping_timeout, heap=heap, cpu=cpu) as stack:
        step(f"broker on {stack.broker.host}:{stack.broker.port}, cloud on {stack.cloud.base_url}")
        stack.add_user(DEMO_EMAIL, DEMO_PASSWORD)
        step(f"demo user {DEMO_EMAIL} created")
        board = stack.add_board("vb-demo", heap=heap, start=False, transport=transport)
        heap_text = f"{heap} heap" if heap else "an ESP32's RAM"
        step(f"booting virtual ESP32 'vb-demo' ({heap_text}, MAC {board.mac}, firmware precompiled with mpy-cross)")
        if speed is not None:
            step(speed.describe())
        board.start()
        wait_for_node(board, r"state: provisioning", timeout=30)
        if transport == "ble":
            where = f"BLE service {board.service_name} on the simulated radio ({board.ble_hci})"
        else:
            where = "SoftAP service %s on %s:%d" % (board.service_name, *board.softap)
        step(f"node {board.node_id} is provisioning: {where}, Security 1")
        step("the mapping flow, as it happens (%s):" % ("the node's choice" if mapping == AUTO else FLOW_NAMES[mapping]))
        timeline = Timeline(echo=_print_event)
        watchers = [LogWatcher(board.serial_log, timeline, NODE_PATTERNS).start(),
                    LogWatcher(stack.cloud_log, timeline, CLOUD_PATTERNS).start()]
        try:
            result = run_flow(lambda: board_transport(board), board.pop, 1, stack.ssid, stack.passphrase, stack.cloud.base_url,
                              DEMO_EMAIL, DEMO_PASSWORD, timeline, mapping=mapping)
            if result.status == "confirmed" and result.mapping == CHALLENGE_RESPONSE:
                # mapped before the Wi-Fi was even set: the node's last words are its MQTT session (no mapping publish)
                board.wait_for_log(r"online: config reported", timeout=30)
            elif result.status == "confirmed":
                # the node's last words (PUBACK) may trail the cloud's confirmation by a moment
                board.wait_for_log(r"mapping for user \S+ acknowledged", timeout=30)
        finally:
            for watcher in watchers:
                watcher.stop()
        timeline.save(workdir / "timeline.jsonl")
        picture = workdir / "user-node-mapping.svg"
        picture.write_text(render_svg(timeline.events, f"User-node mapping of {result.node_id} (rmkit demo)"))
        step(f"mapping flow: {FLOW_NAMES[result.mapping]}")
        step(f"mapping request {result.request_id[:8]}...: {result.status}")
        if result.status == "confirmed":
            step(f"nodes of {DEMO_EMAIL}: {', '.join(result.nodes)}")
        step(f"sequence diagram: {picture}")
        step(f"logs: {workdir}/vb-demo.log (board), {stack.broker.log_path} (broker), {stack.cloud_log} (cloud)")
    step("stopped the board, the cloud and the broker")
    return 0 if result.status == "confirmed" and result.node_id in result.nodes else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    check_heap(args.heap)  # before anything is started or any directory emptied
    try:
        return run_demo(Path(args.workdir), heap=args.heap, mapping_timeout=args.mapping_timeout,
                        transport=args.transport, mapping=args.mapping, cpu=args.cpu)
    except (ProvisionError, CloudError, BoardError) as exc:  # BoardFault too: what an ESP32 would not survive
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole user-node mapping flow on a virtual board (make demo)",
        description="Start mosquitto (mutual TLS), the local cloud and a virtual ESP32 running the firmware; "
                    "create a demo user; provision the board over SoftAP (or BLE) with Security 1; map it to the user "
                    "(challenge-response when the node offers it, as RainMaker's clients do; --mapping secret for the "
                    "secret-key flow); print each step with elapsed times and draw the sequence as an SVG. "
                    "Exits 0 only when the mapping is confirmed. Everything started is stopped at the end, "
                    "also on Ctrl-C.")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where logs and the picture go (emptied first)")
    p.add_argument("--heap", help="the firmware's GC heap: omit it for an ESP32's (56 KiB at boot, "
                   "growing into ESP-IDF's heap as on ESP32_GENERIC); 110K: a fixed heap of that many "
                   "64-bit bytes, no growth")
    p.add_argument("--transport", choices=("softap", "ble"), default="softap",
                   help="how the client provisions the board: softap (HTTP on its access point, default) or ble "
                        "(GATT over the board's simulated Bluetooth radio)")
    p.add_argument("--mapping", choices=CHOICES, default=AUTO,
                   help="the user-node mapping flow: auto (default: challenge-response, which the node advertises), "
                        "ch_resp, or secret (the secret-key flow: cloud_user_assoc, the node's MQTT publish, polling)")
    p.add_argument("--mapping-timeout", type=float, default=60.0, help="the cloud's mapping timeout in seconds")
    p.add_argument("--cpu", choices=CPU_MODELS, help=CPU_HELP)
    p.set_defaults(func=_cmd_demo)
