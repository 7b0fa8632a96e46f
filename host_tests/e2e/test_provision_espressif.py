"""Espressif's own client library (esp-rainmaker-cli 1.14.1, in .venv-espcli) against the firmware's HTTP
transport + provisioning service under the unix port: session, cloud_user_assoc, Wi-Fi config and status.

Library level (its Transport_HTTP pointed at 127.0.0.1); the full `esp-rainmaker-cli provision` run with a
cloud belongs to the end-to-end tests.
"""

import json
import subprocess

import pytest

from support.paths import ESPCLI_BIN

ESPCLI_PYTHON = ESPCLI_BIN / "python"

DRIVER = r'''
import json, sys, time
from rmaker_tools.common.transport import Transport_HTTP
from rmaker_tools.rmaker_prov.prov import prov_util, user_mapping

tp = Transport_HTTP("127.0.0.1:%s" % sys.argv[1])
report = {"version": json.loads(prov_util.get_version(tp))}
security = prov_util.get_security(1, pop=sys.argv[2])
report["session"] = bool(prov_util.establish_session(tp, security))
reply = tp.send_data("cloud_user_assoc", user_mapping.custom_cloud_config_request(security, "esp-user", "esp-secret"))
report["assoc"] = list(user_mapping.custom_cloud_config_response(security, reply))
report["set"] = prov_util.send_wifi_config(tp, security, "HomeNet", "right-pass")
report["apply"] = prov_util.apply_wifi_config(tp, security)
states = []
for _ in range(50):
    states.append(prov_util.get_wifi_config(tp, security))
    if states[-1] != "connecting":
        break
    time.sleep(0.05)  # the poll interval of a client asking for the Wi-Fi state, as esp_prov does
report["states"] = states
print("REPORT " + json.dumps(report))
'''


def test_espressif_client_library_provisions_the_unix_port_node(firmware_node_factory, tmp_path):
    if not ESPCLI_PYTHON.exists():  # `make test` installs it; a missing CLI must not pass as a skip
        pytest.fail(f"{ESPCLI_PYTHON} is missing: run `make espcli` (esp-rainmaker-cli 1.14.1)")
    node = firmware_node_factory(sec_ver=1, pop="abcd1234")
    driver = tmp_path / "espcli_driver.py"
    driver.write_text(DRIVER)
    run = subprocess.run([str(ESPCLI_PYTHON), str(driver), str(node.port), "abcd1234"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(next(line[7:] for line in run.stdout.splitlines() if line.startswith("REPORT ")))
    assert report["version"]["prov"]["sec_ver"] == 1
    assert report["session"] is True
    assert report["assoc"] == [0, "VNODE0042"]
    assert report["set"] is True and report["apply"] is True
    assert report["states"][-1] == "connected"
    pending = json.loads((node.extra["flash"] / "state.json").read_text())["pending_mapping"]
    assert pending == {"user_id": "esp-user", "secret_key": "esp-secret"}
