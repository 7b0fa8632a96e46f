"""Fixtures of the hardware-in-the-loop tests (support/hil.py): `hil_session` brings the board up once per
session (per pytest-xdist worker), `hil` hands each test the board freshly reset into provisioning with
its serial log going to the test's artifacts folder. Without --board these tests are deselected
(support/hil_plugin.py)."""

from __future__ import annotations

import pytest

from support import paths
from support.hil import HilConfig, HilSession


@pytest.fixture(scope="session")
def hil_session(request, tmp_path_factory):
    config = HilConfig.from_pytest(request.config)
    # the session's own logs (setup.log: flash, deploy, factory data; serial.log between tests), one
    # folder per pytest-xdist worker
    name = f"hil_session_{config.worker}" if config.worker else "hil_session"
    session = HilSession(config, tmp_path_factory.mktemp("hil"), paths.ARTIFACTS / name)
    try:
        session.start()
        yield session
    finally:
        session.stop()


@pytest.fixture
def hil(hil_session, artifacts_dir) -> HilSession:
    try:
        hil_session.begin_test(artifacts_dir)
        yield hil_session
    finally:
        hil_session.end_test(artifacts_dir)
