"""Node lifecycle: provisioning (SoftAP + protocomm) -> joining Wi-Fi -> online (MQTT); factory reset.

States, one log line each: `provisioning` (no stored Wi-Fi credentials: access point and HTTP
service up), `connecting` (joining the stored or just-received network), `online` (station up,
MQTT running). The pending mapping is persisted by cloud_user_assoc the moment it arrives and is
published by the online sequence, so no state change can lose it.
"""

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
_RESET_TIMEOUT_MS = const(5000)


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
        self._enter("connecting", _shown(credentials[0]))
        self.wifi.connect(credentials[0], credentials[1])
        # and the online phase's code only for that one (rmnode.node_online)
        from rmnode.node_online import run_online

        await run_online(self)

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
