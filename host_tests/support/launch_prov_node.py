"""Run the firmware's provisioning service (rmnode.prov_endpoints.Provisioning behind rmnode.http.ProvHttpServer)
under the MicroPython unix port or CPython, for the client integration tests.

usage: launch_prov_node.py FIRMWARE_DIR PORT FLASH_DIR
FLASH_DIR holds /factory/factory.json (pop, sec_ver, node_id) like a board's flash. The station is the
firmware's own rmnode.wifi.Wifi driving a scripted stand-in of `network` (below): this test's "air".
The air knows the networks in FLASH_DIR/air.json ({"ssid": "passphrase", ...}); a join reports
CONNECTING for two status reads, then GOT_IP, WRONG_PASSWORD or NO_AP_FOUND.
"""

import gc
import json
import sys

if sys.implementation.name != "micropython":
    # CPython: the stand-ins for MicroPython modules (cryptolib) next to this script; the unix port has the real ones
    sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/mpy_stubs" if "/" in __file__ else "mpy_stubs")
sys.path.insert(0, sys.argv[1])

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio

from rmnode import log
from rmnode.config import NodeConfig
from rmnode.http import ProvHttpServer
from rmnode.prov_endpoints import Provisioning
from rmnode.store import Store
from rmnode.wifi import Wifi

if hasattr(gc, "threshold"):  # MicroPython only
    gc.threshold(4096)  # as firmware/main.py does: collect early so the heap does not fragment

FLASH = sys.argv[3]


def _text(value):
    # rmnode.wifi may hand the station str or bytes, as the ESP32 port accepts both
    return value if isinstance(value, str) else bytes(value).decode()


class _ScriptedStation:
    def __init__(self, air):
        self._air = air
        self._code = 1000  # STAT_IDLE
        self._reads = 0
        self._target = None

    def active(self, *state):
        return True

    def config(self, key):
        if key == "mac":
            return b"\x24\x0a\xc4\x12\x34\x56"
        raise ValueError(key)

    def connect(self, ssid, passphrase, bssid=None):
        self._target = (_text(ssid), _text(passphrase))
        self._code = 1001  # STAT_CONNECTING
        self._reads = 0

    def disconnect(self):
        self._target = None
        self._code = 1000

    def status(self):
        if self._code == 1001:
            self._reads += 1
            if self._reads > 2:
                ssid, passphrase = self._target
                if ssid not in self._air:
                    self._code = 201  # STAT_NO_AP_FOUND
                elif self._air[ssid] != passphrase:
                    self._code = 202  # STAT_WRONG_PASSWORD
                else:
                    self._code = 1010  # STAT_GOT_IP
        return self._code

    def isconnected(self):
        return self._code == 1010

    def ifconfig(self):
        return ("127.0.0.42", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def scan(self):
        return [(ssid.encode(), b"\x02\x00\x00\x00\x00\x01", 6, -50, 3, False) for ssid in sorted(self._air)]


class _ScriptedNetwork:
    """Stand-in for the `network` module with the ESP32 constants rmnode.wifi uses, whose joins follow a script:
    the air is {ssid: passphrase}; a join reports CONNECTING for two status reads, then the outcome. (Tests of
    rmnode.wifi itself drive a hand-set fake, firmware/unit/test_wifi.py; virtual boards simulate the radio,
    tools/rmkit/vboard/sim/vb_network.py.)"""

    STA_IF = 0
    AP_IF = 1
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202

    def __init__(self, networks):
        self._station = _ScriptedStation(networks)

    def WLAN(self, interface):
        return self._station


async def main():
    port = int(sys.argv[2])
    with open(FLASH + "/air.json") as f:
        air = _ScriptedNetwork(json.load(f))
    wifi = Wifi(air)
    config = NodeConfig(wifi.mac(), root=FLASH)
    state = Store(FLASH + "/state.json")

    def on_user_mapping(user_id, secret_key):
        state.set("pending_mapping", {"user_id": user_id, "secret_key": secret_key})

    prov = Provisioning(config, wifi, on_user_mapping)
    server = ProvHttpServer("127.0.0.1", port, prov.dispatch, session_closed=prov.session_closed,
                            endpoints=prov.endpoints)
    await server.start()
    log.info("launch", "node %s, security %d" % (config.node_id, config.sec_ver))
    while server.running:
        await asyncio.sleep(1)


asyncio.run(main())
