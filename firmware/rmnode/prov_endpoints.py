"""Provisioning endpoints (docs/protocol.md 2): proto-ver, prov-session, prov-config, prov-scan, prov-ctrl, and
the user mapping's cloud_user_assoc and/or ch_resp (rmnode.chal_resp), wired onto a Protocomm instance.

Handlers dispatch on `msg` (proto3 default 0), never on which oneof member is present: the CLI
sends ApplyConfig as `08 04` with no sub-message (docs/protocol.md 2.4).

A request from a BLE IRQ handler (may_block=False) must not wait: on an ESP32 WLAN.scan() and
WLAN.connect() release the GIL (ports/esp32/network_wlan.c, v1.24-v1.26), and a handler that lets the
main task run can have its objects collected under it (docs/protocol.md 1.2). So there a scan answers
from the last completed one and asks for a new one, and ApplyConfig starts the join through the main
task, which runs what was asked in `run_deferred`.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import log, mapping, wifi
from rmnode import pb
from rmnode import protocomm
from rmnode import security

# Enum values of the protos (tools/rmkit/proto/*.proto), as const()s: inlined, no heap.
# constants.proto Status
_STATUS_SUCCESS = const(0)
_STATUS_INVALID_ARGUMENT = const(4)
_STATUS_INTERNAL_ERROR = const(5)
# wifi_config.proto WiFiConfigMsgType
_CONFIG_CMD_GET_STATUS = const(0)
_CONFIG_RESP_GET_STATUS = const(1)
_CONFIG_CMD_SET_CONFIG = const(2)
_CONFIG_RESP_SET_CONFIG = const(3)
_CONFIG_CMD_APPLY_CONFIG = const(4)
_CONFIG_RESP_APPLY_CONFIG = const(5)
# wifi_scan.proto WiFiScanMsgType
_SCAN_CMD_START = const(0)
_SCAN_RESP_START = const(1)
_SCAN_CMD_STATUS = const(2)
_SCAN_RESP_STATUS = const(3)
_SCAN_CMD_RESULT = const(4)
_SCAN_RESP_RESULT = const(5)
# wifi_ctrl.proto WiFiCtrlMsgType
_CTRL_CMD_RESET = const(1)
_CTRL_RESP_RESET = const(2)
_CTRL_CMD_REPROV = const(3)
_CTRL_RESP_REPROV = const(4)
# esp_rmaker_user_mapping.proto RMakerConfigMsgType and RMakerConfigStatus
_MAPPING_CMD_SET_USER_MAPPING = const(0)
_MAPPING_RESP_SET_USER_MAPPING = const(1)
_MAPPING_SUCCESS = const(0)
_MAPPING_INVALID_PARAM = const(1)
_MAPPING_INVALID_STATE = const(2)

_TAG = const("prov")

# const()s: inlined, no heap
_MAX_SSID = const(32)
_MAX_PASSPHRASE = const(64)
_MAX_SCAN_PAGE = const(100)  # the CLI's page size on SoftAP (docs/protocol.md 2.3)


def version_json(sec_ver, pop, ch_resp=False):
    """The proto-ver reply (docs/protocol.md 2.2); `rmaker_extra` with the ch_resp capability first when the node
    offers challenge-response (docs/protocol.md 7.1), as upstream orders it; never claim."""
    caps = []
    if sec_ver == 0:
        caps.append('"no_sec"')
    elif not pop:
        caps.append('"no_pop"')
    caps.append('"wifi_scan"')
    # "v1.1": ESP-IDF wifi_provisioning's version string (docs/protocol.md 2.2)
    return '{%s"prov":{"ver":"v1.1","sec_ver":%d,"cap":[%s]}}' % (
        '"rmaker_extra":{"ver":"1.0","cap":["ch_resp"]},' if ch_resp else "", sec_ver, ",".join(caps))


class Provisioning:
    """The provisioning service of one node.

    config: rmnode.config.NodeConfig (node_id, pop, sec_ver).
    station: rmnode.wifi.Wifi (or anything with connect/disconnect/status/scan).
    on_user_mapping(user_id, secret_key): must persist the pending mapping before returning; it gets
        only a mapping that passed rmnode.mapping.check_mapping, and may return whether the publish carries
        "reset" (logged here). If it raises, the client gets InvalidState.
    on_wifi_config_applied(ssid, passphrase): after ApplyConfig started the join (bytes args).
    on_reset(): after prov-ctrl reset. on_reprov(): after prov-ctrl reprov.
    on_session(session_id): a new protocomm session's handshake completed (a new client, or one starting over);
        if it raises, that session is unusable.
    chal_resp: an rmnode.chal_resp.ChallengeResponse to serve `ch_resp` and advertise it, or None.
    secret_mapping: whether to serve cloud_user_assoc (the secret-key flow).
    """

    def __init__(self, config, station, on_user_mapping, on_wifi_config_applied=None, on_reset=None,
                 on_reprov=None, max_sessions=1, on_session=None, chal_resp=None, secret_mapping=True):
        self.config = config
        self.station = station
        self.on_user_mapping = on_user_mapping
        self.on_wifi_config_applied = on_wifi_config_applied
        self.on_reset = on_reset
        self.on_reprov = on_reprov
        self._wifi_config = None  # (ssid, passphrase, bssid) from SetConfig, until applied
        self._applied = False
        # True once a client was told "Connected": the node may then stop provisioning
        self.connected_reported = False
        self._scan_results = []
        self._scan_done = False
        # a scan the main task ran for a BLE client, served from that client's next ScanStart on (never
        # swapped in while a client pages through results), and whether one is wanted
        self._scan_staged = None
        self.scan_wanted = False
        self._apply_wanted = False  # ApplyConfig from a BLE client: the main task starts the join
        self._apply_failed = False
        self._version = version_json(config.sec_ver, config.pop, chal_resp is not None).encode()

        sec_ver, pop = config.sec_ver, config.pop
        handlers = {"prov-config": self._config_handler, "prov-scan": self._scan_handler,
                    "prov-ctrl": self._ctrl_handler}
        if secret_mapping:
            handlers["cloud_user_assoc"] = self._user_mapping_handler
        if chal_resp is not None:
            handlers["ch_resp"] = chal_resp.handle
        pc = protocomm.Protocomm(lambda: security.new_session(sec_ver, pop), ("proto-ver", lambda: self._version),
                                 "prov-session", handlers, max_sessions, on_session)
        self.protocomm = pc

        # the transport contract: dispatch(session_id, endpoint, body, may_block=True) -> bytes, raising
        # protocomm.ProtocommError on failure; protocomm's own, not a wrapper (one call level less on
        # the BLE IRQ handler's 4 KiB stack)
        self.dispatch = pc.dispatch

    # -- work a BLE request left to the main task -------------------------------------------------------
    def run_deferred(self):
        """Main task: start the join or the scan a BLE client asked for. Returns whether it did anything."""
        if self._apply_wanted:
            # lowered only once the join has started (or failed): the IRQ handler can answer a GetStatus
            # between any two bytecodes here, and until the driver says Connecting the flag is what says it
            self._apply_failed = self._start_join() != _STATUS_SUCCESS
            self._apply_wanted = False
            return True
        if self.scan_wanted:
            self.scan_wanted = False
            try:
                self._scan_staged = self.station.scan()
                log.info(_TAG, "scan found %d access points" % len(self._scan_staged))
            except OSError as e:
                log.error(_TAG, "scan failed: %s" % e)
            return True
        return False

    # -- transport contract --------------------------------------------------------------------

    def session_closed(self, session_id):
        self.protocomm.session_closed(session_id)

    @property
    def endpoints(self):
        """Names served here, for the transport's 404 check (ProvHttpServer(endpoints=...))."""
        return self.protocomm.endpoints()

    # -- prov-config ---------------------------------------------------------------------------
    def _config_handler(self, session_id, request, may_block):
        req = pb.decode(pb.WiFiConfigPayload, request)
        msg = req["msg"]
        if msg == _CONFIG_CMD_GET_STATUS:
            return pb.encode(pb.WiFiConfigPayload, {
                "msg": _CONFIG_RESP_GET_STATUS, "resp_get_status": self._get_status()})
        if msg == _CONFIG_CMD_SET_CONFIG:
            status = self._set_config(req["cmd_set_config"] or {})
            return pb.encode(pb.WiFiConfigPayload, {
                "msg": _CONFIG_RESP_SET_CONFIG, "resp_set_config": {"status": status}})
        if msg == _CONFIG_CMD_APPLY_CONFIG:
            status = self._apply_config(may_block)
            return pb.encode(pb.WiFiConfigPayload, {
                "msg": _CONFIG_RESP_APPLY_CONFIG, "resp_apply_config": {"status": status}})
        raise protocomm.RequestRejected("prov-config: unsupported msg %d" % msg)

    def _get_status(self):
        if not self._applied:
            return {"status": _STATUS_SUCCESS, "sta_state": wifi.STA_DISCONNECTED}
        if self._apply_wanted:  # the main task has yet to start the join
            return {"status": _STATUS_SUCCESS, "sta_state": wifi.STA_CONNECTING,
                    "connected": {"ssid": self._wifi_config[0]}}
        if self._apply_failed:
            return {"status": _STATUS_SUCCESS, "sta_state": wifi.STA_CONNECTION_FAILED,
                    "fail_reason": wifi.FAIL_NETWORK_NOT_FOUND}
        st = self.station.status()
        resp = {"status": _STATUS_SUCCESS, "sta_state": st.state}
        if st.state == wifi.STA_CONNECTING:
            # the network being joined, so that a client whose SetConfig was refused can say which
            # (docs/protocol.md 2.4; upstream sends an empty `connected` here)
            resp["connected"] = {"ssid": self._wifi_config[0]}
        elif st.state == wifi.STA_CONNECTED:
            resp["connected"] = {"ip4_addr": st.ip4_addr, "auth_mode": st.auth_mode, "ssid": st.ssid,
                                 "bssid": st.bssid, "channel": st.channel}
            self.connected_reported = True
        elif st.state == wifi.STA_CONNECTION_FAILED:
            resp["fail_reason"] = st.fail_reason
        return resp

    def _set_config(self, cmd):
        ssid = cmd.get("ssid", b"")
        passphrase = cmd.get("passphrase", b"")
        bssid = cmd.get("bssid", b"")
        if not 0 < len(ssid) <= _MAX_SSID:
            log.warning(_TAG, "SetConfig refused: SSID of %d bytes (1..%d allowed)" % (len(ssid), _MAX_SSID))
            return _STATUS_INVALID_ARGUMENT
        if len(passphrase) > _MAX_PASSPHRASE:
            log.warning(_TAG, "SetConfig refused: passphrase of %d bytes (max %d)" % (len(passphrase), _MAX_PASSPHRASE))
            return _STATUS_INVALID_ARGUMENT
        if bssid and len(bssid) != 6:
            log.warning(_TAG, "SetConfig refused: BSSID of %d bytes" % len(bssid))
            return _STATUS_INVALID_ARGUMENT
        # a join started by ApplyConfig under way (or done): asked of the main task, connecting or connected;
        # inline, not a helper: one call level less on the BLE IRQ handler's stack (docs/protocol.md 1.2)
        if self._applied and not self._apply_failed and (self._apply_wanted or self.station.status().state in (
                wifi.STA_CONNECTING, wifi.STA_CONNECTED)):
            # A client interrupted after ApplyConfig that runs again sends the same credentials: the join under
            # way is its own, and goes on. Others must wait for its outcome or send prov-ctrl reset first.
            # docs/protocol.md 2.4: not InternalError, which would say the node is broken.
            if (ssid, passphrase, bssid) == self._wifi_config:
                log.info(_TAG, "Wi-Fi credentials for %s again: that join is under way" % (log.shown(ssid),))
                return _STATUS_SUCCESS
            log.warning(_TAG, "SetConfig refused: joining %s; wait for its result or send prov-ctrl reset first"
                        % (log.shown(self._wifi_config[0]),))
            return _STATUS_INVALID_ARGUMENT
        self._wifi_config = (ssid, passphrase, bssid)
        log.info(_TAG, "Wi-Fi credentials received for %s" % (log.shown(ssid),))
        return _STATUS_SUCCESS

    def _apply_config(self, may_block):
        if self._wifi_config is None:
            log.warning(_TAG, "ApplyConfig without SetConfig")
            return _STATUS_INTERNAL_ERROR
        if self._applied and not self._apply_failed and (self._apply_wanted or self.station.status().state in (
                wifi.STA_CONNECTING, wifi.STA_CONNECTED)):
            return _STATUS_SUCCESS  # these credentials' join goes on (SetConfig took no others meanwhile)
        if not may_block:
            self._apply_wanted, self._apply_failed, self._applied = True, False, True
            return _STATUS_SUCCESS
        return self._start_join()

    def _start_join(self):
        """Main task: WLAN.connect() with the credentials SetConfig took, then tell the node."""
        ssid, passphrase, bssid = self._wifi_config
        try:
            self.station.connect(ssid, passphrase, bssid or None)
        except OSError as e:
            log.error(_TAG, "station connect failed: %s" % e)
            return _STATUS_INTERNAL_ERROR
        if self.on_wifi_config_applied is not None:
            try:
                self.on_wifi_config_applied(ssid, passphrase)
            except Exception as e:  # the node could not take the credentials: undo the join
                log.error(_TAG, "ApplyConfig refused by the node: %s" % type(e).__name__)
                self.station.disconnect()
                return _STATUS_INTERNAL_ERROR
        self._applied = True
        return _STATUS_SUCCESS

    # -- prov-scan -----------------------------------------------------------------------------
    def _scan_handler(self, session_id, request, may_block):
        req = pb.decode(pb.WiFiScanPayload, request)
        msg = req["msg"]
        if msg == _SCAN_CMD_START and not may_block:
            # answered from the last scan the main task ran (rmnode.prov_phase runs one before BLE starts),
            # and a new one asked for, for this client's next start
            if self._scan_staged is not None:
                self._scan_results, self._scan_staged, self._scan_done = self._scan_staged, None, True
            self.scan_wanted = True
            return pb.encode(pb.WiFiScanPayload, {"msg": _SCAN_RESP_START, "status": _STATUS_SUCCESS,
                                                  "resp_scan_start": {}})
        if msg == _SCAN_CMD_START:
            status = _STATUS_SUCCESS
            self._scan_done = False
            try:
                # WLAN.scan() blocks until done (1.5-3 s on an ESP32, the whole interpreter), so
                # "blocking" and "non-blocking" starts are alike. Safe here: the client asked and
                # waits for this answer; no other timer runs during provisioning that a 3 s pause
                # could break (HTTP idle timeouts are longer; the linger starts only at Connected).
                self._scan_results = self.station.scan()
                self._scan_done = True
                log.info(_TAG, "scan found %d access points" % len(self._scan_results))
            except OSError as e:
                log.error(_TAG, "scan failed: %s" % e)
                self._scan_results = []
                status = _STATUS_INTERNAL_ERROR
            return pb.encode(pb.WiFiScanPayload, {"msg": _SCAN_RESP_START, "status": status,
                                                  "resp_scan_start": {}})
        if msg == _SCAN_CMD_STATUS:
            return pb.encode(pb.WiFiScanPayload, {"msg": _SCAN_RESP_STATUS, "resp_scan_status": {
                "scan_finished": self._scan_done, "result_count": len(self._scan_results)}})
        if msg == _SCAN_CMD_RESULT:
            cmd = req["cmd_scan_result"] or {}
            start, count = cmd.get("start_index", 0), cmd.get("count", 0)
            total = len(self._scan_results)
            if not self._scan_done or count > _MAX_SCAN_PAGE or start + count > total:
                return pb.encode(pb.WiFiScanPayload, {"msg": _SCAN_RESP_RESULT,
                                                      "status": _STATUS_INVALID_ARGUMENT,
                                                      "resp_scan_result": {}})
            return pb.encode(pb.WiFiScanPayload, {"msg": _SCAN_RESP_RESULT, "resp_scan_result": {
                "entries": self._scan_results[start:start + count]}})
        raise protocomm.RequestRejected("prov-scan: unsupported msg %d" % msg)

    # -- prov-ctrl -----------------------------------------------------------------------------
    def _ctrl_handler(self, session_id, request, may_block):
        req = pb.decode(pb.WiFiCtrlPayload, request)
        msg = req["msg"]
        if msg == _CTRL_CMD_RESET:
            status = _STATUS_SUCCESS
            if self._applied and self.station.status().state == wifi.STA_CONNECTED:
                # ESP-IDF only resets after a failure; a connected node has nothing to undo
                log.warning(_TAG, "prov-ctrl reset refused: station is connected")
                status = _STATUS_INTERNAL_ERROR
            else:
                self.station.disconnect()
                self._wifi_config = None
                self._applied = self._apply_wanted = self._apply_failed = False
                log.info(_TAG, "Wi-Fi state reset, waiting for new credentials")
                if self.on_reset is not None:
                    self.on_reset()
            return pb.encode(pb.WiFiCtrlPayload, {"msg": _CTRL_RESP_RESET, "status": status,
                                                  "resp_ctrl_reset": {}})
        if msg == _CTRL_CMD_REPROV:
            self._wifi_config = None
            self._applied = self._apply_wanted = self._apply_failed = False
            log.info(_TAG, "re-provisioning requested")
            if self.on_reprov is not None:
                self.on_reprov()
            return pb.encode(pb.WiFiCtrlPayload, {"msg": _CTRL_RESP_REPROV, "resp_ctrl_reprov": {}})
        raise protocomm.RequestRejected("prov-ctrl: unsupported msg %d" % msg)

    # -- cloud_user_assoc ----------------------------------------------------------------------
    def _user_mapping_handler(self, session_id, request, may_block):
        # one function with its helper inlined: the BLE IRQ handler's stack (docs/protocol.md 1.2)
        req = pb.decode(pb.RMakerConfigPayload, request)
        if req["msg"] != _MAPPING_CMD_SET_USER_MAPPING:
            return b""  # docs/protocol.md 4.2: other msg values get an empty OK reply
        cmd = req["cmd_set_user_mapping"]
        status, node_id = _MAPPING_INVALID_PARAM, None
        if cmd is None:
            log.warning(_TAG, "cloud_user_assoc without cmd_set_user_mapping")
        else:
            user_id, secret_key = cmd["UserID"], cmd["SecretKey"]  # str: the codec checked the UTF-8
            try:
                mapping.check_mapping(user_id, secret_key)
                try:
                    # persisted before we answer: a reboot after the reply still has the mapping
                    reset = self.on_user_mapping(user_id, secret_key)
                    status, node_id = _MAPPING_SUCCESS, self.config.node_id
                    log.info(_TAG, "pending mapping for user %s stored%s" % (
                        user_id, "" if reset is None else " (reset=%s)" % ("true" if reset else "false")))
                except Exception as e:
                    log.error(_TAG, "pending mapping not stored (%s: %s)" % (type(e).__name__, e))
                    status = _MAPPING_INVALID_STATE
            except mapping.MappingError as e:  # its message never holds the secret key
                log.warning(_TAG, "cloud_user_assoc refused: %s" % e)
        reply = {"Status": status}
        if node_id is not None:
            reply["NodeId"] = node_id
        return pb.encode(pb.RMakerConfigPayload, {"msg": _MAPPING_RESP_SET_USER_MAPPING,
                                                  "resp_set_user_mapping": reply})
