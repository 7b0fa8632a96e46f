"""The end-to-end rig for scenario tests: PKI, broker, cloud and virtual boards from rmkit.stack, plus a
timeline of client, node and cloud events.

`rig_factory(mapping_timeout=60, heap=None)` -> Rig (started); everything is stopped at teardown,
also when the test fails, and the logs land in the test's artifacts folder: <board>.log (serial),
mosquitto.log, cloud.log and timeline.jsonl (+ timeline.svg).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

from rmkit.cloud_client import CloudClient
from rmkit.provision.client import Provisioner
from rmkit.flow import board_transport
from rmkit.recorder import CLOUD_PATTERNS, NODE_PATTERNS, LogWatcher
from rmkit.stack import Stack
from rmkit.timeline import Timeline, render_svg

PASSWORD = "scenario-password-1"
# None: an ESP32's RAM (the virtual board's model); RMKIT_TEST_HEAP (e.g. 110K, a fixed heap) overrides it
# for a local investigation, never in CI
DEFAULT_HEAP = os.environ.get("RMKIT_TEST_HEAP") or None


class Rig:
    def __init__(self, stack: Stack):
        self.stack = stack
        self.timeline = Timeline()
        self.watchers = [LogWatcher(stack.cloud_log, self.timeline, CLOUD_PATTERNS, start_at_end=False).start()]
        self._transports: list = []

    @property
    def ssid(self) -> str:
        return self.stack.ssid

    @property
    def passphrase(self) -> str:
        return self.stack.passphrase

    def add_board(self, name: str, **options):
        board = self.stack.add_board(name, **options)
        self.watchers.append(LogWatcher(board.serial_log, self.timeline, NODE_PATTERNS, start_at_end=False).start())
        if options.get("start", True):
            board.wait_for_log(r"state: provisioning", timeout=30)
        return board

    def add_user(self, email: str, password: str = PASSWORD) -> str:
        return self.stack.add_user(email, password)

    def login(self, email: str, password: str = PASSWORD) -> CloudClient:
        client = CloudClient(self.stack.cloud.base_url)
        client.user_id = client.login(email, password)
        return client

    def provisioner(self, board, pop: Optional[str] = None, sec: int = 1, over: Optional[str] = None) -> Provisioner:
        """A client for the board `over` "ble" or "softap"; by default over the transport it serves (BLE when
        it serves only that, else SoftAP)."""
        transport = board_transport(board, over=over)
        self._transports.append(transport)
        return Provisioner(transport, sec=sec, pop=board.pop if pop is None else pop, poll_interval_s=0.1)

    def close(self, artifacts: Path) -> None:
        for transport in self._transports:
            transport.close()
        self.stack.stop()
        for watcher in self.watchers:
            watcher.stop()
        self.timeline.save(artifacts / "timeline.jsonl")
        (artifacts / "timeline.svg").write_text(render_svg(self.timeline.events))
        work = self.stack.workdir
        for log in list(work.glob("*.log")) + [work / "broker" / "mosquitto.log"]:
            if log.exists():
                shutil.copy(log, artifacts / log.name)


@pytest.fixture
def rig_factory(tmp_path, artifacts_dir):
    rigs: list[Rig] = []

    def make_started(mapping_timeout: float = 60.0, heap: str = DEFAULT_HEAP) -> Rig:
        stack = Stack(tmp_path / f"stack{len(rigs)}", mapping_timeout=mapping_timeout, heap=heap).start()
        rig = Rig(stack)
        rigs.append(rig)
        return rig

    try:
        yield make_started
    finally:
        for rig in rigs:
            rig.close(artifacts_dir)


@pytest.fixture
def rig(rig_factory) -> Rig:
    return rig_factory()
