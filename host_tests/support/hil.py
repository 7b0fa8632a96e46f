"""A hardware-in-the-loop session: the harness's broker, SNTP server and local cloud, and one board
brought up through its serial port with the commands a person would run.

Once per session (per pytest-xdist worker): start the stack (rmkit.stack.Stack: its own PKI, mosquitto
with mutual TLS, SNTP, the local cloud) with the broker and SNTP server listening where the board
reaches them (--broker-host; the cloud stays on 127.0.0.1, only the test talks to it), then

    rmkit flash IMAGE --port PORT     (only with --firmware)
    rmkit deploy --port PORT
    rmkit factory --port PORT --node-id <from the board's MAC> --pop <random> --mqtt-host H ...

Before each test: the board's Wi-Fi credentials and pending mapping are erased at its REPL, the board
is reset and serves provisioning again; its serial output goes to the test's artifacts folder
(serial.log), with the slices of the cloud and broker logs written during the test and a timeline.

Nothing here touches a flash directory or a VirtualBoard: a virtual board is just another serial URL
(host_tests/e2e/test_hil_virtual.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from rmkit.cloud_client import CloudClient
from rmkit.flow import provision_node
from rmkit.pki import Pki
from rmkit.provision.client import Provisioner
from rmkit.provision.transport import HttpTransport
from rmkit.recorder import CLOUD_PATTERNS, NODE_PATTERNS, LogWatcher
from rmkit.sntp import SntpServer
from rmkit.stack import Stack, node_id_for_mac
from rmkit.timeline import Timeline, render_svg

from support.log_wait import wait_for_log_line
from support import paths
from support.hil_board import HilBoard
from support.hil_plugin import DEFAULT_SOFTAP, worker_index
from support.wait import wait_until

PASSWORD = "hil-password-1"
# a real board boots, joins its own AP, runs X25519 in Python and a TLS handshake: generous waits
BOOT_S = 60.0
SOFTAP_WAIT_S = 90.0   # the host (re)joins the board's access point after each reset
ONLINE_S = 90.0


class HilSetupError(Exception):
    """A session step (flash, deploy, factory data) failed: one line, the step's output in setup.log."""


@dataclass
class HilConfig:
    port: str
    softap: tuple
    firmware: Optional[Path]
    ssid: str
    passphrase: str
    broker_host: str
    worker: str   # the pytest-xdist worker (gw0, gw1, ...), "" without xdist
    transport: str = "softap"   # how the harness provisions the board: softap or ble
    ble_hci: Optional[str] = None   # over BLE: a Bumble HCI transport, else this machine's Bluetooth (bleak)

    @classmethod
    def from_pytest(cls, config) -> "HilConfig":
        boards = config.getoption("board")
        index = worker_index()
        if index >= len(boards):
            raise HilSetupError(f"pytest-xdist worker gw{index} has no board: {len(boards)} --board given; "
                                f"run with -n {len(boards)} (one worker per board)")
        softaps = config.getoption("board_softap") or [DEFAULT_SOFTAP]
        host, _, port = (softaps[index] if len(softaps) > 1 else softaps[0]).rpartition(":")
        firmware = config.getoption("firmware")
        return cls(port=boards[index], softap=(host, int(port)), firmware=Path(firmware) if firmware else None,
                   ssid=config.getoption("wifi_ssid"), passphrase=config.getoption("wifi_pass"),
                   broker_host=config.getoption("broker_host"), worker=os.environ.get("PYTEST_XDIST_WORKER", ""),
                   transport=config.getoption("hil_transport"), ble_hci=config.getoption("ble_hci"))


def listen_address(broker_host: str) -> str:
    """The address of this machine the broker and SNTP server bind so that `broker_host` reaches them:
    127.0.0.1 for a loopback name, else the IPv4 address the name resolves to (it must be this machine's)."""
    try:
        address = socket.gethostbyname(broker_host)
    except OSError as exc:
        raise HilSetupError(f"--broker-host {broker_host}: cannot resolve it here ({exc})") from None
    return "127.0.0.1" if ipaddress.ip_address(address).is_loopback else address


def rmkit_command() -> list:
    rmkit = paths.VENV_BIN / "rmkit"
    return [str(rmkit)] if rmkit.exists() else [sys.executable, "-m", "rmkit"]


class HilSession:
    def __init__(self, config: HilConfig, workdir: Path, artifacts: Path):
        self.config = config
        self.workdir = Path(workdir)
        self.artifacts = Path(artifacts)
        self.stack: Optional[Stack] = None
        self.board = HilBoard(config.port)
        self.node_id: Optional[str] = None
        self.pop = secrets.token_hex(4)
        self.listen = listen_address(config.broker_host)
        self.setup_log = self.artifacts / "setup.log"
        # per test
        self.test_number = 0
        self.timeline: Optional[Timeline] = None
        self._watchers: list = []
        self._transports: list = []
        self._offsets: dict = {}

    # -- session -------------------------------------------------------------------------------------

    def start(self) -> "HilSession":
        if self.artifacts.exists():
            shutil.rmtree(self.artifacts)
        self.artifacts.mkdir(parents=True)
        self._step(f"hil session: board {self.config.port}, provisioning over {self.provisioning_text}, broker host "
                   f"{self.config.broker_host} (listening on {self.listen})")
        self.stack = self._start_stack()
        if self.config.firmware is not None:
            self.flash(self.config.firmware)
        self.board.log_to(self.artifacts / "serial.log")
        self.board.open()
        self.node_id = node_id_for_mac(self.board.mac())  # interrupts main.py: the REPL answers
        self._step(f"board MAC -> node id {self.node_id}")
        self.deploy()
        self.write_factory_data()
        return self

    def stop(self) -> None:
        self.board.close()
        self.board.log_to(None)
        if self.stack is not None:
            self.stack.stop()
            for log_file in (self.stack.cloud_log, self.stack.workdir / "broker" / "mosquitto.log"):
                if log_file.exists():
                    shutil.copy(log_file, self.artifacts / log_file.name)

    @property
    def softap_text(self) -> str:
        return f"{self.config.softap[0]}:{self.config.softap[1]}"

    @property
    def provisioning_text(self) -> str:
        if self.config.transport == "ble":
            return "BLE" + (f" (Bumble on {self.config.ble_hci})" if self.config.ble_hci else " (bleak)")
        return f"SoftAP {self.softap_text}"

    @property
    def service_name(self) -> str:
        """The name the board advertises (docs/protocol.md 7.4): PROV_ and the last three bytes of its MAC,
        which is its node id here."""
        return "PROV_" + self.node_id[6:].lower()

    def _start_stack(self) -> Stack:
        pki_dir = self.workdir / "pki"
        if self.listen != "127.0.0.1":
            # the board checks the broker's certificate against --broker-host; the cloud connects to the
            # listen address (localhost and 127.0.0.1 are always named)
            Pki(pki_dir).broker_identity(hosts=list(dict.fromkeys([self.config.broker_host, self.listen])))
            self._step(f"warning: the broker and SNTP server listen on {self.listen}: other machines on that "
                       "network can reach them (the broker only admits certificates of this session's CA)")
        stack = Stack(self.workdir / "stack", broker_listen=self.listen, pki_dir=pki_dir).start()
        if self.listen != "127.0.0.1":
            # Stack's SNTP server answers on 127.0.0.1 only; the board needs it where it finds the broker
            stack.sntp.stop()
            stack.sntp = SntpServer(host=self.listen).start()
        self._step(f"stack: broker {stack.broker.listen}:{stack.broker.port}, SNTP {stack.sntp.host}:"
                   f"{stack.sntp.port}, cloud {stack.cloud.base_url}")
        return stack

    def _step(self, text: str) -> None:
        with open(self.setup_log, "a") as f:
            f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")

    def _rmkit(self, args: list, timeout: float, what: str) -> None:
        """One rmkit command with the port closed for it; its output goes to setup.log."""
        shown = [a if not a.startswith("--pop=") else "--pop=***" for a in args]
        self._step("$ rmkit " + " ".join(shown))
        with self.board.released(f"rmkit {args[0]}"):
            try:
                result = subprocess.run(rmkit_command() + args, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise HilSetupError(f"{what}: `rmkit {args[0]}` did not finish within {timeout:g} s "
                                    f"(see {self.setup_log})") from None
        with open(self.setup_log, "a") as f:
            f.write(result.stdout + result.stderr)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise HilSetupError(f"{what} failed: {lines[-1] if lines else 'exit status %d' % result.returncode} "
                                f"(see {self.setup_log})")

    def flash(self, image: Path) -> None:
        """MicroPython onto the board with `rmkit flash` (esptool: resets into download mode by DTR/RTS,
        writes, verifies, resets into the new firmware)."""
        self._rmkit(["flash", str(image), "--port", self.config.port], timeout=300, what="flashing MicroPython")

    def deploy(self) -> None:
        self._rmkit(["deploy", "--port", self.config.port], timeout=300, what="deploying the firmware")

    def write_factory_data(self) -> None:
        stack = self.stack
        self._rmkit(["factory", "--port", self.config.port, "--pki-dir", str(stack.pki.directory),
                     "--node-id", self.node_id, f"--pop={self.pop}", "--mqtt-host", self.config.broker_host,
                     "--transport", self.config.transport,
                     "--mqtt-port", str(stack.broker.port), "--sntp-host", stack.sntp.host,
                     "--sntp-port", str(stack.sntp.port)], timeout=120, what="writing the factory data")

    # -- per test ------------------------------------------------------------------------------------

    def begin_test(self, artifacts_dir: Path) -> None:
        """The board, freshly reset with nothing stored, serving provisioning; its serial output (and the
        test's events) recorded into `artifacts_dir`."""
        self.test_number += 1
        self.board.log_to(artifacts_dir / "serial.log")
        self._offsets = {path: path.stat().st_size if path.exists() else 0 for path in self._server_logs()}
        self.timeline = Timeline()
        self._watchers = [LogWatcher(artifacts_dir / "serial.log", self.timeline, NODE_PATTERNS).start(),
                          LogWatcher(self.stack.cloud_log, self.timeline, CLOUD_PATTERNS).start()]
        self.board.erase_state()
        since = self.board.reset()
        self.wait_for_provisioning(since)

    def end_test(self, artifacts_dir: Path) -> None:
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self.stack.cloud.mapping.timeout_s = self.stack.mapping_timeout
        for watcher in self._watchers:
            watcher.stop()
        self._watchers.clear()
        if self.timeline is not None:
            self.timeline.save(artifacts_dir / "timeline.jsonl")
            (artifacts_dir / "timeline.svg").write_text(render_svg(self.timeline.events))
        for path, offset in self._offsets.items():
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    (artifacts_dir / path.name).write_bytes(f.read())
        self.board.log_to(self.artifacts / "serial.log")

    def _server_logs(self) -> list:
        return [self.stack.cloud_log, self.stack.workdir / "broker" / "mosquitto.log"]

    def wait_for_provisioning(self, since: int) -> None:
        """The node says it serves provisioning, and this machine reaches its service (on a real board:
        once the host has joined its access point again)."""
        self.board.wait_for_log(r"node: state: provisioning", timeout=BOOT_S, since=since)
        if self.config.transport == "ble":
            self.board.wait_for_log(r"ble: advertising PROV_", timeout=BOOT_S, since=since)
            return  # the transport looks for the advertisement itself, and says so when it finds none
        self.board.wait_for_log(r"serving protocomm on", timeout=BOOT_S, since=since)
        refusals = []

        def answers() -> bool:
            try:
                with socket.create_connection(self.config.softap, timeout=2):
                    return True
            except OSError as exc:
                refusals.append(exc)
                return False

        wait_until(answers, SOFTAP_WAIT_S, interval=0.3,
                   what=f"{self.softap_text} to answer from here, as the board logs that it serves provisioning",
                   detail=lambda: f"last error: {refusals[-1]}; has this machine joined its PROV_ access point? "
                                  "(README, Hardware in the loop)")

    # -- what the scenarios use ----------------------------------------------------------------------

    def user(self, name: str) -> CloudClient:
        """A new cloud user for this test (alice -> alice-<n>-<random>@example.com), logged in."""
        email = f"{name}-{self.test_number}-{uuid.uuid4().hex[:6]}@example.com"
        self.stack.add_user(email, PASSWORD)
        client = CloudClient(self.stack.cloud.base_url)
        client.user_id = client.login(email, PASSWORD)
        return client

    def provisioner(self) -> Provisioner:
        if self.config.transport == "ble":
            from rmkit.provision.ble import open_ble

            transport = open_ble(self.service_name, self.config.ble_hci, timeout=15.0)
        else:
            transport = HttpTransport(*self.config.softap)
        self._transports.append(transport)
        return Provisioner(transport, sec=1, pop=self.pop, poll_interval_s=0.2)

    def provision(self, client: CloudClient, secret_key: str) -> str:
        """rmkit.flow's step 1 against the board (SoftAP or BLE): the mapping for `client`, then this session's
        Wi-Fi; returns the node id the board answered."""
        return provision_node(self.provisioner(), self.timeline, client.user_id, secret_key,
                              self.config.ssid, self.config.passphrase)

    def wait_for_cloud_log(self, pattern: str, timeout: float = ONLINE_S):
        """The first line the cloud logged during this test matching `pattern`."""
        return wait_for_log_line(self.stack.cloud_log, pattern, timeout,
                                 offset=self._offsets.get(self.stack.cloud_log, 0))

    @contextlib.contextmanager
    def mapping_timeout(self, seconds: float) -> Iterator[None]:
        """The cloud's mapping timeout (RainMaker: 60 s) set to `seconds` for new decisions (the harness's
        own cloud; put back at the end of the test in any case)."""
        self.stack.cloud.mapping.timeout_s = float(seconds)
        try:
            yield
        finally:
            self.stack.cloud.mapping.timeout_s = self.stack.mapping_timeout

    def factory_reset_from_repl(self) -> int:
        """The node's REPL factory reset (rmnode.node.factory_reset_from_repl: report to the cloud, erase,
        reboot), typed over the serial port; returns the serial log offset before it."""
        since = self.board.log_offset()
        self.board.launch("import rmnode.node\nrmnode.node.factory_reset_from_repl()")
        return since
