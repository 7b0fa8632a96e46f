"""Benchmark (not a test): device-side Security 1 handshake and a secured request round trip on
the MicroPython unix port, median of 20 sessions. Client work is excluded from the timings.
node_crypto.py imports `provisioning` and `handshake_us` to time the handshake where it runs (the unix
port, a virtual board at host or ESP32 speed).

Run alone: MICROPYPATH=firmware:tools/rmkit/benchmarks .venv/bin/micropython tools/rmkit/benchmarks/sec1.py
"""

import os
import time

from rmnode import log, pb
from rmnode.prov_endpoints import Provisioning
from rmnode.store import Store
from rmnode.wifi import StationStatus
from sec1_client import Sec1Client

log.level = log.ERROR
RUNS = 20
STA_DISCONNECTED = 2  # WifiStationState
POP = b"abcd1234"


class Config:
    sec_ver, pop, node_id = 1, POP.decode(), "node-1"


class Station:
    """The station as the provisioning endpoints see it (rmnode.wifi.Wifi), never joining."""

    def connect(self, ssid, passphrase, bssid=None):
        pass

    def disconnect(self):
        pass

    def status(self):
        return StationStatus(STA_DISCONNECTED)

    def scan(self):
        return []


def tmpdir(tag):
    base = os.getenv("FW_TMP") or "/tmp"
    path = "%s/rmkit_bench_%s_%d" % (base, tag, int.from_bytes(os.urandom(4), "big"))
    os.mkdir(path)
    return path


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def provisioning():
    """The node's provisioning service with a station that never joins; the pending mapping goes to a Store file."""
    store = Store(tmpdir("bench") + "/state.json")
    return Provisioning(Config(), Station(),
                        lambda u, k: store.set("pending_mapping", {"user_id": u, "secret_key": k}))


def handshake_us(prov, session_id):
    """One Security 1 handshake with a new client: (Cmd0 us, Cmd1 us, the client), the device side only."""
    client = Sec1Client(POP)
    cmd0 = client.cmd0()
    t0 = time.ticks_us()
    resp0 = prov.dispatch(session_id, "prov-session", cmd0)
    t1 = time.ticks_us()
    cmd1 = client.cmd1(resp0)
    t2 = time.ticks_us()
    resp1 = prov.dispatch(session_id, "prov-session", cmd1)
    t3 = time.ticks_us()
    client.check_resp1(resp1)
    return time.ticks_diff(t1, t0), time.ticks_diff(t3, t2), client


def main():
    prov = provisioning()
    cmd0_us, cmd1_us, handshake_total_us, status_us, mapping_us = [], [], [], [], []
    status_plain = b"\x52\x00"
    mapping_plain = pb.encode(pb.RMakerConfigPayload, {"cmd_set_user_mapping": {
        "UserID": "b7a1e2c4-user", "SecretKey": "5f0c2c7e-2d7e-4c1b-9a53-0c1e6f1d2a3b"}})
    for i in range(RUNS):
        cmd0, cmd1, client = handshake_us(prov, i)
        cmd0_us.append(cmd0)
        cmd1_us.append(cmd1)
        handshake_total_us.append(cmd0 + cmd1)
        body = client.crypt(status_plain)
        t0 = time.ticks_us()
        reply = prov.dispatch(i, "prov-config", body)
        status_us.append(time.ticks_diff(time.ticks_us(), t0))
        client.crypt(reply)
        body = client.crypt(mapping_plain)
        t0 = time.ticks_us()
        reply = prov.dispatch(i, "cloud_user_assoc", body)
        mapping_us.append(time.ticks_diff(time.ticks_us(), t0))
        client.crypt(reply)
    print("Security 1 device side, median of %d sessions (unix port):" % RUNS)
    print("  Cmd0 (keypair + shared secret): %.2f ms" % (median(cmd0_us) / 1000))
    print("  Cmd1 (verify):                  %.2f ms" % (median(cmd1_us) / 1000))
    print("  handshake total:                %.2f ms" % (median(handshake_total_us) / 1000))
    print("  secured GetStatus round trip:   %.3f ms" % (median(status_us) / 1000))
    print("  secured cloud_user_assoc:       %.3f ms (pending mapping written to a Store file)" % (median(mapping_us) / 1000))


if __name__ == "__main__":
    main()
