"""Espressif's esp-rainmaker-cli 1.14.1 against the local cloud, isolated in a temp config dir (docs/protocol.md 6).

Exit codes of the CLI are unreliable (many failures exit 0), so every check is on its output text.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support.paths import ESPCLI_BIN, launcher
from support.wait import wait_until

ESPCLI_PY = ESPCLI_BIN / "python"
ESPCLI = ESPCLI_BIN / "esp-rainmaker-cli"
WRAPPER = launcher("espcli")
EMAIL = "maker@example.com"
PASSWORD = "pa55word-for-cli"
NODE = "VNODE0123456789"


class EspCli:
    """Runs the CLI with HOME, its config and its (token-bearing) debug log inside tmp_path."""

    def __init__(self, tmp_path: Path, artifacts_dir: Path):
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "RM_USER_CONFIG_DIR": str(tmp_path / "rmcfg"),
            "RMAKER_CLI_LOG_DIR": str(tmp_path / "rmlogs"),
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
        Path(self.env["HOME"]).mkdir()
        self.transcript = artifacts_dir / "espcli.txt"
        self.transcript.write_text("")

    def _record(self, args, out: str) -> None:
        with open(self.transcript, "a") as f:
            f.write(f"$ esp-rainmaker-cli {' '.join(args)}\n{out}\n")

    def run(self, *args: str, stdin: str = "", timeout: float = 90, quick_login: bool = False) -> str:
        """The real `esp-rainmaker-cli` entry point; quick_login goes through the wrapper without login's 3 s pause."""
        cmd = [str(ESPCLI_PY), str(WRAPPER)] if quick_login else [str(ESPCLI)]
        env = dict(self.env, RMKIT_SKIP_LOGIN_PAUSE="1") if quick_login else self.env
        proc = subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, env=env,
                              timeout=timeout)
        out = proc.stdout + proc.stderr
        self._record(args if "--password" not in args else args[:-1] + ("***",), out)
        return out

    def start_cloud_half(self, *args: str, **extra_env) -> subprocess.Popen:
        env = dict(self.env, **extra_env)
        proc = subprocess.Popen([str(ESPCLI_PY), str(WRAPPER), *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        proc.stdin.write("\n")  # the SoftAP "connect to the hotspot and press Enter" prompt
        proc.stdin.close()
        proc.stdin = None  # communicate() must not flush it again
        return proc

    def finish(self, proc: subprocess.Popen, args, timeout: float = 90) -> str:
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._record(("(cloud half)",) + tuple(args), out)
        return out

    def login(self, base_url: str, quick: bool = True) -> None:
        assert "Created custom profile 'local'" in self.run("profile", "add", "local", "--base-url", base_url)
        assert "Switched to profile 'local'" in self.run("profile", "switch", "local")
        out = self.run("login", "--user_name", EMAIL, "--password", PASSWORD, quick_login=quick)
        assert "Login successful" in out, out


@pytest.fixture
def espcli(tmp_path, artifacts_dir):
    if not ESPCLI.exists():
        pytest.fail("esp-rainmaker-cli is not installed: run `make espcli` (creates .venv-espcli)")
    return EspCli(tmp_path, artifacts_dir)


@pytest.fixture
def mqtt_cloud_process(cloud_process_factory, cloud_broker):
    def make(**options):
        cloud = cloud_process_factory(broker_port=cloud_broker.port, pki_dir=cloud_broker.pki_dir, **options)
        cloud.user_id = cloud.add_user(EMAIL, PASSWORD)
        return cloud
    return make


PROVISION_ARGS = ("provision", "--pop", "abcd1234", "--ssid", "TestAP", "--passphrase", "wifi-pass", "--no-retry")


def test_login_getnodes_getuserinfo_logout(espcli, cloud_process_factory):
    cloud = cloud_process_factory()
    user_id = cloud.add_user(EMAIL, PASSWORD)
    espcli.login(cloud.base_url, quick=False)  # the unmodified CLI, 3 s pause included
    assert "User is not associated with any nodes." in espcli.run("getnodes")
    info = espcli.run("getuserinfo")
    assert f"User Id: {user_id}" in info and f"User Name (Email): {EMAIL}" in info, info
    assert "Logout successful." in espcli.run("logout")
    log = cloud.log_text()
    for line in ("POST /v1/login2 -> 200", "GET /v1/user/nodes -> 200", "GET /v1/user -> 200",
                 "POST /v1/logout2 -> 200"):
        assert line in log
    assert PASSWORD not in log


def test_login_with_wrong_password_shows_the_clouds_error(espcli, cloud_process):
    cloud = cloud_process
    cloud.add_user(EMAIL, "another-password")
    espcli.run("profile", "add", "local", "--base-url", cloud.base_url)
    espcli.run("profile", "switch", "local")
    out = espcli.run("login", "--user_name", EMAIL, "--password", PASSWORD, quick_login=True)
    assert "Login successful" not in out
    assert "101009" in out and "Incorrect user name or password" in out, out


def test_getnodes_follows_next_id_over_pages(espcli, cloud_process_factory):
    from rmkit.cloud.storage import Storage

    cloud = cloud_process_factory()
    user_id = cloud.add_user(EMAIL, PASSWORD)
    node_ids = [f"VNODE{i:03d}" for i in range(30)]  # more than one default page of 25
    storage = Storage(cloud.db_path)
    with storage.transaction() as tx:
        for node_id in node_ids:
            tx.add_user_node(user_id, node_id, time.time())
    storage.close()
    espcli.login(cloud.base_url)
    out = espcli.run("getnodes")
    assert "30. VNODE029" in out and "1. VNODE000" in out, out
    assert cloud.log_text().count(f"GET /v1/user/nodes -> 200 user={user_id}") == 2  # two pages


def test_expired_access_token_is_refreshed_by_the_cli(espcli, cloud_process_factory):
    cloud = cloud_process_factory(token_ttl=2)
    cloud.add_user(EMAIL, PASSWORD)
    espcli.login(cloud.base_url)
    time.sleep(2.2)  # time passing on purpose: the CLI, another process, reads the token's exp from its own clock
    assert "User is not associated with any nodes." in espcli.run("getnodes")
    log = cloud.log_text()
    assert "GET /apiversions -> 200" in log and "refreshed tokens" in log


def test_provision_cloud_half_node_publishes_first(espcli, mqtt_cloud_process, cloud_broker, tmp_path):
    cloud = mqtt_cloud_process()
    espcli.login(cloud.base_url)
    assert "User is not associated with any nodes." in espcli.run("getnodes")
    device_out, go = tmp_path / "device.json", tmp_path / "device.go"
    proc = espcli.start_cloud_half(*PROVISION_ARGS, RMKIT_NODE_ID=NODE, RMKIT_DEVICE_OUT=str(device_out),
                                   RMKIT_DEVICE_GO=str(go))
    try:
        assoc = json.loads(wait_until(lambda: device_out.exists() and device_out.read_text(),
                                      what="the CLI to hand user_id/secret_key to the device"))
        assert assoc["user_id"] == cloud.user_id  # from the id token's custom:user_id
        cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": assoc["user_id"],
                                            "secret_key": assoc["secret_key"]})
        wait_until(lambda: f"node {NODE} reported a mapping" in cloud.log_text(), what="the cloud to store it")
        go.touch()
    finally:
        out = espcli.finish(proc, PROVISION_ARGS)
    assert f"✅ Node {NODE} provisioned successfully!" in out, out
    assert "✅ Node added to your account successfully!" in out, out
    assert f"1. {NODE}" in espcli.run("getnodes")
    assert assoc["secret_key"] not in cloud.log_text()


def test_provision_cloud_half_client_first_then_node(espcli, mqtt_cloud_process, cloud_broker, tmp_path):
    cloud = mqtt_cloud_process()
    espcli.login(cloud.base_url)
    device_out = tmp_path / "device.json"
    proc = espcli.start_cloud_half(*PROVISION_ARGS, RMKIT_NODE_ID=NODE, RMKIT_DEVICE_OUT=str(device_out))
    try:
        assoc = json.loads(wait_until(lambda: device_out.exists() and device_out.read_text(),
                                      what="the CLI to hand user_id/secret_key to the device"))
        wait_until(lambda: "GET /v1/user/nodes/mapping -> 200" in cloud.log_text(), what="the CLI's first poll")
        cloud_broker.publish_mapping(NODE, {"node_id": NODE, "user_id": assoc["user_id"],
                                            "secret_key": assoc["secret_key"]})
    finally:
        out = espcli.finish(proc, PROVISION_ARGS)
    assert "Mapping status: requested" in out, out
    assert "✅ Node added to your account successfully!" in out, out
    assert f"1. {NODE}" in espcli.run("getnodes")


def test_provision_cloud_half_reports_a_timeout(espcli, mqtt_cloud_process, tmp_path):
    cloud = mqtt_cloud_process(mapping_timeout=1)
    espcli.login(cloud.base_url)
    proc = espcli.start_cloud_half(*PROVISION_ARGS, RMKIT_NODE_ID=NODE,
                                   RMKIT_DEVICE_OUT=str(tmp_path / "device.json"))
    out = espcli.finish(proc, PROVISION_ARGS)  # no node publish at all
    assert "Mapping status: requested" in out, out
    assert "❌ Error: Node mapping request timed out" in out, out
    assert "User is not associated with any nodes." in espcli.run("getnodes")


def test_provision_by_challenge_response_with_the_clis_own_code(espcli, cloud_process_factory, node_pki):
    # docs/protocol.md 7.1: esp-rainmaker-cli's initiate, ch_resp message, hex and verify, against our cloud
    cloud = cloud_process_factory(extra_args=("--pki", str(node_pki.directory)))
    cloud.add_user(EMAIL, PASSWORD)
    espcli.login(cloud.base_url)
    identity = node_pki.node_identity(NODE)
    proc = espcli.start_cloud_half(*PROVISION_ARGS, RMKIT_NODE_ID=NODE, RMKIT_NODE_KEY=str(identity.key_pem))
    out = espcli.finish(proc, PROVISION_ARGS)
    assert f"✅ Node {NODE} added to your account successfully!" in out, out
    assert "[ERROR]" not in out, out
    log = cloud.log_text()
    assert "POST /v1/user/nodes/mapping/initiate -> 200" in log and "POST /v1/user/nodes/mapping/verify -> 200" in log
    assert "PUT /v1/user/nodes/mapping" not in log and "GET /v1/user/nodes/mapping" not in log
    assert f"1. {NODE}" in espcli.run("getnodes")


def test_a_challenge_response_the_cloud_refuses_is_an_error_in_the_cli(espcli, cloud_process_factory, node_pki):
    cloud = cloud_process_factory(extra_args=("--pki", str(node_pki.directory)))
    cloud.add_user(EMAIL, PASSWORD)
    espcli.login(cloud.base_url)
    node_pki.node_identity(NODE)
    other = node_pki.node_identity("VNODE0000000002")  # signs, but the node says it is NODE
    proc = espcli.start_cloud_half(*PROVISION_ARGS, RMKIT_NODE_ID=NODE, RMKIT_NODE_KEY=str(other.key_pem))
    out = espcli.finish(proc, PROVISION_ARGS)
    assert "[ERROR]:Failed to verify challenge response: 400 Client Error" in out, out
    assert "Challenge-response user-node association failed" in out, out
    assert "User is not associated with any nodes." in espcli.run("getnodes")
