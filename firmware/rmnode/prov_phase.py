"""The node's provisioning phase: access point and HTTP service, or BLE, or both (settings `transport`), up
until the station joined the network.

Loaded only when the node has no Wi-Fi credentials (rmnode.node imports it then), so the online
phase after the reboot never carries this code.
"""

import asyncio

import gc

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import credentials, log

_TAG = const("node")
# After the client was told "Connected": time for that last answer to leave (an HTTP response is written
# right after its handler; 150 ms covers the socket and the access point's airtime), and the longest wait
# for a BLE central to read it (a phone reads within a connection interval or two)
_GRACE_MS = const(150)
_BLE_READ_WAIT_MS = const(1000)
_POLL_MS = const(100)
_STEP_MS = const(20)


async def provision(node):
    """Serve provisioning until the station joined, linger so the client reads Connected, then stop."""
    cfg = node.config
    gc.collect()  # load the provisioning code into an unfragmented heap
    from rmnode.prov_endpoints import Provisioning
    if cfg.transport != "ble":
        from rmnode.http import ProvHttpServer
    if cfg.transport != "softap":
        from rmnode.ble import DEFAULT_SERVICE_UUID, ProvBleServer, valid_service_uuid
    gc.collect()

    wifi = node.wifi
    joining = []  # [(ssid, passphrase)] applied through provisioning, persisted once joined

    def on_session(session_id):
        # docs/protocol.md 4.3: each provisioning attempt carries its own mapping. One still pending when
        # a session starts came in an earlier session (this one's can only follow its handshake), maybe
        # before a power cut; unless that attempt's join completed, it must not be published as current.
        entry = node.mapping.pending()
        if entry is not None and not joined():
            node.mapping.drop_pending()
            log.info(_TAG, "pending mapping for user %s dropped: an earlier session's, join not completed"
                     % entry["user_id"])

    def on_wifi_config_applied(ssid, passphrase):
        joining[:] = [(bytes(ssid), bytes(passphrase))]  # SSIDs need not be UTF-8: kept as bytes
        node.enter("connecting", log.shown(ssid))

    def on_prov_reset():
        joining[:] = []
        node.enter("provisioning", "after prov-ctrl reset")

    def joined():
        if not joining or not wifi.is_connected():
            return False
        if node.stored_credentials() is None:
            ssid, passphrase = joining[0]
            credentials.save(node.state_store, ssid, passphrase)
            log.info(_TAG, "joined %s; credentials stored" % log.shown(ssid))
        return True

    # the mapping is persisted before cloud_user_assoc answers (upstream keeps it in RAM only; docs/protocol.md 4.2)
    mapping = _user_mapping(cfg)
    chal_resp = mapping["chal_resp"]
    prov = Provisioning(cfg, wifi, node.mapping.set_pending, on_wifi_config_applied=on_wifi_config_applied,
                        on_reset=on_prov_reset, on_session=on_session, **mapping)
    server = radio = None
    try:
        if cfg.transport != "ble":
            wifi.ap_up(cfg.service_name)
            server = ProvHttpServer(wifi.ap_ip(), cfg.prov_port, prov.dispatch, prov.session_closed,
                                    endpoints=prov.endpoints)
            await server.start()
        if cfg.transport != "softap":
            if chal_resp is not None:
                chal_resp.load_signer()  # not from the IRQ handler (rmnode.chal_resp)
            # a BLE client's ScanStart is answered from a scan already made (the IRQ handler cannot scan)
            prov.scan_wanted = True
            prov.run_deferred()
            uuid = cfg.ble_service_uuid or DEFAULT_SERVICE_UUID
            if not valid_service_uuid(uuid):
                log.warning(_TAG, "ble_service_uuid %r is not a 128-bit UUID, using %s" % (uuid, DEFAULT_SERVICE_UUID))
                uuid = DEFAULT_SERVICE_UUID
            radio = ProvBleServer(cfg.service_name, uuid, prov.endpoints, prov.dispatch, prov.session_closed,
                                  idle_s=cfg.ble_idle_s)
            await radio.start()
    except BaseException:
        _stop(wifi, server, radio)
        raise
    node.enter("provisioning", "service %s, security %d, %s" % (cfg.service_name, cfg.sec_ver, cfg.transport))
    try:
        while not joined():
            # a join or scan a BLE client asked for: at once, not after a poll interval
            ran = prov.run_deferred()
            await asyncio.sleep(0 if ran else (_STEP_MS if radio is not None else _POLL_MS) / 1000)
        # Keep serving until the client has been told "Connected" (Espressif's client polls every
        # 5 s), at most prov_linger_s; over BLE until the central has also read that answer; then a
        # moment more so that the last answer reaches it.
        waited_ms = 0
        while not prov.connected_reported and waited_ms < cfg.prov_linger_s * 1000:
            prov.run_deferred()
            await asyncio.sleep(_POLL_MS / 1000)
            waited_ms += _POLL_MS
        waited_ms = 0
        while radio is not None and not radio.response_read() and waited_ms < _BLE_READ_WAIT_MS:
            await asyncio.sleep(_STEP_MS / 1000)
            waited_ms += _STEP_MS
        await asyncio.sleep(_GRACE_MS / 1000)
    finally:
        _stop(wifi, server, radio)
        if server is not None:
            await server.wait_closed()
        # no unloading needed: the node reboots right after this (rmnode.node.Node.run)
        log.info(_TAG, "provisioning stopped")


def _user_mapping(cfg):
    """Provisioning's keyword arguments for the user mapping the settings ask for (docs/protocol.md 7.1): the
    ch_resp endpoint, with the node's key loaded here in the main task, and/or cloud_user_assoc. Without a
    usable key the node serves cloud_user_assoc alone, whatever the setting, so that it can still be mapped."""
    mode = cfg.user_mapping
    if mode is None:
        mode = "both"  # ch_resp advertised, cloud_user_assoc still served
    elif mode not in ("both", "ch_resp", "secret"):
        log.warning(_TAG, "user_mapping %r is not both, ch_resp or secret, using both" % (mode,))
        mode = "both"
    if mode == "secret":
        return {"chal_resp": None, "secret_mapping": True}
    import rmnode
    import sys
    from rmnode.p256_key import KeyUnusable, load_key

    try:
        private_key = load_key(cfg.key_path)
    except KeyUnusable as e:
        log.warning(_TAG, "challenge-response not offered (%s); cloud_user_assoc only" % e)
        return {"chal_resp": None, "secret_mapping": True}
    finally:
        # the key reader's ~5 KB of heap is needed once: unloaded again for the rest of provisioning
        sys.modules.pop("rmnode.p256_key", None)
        rmnode.__dict__.pop("p256_key", None)
    from rmnode.chal_resp import ChallengeResponse

    return {"chal_resp": ChallengeResponse(cfg.node_id, private_key), "secret_mapping": mode == "both"}


def _stop(wifi, server, radio):
    # BLE off before the reboot into station mode, as ESP-IDF's provisioning manager does
    if radio is not None:
        radio.stop()
    if server is not None:
        server.stop()
    wifi.ap_down()
