"""The whole rig in one object: PKI, mosquitto, the local cloud and virtual boards, started and
stopped together. `make demo`, `make sandbox` and the end-to-end tests are built on it.

An SNTP server on 127.0.0.1 runs beside the broker: a board's clock starts at 2000-01-01 and
must be set before TLS. Everything lives under one work directory: pki/, broker/ (config and log), cloud.db, cloud.log,
air.json (the simulated Wi-Fi), boards/<name>/ (each board's flash) and <name>.log (serial logs).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from rmkit import REPO_ROOT, venv_tool
from rmkit.broker import Broker, check_listen, connect_host
from rmkit.cloud.mqtt import MqttSettings
from rmkit.cloud.service import CloudService
from rmkit.deploy import deploy_to_flash_dir
from rmkit.errors import UserError
from rmkit.factory import write_factory_data
from rmkit.pki import Pki, names_host
from rmkit.sntp import SntpServer
from rmkit.vboard import VirtualBoard
from rmkit.vboard.air import LAB_SSID
from rmkit.vboard.board import mac_for_name, parse_heap
from rmkit.vboard.errors import BoardError

log = logging.getLogger(__name__)



WORKDIR_MARKER = ".rmkit-workdir"


def check_heap(heap: Optional[str], knob: str = "--heap") -> Optional[int]:
    """The fixed board heap a command was given, in bytes (None: an ESP32's, which grows); one line
    naming the knob when it is unusable."""
    if heap is None:
        return None
    try:
        return parse_heap(heap)
    except BoardError as exc:
        raise UserError(f"{knob}: {exc}; omit it for an ESP32's heap") from None


def fresh_workdir(workdir: Path) -> Path:
    """Empty `workdir` for a new run and mark it as ours. Only a directory an earlier run made (it
    holds WORKDIR_MARKER, or lies in the repository's build/), or an empty one, is emptied: anything
    else may be the user's files."""
    workdir = Path(workdir)
    if workdir.exists():
        if not workdir.is_dir():
            raise UserError(f"work directory {workdir} is a file; pick a directory that does not exist yet")
        ours = (workdir / WORKDIR_MARKER).exists() or (REPO_ROOT / "build").resolve() in workdir.resolve().parents
        if not ours and any(workdir.iterdir()):
            raise UserError(f"work directory {workdir} holds files rmkit did not make (no {WORKDIR_MARKER} "
                            f"inside); refusing to empty it: pick a new or empty directory")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / WORKDIR_MARKER).write_text("made by rmkit; emptied at the start of each run\n")
    return workdir


def default_http_processes() -> int:
    """REST processes for the cloud (rmkit.cloud.service): two per core, at most 8. On two cores, a
    thousand clients mapping at once (rmkit.benchmarks.scale) confirmed with p99 1.6-1.7 s on 2
    processes and 1.4-1.6 s on 3 or 4; one process could not hold it (2-3 s)."""
    return min(8, 2 * (os.cpu_count() or 1))


def node_id_for_mac(mac: str) -> str:
    """docs/protocol.md 7.3: the base MAC as 12 upper-case hex digits (what a board without factory node_id uses)."""
    return mac.replace(":", "").upper()


class Stack:
    """Start with start(); add boards with add_board(); stop() ends every process it started."""

    def __init__(self, workdir: Path, mapping_timeout: float = 60.0, cloud_port: int = 0,
                 heap: Optional[str] = None, passphrase: Optional[str] = None, broker_listen: str = "127.0.0.1",
                 broker_port: int = 0, pki_dir: Optional[Path] = None, cloud_http_processes: Optional[int] = None,
                 cpu: Optional[str] = None):
        self.workdir = Path(workdir)
        # the broker's address and port (127.0.0.1 and a free one unless a real board must reach it), and
        # the PKI: a fresh one in the workdir unless given (make cloud: the repository's pki/, whose CA a
        # real board's factory data holds)
        self.broker_listen = broker_listen
        self.broker_port = broker_port
        self.pki_dir = Path(pki_dir) if pki_dir is not None else None
        self.mapping_timeout = mapping_timeout
        self.cloud_port = cloud_port
        self.cloud_http_processes = cloud_http_processes or default_http_processes()
        self.heap = heap
        self.cpu = cpu  # the boards' modelled CPU: None (this host's speed) or "esp32" (VirtualBoard(cpu=))
        self.ssid = LAB_SSID
        self.passphrase = passphrase or secrets.token_hex(8)
        self.pki: Optional[Pki] = None
        self.broker: Optional[Broker] = None
        self.sntp: Optional[SntpServer] = None
        self.cloud: Optional[CloudService] = None
        self.boards: dict[str, VirtualBoard] = {}
        self._cloud_log_handler: Optional[logging.Handler] = None
        self._cloud_propagate = True  # the cloud logger's setting before start(), given back by stop()

    @property
    def air_path(self) -> Path:
        return self.workdir / "air.json"

    @property
    def cloud_log(self) -> Path:
        return self.workdir / "cloud.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "Stack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.pki = Pki(self.pki_dir or self.workdir / "pki")
            listen = check_listen(self.broker_listen, "--broker-listen")
            if self.pki_dir is None and connect_host(listen) != "127.0.0.1":
                self.pki.broker_identity(hosts=[listen])  # this run's own PKI: name where the cloud connects
            self.broker = Broker(self.pki, self.workdir / "broker", port=self.broker_port, listen=listen)
            if not names_host(self.broker.identity.certificate(), self.broker.host):
                raise UserError(f"the broker certificate in {self.pki.directory} does not name {self.broker.host}, "
                                f"where the local cloud connects: run `{venv_tool('rmkit')} pki --dir {self.pki.directory} init "
                                f"--broker-host {self.broker.host}` first")
            self.broker.start()
            # boards set their clock by SNTP before TLS (they power on at 2000-01-01)
            self.sntp = SntpServer().start()
            self._capture_cloud_log()
            mqtt = MqttSettings.from_pki(self.pki.directory, self.broker.host, self.broker.port)
            self.cloud = CloudService(self.workdir / "cloud.db", port=self.cloud_port,
                                      mapping_timeout=self.mapping_timeout, mqtt=mqtt,
                                      http_processes=self.cloud_http_processes,
                                      pki_dir=self.pki.directory).start()  # the boards' certificates
            self.write_air()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for board in self.boards.values():
            board.stop()
        if self.cloud is not None:
            self.cloud.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.sntp is not None:
            self.sntp.stop()
        if self._cloud_log_handler is not None:
            logging.getLogger("rmkit.cloud").removeHandler(self._cloud_log_handler)
            logging.getLogger("rmkit.cloud").propagate = self._cloud_propagate
            self._cloud_log_handler.close()
            self._cloud_log_handler = None

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- parts --------------------------------------------------------------------------------

    def write_air(self, aps: Optional[list] = None) -> None:
        """The simulated Wi-Fi: by default one WPA2 network, `ssid`/`passphrase`. Boards re-read it live."""
        if aps is None:
            aps = [{"ssid": self.ssid, "password": self.passphrase, "rssi": -48, "channel": 6}]
        tmp = self.air_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"aps": aps}, indent=1))
        tmp.replace(self.air_path)

    def add_user(self, email: str, password: str) -> str:
        return self.cloud.add_user(email, password)

    def add_board(self, name: str, pop: Optional[str] = None, softap: Optional[str] = None,
                  heap: Optional[str] = None, start: bool = True, sec_ver: int = 1,
                  transport: str = "softap", user_mapping: str = "both", cpu: Optional[str] = None) -> VirtualBoard:
        """A virtual board with the firmware deployed and factory data (node certificate, broker) written."""
        flash = self.workdir / "boards" / name
        flash.mkdir(parents=True, exist_ok=True)
        deploy_to_flash_dir(flash)
        mac = mac_for_name(name)
        pop = pop if pop is not None else secrets.token_hex(4)
        write_factory_data(flash, self.pki, node_id=node_id_for_mac(mac), pop=pop, sec_ver=sec_ver,
                           mqtt_host="localhost", mqtt_port=self.broker.port, sntp_host=self.sntp.host,
                           sntp_port=self.sntp.port, transport=transport, user_mapping=user_mapping)
        board = VirtualBoard(name, flash, mac=mac, air=self.air_path, heap=heap or self.heap, softap=softap,
                             log_path=self.workdir / f"{name}.log", pop=pop, node_id=node_id_for_mac(mac),
                             transport=transport, cpu=cpu or self.cpu)
        self.boards[name] = board
        if start:
            board.start()
        return board

    def _capture_cloud_log(self) -> None:
        handler = logging.FileHandler(self.cloud_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        cloud_logger = logging.getLogger("rmkit.cloud")
        cloud_logger.addHandler(handler)
        cloud_logger.setLevel(logging.INFO)
        self._cloud_propagate = cloud_logger.propagate
        cloud_logger.propagate = False  # its lines go to cloud.log, not into the demo's output
        self._cloud_log_handler = handler
