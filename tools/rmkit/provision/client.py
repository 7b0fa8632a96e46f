"""The provisioning steps of docs/protocol.md 2.3 over any Transport: proto-ver, prov-session, cloud_user_assoc
or ch_resp (7.1), prov-scan, prov-config set/apply/status, prov-ctrl reset; and `provision()` running them in order."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from google.protobuf.message import DecodeError

from rmkit.proto import pb
from rmkit.provision.errors import (ChallengeDeclined, ConfigRefused, HandshakeFailed, MappingRefused, ProtocolError,
                                    ProvisionError, TransportError, WifiJoinFailed, DeviceUnreachable)
from rmkit.provision.mapping import (AUTO, CHALLENGE_RESPONSE, CHOICES, DEFAULT_CHALLENGE_TIMEOUT_S, SECRET_KEY,
                                     ChallengeCloud, choose_mapping)
from rmkit.provision.security import make_security
from rmkit.provision.transport import Transport

log = logging.getLogger(__name__)

MAX_SSID_BYTES = 32
MAX_PASSPHRASE_BYTES = 64


@dataclass
class WifiStatus:
    """prov-config GetStatus, decoded (docs/protocol.md 2.4)."""

    state: str  # Connected, Connecting, Disconnected, ConnectionFailed
    fail_reason: str | None = None  # AuthError, NetworkNotFound (only with ConnectionFailed)
    ip4_addr: str = ""
    ssid: str = ""
    bssid: str = ""
    channel: int = 0
    auth_mode: str = ""


@dataclass
class ScanResult:
    ssid: str
    channel: int
    rssi: int
    bssid: str
    auth: str


@dataclass
class ProvisionResult:
    node_id: str
    wifi: WifiStatus
    sec_ver: int
    timings_s: dict[str, float] = field(default_factory=dict)
    mapping: str = SECRET_KEY  # the flow that ran: SECRET_KEY (the cloud still has to be asked) or CHALLENGE_RESPONSE
    request_id: str = ""  # challenge-response: the cloud's request, already confirmed


@dataclass(frozen=True)
class SignedChallenge:
    """What ch_resp answers (docs/protocol.md 7.1): the node's id and its signature of the challenge."""
    node_id: str
    signature: bytes


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Provisioner:
    """Client of one node. `sec` None means "as the node's proto-ver says" (like Espressif's client);
    an explicit `sec=1` is never downgraded to Security 0, so a fake node cannot get the passphrase in clear.

    poll_interval_s: pause between GetStatus polls while the node is Connecting.
    wifi_timeout_s: give up if the node is still Connecting after this long.
    progress: called with short human-readable lines (no secrets).
    """

    def __init__(self, transport: Transport, sec: int | None = 1, pop: str | None = None,
                 poll_interval_s: float = 0.2, wifi_timeout_s: float = 60.0,
                 progress: Callable[[str], None] | None = None):
        if sec not in (None, 0, 1):
            raise ValueError(f"security version {sec!r}: this client supports 0 and 1")
        self.transport = transport
        self.sec = sec
        self.pop = pop
        self.poll_interval_s = poll_interval_s
        self.wifi_timeout_s = wifi_timeout_s
        self._progress = progress or (lambda line: None)
        self._security = None
        self.version_info: dict | None = None
        self.timings_s: dict[str, float] = {}

    @property
    def security_version(self) -> int | None:
        """The security scheme of the established session, None before start_session()."""
        return self._security.version if self._security is not None else None

    # --- proto-ver and session ---

    def proto_ver(self) -> dict:
        """The node's version JSON (docs/protocol.md 2.2); the request body is ignored by the node, clients send '---'."""
        raw = self.transport.send("proto-ver", b"---")
        try:
            info = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"proto-ver: node answered {len(raw)} bytes that are not JSON") from exc
        if not isinstance(info, dict):
            raise ProtocolError("proto-ver: JSON is not an object")
        self.version_info = info
        return info

    def _node_sec_ver(self, info: dict) -> tuple[int, bool]:
        """(security version, PoP needed) from proto-ver, the way Espressif's client reads it (docs/protocol.md 2.2)."""
        prov = info.get("prov") if isinstance(info.get("prov"), dict) else {}
        caps = prov.get("cap") if isinstance(prov.get("cap"), list) else []
        sec_ver = prov.get("sec_ver")
        if not isinstance(sec_ver, int):
            sec_ver = 0 if "no_sec" in caps else 1
        return sec_ver, "no_pop" not in caps

    def start_session(self) -> None:
        """proto-ver (unless already read), then the prov-session handshake."""
        if self.version_info is None:
            self.proto_ver()
        info = self.version_info or {}
        rmaker = info.get("rmaker") if isinstance(info.get("rmaker"), dict) else {}
        if any(cap in (rmaker.get("cap") or []) for cap in ("claim", "camera_claim")):
            raise ProvisionError("node must be claimed before provisioning (proto-ver lists 'claim')")
        node_sec, pop_needed = self._node_sec_ver(info)
        sec = node_sec if self.sec is None else self.sec
        if sec != node_sec:
            raise HandshakeFailed(f"node runs Security {node_sec}, but Security {sec} was asked for")
        pop = self.pop
        if sec == 1 and not pop_needed:
            pop = None  # docs/protocol.md 2.2: `no_pop` means the node started Security 1 without a PoP
        elif sec == 1 and not pop:
            raise ProvisionError("node uses Security 1 with a proof of possession: give its PoP")
        self._progress(f"security {sec}: starting session")
        security = make_security(sec, pop)
        started = time.perf_counter()
        security.handshake(lambda request: self.transport.send("prov-session", request))
        self.timings_s["handshake"] = time.perf_counter() - started
        self._security = security
        self._progress(f"session established ({self.timings_s['handshake'] * 1000:.0f} ms)")

    def _secured(self, endpoint: str, message, response_type):
        if self._security is None:
            raise ProvisionError(f"{endpoint}: no session; call start_session() first")
        request = self._security.encrypt(message.SerializeToString())
        try:
            raw = self.transport.send(endpoint, request)
        except TransportError:
            self._security = None  # docs/protocol.md 3.3: after a failed request the CTR streams are out of step
            raise
        plain = self._security.decrypt(raw)
        try:
            return response_type.FromString(plain)
        except DecodeError as exc:
            raise ProtocolError(f"{endpoint}: response does not decode ({len(raw)} bytes); "
                                "wrong session or wrong security version?") from exc

    # --- steps ---

    def set_user_mapping(self, user_id: str, secret_key: str) -> str:
        """cloud_user_assoc (docs/protocol.md 4.1): returns the node id; raises MappingRefused on a non-zero Status."""
        if not user_id:
            raise ValueError("user id is empty")
        if not secret_key:
            raise ValueError("secret key is empty")
        request = pb.RMakerConfigPayload(msg=pb.RMakerConfigMsgType.TypeCmdSetUserMapping)
        request.cmd_set_user_mapping.UserID = user_id
        request.cmd_set_user_mapping.SecretKey = secret_key
        response = self._secured("cloud_user_assoc", request, pb.RMakerConfigPayload)
        if response.msg != pb.RMakerConfigMsgType.TypeRespSetUserMapping:
            raise ProtocolError(f"cloud_user_assoc: unexpected msg {response.msg}")
        status = response.resp_set_user_mapping.Status
        if status != pb.RMakerConfigStatus.Success:
            raise MappingRefused(status, _enum_name(pb.RMakerConfigStatus, status))
        node_id = response.resp_set_user_mapping.NodeId
        if not node_id:
            raise ProtocolError("cloud_user_assoc: node answered Success without a node id")
        return node_id

    def sign_challenge(self, challenge: str) -> SignedChallenge:
        """ch_resp (docs/protocol.md 7.1): the node signs SHA-256 of the challenge's UTF-8 bytes with its
        certificate's key. ChallengeDeclined when it answers a status other than Success."""
        payload = challenge.encode("utf-8")
        if not payload:
            raise ValueError("challenge is empty")
        request = pb.RMakerChRespPayload(msg=pb.RMakerChRespMsgType.TypeCmdChallengeResponse)
        request.cmdChallengeResponsePayload.payload = payload  # 52 <len> 0a <len> <challenge>, as the CLI sends
        response = self._secured("ch_resp", request, pb.RMakerChRespPayload)
        # in esp-rainmaker-cli's order: status first (a Disabled answer carries no payload), then the rest
        if response.status != pb.RMakerChRespStatus.Success:
            name = _enum_name(pb.RMakerChRespStatus, response.status)
            detail = ""
            if response.status == pb.RMakerChRespStatus.InvalidParam:
                detail = (f"it signs only 1 to 256 printable ASCII characters without spaces, and the challenge has "
                          f"{len(payload)} bytes")
            elif response.status == pb.RMakerChRespStatus.Disabled:
                detail = "challenge-response is disabled on the node until it restarts"
            raise ChallengeDeclined(response.status, name, detail)
        if response.msg != pb.RMakerChRespMsgType.TypeRespChallengeResponse:
            raise ProtocolError(f"ch_resp: unexpected msg {response.msg}")
        if response.WhichOneof("payload") != "respChallengeResponsePayload":
            raise ProtocolError("ch_resp: node answered Success without a signature")
        answer = response.respChallengeResponsePayload
        if not answer.payload or not answer.node_id:
            raise ProtocolError("ch_resp: node answered Success without a signature or a node id")
        return SignedChallenge(answer.node_id, answer.payload)

    def map_by_challenge(self, cloud: ChallengeCloud,
                         timeout_s: int = DEFAULT_CHALLENGE_TIMEOUT_S) -> tuple[str, str]:
        """Challenge-response mapping, as esp-rainmaker-cli runs it right after the session: the cloud issues a
        challenge, the node signs it, the cloud verifies the signature with the node's certificate and maps
        the node. Returns (node_id, request_id); the request is confirmed, nothing is left to poll."""
        issued = cloud.initiate_mapping(timeout_s)
        self._progress(f"cloud issued a mapping challenge (request {issued.request_id[:8]}...)")
        signed = self.sign_challenge(issued.challenge)
        self._progress(f"node {signed.node_id} signed it ({len(signed.signature)}-byte signature)")
        cloud.verify_mapping(issued.request_id, signed.node_id, signed.signature)
        self._progress(f"cloud verified the signature: node {signed.node_id} is mapped")
        return signed.node_id, issued.request_id

    def scan_wifi(self, page_size: int = 100, group_channels: int = 5) -> list[ScanResult]:
        """prov-scan: blocking start, status, then results in pages (docs/protocol.md 2.3 step 5)."""
        start = pb.WiFiScanPayload(msg=pb.WiFiScanMsgType.TypeCmdScanStart)
        start.cmd_scan_start.blocking = True
        start.cmd_scan_start.group_channels = group_channels
        self._check_scan(self._secured("prov-scan", start, pb.WiFiScanPayload), "start")
        status_request = pb.WiFiScanPayload(msg=pb.WiFiScanMsgType.TypeCmdScanStatus)
        status_request.cmd_scan_status.SetInParent()
        status = self._check_scan(self._secured("prov-scan", status_request, pb.WiFiScanPayload), "status")
        count = status.resp_scan_status.result_count
        results: list[ScanResult] = []
        while len(results) < count:
            page = pb.WiFiScanPayload(msg=pb.WiFiScanMsgType.TypeCmdScanResult)
            page.cmd_scan_result.start_index = len(results)
            page.cmd_scan_result.count = min(page_size, count - len(results))
            answer = self._check_scan(self._secured("prov-scan", page, pb.WiFiScanPayload), "result")
            entries = answer.resp_scan_result.entries
            if not entries:
                raise ProtocolError(f"prov-scan: node announced {count} results but sent {len(results)}")
            for entry in entries:
                results.append(ScanResult(ssid=entry.ssid.decode("utf-8", "replace"), channel=entry.channel,
                                          rssi=entry.rssi, bssid=_mac(entry.bssid),
                                          auth=_enum_name(pb.WifiAuthMode, entry.auth)))
        return results

    @staticmethod
    def _check_scan(response, step: str):
        if response.status != pb.Status.Success:
            raise ProvisionError(f"prov-scan {step}: node answered {_enum_name(pb.Status, response.status)}")
        return response

    def set_wifi_config(self, ssid: str, passphrase: str) -> None:
        ssid_bytes = ssid.encode("utf-8")
        passphrase_bytes = passphrase.encode("utf-8")
        # limits of wifi_config_t (32-byte SSID, 64-byte passphrase); checked here for a clear message
        if not 0 < len(ssid_bytes) <= MAX_SSID_BYTES:
            raise ValueError(f"SSID must be 1..{MAX_SSID_BYTES} bytes, got {len(ssid_bytes)}")
        if len(passphrase_bytes) > MAX_PASSPHRASE_BYTES:
            raise ValueError(f"passphrase must be at most {MAX_PASSPHRASE_BYTES} bytes, got {len(passphrase_bytes)}")
        request = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeCmdSetConfig)
        request.cmd_set_config.ssid = ssid_bytes
        request.cmd_set_config.passphrase = passphrase_bytes
        response = self._secured("prov-config", request, pb.WiFiConfigPayload)
        status = response.resp_set_config.status
        if response.msg == pb.WiFiConfigMsgType.TypeRespSetConfig and status != pb.Status.Success:
            raise ConfigRefused(status, _enum_name(pb.Status, status))
        self._check_config(response, pb.WiFiConfigMsgType.TypeRespSetConfig, status, "set")

    def apply_wifi_config(self) -> None:
        # Espressif's client sends only msg=4 (0804); the node dispatches on msg (docs/protocol.md 2.4)
        request = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeCmdApplyConfig)
        response = self._secured("prov-config", request, pb.WiFiConfigPayload)
        self._check_config(response, pb.WiFiConfigMsgType.TypeRespApplyConfig, response.resp_apply_config.status,
                           "apply")

    def wifi_status(self) -> WifiStatus:
        request = pb.WiFiConfigPayload(msg=pb.WiFiConfigMsgType.TypeCmdGetStatus)
        request.cmd_get_status.SetInParent()  # as Espressif's client: 5200
        response = self._secured("prov-config", request, pb.WiFiConfigPayload)
        status = response.resp_get_status
        self._check_config(response, pb.WiFiConfigMsgType.TypeRespGetStatus, status.status, "status")
        result = WifiStatus(state=_enum_name(pb.WifiStationState, status.sta_state))
        if status.WhichOneof("state") == "fail_reason":
            result.fail_reason = _enum_name(pb.WifiConnectFailedReason, status.fail_reason)
        elif status.WhichOneof("state") == "connected" and result.state == "Connecting":
            # this node names the network it is joining there (docs/protocol.md 2.4); upstream sends it empty
            result.ssid = status.connected.ssid.decode("utf-8", "replace")
        elif status.WhichOneof("state") == "connected":
            connected = status.connected
            result.ip4_addr = connected.ip4_addr
            result.ssid = connected.ssid.decode("utf-8", "replace")
            result.bssid = _mac(connected.bssid)
            result.channel = connected.channel
            result.auth_mode = _enum_name(pb.WifiAuthMode, connected.auth_mode)
        return result

    @staticmethod
    def _check_config(response, expected_msg: int, status: int, step: str) -> None:
        if response.msg != expected_msg:
            raise ProtocolError(f"prov-config {step}: unexpected msg {response.msg}")
        if status != pb.Status.Success:
            raise ProvisionError(f"prov-config {step}: node answered {_enum_name(pb.Status, status)}")

    def wait_for_wifi(self, ssid: str = "") -> WifiStatus:
        """Poll GetStatus while Connecting; return on Connected, raise WifiJoinFailed otherwise."""
        deadline = time.monotonic() + self.wifi_timeout_s
        while True:
            status = self.wifi_status()
            if status.state == "Connected":
                return status
            if status.state != "Connecting":
                raise WifiJoinFailed(status.state, status.fail_reason, ssid)
            if time.monotonic() >= deadline:
                raise WifiJoinFailed(f"still Connecting after {self.wifi_timeout_s:g} s", None, ssid)
            time.sleep(self.poll_interval_s)

    def join_wifi(self, ssid: str, passphrase: str) -> WifiStatus:
        """prov-config set, apply, status until Connected. When the node refuses the credentials because it is
        already joining a network (an earlier run was interrupted after ApplyConfig, or another client came
        first), wait for that join's outcome and report it: joined, that is where the node is; failed, the
        node takes these credentials again."""
        try:
            self.set_wifi_config(ssid, passphrase)
        except ConfigRefused:
            under_way = self.wifi_status()
            if under_way.state not in ("Connecting", "Connected"):
                raise
            joining = under_way.ssid or "a network it does not name"
            self._progress(f"the node is joining {joining}; waiting for its result")
            try:
                joined = self.wait_for_wifi(under_way.ssid)
            except WifiJoinFailed as failed:
                self._progress(f"the node could not join {joining} ({failed.state}"
                               f"{', ' + failed.reason if failed.reason else ''}); sending the credentials for '{ssid}'")
                self.set_wifi_config(ssid, passphrase)
            else:
                if joined.ssid and joined.ssid != ssid:
                    log.warning("node joined %r, not %r", joined.ssid, ssid)
                    self._progress(f"the node joined '{joined.ssid}', not '{ssid}': it was joining that network "
                                   "when these credentials came; to move it, put it back into provisioning "
                                   "(make reset WIFI=1 with its BOARD= or PORT=) and provision it again")
                return joined
        self.apply_wifi_config()
        self._progress(f"Wi-Fi credentials for '{ssid}' applied, waiting for the node to join")
        return self.wait_for_wifi(ssid)

    def reset_wifi(self) -> None:
        """prov-ctrl CmdCtrlReset: the node forgets the failed attempt and accepts new credentials."""
        request = pb.WiFiCtrlPayload(msg=pb.WiFiCtrlMsgType.TypeCmdCtrlReset)
        request.cmd_ctrl_reset.SetInParent()
        response = self._secured("prov-ctrl", request, pb.WiFiCtrlPayload)
        if response.msg != pb.WiFiCtrlMsgType.TypeRespCtrlReset:
            raise ProtocolError(f"prov-ctrl: unexpected msg {response.msg}")
        if response.status != pb.Status.Success:
            raise ProvisionError(f"prov-ctrl reset: node answered {_enum_name(pb.Status, response.status)}")

    # --- the whole sequence ---

    def provision(self, ssid: str, passphrase: str, user_id: str = "", secret_key: str = "", scan: bool = False,
                  mapping: str = SECRET_KEY, cloud: ChallengeCloud | None = None) -> ProvisionResult:
        """docs/protocol.md 2.3: proto-ver, prov-session, the user mapping (before any Wi-Fi data), [prov-scan],
        prov-config set, apply, status until Connected.

        The user mapping is `mapping` (rmkit.provision.mapping): SECRET_KEY sends `user_id` and
        `secret_key` on cloud_user_assoc (the caller then asks the cloud to map, docs/protocol.md 6);
        CHALLENGE_RESPONSE has the node sign `cloud`'s challenge on ch_resp and the cloud map it (7.1);
        AUTO takes challenge-response when the node offers it and a cloud is given."""
        # validate locally first: nothing is sent for input the node would refuse anyway
        if len(ssid.encode("utf-8")) > MAX_SSID_BYTES or not ssid:
            raise ValueError(f"SSID must be 1..{MAX_SSID_BYTES} bytes")
        if len(passphrase.encode("utf-8")) > MAX_PASSPHRASE_BYTES:
            raise ValueError(f"passphrase must be at most {MAX_PASSPHRASE_BYTES} bytes")
        if mapping not in CHOICES:
            raise ValueError(f"mapping {mapping!r}: give one of {', '.join(CHOICES)}")
        if mapping == CHALLENGE_RESPONSE and cloud is None:
            raise ValueError("challenge-response mapping needs a cloud: it issues the challenge and checks the answer")
        if not user_id and (mapping == SECRET_KEY or (mapping == AUTO and cloud is None)):
            raise ValueError("user id is empty")
        started = time.perf_counter()
        info = self.proto_ver()
        prov = info.get("prov") if isinstance(info.get("prov"), dict) else {}
        self._progress(f"node protocol {prov.get('ver', '?')}, capabilities {prov.get('cap', [])}")
        choice = choose_mapping(mapping, info, have_cloud=cloud is not None)
        if choice.method == SECRET_KEY and not user_id:
            raise ValueError("user id is empty")
        self._progress("user mapping by " + ("challenge-response" if choice.method == CHALLENGE_RESPONSE
                                             else "secret key") + f" ({choice.reason})")
        self.start_session()
        request_id = ""
        if choice.method == CHALLENGE_RESPONSE:
            node_id, request_id = self.map_by_challenge(cloud)
        else:
            node_id = self.set_user_mapping(user_id, secret_key)
            self._progress(f"user mapping accepted by node {node_id}")
        if scan:
            networks = self.scan_wifi()
            self._progress(f"scan: {len(networks)} networks")
            for network in networks:
                self._progress(f"  {network.ssid!r} channel {network.channel} rssi {network.rssi} {network.auth}")
        wifi = self.join_wifi(ssid, passphrase)
        self.timings_s["total"] = time.perf_counter() - started
        self._progress(f"node joined '{wifi.ssid or ssid}' with address {wifi.ip4_addr or '?'}")
        return ProvisionResult(node_id=node_id, wifi=wifi, sec_ver=self._security.version,
                               timings_s=dict(self.timings_s), mapping=choice.method, request_id=request_id)
