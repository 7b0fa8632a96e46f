"""Run Espressif's esp-rainmaker-cli with two narrow stand-ins (run with .venv-espcli's python).

1. The device step of `provision` (`provision_device`: SoftAP provisioning of a real board) is replaced
   by a stand-in that does what a node's cloud_user_assoc handler does with what it receives: it writes
   {node_id, user_id, secret_key} to $RMKIT_DEVICE_OUT so the test can publish the node's mapping over
   MQTT, waits for the file $RMKIT_DEVICE_GO (if that variable is set), then returns the node id as the
   device would. Everything the CLI does with the cloud stays its own code: reading `custom:user_id`
   from the profile's id token, making the secret key, `PUT user/nodes/mapping`, polling
   `GET user/nodes/mapping?&request_id=` every 5 s and printing the result (docs/protocol.md 6).
2. With RMKIT_SKIP_LOGIN_PAUSE=1, the fixed 3 s `time.sleep` in `login` (rmaker_cmd/user.py) is skipped
   (only in that module; the provisioning poll keeps its real 5 s interval).

Usage: python launch_espcli.py provision --pop abcd1234 --ssid S --passphrase P --no-retry
"""

import json
import os
import sys
import time
import types

import rmaker_cmd.provision as provision_cmd
import rmaker_cmd.user as user_cmd
from rainmaker.rainmaker import main


def stand_in_device(transport_mode, pop, userid, secretkey, **_kwargs):
    node_id = os.environ["RMKIT_NODE_ID"]
    out = os.environ["RMKIT_DEVICE_OUT"]
    with open(out + ".tmp", "w") as f:
        json.dump({"node_id": node_id, "user_id": userid, "secret_key": secretkey}, f)
    os.replace(out + ".tmp", out)
    go = os.environ.get("RMKIT_DEVICE_GO")
    deadline = time.monotonic() + 30
    while go and not os.path.exists(go):
        if time.monotonic() > deadline:
            print("stand-in device: no go signal within 30 s", file=sys.stderr)
            return None
        time.sleep(0.02)
    return node_id, False  # (node_id, challenge_response_performed), as provision_device returns


if os.environ.get("RMKIT_NODE_ID"):
    provision_cmd.provision_device = stand_in_device  # looked up on the module at call time
if os.environ.get("RMKIT_SKIP_LOGIN_PAUSE") == "1":
    user_cmd.time = types.SimpleNamespace(**{**vars(time), "sleep": lambda _s: None})

if __name__ == "__main__":
    sys.argv[0] = "esp-rainmaker-cli"
    sys.exit(main())
