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

from binascii import hexlify, unhexlify

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import VERSION, log
from rmnode.config import NodeConfig
from rmnode.mapping import MappingState
from rmnode.store import Store
from rmnode.wifi import Wifi

_TAG = const("node")

WIFI_KEY = "wifi"  # {"ssid": str, "passphrase": str}; on flash like ESP-IDF keeps it in NVS
# wifi_constants.proto WifiStationState
_STA_DISCONNECTED = const(2)
_STA_CONNECTION_FAILED = const(3)
_RESET_TIMEOUT_MS = const(5000)
_REJOIN_FIRST_MS = const(2000)
_REJOIN_CAP_MS = const(60000)


def _reboot():
    import machine
    machine.reset()


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

    def _enter(self, state, detail=""):
        self.state = state
        log.info(_TAG, "state: %s%s" % (state, (" (" + detail + ")") if detail else ""))

    # -- the whole life ----------------------------------------------------------------------------

    async def run(self):
        cfg = self.config
        log.info(_TAG, "rmnode %s, node id %s (from %s)" % (VERSION, cfg.node_id, cfg.node_id_source))
        credentials = self._stored_credentials()
        if credentials is None:
            # the provisioning phase's code is loaded only for it (rmnode.node_prov)
            from rmnode.node_prov import provision

            await provision(self)
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


def factory_reset(root="/", timeout_ms=_RESET_TIMEOUT_MS, reboot=True):
    """Factory reset from the REPL or a script: report it to the cloud if the node can get online
    within `timeout_ms`, erase Wi-Fi credentials and mapping state, then reboot into provisioning."""
    from rmnode.reset import factory_reset as reset  # loaded only when a reset is asked for

    return reset(root, timeout_ms, reboot)
