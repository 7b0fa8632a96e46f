"""Root of the host tests: the artifacts_dir fixture, the report line that names a failed test's artifacts
folder, and the fixture plugins of every area.

Layout: support/ (fixtures, launchers, paths, MicroPython stand-ins: not tests), firmware/ (the node's
code; firmware/unit/ runs under CPython and the unix port), tools/ (rmkit's host tools), cloud/ (the
local cloud), e2e/ (whole stacks: scenarios, demo, sandbox, Espressif interop), hil/ (the scenarios on a
board through its serial port: `pytest host_tests/hil --board PORT ...`, deselected without --board).
sys.path: pytest.ini puts host_tests/ on it; support.paths.use_firmware() adds firmware/ where firmware
code runs in-process.
"""

import os
import re
from pathlib import Path

import pytest

from support import paths, tiers

# Fixture modules per area (host_tests/support/fixtures_*.py), shared by every test file; pytester for
# the harness's own tests (test_harness.py).
pytest_plugins = [
    "support.fixtures_vboard",
    "support.fixtures_mqtt",
    "support.fixtures_cloud",
    "support.fixtures_prov",
    "support.fixtures_stack",
    "support.hil_plugin",  # --board and the other hardware-in-the-loop options; skips `hil` tests without a board
    "pytester",
]


def pytest_collection_modifyitems(config, items):
    tiers.mark(items)
    tiers.slowest_first(items)


def pytest_configure(config):
    """Boards the tests start record themselves in a runtime directory of this test run's own (one per
    pytest-xdist worker), so that they never meet a developer's running boards, nor each other's names."""
    # a worker inherits the controller's environment: a directory the controller made is not the worker's own
    if "RMKIT_RUNTIME_DIR" not in os.environ or os.environ.get("RMKIT_TEST_RUNTIME_DIR") == os.environ["RMKIT_RUNTIME_DIR"]:
        import tempfile

        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        os.environ["RMKIT_RUNTIME_DIR"] = os.environ["RMKIT_TEST_RUNTIME_DIR"] = config._rmkit_runtime_dir = \
            tempfile.mkdtemp(prefix=f"rmkit-test-run-{worker}-")
    tiers.register(config)


def pytest_unconfigure(config):
    made = getattr(config, "_rmkit_runtime_dir", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)


def _artifacts_path(nodeid: str) -> Path:
    return paths.ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.replace("host_tests/", ""))


@pytest.fixture
def artifacts_dir(request) -> Path:
    """Per-test folder for logs (board serial log, broker log, cloud log, timeline): artifacts/<test id>/."""
    path = _artifacts_path(request.node.nodeid)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that wrote artifacts says where they are: an `artifacts` section in its report,
    `artifacts: artifacts/<test>/`."""
    report = yield
    if report.failed:
        path = _artifacts_path(item.nodeid)
        if path.is_dir():
            try:
                shown = os.path.relpath(path)
            except ValueError:
                shown = str(path)
            if shown.startswith(".."):
                shown = str(path)
            report.sections.append(("artifacts", f"artifacts: {shown}/"))
    return report
