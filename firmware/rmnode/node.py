"""Node lifecycle: provisioning (SoftAP + protocomm) -> joining Wi-Fi -> online (MQTT); Wi-Fi and factory reset.

States, one log line each: `provisioning` (no stored Wi-Fi credentials: access point and HTTP
service up), `connecting` (joining the stored or just-received network), `online` (station up,
MQTT running). The pending mapping is persisted by cloud_user_assoc the moment it arrives and is
published by the online sequence, so no state change can lose it. In every phase the task watchdog
is fed and the BOOT button resets Wi-Fi or the node (rmnode.board).
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
        # imported here, not with this module: what imports rmnode.node without running it (the REPL's
        # factory reset, the heap benchmarks) does not load it
        from rmnode import board

        board.start(self)
        stored = self.stored_credentials()
        if stored is None:
            # the provisioning phase's code is loaded only for it (rmnode.prov_phase)
            from rmnode.prov_phase import provision

            await provision(self)
            # Provisioning and the MQTT/TLS phase never share the heap: a 110 KiB board cannot hold
            # both, and a reboot also returns the heap unfragmented. Credentials and the pending
            # mapping are on flash, so the next boot goes straight to station mode and publishes.
            log.info(_TAG, "provisioned; rebooting into station mode")
            self.reboot()
            return
        self.enter("connecting", log.shown(stored[0]))
        self.wifi.connect(stored[0], stored[1])
        # and the online phase's code only for that one (rmnode.online_phase)
        from rmnode.online_phase import run_online

        await run_online(self, self._erase_and_reboot)

    def stored_credentials(self):
        """(ssid, passphrase) as bytes from flash, or None (none stored, or malformed: provision again)."""
        return credentials.load(self.state_store)

    # -- Wi-Fi reset and factory reset ----------------------------------------------------------------
    # Wi-Fi reset: the button held 3 to 10 s (rmnode.board). Factory reset, one entry point per caller: the
    # button held 10 s or more (Node.reset_button_pressed), the REPL or a script (factory_reset_from_repl
    # below); both end in _erase_and_reboot, after the cloud was told when online (docs/protocol.md 5.5).

    async def wifi_reset(self):
        """Forget the Wi-Fi credentials only, as upstream's Wi-Fi reset does (esp_wifi_restore): the user mapping
        stays, with the cloud and on flash. Online, MQTT is closed first, so the broker sees the node leave at
        once (upstream disconnects for the same reason). Then reboot into provisioning."""
        if self.online is not None:
            await self.online.client.close()
        self.state_store.delete(credentials.WIFI_KEY)
        log.info(_TAG, "Wi-Fi reset: credentials erased, user mapping kept; rebooting into provisioning")
        self.reboot()

    def reset_button_pressed(self):
        """The reset button's hook (rmnode.board calls it from its task), safe from a scheduled IRQ handler too
        (micropython.schedule): online, the online sequence reports the reset to the cloud first (docs/protocol.md
        5.3); else erase and reboot now."""
        if self.online is not None:
            self.online.reset_requested.set()
        else:
            self._erase_and_reboot(False)

    def _erase_and_reboot(self, reported):
        """Forget Wi-Fi credentials and mapping state (one write), then reboot into provisioning."""
        self.state_store.clear()
        log.info(_TAG, "factory reset done (%s); rebooting into provisioning"
                 % ("reported to the cloud" if reported else "cloud not told"))
        self.reboot()


def factory_reset_from_repl(root="/", timeout_ms=None, reboot=True):
    """Factory reset from the REPL or a script: report it to the cloud if the node gets online within
    `timeout_ms` (default 5 s, docs/protocol.md 5.3), erase Wi-Fi credentials and mapping state, then
    reboot into provisioning. reboot=False returns whether the cloud acknowledged instead (for tests)."""
    from rmnode.reset import factory_reset_from_repl as run  # loaded only when a reset is asked for

    # the Node class and its erase step are passed in: rmnode.reset neither imports this module (that
    # would be an import circle) nor reaches into its internals
    return run(Node, Node._erase_and_reboot, root, timeout_ms, reboot)


# The name docs/protocol.md gave this before: kept, so that what users learnt still works
factory_reset = factory_reset_from_repl
