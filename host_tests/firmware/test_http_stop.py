"""ProvHttpServer.stop() under CPython and the unix port: listener and open connections closed, session ended."""

import subprocess

import pytest

from rmkit.net import free_port
from support.fixtures_prov import INTERPRETERS
from support.paths import FIRMWARE, launcher


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_stop_closes_listener_connections_and_session(interpreter):
    run = subprocess.run(INTERPRETERS[interpreter] + [str(launcher("http_stop_check")), str(FIRMWARE),
                                                      str(free_port())],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    checks = dict(line.split()[1:3] for line in run.stdout.splitlines() if line.startswith("check "))
    assert checks == {"answered": "True", "session_set": "True", "running": "False", "session_closed": "True",
                      "kept_alive_connection_closed": "True", "listener_closed": "True"}
