"""`rmkit bench` (make bench): run.py runs every measurement below and report.py writes bench/results.md,
results.json and scale.png from what they measured.

Two MicroPython scripts here are used by the host tests as well: sec1_client.py and esp32_stack.py. They are
the benchmark's own (the Security 1 client the benchmark drives the node's session with, and the ESP32-sized
stack it measures depth on), and the firmware unit tests use the same ones so that what is tested is what is
measured; nothing here uses the tests.

MicroPython scripts (run by the unix port with firmware/ and this folder on MICROPYPATH; also valid CPython):
  sec1.py              device-side Security 1 handshake and secured requests, median of 20 sessions
  node_crypto.py       X25519, AES-CTR per KiB, the Security 1 handshake and P-256 sign() on the node's own code,
                       timed where it runs (the unix port, a virtual board at host or ESP32 speed)
  p256_sign.py         P-256 signing (rmnode.p256): sign() timings, import heap, garbage and C stack per signature
  stack_workload.py    a representative firmware workload (provisioning session with bad requests, MQTT codec,
                       mapping payloads) for the deepest-C-stack bisection (stack_depth.py)
  esp32_stack.py       runs a function on no more C stack than an ESP32 gives MicroPython (15 KiB)
  launch_mqtt_node.py  the node's online sequence against a flash-like directory (with test seams)
  sec1_client.py       the client side of Security 1 built from the firmware's own primitives
CPython:
  flow_timing.py       the secret-key mapping flow by our client, phase by phase (row 1)
  espcli_flow.py       the same flow by Espressif's esp-rainmaker-cli, in a private network namespace (row 1)
  mapping_flows.py     the whole flow over SoftAP and BLE, ch_resp and secret key, at host and ESP32 speed (row 7),
                       with each boot's RAM figures (row 2)
  ram_phases.py        each boot's RAM figures from a virtual board's RAM model log (row 2)
  heap_floor.py        the GC heap floors per phase, transport and mapping, by bisection (row 2)
  mqtt_heap.py         TLS connect / mapping publish timings and the smallest GC heap of the online phase
  footprint.py         bytes of the deployed .mpy per module (row 3)
  scale.py             the cloud at N concurrent mappings beside the broker's raw QoS 1 (row 4; scale_load.py
                       is its load process)
  deploy_timing.py     deploy beside `mpremote cp -r` at 115200 baud (row 5)
  crypto_timing.py     runs node_crypto.py on the bare unix port, at this host's speed (row 6)
  esp32_crypto.py      runs node_crypto.py on virtual boards at host and ESP32 speed, and bm_pidigits' work (row 6)
  p256_timing.py       runs p256_sign.py on the deployed .mpy: sign() time, heap, garbage, C stack (runnable alone)
  stack_depth.py       the firmware's deepest C stack use
"""

from __future__ import annotations

import json
from pathlib import Path

#: this folder: MicroPython scripts run from here (MICROPYPATH)
BENCH_DIR = Path(__file__).resolve().parent
MQTT_NODE_LAUNCHER = BENCH_DIR / "launch_mqtt_node.py"
ESP32_STACK = BENCH_DIR / "esp32_stack.py"

# a fast retry schedule for runs on the host: the first retry after 0.1-0.2 s, never more than 2 s
FAST_SETTINGS = {"mqtt_backoff_ms": [200, 2000], "mqtt_keepalive_s": 10, "mqtt_connect_timeout_ms": 5000}


def make_flash(directory: Path, pki, node_id: str, port: int, pending=None, mapped_user_id=None,
               topic_prefix: str = "", settings=None) -> Path:
    """A flash-like dir for launch_mqtt_node.py: factory data for `node_id` (broker localhost:`port`),
    settings.json and state.json (a pending mapping (user_id, secret_key) if given)."""
    from rmkit.factory import write_factory_data

    directory.mkdir(parents=True, exist_ok=True)
    write_factory_data(directory, pki, node_id=node_id, pop="abcd1234", sec_ver=1, mqtt_host="localhost",
                       mqtt_port=port, topic_prefix=topic_prefix)
    (directory / "settings.json").write_text(json.dumps(settings or FAST_SETTINGS))
    state = {}
    if pending is not None:
        user_id, secret_key = pending
        state["pending_mapping"] = {"user_id": user_id, "secret_key": secret_key, "reset": mapped_user_id != user_id}
    if mapped_user_id is not None:
        state["mapped_user_id"] = mapped_user_id
    (directory / "state.json").write_text(json.dumps(state))
    return directory
