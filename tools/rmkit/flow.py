"""The client's whole job in the seed's sequence: provision the node (step 1), ask the cloud to map it
(step 2), poll the request (step 4). Step 3 is the node's own MQTT publish.

Each step is recorded on a Timeline, so the same code drives `rmkit provision --cloud-url`,
`make demo` and the end-to-end tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from rmkit.cloud_client import CloudClient, MappingOutcome
from rmkit.provision.client import Provisioner
from rmkit.provision.transport import HttpTransport, Transport
from rmkit.timeline import Timeline


@dataclass
class FlowResult:
    node_id: str
    request_id: str
    status: str
    nodes: list
    secret_key: str   # the caller's to keep; never printed


def provision_node(provisioner: Provisioner, timeline: Timeline, user_id: str, secret_key: str,
                   ssid: str, passphrase: str) -> str:
    """Step 1: session, user mapping, Wi-Fi credentials, wait for Connected. Returns the node id.
    The client<->node arrows name the transport (SoftAP, BLE)."""
    via = f" [{provisioner.transport.label}]" if provisioner.transport.label else ""
    info = provisioner.proto_ver()
    timeline.add("client", "node", f"proto-ver -> {info.get('prov', {}).get('ver', '?')}{via}")
    provisioner.start_session()
    timeline.add("client", "node", f"prov-session: Security {provisioner.security_version} session{via}")
    node_id = provisioner.set_user_mapping(user_id, secret_key)
    timeline.add("client", "node", f"cloud_user_assoc {{user_id, secret_key}}{via}")
    timeline.add("node", "client", f"node_id {node_id}{via}")
    provisioner.set_wifi_config(ssid, passphrase)
    provisioner.apply_wifi_config()
    timeline.add("client", "node", f"prov-config: Wi-Fi '{ssid}' set and applied{via}")
    wifi = provisioner.wait_for_wifi(ssid)
    timeline.add("node", "client", f"prov-config status: Connected ({wifi.ip4_addr}){via}")
    return node_id


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
    request_id = cloud.request_mapping(node_id, secret_key)
    timeline.add("client", "cloud", "PUT user/nodes/mapping {node_id, secret_key}")
    timeline.add("cloud", "client", f"request_id {request_id[:8]}...")

    def on_status(status: str) -> None:
        timeline.add("client", "cloud", "GET user/nodes/mapping?request_id")
        timeline.add("cloud", "client", f"request_status: {status}")

    return cloud.wait_for_mapping(request_id, poll_interval_s=poll_interval_s, on_status=on_status)


def run_flow(open_transport: Callable[[], Transport], pop: Optional[str], sec: int, ssid: str, passphrase: str,
             cloud_url: str, email: str, password: str, timeline: Timeline,
             secret_key: Optional[str] = None, poll_interval_s: float = 0.2) -> FlowResult:
    """Log in, provision the node `open_transport()` reaches, map it to the logged-in user, wait for the result."""
    cloud = CloudClient(cloud_url)
    user_id = cloud.login(email, password)
    timeline.add("client", "cloud", f"login {email}")
    secret_key = secret_key or str(uuid.uuid4())
    transport = open_transport()
    try:
        provisioner = Provisioner(transport, sec=sec, pop=pop)
        node_id = provision_node(provisioner, timeline, user_id, secret_key, ssid, passphrase)
    finally:
        transport.close()
    outcome = map_node(cloud, timeline, node_id, secret_key, poll_interval_s)
    nodes = cloud.nodes() if outcome.status == "confirmed" else []
    if outcome.status == "confirmed":
        timeline.add("client", "cloud", "GET user/nodes")
        timeline.add("cloud", "client", f"nodes: {', '.join(nodes)}")
    return FlowResult(node_id, outcome.request_id, outcome.status, nodes, secret_key)
