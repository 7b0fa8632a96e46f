"""Node lifecycle: provisioning (SoftAP + protocomm) -> joining Wi-Fi -> online (MQTT); factory reset.

States, one log line each: `provisioning` (no stored Wi-Fi credentials: access point and HTTP
service up), `connecting` (joining the stored or just-received network), `online` (station up,
MQTT running). The pending mapping is persisted by cloud_user_assoc the moment it arrives and is
published by the online sequence, so no state change can lose it.
"""

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

from rmnode import VERSION, credentials, log
from rmnode.config import NodeConfig
from rmnode.mapping import MappingState
from rmnode.store import Store
from rmnode.wifi import Wifi

_TAG = const("node")

_RESET_TIMEOUT_MS = const(5000)


def reboot_board():
    import machine
    machine.reset()


class Node:
    """One node. `root` is where the board's flash is mounted ("/" on a board)."""

    def __init__(self, root="/", network=None, reboot=reboot_board):
        self.wifi = Wifi(network)
        self.config = NodeConfig(self.wifi.mac(), root)
        self.state_store = Store(self.config.path("/state.json"))
        self.mapping = MappingState(self.state_store)
        self.reboot = reboot
        self.state = None
        self.online = None

    def enter(self, state, detail=""):
        """Move to `state` (provisioning, connecting, online) with one log line."""
        self.state = state
        log.info(_TAG, "state: %s%s" % (state, (" (" + detail + ")") if detail else ""))

    # -- the whole life ----------------------------------------------------------------------------

    async def run(self):
        cfg = self.config
        log.info(_TAG, "rmnode %s, node id %s (from %s)" % (VERSION, cfg.node_id, cfg.node_id_source))
        stored = self.stored_credentials()
        if stored is None:
            # the provisioning phase's code is loaded only for it (rmnode.node_prov)
            from rmnode.node_prov import provision

            await provision(self)
            # Provisioning and the MQTT/TLS phase never share the heap: a 110 KiB board cannot hold
            # both, and a reboot also returns the heap unfragmented. Credentials and the pending
            # mapping are on flash, so the next boot goes straight to station mode and publishes.
            log.info(_TAG, "provisioned; rebooting into station mode")
            self.reboot()
            return
        self.enter("connecting", log.shown(stored[0]))
        self.wifi.connect(stored[0], stored[1])
        # and the online phase's code only for that one (rmnode.node_online)
        from rmnode.node_online import run_online

        await run_online(self)

    def stored_credentials(self):
        """(ssid, passphrase) as bytes from flash, or None (none stored, or malformed: provision again)."""
        return credentials.load(self.state_store)

    # -- factory reset -----------------------------------------------------------------------------

    def request_factory_reset(self):
        """Hook for a reset button (safe from an IRQ handler): report when online, erase, reboot."""
        if self.online is not None:
            self.online.request_factory_reset()
        else:
            self.erase_and_reboot(False)

    def erase_and_reboot(self, reported):
        """Forget Wi-Fi credentials and mapping state, then reboot into provisioning."""
        self.mapping.erase()
        self.state_store.clear()
        log.info(_TAG, "factory reset done (%s); rebooting into provisioning"
                 % ("reported to the cloud" if reported else "cloud not told"))
        self.reboot()


def factory_reset(root="/", timeout_ms=_RESET_TIMEOUT_MS, reboot=True):
    """Factory reset from the REPL or a script: report it to the cloud if the node can get online
    within `timeout_ms`, erase Wi-Fi credentials and mapping state, then reboot into provisioning."""
    from rmnode.reset import factory_reset as reset  # loaded only when a reset is asked for

    return reset(Node, root, timeout_ms, reboot)
