"""Root of the host tests: the artifacts_dir fixture and the fixture plugins of every area.

Layout: support/ (fixtures, launchers, paths, MicroPython stand-ins: not tests), firmware/ (the node's
code, firmware/unit/ runs under CPython and the unix port), tools/ (rmkit's host tools), cloud/ (the
local cloud), e2e/ (whole stacks: scenarios, demo, sandbox, Espressif interop).
sys.path: pytest.ini puts host_tests/ on it; support.paths.use_firmware() adds firmware/ where firmware
code runs in-process.
"""

import re
from pathlib import Path

import pytest

from support import paths


@pytest.fixture
def artifacts_dir(request) -> Path:
    """Per-test folder for logs (board serial log, broker log, cloud log, timeline): artifacts/<test id>/."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("host_tests/", ""))
    path = paths.ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path

# Fixture modules per area (host_tests/support/fixtures_*.py), shared by every test file.
pytest_plugins = [
    "support.fixtures_vboard",
    "support.fixtures_mqtt",
    "support.fixtures_cloud",
    "support.fixtures_prov",
    "support.fixtures_stack",
]
