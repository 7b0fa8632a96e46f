"""The client's whole job in the mapping flows (README, "How the mapping flow works"): provision the node (step 1), ask the cloud to map it
(step 2), poll the request (step 4). Step 3 is the node's own MQTT publish.

Or, when the node advertises challenge-response (docs/protocol.md 7.1), as Espressif's clients do:
proto-ver, prov-session, the cloud's challenge (initiate), the node's signature (ch_resp), the cloud's
check (verify), then Wi-Fi; the node is mapped at verify, and nothing is polled.

Each step is recorded on a Timeline, so the same code drives `make demo` and the end-to-end tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from rmkit.cloud_client import CloudClient, MappingOutcome
from rmkit.provision.client import Provisioner
from rmkit.provision.mapping import AUTO, CHALLENGE_RESPONSE, DEFAULT_CHALLENGE_TIMEOUT_S, SECRET_KEY, choose_mapping
from rmkit.provision.transport import HttpTransport, Transport
from rmkit.timeline import Timeline


@dataclass
class FlowResult:
    node_id: str
    request_id: str
    status: str
    nodes: list
    secret_key: str   # the caller's to keep; never printed ("" after challenge-response, which uses none)
    mapping: str = SECRET_KEY  # the flow that ran (rmkit.provision.mapping)


def provision_node(provisioner: Provisioner, timeline: Timeline, user_id: str, secret_key: str,
                   ssid: str, passphrase: str) -> str:
    """Step 1: session, user mapping, Wi-Fi credentials, wait for Connected. Returns the node id.
    The client<->node arrows name the transport (SoftAP, BLE)."""
    via = _via(provisioner)
    _open_session(provisioner, timeline)
    # each request is drawn when it is sent, so that what it causes (log lines the watchers pick up) comes after it
    timeline.add("client", "node", f"cloud_user_assoc {{user_id, secret_key}}{via}")
    node_id = provisioner.set_user_mapping(user_id, secret_key)
    timeline.add("node", "client", f"node_id {node_id}{via}")
    _join_wifi(provisioner, timeline, ssid, passphrase)
    return node_id


def provision_node_by_challenge(provisioner: Provisioner, timeline: Timeline, cloud: CloudClient, ssid: str,
                                passphrase: str) -> tuple[str, str]:
    """Step 1 with challenge-response mapping (docs/protocol.md 7.1), in esp-rainmaker-cli's order:
    session, initiate, ch_resp, verify, then Wi-Fi. Returns (node_id, request_id); the request is
    confirmed once verify has answered."""
    via = _via(provisioner)
    _open_session(provisioner, timeline)
    # each request is drawn when it is sent, so that what it causes (log lines the watchers pick up) comes after it
    timeline.add("client", "cloud", "POST user/nodes/mapping/initiate")
    issued = cloud.initiate_mapping(DEFAULT_CHALLENGE_TIMEOUT_S)
    timeline.add("cloud", "client", f"request_id {issued.request_id[:8]}..., challenge")
    timeline.add("client", "node", f"ch_resp {{challenge}}{via}")
    signed = provisioner.sign_challenge(issued.challenge)
    timeline.add("node", "client", f"signature ({len(signed.signature)} bytes), node_id {signed.node_id}{via}")
    timeline.add("client", "cloud", "POST user/nodes/mapping/verify {signature}")
    cloud.verify_mapping(issued.request_id, signed.node_id, signed.signature)
    timeline.add("cloud", "client", "success: node mapped")
    _join_wifi(provisioner, timeline, ssid, passphrase)
    return signed.node_id, issued.request_id


def _via(provisioner: Provisioner) -> str:
    """The client<->node arrows name the transport (SoftAP, BLE)."""
    return f" [{provisioner.transport.label}]" if provisioner.transport.label else ""


def _open_session(provisioner: Provisioner, timeline: Timeline) -> None:
    """proto-ver (unless already read: run_flow reads it to choose the mapping), then prov-session."""
    via = _via(provisioner)
    if provisioner.version_info is None:
        provisioner.proto_ver()
    info = provisioner.version_info
    prov = info.get("prov") if isinstance(info.get("prov"), dict) else {}
    timeline.add("client", "node", f"proto-ver -> {prov.get('ver', '?')}{via}")
    provisioner.start_session()
    timeline.add("client", "node", f"prov-session: Security {provisioner.security_version} session{via}")


def _join_wifi(provisioner: Provisioner, timeline: Timeline, ssid: str, passphrase: str) -> None:
    via = _via(provisioner)
    timeline.add("client", "node", f"prov-config: Wi-Fi '{ssid}' set and applied{via}")
    provisioner.set_wifi_config(ssid, passphrase)
    provisioner.apply_wifi_config()
    wifi = provisioner.wait_for_wifi(ssid)
    timeline.add("node", "client", f"prov-config status: Connected ({wifi.ip4_addr}){via}")


def board_transport(board, over: Optional[str] = None, timeout: float = 15.0) -> Transport:
    """A client's channel to a virtual board in provisioning, `over` "ble" (its simulated Bluetooth radio)
    or "softap" (its HTTP service); by default BLE when the board serves only that, else SoftAP."""
    if (over or ("ble" if board.transport == "ble" else "softap")) == "ble":
        from rmkit.provision.ble import BumbleTransport

        return BumbleTransport(board.service_name, board.ble_hci, timeout=timeout)
    return HttpTransport(*board.softap, timeout=timeout)


def map_node(cloud: CloudClient, timeline: Timeline, node_id: str, secret_key: str,
             poll_interval_s: float = 0.2) -> MappingOutcome:
    """Steps 2 and 4: PUT the mapping request, then poll it until it is final."""
    timeline.add("client", "cloud", "PUT user/nodes/mapping {node_id, secret_key}")
    request_id = cloud.request_mapping(node_id, secret_key)
    timeline.add("cloud", "client", f"request_id {request_id[:8]}...")

    def on_status(status: str) -> None:
        timeline.add("client", "cloud", "GET user/nodes/mapping?request_id")
        timeline.add("cloud", "client", f"request_status: {status}")

    return cloud.wait_for_mapping(request_id, poll_interval_s=poll_interval_s, on_status=on_status)


def run_flow(open_transport: Callable[[], Transport], pop: Optional[str], sec: int, ssid: str, passphrase: str,
             cloud_url: str, email: str, password: str, timeline: Timeline,
             secret_key: Optional[str] = None, poll_interval_s: float = 0.2, mapping: str = AUTO) -> FlowResult:
    """Log in, provision the node `open_transport()` reaches, map it to the logged-in user, wait for the result.
    `mapping` as rmkit.provision.mapping: by default challenge-response when the node offers it."""
    cloud = CloudClient(cloud_url)
    user_id = cloud.login(email, password)
    timeline.add("client", "cloud", f"login {email}")
    secret_key = secret_key or str(uuid.uuid4())
    transport = open_transport()
    try:
        provisioner = Provisioner(transport, sec=sec, pop=pop)
        choice = choose_mapping(mapping, provisioner.proto_ver(), have_cloud=True)
        if choice.method == CHALLENGE_RESPONSE:
            node_id, request_id = provision_node_by_challenge(provisioner, timeline, cloud, ssid, passphrase)
            outcome = MappingOutcome(request_id, "confirmed", 0, 0.0)
            secret_key = ""  # none was used
        else:
            node_id = provision_node(provisioner, timeline, user_id, secret_key, ssid, passphrase)
            outcome = None
    finally:
        transport.close()
    if outcome is None:
        outcome = map_node(cloud, timeline, node_id, secret_key, poll_interval_s)
    nodes = cloud.nodes() if outcome.status == "confirmed" else []
    if outcome.status == "confirmed":
        timeline.add("client", "cloud", "GET user/nodes")
        timeline.add("cloud", "client", f"nodes: {', '.join(nodes)}")
    return FlowResult(node_id, outcome.request_id, outcome.status, nodes, secret_key, choice.method)
