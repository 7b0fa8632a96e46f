"""Node lifecycle: provisioning (SoftAP + protocomm) -> joining Wi-Fi -> online (MQTT); factory reset.

States, one log line each: `provisioning` (no stored Wi-Fi credentials: access point and HTTP
service up), `connecting` (joining the stored or just-received network), `online` (station up,
MQTT running). The pending mapping is persisted by cloud_user_assoc the moment it arrives and is
published by the online sequence, so no state change can lose it.
"""

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

import gc
import sys
from binascii import hexlify, unhexlify

import rmnode
from rmnode import VERSION, log
from rmnode.config import NodeConfig
from rmnode.mapping import MappingState
from rmnode.store import Store
from rmnode.wifi import Wifi

_TAG = "node"

WIFI_KEY = "wifi"  # {"ssid": str, "passphrase": str}; on flash like ESP-IDF keeps it in NVS
# wifi_constants.proto WifiStationState
_STA_DISCONNECTED = 2
_STA_CONNECTION_FAILED = 3
# Loaded only while provisioning and dropped before TLS: together they are most of the heap a
# 110 KiB board has (design.md: memory is a feature).
_PROVISIONING_MODULES = ("prov", "http", "protocomm", "security", "pb", "x25519", "aes_ctr")
_RESET_TIMEOUT_MS = 5000
_GRACE_MS = 500
_POLL_MS = 100
_REJOIN_FIRST_MS = 2000
_REJOIN_CAP_MS = 60000


def _unload(names):
    """Forget modules so the GC can take their code and tables back."""
    for name in names:
        sys.modules.pop("rmnode." + name, None)
        if hasattr(rmnode, name):
            delattr(rmnode, name)
    gc.collect()


def _reboot():
    import machine
    machine.reset()


def _text(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


def _shown(ssid):
    """An SSID for a log line: text when it is UTF-8, else its hex."""
    try:
        return bytes(ssid).decode()
    except UnicodeError:
        return hexlify(bytes(ssid)).decode()


def _to_flash(value):
    """bytes -> a JSON value: the text when it is UTF-8 (readable state.json), else hex with a marker."""
    try:
        return bytes(value).decode()
    except UnicodeError:
        return {"hex": hexlify(bytes(value)).decode()}


def _from_flash(value):
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and isinstance(value.get("hex"), str):
        return unhexlify(value["hex"])
    raise ValueError("not a stored byte string")


class Node:
    """One node. `root` is where the board's flash is mounted ("/" on a board)."""

    def __init__(self, root="/", network=None, reboot=_reboot):
        self.wifi = Wifi(network)
        self.config = NodeConfig(self.wifi.mac(), root)
        self.state_store = Store(self.config.path("/state.json"))
        self.mapping = MappingState(self.state_store)
        self.reboot = reboot
        self.state = None
        self.online = None
        self._joining = None  # (ssid, passphrase) applied through provisioning, persisted once joined

    def _enter(self, state, detail=""):
        self.state = state
        log.info(_TAG, "state: %s%s" % (state, (" (" + detail + ")") if detail else ""))

    # -- the whole life ----------------------------------------------------------------------------

    async def run(self):
        cfg = self.config
        log.info(_TAG, "rmnode %s, node id %s (from %s)" % (VERSION, cfg.node_id, cfg.node_id_source))
        credentials = self._stored_credentials()
        if credentials is None:
            await self._provision()
            # Provisioning and the MQTT/TLS phase never share the heap: a 110 KiB board cannot hold
            # both, and a reboot also returns the heap unfragmented. Credentials and the pending
            # mapping are on flash, so the next boot goes straight to station mode and publishes.
            log.info(_TAG, "provisioned; rebooting into station mode")
            self.reboot()
            return
        else:
            self._enter("connecting", _shown(credentials[0]))
            self.wifi.connect(credentials[0], credentials[1])
        keeper = asyncio.create_task(self._keep_station_up())
        try:
            await self._go_online()
        finally:
            keeper.cancel()

    def _stored_credentials(self):
        """(ssid, passphrase) as bytes from flash, or None (none stored, or malformed: provision again)."""
        wifi = self.state_store.get(WIFI_KEY)
        if wifi is None:
            return None
        try:
            ssid, passphrase = _from_flash(wifi["ssid"]), _from_flash(wifi["passphrase"])
            if ssid:
                return ssid, passphrase
        except (KeyError, TypeError, ValueError):
            pass
        log.warning(_TAG, "stored Wi-Fi credentials are malformed, provisioning again")
        return None

    # -- provisioning ------------------------------------------------------------------------------

    async def _provision(self):
        """Serve provisioning until the station joined, linger so the client reads Connected, then stop."""
        gc.collect()  # load the provisioning code into an unfragmented heap
        from rmnode.http import ProvHttpServer
        from rmnode.prov import Provisioning
        gc.collect()

        cfg = self.config
        self.wifi.ap_up(cfg.service_name)
        prov = Provisioning(cfg, self.wifi, self._on_user_mapping,
                            on_wifi_config_applied=self._on_wifi_config_applied, on_reset=self._on_prov_reset)
        server = ProvHttpServer(self.wifi.ap_ip(), cfg.prov_port, prov.dispatch, prov.session_closed,
                                endpoints=prov.endpoints)
        await server.start()
        self._enter("provisioning", "service %s, security %d" % (cfg.service_name, cfg.sec_ver))
        try:
            while not self._joined_through_provisioning():
                await asyncio.sleep(_POLL_MS / 1000)
            # Keep serving until the client has read "Connected" (Espressif's client polls every
            # 5 s), at most prov_linger_s, then a moment more so that last answer reaches it.
            waited_ms = 0
            while not prov.connected_reported and waited_ms < cfg.prov_linger_s * 1000:
                await asyncio.sleep(_POLL_MS / 1000)
                waited_ms += _POLL_MS
            await asyncio.sleep(_GRACE_MS / 1000)
        finally:
            server.stop()
            await server.wait_closed()
            self.wifi.ap_down()
            del prov, server, Provisioning, ProvHttpServer
            _unload(_PROVISIONING_MODULES)
            log.info(_TAG, "provisioning stopped")

    def _on_user_mapping(self, user_id, secret_key):
        # persisted before cloud_user_assoc answers (spec 4.2 keeps it in RAM only; we do not)
        self.mapping.set_pending(_text(user_id), _text(secret_key))
        if self.online is not None:
            self.online.mapping_changed()

    def _on_wifi_config_applied(self, ssid, passphrase):
        self._joining = (bytes(ssid), bytes(passphrase))  # SSIDs need not be UTF-8: kept as bytes
        self._enter("connecting", _shown(ssid))

    def _on_prov_reset(self):
        self._joining = None
        self._enter("provisioning", "after prov-ctrl reset")

    def _joined_through_provisioning(self):
        if self._joining is None or not self.wifi.is_connected():
            return False
        if self.state_store.get(WIFI_KEY) is None:
            ssid, passphrase = self._joining
            self.state_store.set(WIFI_KEY, {"ssid": _to_flash(ssid), "passphrase": _to_flash(passphrase)})
            log.info(_TAG, "joined %s; credentials stored" % _shown(ssid))
        return True

    # -- station -----------------------------------------------------------------------------------

    async def _keep_station_up(self):
        """Rejoin with backoff when the station failed or was dropped (the driver retries a lost link itself)."""
        delay = _REJOIN_FIRST_MS
        while True:
            await asyncio.sleep(1)
            if self.wifi.is_connected():
                delay = _REJOIN_FIRST_MS
                continue
            state = self.wifi.status().state
            if state in (_STA_CONNECTION_FAILED, _STA_DISCONNECTED):
                credentials = self._stored_credentials()
                if credentials is None:
                    continue
                log.info(_TAG, "station down; rejoining %s in %d ms" % (_shown(credentials[0]), delay))
                await asyncio.sleep(delay / 1000)
                self.wifi.connect(credentials[0], credentials[1])
                delay = min(delay * 2, _REJOIN_CAP_MS)

    # -- online ------------------------------------------------------------------------------------

    async def _go_online(self):
        from rmnode import online as online_seq

        try:
            self.online = online_seq.build(self.config, self.state_store, is_network_up=self.wifi.is_connected,
                                           on_factory_reset=self._erase_and_reboot)
        except Exception as exc:  # OnlineConfigError, or a bug: either way no boot loop, nothing lost
            log.error(_TAG, "cannot go online: %s; the pending mapping stays stored" % exc)
            while True:
                await asyncio.sleep(3600)
        self._enter("online", "%s:%d" % (self.config.mqtt_host, self.config.mqtt_port))
        await self.online.run()

    # -- factory reset -----------------------------------------------------------------------------

    def request_factory_reset(self):
        """Hook for a reset button (safe from an IRQ handler): report when online, erase, reboot."""
        if self.online is not None:
            self.online.request_factory_reset()
        else:
            self._erase_and_reboot(False)

    def _erase_and_reboot(self, reported):
        self.mapping.erase()
        self.state_store.clear()
        log.info(_TAG, "factory reset done (%s); rebooting into provisioning"
                 % ("reported to the cloud" if reported else "cloud not told"))
        self.reboot()


async def _factory_reset(root, timeout_ms):
    from rmnode import online as online_seq

    node = Node(root, reboot=lambda: None)
    reported = False
    credentials = node._stored_credentials()
    if credentials is not None:
        node.wifi.connect(credentials[0], credentials[1])
        try:
            node.online = online_seq.build(node.config, node.state_store, is_network_up=node.wifi.is_connected)
        except online_seq.OnlineConfigError as exc:
            log.warning(_TAG, "factory reset: %s" % exc)
        if node.online is not None:
            client_task = asyncio.create_task(node.online.client.run())
            try:
                await node.online.client.wait_connected(timeout_ms)
                reported = await node.online.factory_reset(timeout_ms)
            except Exception as exc:  # offline or broker away: reset anyway, as Espressif's node does
                log.warning(_TAG, "factory reset not reported: %s" % exc)
            await node.online.client.close()
            client_task.cancel()
    node._erase_and_reboot(reported)
    return reported


def factory_reset(root="/", timeout_ms=_RESET_TIMEOUT_MS, reboot=True):
    """Factory reset from the REPL or a script: report it to the cloud if the node can get online
    within `timeout_ms`, erase Wi-Fi credentials and mapping state, then reboot into provisioning."""
    # MicroPython keeps one task queue: without a new loop, the tasks of a main.py that Ctrl-C
    # interrupted would run again here (and its MQTT client would fight ours for the session)
    asyncio.new_event_loop()
    reported = asyncio.run(_factory_reset(root, timeout_ms))
    if reboot:
        _reboot()
    return reported
