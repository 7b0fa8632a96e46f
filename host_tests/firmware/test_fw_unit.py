"""Runs the firmware unit tests in host_tests/firmware/unit/ twice: under CPython (in this process) and
under the MicroPython unix port (one `micropython` process for all of them). Each test function
is its own pytest case in both runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import pytest

from support.paths import BENCHMARKS, FIRMWARE, FW_UNIT as UNIT_DIR, MICROPYTHON, SIM_DIR

UNIX_PORT_ONLY = "# unix-port only"  # marker in a module's docstring: it needs MicroPython itself

# firmware/, its CPython stand-ins, unit/ and tools/rmkit/benchmarks are on sys.path: host_tests/firmware/conftest.py


def _test_names(cpython: bool) -> list[str]:
    names = []
    for module in sorted(UNIT_DIR.glob("test_*.py")):
        source = module.read_text()
        if cpython and UNIX_PORT_ONLY in source:
            continue
        for name in re.findall(r"^def (test_\w+)\(", source, re.M):
            names.append(f"{module.stem}::{name}")
    return sorted(names)


NAMES = _test_names(cpython=False)
CPYTHON_NAMES = _test_names(cpython=True)


def _load(stem: str):
    module_name = f"fw_unit_{stem}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, UNIT_DIR / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[module_name] = module
    return sys.modules[module_name]


@pytest.mark.parametrize("name", CPYTHON_NAMES)
def test_cpython(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FW_TMP", str(tmp_path))
    stem, func = name.split("::")
    getattr(_load(stem), func)()


@pytest.fixture(scope="session")
def unix_port_results(tmp_path_factory) -> dict[str, str]:
    """Runs every unit test once on the unix port; maps `module::test` to "" (pass) or the error."""
    tmp = tmp_path_factory.mktemp("fw_unit")
    # the simulated ESP32 `network` of the virtual board, for test_wifi_sim
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:{UNIT_DIR}:{BENCHMARKS}:{SIM_DIR}", FW_TMP=str(tmp),
               VBOARD_MAC="24:0a:c4:1a:2b:3c", VBOARD_AIR=str(tmp / "air.json"))
    proc = subprocess.run([str(MICROPYTHON), str(UNIT_DIR / "run_unit.py")], env=env, cwd=str(tmp),
                          capture_output=True, text=True, timeout=300)
    (tmp / "unix_port_output.txt").write_text(proc.stdout + proc.stderr)
    results: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("PASS "):
            results[line[5:].strip()] = ""
        elif line.startswith("FAIL "):
            name, _, error = line[5:].partition(": ")
            results[name.strip()] = error or "failed"
    if not any(line.startswith("DONE ") for line in proc.stdout.splitlines()):
        results["<runner>"] = f"runner did not finish (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return results


@pytest.mark.parametrize("name", NAMES)
def test_unix_port(name, unix_port_results):
    assert "<runner>" not in unix_port_results, unix_port_results["<runner>"]
    assert name in unix_port_results, f"{name} did not run on the unix port"
    assert unix_port_results[name] == "", f"{name} failed on the unix port: {unix_port_results[name]}"


def test_every_unit_test_found_by_the_runner(unix_port_results):
    ran = {name for name in unix_port_results if not name.endswith("<import>")}
    assert ran == set(NAMES), f"runner and collector disagree: {sorted(ran ^ set(NAMES))}"
