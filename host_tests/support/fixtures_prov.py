"""Fixtures for provisioning tests: the firmware's HTTP server and provisioning node run as real processes
(CPython and the MicroPython unix port) on 127.0.0.1 at a free port, stopped at teardown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rmkit.net import free_port

from support import paths
from support.node_process import NodeProcess
from support.paths import FIRMWARE, MICROPYTHON, REPO_ROOT

INTERPRETERS = {
    "cpython": [sys.executable],
    "micropython": [str(MICROPYTHON)],
}


def start_process(interpreter: str, script: Path, args: list[str], log_path: Path,
                  port: int, timeout: float = 15.0) -> NodeProcess:
    """Start `script` with `args` under `interpreter`, wait until it listens on 127.0.0.1:port."""
    node = NodeProcess(INTERPRETERS[interpreter] + [script] + args, log_path, cwd=REPO_ROOT, port=port,
                       interpreter=interpreter)
    return node.wait_for_port(timeout)


@pytest.fixture(params=sorted(INTERPRETERS))
def http_echo_server(request, artifacts_dir):
    """rmnode.http.ProvHttpServer with an echo dispatch (support/launch_http_echo.py), read timeout 1 s,
    idle timeout 2 s, under CPython and under the MicroPython unix port."""
    port = free_port()
    node = start_process(request.param, paths.launcher("http_echo"),
                         [str(FIRMWARE), str(port), "1.0", "2.0"],
                         artifacts_dir / f"http_echo_{request.param}.log", port)
    node.extra.update(read_timeout_s=1.0, idle_timeout_s=2.0)
    try:
        yield node
    finally:
        node.stop()


# --- a reference node written with `cryptography` + the generated classes, to test the client alone ---

class ReferenceNode:
    """Device side of protocomm written independently of the firmware (host crypto, Google protobuf).

    Wi-Fi outcome is scripted: `networks` maps SSID -> passphrase; the right passphrase joins after
    `connecting_polls` GetStatus answers of Connecting, a wrong one fails with AuthError, an unknown SSID
    with NetworkNotFound. A user id in `refused_user_ids` gets Status InvalidParam.

    With a `signing_key` (a `cryptography` EC P-256 or RSA private key: the key of the node's certificate)
    the node offers challenge-response mapping (docs/protocol.md 7.1): proto-ver advertises
    `rmaker_extra` cap `ch_resp`, and `ch_resp` signs SHA-256 of the challenge (ECDSA DER, or RSA-PSS with
    a 32-byte salt) and answers with `ch_resp_node_id` (default: `node_id`). It signs only 1..256 bytes
    of printable ASCII without spaces (else InvalidParam); `ch_resp_disabled`, or a disable command,
    makes it answer Disabled to every request, as esp-rainmaker does.
    """

    def __init__(self, sec_ver=1, pop="abcd1234", node_id="NODE0123456789", networks=None,
                 connecting_polls=2, refused_user_ids=("refuse-me",), signing_key=None, ch_resp_node_id=None,
                 ch_resp_disabled=False):
        from rmkit.proto import pb
        self.pb = pb
        self.sec_ver = sec_ver
        self.pop = pop
        self.node_id = node_id
        self.networks = networks if networks is not None else {"HomeNet": "right-pass"}
        self.connecting_polls = connecting_polls
        self.refused_user_ids = set(refused_user_ids)
        self.signing_key = signing_key
        self.ch_resp_node_id = ch_resp_node_id or node_id
        self.ch_resp_disabled = ch_resp_disabled
        self.signed = []  # the challenges ch_resp signed, in order
        self.sessions = {}  # session_id -> {"cipher": ..., "device_pubkey": ..., "client_pubkey": ..., "ready": bool}
        self.mapping = None
        self.wifi_config = None
        self.wifi_state = None
        self.polls = 0
        self.requests = []  # (session_id, endpoint) in arrival order

    # transport callbacks (rmnode.http.ProvHttpServer)
    def dispatch(self, session_id, endpoint, body):
        self.requests.append((session_id, endpoint))
        if endpoint == "proto-ver":
            caps = ["wifi_scan", "wifi_prov"] + (["no_sec"] if self.sec_ver == 0 else [])
            if self.sec_ver == 1 and not self.pop:
                caps.append("no_pop")
            import json
            info = {"prov": {"ver": "netprov-v1.2", "sec_ver": self.sec_ver, "cap": caps}}
            if self.signing_key is not None:  # upstream puts the app info before "prov"
                info = {"rmaker_extra": {"ver": "1.0", "cap": ["ch_resp"]}, **info}
            return json.dumps(info).encode()
        if endpoint == "prov-session":
            return self._session(session_id, body)
        handlers = {"cloud_user_assoc": self._user_mapping, "prov-config": self._config,
                    "prov-scan": self._scan, "prov-ctrl": self._ctrl}
        if self.signing_key is not None:
            handlers["ch_resp"] = self._ch_resp
        if endpoint not in handlers:
            raise LookupError(endpoint)
        session = self.sessions.get(session_id)
        if session is None or not session["ready"]:
            raise PermissionError("no established session %d" % session_id)
        plain = self._crypt(session, body)
        return self._crypt(session, handlers[endpoint](plain))

    def session_closed(self, session_id):
        self.sessions.pop(session_id, None)

    def _crypt(self, session, data):
        return session["cipher"].update(data) if session["cipher"] is not None else data

    def _session(self, session_id, body):
        pb = self.pb
        request = pb.SessionData.FromString(body)
        if request.sec_ver != self.sec_ver:
            raise ValueError("security version mismatch")
        response = pb.SessionData(sec_ver=self.sec_ver)
        if self.sec_ver == 0:
            response.sec0.msg = pb.Sec0MsgType.S0_Session_Response
            response.sec0.sr.status = pb.Status.Success
            self.sessions[session_id] = {"cipher": None, "ready": True}
            return response.SerializeToString()
        import hashlib
        import os
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        which = request.sec1.WhichOneof("payload")
        if which == "sc0":
            client_pubkey = request.sec1.sc0.client_pubkey
            private_key = X25519PrivateKey.generate()
            device_pubkey = private_key.public_key().public_bytes_raw()
            shared = private_key.exchange(X25519PublicKey.from_public_bytes(client_pubkey))
            if self.pop:
                digest = hashlib.sha256(self.pop.encode()).digest()
                shared = bytes(a ^ b for a, b in zip(shared, digest))
            device_random = os.urandom(16)
            self.sessions[session_id] = {
                "cipher": Cipher(algorithms.AES(shared), modes.CTR(device_random)).encryptor(),
                "device_pubkey": device_pubkey, "client_pubkey": client_pubkey, "ready": False}
            response.sec1.msg = pb.Sec1MsgType.Session_Response0
            response.sec1.sr0.device_pubkey = device_pubkey
            response.sec1.sr0.device_random = device_random
            return response.SerializeToString()
        if which == "sc1":
            session = self.sessions[session_id]
            if session["cipher"].update(request.sec1.sc1.client_verify_data) != session["device_pubkey"]:
                del self.sessions[session_id]
                raise ValueError("key mismatch (wrong PoP)")
            response.sec1.msg = pb.Sec1MsgType.Session_Response1
            response.sec1.sr1.device_verify_data = session["cipher"].update(session["client_pubkey"])
            session["ready"] = True
            return response.SerializeToString()
        raise ValueError("unexpected Sec1 payload %r" % which)

    def _user_mapping(self, plain):
        pb = self.pb
        request = pb.RMakerConfigPayload.FromString(plain)
        response = pb.RMakerConfigPayload(msg=pb.RMakerConfigMsgType.TypeRespSetUserMapping)
        cmd = request.cmd_set_user_mapping
        if not cmd.UserID or cmd.UserID in self.refused_user_ids:
            response.resp_set_user_mapping.Status = pb.RMakerConfigStatus.InvalidParam
        else:
            self.mapping = (cmd.UserID, cmd.SecretKey)
            response.resp_set_user_mapping.NodeId = self.node_id
        return response.SerializeToString()

    def _ch_resp(self, plain):
        """esp-rainmaker's handler order: empty request, disabled, decode, disable command, challenge."""
        pb = self.pb
        if not plain:
            raise ValueError("empty ch_resp request")
        response = pb.RMakerChRespPayload(msg=pb.RMakerChRespMsgType.TypeRespChallengeResponse)
        if self.ch_resp_disabled:
            response.status = pb.RMakerChRespStatus.Disabled
            return response.SerializeToString()
        request = pb.RMakerChRespPayload.FromString(plain)
        if request.msg == pb.RMakerChRespMsgType.TypeCmdDisableChalResp:
            self.ch_resp_disabled = True
            return pb.RMakerChRespPayload(msg=pb.RMakerChRespMsgType.TypeRespDisableChalResp).SerializeToString()
        if request.msg != pb.RMakerChRespMsgType.TypeCmdChallengeResponse:
            raise ValueError("unexpected ch_resp msg %d" % request.msg)
        challenge = request.cmdChallengeResponsePayload.payload
        if not 1 <= len(challenge) <= 256 or any(b < 0x21 or b > 0x7E for b in challenge):
            response.status = pb.RMakerChRespStatus.InvalidParam  # not a signing oracle for binary data
            return response.SerializeToString()
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        if isinstance(self.signing_key, ec.EllipticCurvePrivateKey):
            signature = self.signing_key.sign(challenge, ec.ECDSA(hashes.SHA256()))
        else:
            signature = self.signing_key.sign(challenge, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                                              hashes.SHA256())
        self.signed.append(challenge)
        response.respChallengeResponsePayload.payload = signature
        response.respChallengeResponsePayload.node_id = self.ch_resp_node_id
        return response.SerializeToString()

    def _config(self, plain):
        pb = self.pb
        request = pb.WiFiConfigPayload.FromString(plain)
        if request.msg == pb.WiFiConfigMsgType.TypeCmdSetConfig:
            self.wifi_config = (request.cmd_set_config.ssid.decode(), request.cmd_set_config.passphrase.decode())
            response = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeRespSetConfig)
            response.resp_set_config.status = pb.Status.Success
        elif request.msg == pb.WiFiConfigMsgType.TypeCmdApplyConfig:
            self.wifi_state = "Connecting"
            self.polls = 0
            response = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeRespApplyConfig)
            response.resp_apply_config.status = pb.Status.Success
        elif request.msg == pb.WiFiConfigMsgType.TypeCmdGetStatus:
            response = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeRespGetStatus)
            status = response.resp_get_status
            self.polls += 1
            ssid, passphrase = self.wifi_config or ("", "")
            if self.wifi_state is None:
                status.sta_state = pb.WifiStationState.Disconnected
            elif self.polls <= self.connecting_polls:
                status.sta_state = pb.WifiStationState.Connecting
            elif ssid not in self.networks:
                status.sta_state = pb.WifiStationState.ConnectionFailed
                status.fail_reason = pb.WifiConnectFailedReason.NetworkNotFound
            elif self.networks[ssid] != passphrase:
                status.sta_state = pb.WifiStationState.ConnectionFailed
                status.fail_reason = pb.WifiConnectFailedReason.AuthError
            else:
                status.sta_state = pb.WifiStationState.Connected
                status.connected.ip4_addr = "127.0.0.42"
                status.connected.ssid = ssid.encode()
                status.connected.bssid = bytes.fromhex("020000000001")
                status.connected.channel = 6
                status.connected.auth_mode = pb.WifiAuthMode.WPA2_PSK
        else:
            raise ValueError("unexpected prov-config msg %d" % request.msg)
        return response.SerializeToString()

    def _scan(self, plain):
        pb = self.pb
        request = pb.WiFiScanPayload.FromString(plain)
        response = pb.WiFiScanPayload(msg=request.msg + 1, status=pb.Status.Success)
        names = sorted(self.networks)
        if request.msg == pb.WiFiScanMsgType.TypeCmdScanStart:
            response.resp_scan_start.SetInParent()
        elif request.msg == pb.WiFiScanMsgType.TypeCmdScanStatus:
            response.resp_scan_status.scan_finished = True
            response.resp_scan_status.result_count = len(names)
        elif request.msg == pb.WiFiScanMsgType.TypeCmdScanResult:
            first = request.cmd_scan_result.start_index
            for index, name in enumerate(names[first:first + request.cmd_scan_result.count]):
                entry = response.resp_scan_result.entries.add()
                entry.ssid = name.encode()
                entry.channel = 1 + index
                entry.rssi = -40 - index
                entry.bssid = bytes([2, 0, 0, 0, 0, index])
                entry.auth = pb.WifiAuthMode.WPA2_PSK
        return response.SerializeToString()

    def _ctrl(self, plain):
        pb = self.pb
        request = pb.WiFiCtrlPayload.FromString(plain)
        if request.msg != pb.WiFiCtrlMsgType.TypeCmdCtrlReset:
            raise ValueError("unexpected prov-ctrl msg %d" % request.msg)
        self.wifi_config = None
        self.wifi_state = None
        response = pb.WiFiCtrlPayload(msg=pb.WiFiCtrlMsgType.TypeRespCtrlReset, status=pb.Status.Success)
        response.resp_ctrl_reset.SetInParent()
        return response.SerializeToString()


class ThreadedHttpNode:
    """A ReferenceNode behind the firmware's own rmnode.http.ProvHttpServer, on an asyncio loop in a thread."""

    def __init__(self, node: ReferenceNode):
        import asyncio
        import threading
        paths.use_firmware()
        from rmnode.http import ProvHttpServer
        self.node = node
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server = ProvHttpServer("127.0.0.1", self.port, node.dispatch, session_closed=node.session_closed,
                                     read_timeout_s=5, idle_timeout_s=10)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=10)

    def close(self) -> None:
        import asyncio

        async def shutdown():
            self.server.stop()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def reference_node_factory():
    """Start ReferenceNode(**kwargs) behind ProvHttpServer; returns the ThreadedHttpNode (port, node)."""
    started = []

    def start(**kwargs) -> ThreadedHttpNode:
        served = ThreadedHttpNode(ReferenceNode(**kwargs))
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.close()


# --- the firmware's provisioning service (rmnode.prov_endpoints + rmnode.http) as a process ---

@pytest.fixture
def firmware_node_factory(tmp_path, artifacts_dir):
    """Start support/launch_prov_node.py: start(sec_ver=1, pop=..., node_id=..., networks=..., interpreter=...)
    returns a NodeProcess whose extra["flash"] is the node's flash folder. Every process is stopped at teardown."""
    started = []

    def start(sec_ver=1, pop="abcd1234", node_id="VNODE0042", networks=None, interpreter="micropython"):
        import json
        flash = tmp_path / f"flash{len(started)}"
        (flash / "factory").mkdir(parents=True)
        factory = {"sec_ver": sec_ver, "pop": pop, "node_id": node_id}
        (flash / "factory" / "factory.json").write_text(json.dumps(factory))
        (flash / "air.json").write_text(json.dumps(networks if networks is not None else {"HomeNet": "right-pass"}))
        port = free_port()
        node = start_process(interpreter, paths.launcher("prov_node"), [str(FIRMWARE), str(port), str(flash)],
                             artifacts_dir / f"prov_node{len(started)}_{interpreter}.log", port)
        node.extra["flash"] = flash
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()
