"""A private user + network + mount + pid namespace (no root needed): a command runs as its init, and
whatever it starts cannot outlive it.

Espressif's esp-rainmaker-cli provisions over SoftAP only at 192.168.4.1:80 (docs/protocol.md 1.1); in
such a namespace that address is on the namespace's loopback (rmkit.benchmarks.espcli_flow sets it up),
so the CLI, a sandbox and its node meet there without touching the host's network.

Outside: `run_as_init()` starts the command under `unshare` in a session of its own and stops it with
SIGTERM to that session (unshare itself ignores SIGTERM and forwards nothing), SIGKILL after a grace
period; `unshare --kill-child` and PR_SET_PDEATHSIG make the namespace die with this process, and the
kernel ends every process of a pid namespace whose init has ended.
Inside: `namespace_processes()`, `reap_orphans()` and `end_leftovers()` for the init's last check.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Optional

from rmkit.benchmarks.espcli_flow import UNSHARE
from rmkit.errors import UserError

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # a sandbox stops its board, cloud workers and broker within seconds
_PR_SET_PDEATHSIG = 1


def check_available() -> None:
    """UserError with what to do when this machine cannot give a private network namespace."""
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found: install util-linux (unshare) and iproute2 (ip)")
    probe = subprocess.run(UNSHARE + ["ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
        raise UserError(f"unprivileged user, network and pid namespaces are unavailable here ({reason}): enable them "
                        "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0; in a container, "
                        "allow unshare and mounting proc)")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the process that started it dies, whatever killed that."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_as_init(argv: list[str], env: Optional[dict] = None) -> int:
    """Run `argv` as the init of a new namespace, its output on this process's; its exit status. On Ctrl-C
    or SIGTERM here the init gets SIGTERM (and stops what it started), then SIGKILL after STOP_GRACE_S;
    KeyboardInterrupt is raised again once it has ended."""
    proc = subprocess.Popen(UNSHARE + argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the namespace's session (its init, and what did not start a session of its own), then
    SIGKILL once STOP_GRACE_S have passed; the namespace ends with its init."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            log.warning("the namespace did not stop within %.0f s of SIGTERM; killing it", STOP_GRACE_S)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# -- inside the namespace, as its init -------------------------------------------------------------------

def namespace_processes() -> list[dict]:
    """Every other process of this pid namespace (with --mount-proc, /proc shows only ours): pid, comm,
    state (Z for a zombie) and command line."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state = stat[stat.rindex(")") + 2:].split()[0]
        found.append({"pid": int(entry), "comm": comm, "state": state, "cmdline": cmdline.strip()})
    return found


def reap_orphans() -> list[dict]:
    """As the namespace's init, collect orphans that already exited (zombies are dead, not leftovers)."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append({"pid": pid, "status": status})
    return reaped


def end_leftovers() -> list[dict]:
    """SIGKILL every process still alive in the namespace; returns them (each should have been stopped by
    whoever started it, so a caller reports them)."""
    reap_orphans()
    leftovers = [proc for proc in namespace_processes() if proc["state"] != "Z"]
    for proc in leftovers:
        try:
            os.kill(proc["pid"], signal.SIGKILL)
        except OSError:
            pass
    reap_orphans()
    return leftovers
