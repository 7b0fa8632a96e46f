"""README's "Running on a real ESP32", in order, with a virtual board standing for the ESP32: inside a
network namespace of its own (`unshare -rn`), 10.9.8.7 is the computer's LAN address, where the board
reaches the broker.

pki init --broker-host 10.9.8.7; the broker and the cloud as `make cloud BROKER_LISTEN=0.0.0.0
BROKER_PORT=8883` runs them (the Makefile's line is checked in tools/test_makefile.py; the PKI here is a
temporary one, the README's is the repository's pki/); deploy over the board's serial port; factory data
over it naming 10.9.8.7:8883; reset; provision with the cloud's user until the mapping is confirmed,
which needs the node's MQTT over TLS to 10.9.8.7 with the host name checked against the certificate.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys


from support.needs import need_user_namespaces

IN_NAMESPACE = r"""
import json, os, signal, subprocess, sys, time
from pathlib import Path
from rmkit.vboard import VirtualBoard

work = Path(sys.argv[1])
rmkit = [sys.executable, "-m", "rmkit"]
LAN, PORT = "10.9.8.7", "8883"
pki = work / "pki"

def run(*args):
    result = subprocess.run(rmkit + list(args), capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise SystemExit("rmkit %s failed: %s %s" % (args[0], result.stdout, result.stderr))
    return result.stdout

def until(proc, marker):
    for line in proc.stdout:
        if marker in line:
            return line
    raise SystemExit("no %r: %s" % (marker, proc.stderr.read()))

# 2. the PKI, its broker certificate naming the address the board uses
run("pki", "--dir", str(pki), "init", "--broker-host", LAN)
# 3. the broker and the cloud, the broker on every interface (what make cloud BROKER_LISTEN=0.0.0.0 BROKER_PORT=8883 runs)
cloud = subprocess.Popen(rmkit + ["sandbox", "--no-board", "--workdir", str(work / "cloud"), "--pki-dir", str(pki),
                                  "--broker-listen", "0.0.0.0", "--broker-port", PORT],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
info = json.loads(until(cloud, "SANDBOX ").split(" ", 1)[1])
(work / "air.json").write_text(json.dumps({"aps": [{"ssid": "HOME", "password": "home-pass-1", "rssi": -50, "channel": 6}]}))
board = VirtualBoard("vb-real", work / "flash", air=work / "air.json", pty_link=work / "vb.pty",
                     log_path=work / "board.log").start()
try:
    # 4. deploy over the serial port
    deploy = run("deploy", "--port", str(board.pty_link))
    # 5. factory data over the serial port, the broker at the LAN address (the namespace has no
    #    pool.ntp.org: the cloud's SNTP server instead)
    sntp_host, sntp_port = info["sntp"].split(":")
    factory = run("factory", "--port", str(board.pty_link), "--node-id", "MYNODE", "--show-pop",
                  "--mqtt-host", LAN, "--mqtt-port", PORT, "--sntp-host", sntp_host, "--sntp-port", sntp_port,
                  "--pki-dir", str(pki))
    pop = factory.split(" (shown because --show-pop was given)")[0].rsplit(": ", 1)[1]  # a random one
    # 6. reset, provision with the cloud's user until the mapping is confirmed
    board.reset()
    board.wait_for_log(r"state: provisioning", timeout=30)
    host, port = board.softap
    provision = subprocess.run(rmkit + ["provision", "--host", "%s:%d" % (host, port), "--pop", pop,
                                        "--ssid", "HOME", "--passphrase", "home-pass-1", "--cloud-url",
                                        info["cloud_url"], "--email", info["user"], "--password", info["password"]],
                               capture_output=True, text=True, timeout=180)
    if provision.returncode == 0:  # challenge-response maps before the node is online: let it reach the broker
        board.wait_for_log(r"online: config reported", timeout=60)
    online = board.read_log()
finally:
    board.stop()
    cloud.terminate()
    cloud_err = cloud.communicate(timeout=30)[1]
print("RESULT " + json.dumps({"deploy": deploy, "factory": factory, "provision": [provision.returncode,
      provision.stdout, provision.stderr[-2000:]], "cloud_stderr": cloud_err, "broker_log":
      (work / "cloud" / "broker" / "mosquitto.log").read_text()[-4000:], "board_log": online[-4000:]}))
"""


def test_the_readme_real_board_steps_map_a_board_that_reaches_the_broker_on_the_lan(tmp_path):
    need_user_namespaces()
    script = "ip link set lo up && ip addr add 10.9.8.7/32 dev lo && exec \"$0\" -c \"$1\" \"$2\""
    proc = subprocess.run(["unshare", "-rn", "sh", "-c", script, sys.executable, IN_NAMESPACE, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "RESULT " in proc.stdout, (proc.stdout[-3000:], proc.stderr[-3000:])
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert "deploy: copy main.py" in result["deploy"] and "soft reset" in result["deploy"]
    assert "broker 10.9.8.7:8883" in result["factory"]
    assert re.search(r"PoP \(random, 8 hex digits\) written to /factory/factory\.json on \S+: [0-9a-f]{8} \(shown",
                     result["factory"]), result["factory"]
    code, out, err = result["provision"]
    assert code == 0 and out.split() == ["node_id", "MYNODE", "request_status", "confirmed"], (
        out, err, result["board_log"], result["broker_log"])
    assert "every interface of this machine (port 8883)" in result["cloud_stderr"]
    # the node came in over the LAN address, not loopback
    assert re.search(r"New client connected from 10\.9\.8\.7:\d+ as MYNODE", result["broker_log"]), result["broker_log"]
