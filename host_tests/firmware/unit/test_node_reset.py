"""rmnode.node's factory-reset entry points (docs/protocol.md 5.3): the reset button's hook and the REPL's
function. The REPL path end to end (online, report, reboot) is in e2e/test_e2e_node.py."""

from rmnode import node as node_module
from rmnode.node import Node
from fwtest import check, equal, tmpdir


class _WLAN:
    def active(self, *value):
        return True

    def config(self, key):
        return b"\x24\x0a\xc4\x1a\x2b\x3c"  # only "mac" is asked for while building a Node


class _Network:
    STA_IF = 0

    def WLAN(self, interface):
        return _WLAN()


class _Flag:
    def __init__(self):
        self.is_set = False

    def set(self):
        self.is_set = True


class _Online:
    def __init__(self):
        self.reset_requested = _Flag()


def _node():
    reboots = []
    node = Node(tmpdir("reset"), _Network(), reboot=lambda: reboots.append(1))
    node.state_store.update({"wifi": {"ssid": "home", "passphrase": "pw"},
                             "pending_mapping": {"user_id": "u", "secret_key": "k", "reset": True}})
    return node, reboots


def test_the_button_offline_erases_and_reboots_at_once():
    node, reboots = _node()
    node.reset_button_pressed()
    equal((node.stored_credentials(), node.mapping.pending(), reboots), (None, None, [1]), "erased, rebooted")


def test_the_button_online_leaves_it_to_the_online_sequence():
    node, reboots = _node()
    node.online = _Online()
    node.reset_button_pressed()
    check(node.online.reset_requested.is_set, "the online sequence is asked to report first")
    equal((node.stored_credentials() is not None, reboots), (True, []), "nothing erased yet")


def test_the_repl_entry_point_keeps_the_name_users_learnt():
    check(node_module.factory_reset is node_module.factory_reset_from_repl, "rmnode.node.factory_reset")


def test_the_wifi_reset_forgets_the_network_and_keeps_the_mapping_state():
    """As upstream's esp_rmaker_wifi_reset: the node is provisioned onto a network again and stays its user's."""
    from rmnode.reset import wifi_reset_from_repl
    from rmnode.store import Store

    root = tmpdir("wifi-reset")
    pending = {"user_id": "u1", "secret_key": "k1"}
    Store(root + "/state.json").update({"wifi": {"ssid": "home", "passphrase": "pw"}, "pending_mapping": pending})
    check(wifi_reset_from_repl(root, reboot=False), "credentials were stored")
    state = Store(root + "/state.json")
    equal((state.get("wifi"), state.get("pending_mapping")), (None, pending), "network forgotten, mapping kept")
    check(not wifi_reset_from_repl(root, reboot=False), "nothing left to forget")
