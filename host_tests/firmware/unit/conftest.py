"""The modules in this folder run under CPython and under the MicroPython unix port. In a run of a folder
(`pytest host_tests`) pytest collects none of them: host_tests/firmware/test_fw_unit.py runs each test
once per interpreter. Named on the command line (`pytest host_tests/firmware/unit/test_pb.py`), a module
runs here under CPython; modules marked "# unix-port only" are skipped (test_fw_unit.py runs them)."""

import pytest

collect_ignore_glob = ["*.py"]

UNIX_PORT_ONLY = "# unix-port only"


@pytest.fixture(autouse=True)
def _fw_tmp(tmp_path, monkeypatch):
    """fwtest.tmpdir() makes its folders under $FW_TMP."""
    monkeypatch.setenv("FW_TMP", str(tmp_path))


def pytest_collection_modifyitems(items):
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and UNIX_PORT_ONLY in (module.__doc__ or ""):
            item.add_marker(pytest.mark.skip(reason="unix-port only: run by host_tests/firmware/test_fw_unit.py"))
