"""`rmkit espcli-demo` (make espcli-demo): Espressif's unmodified esp-rainmaker-cli provisions a sandbox's board
and maps it to the sandbox's user, end to end, with nothing to paste.

The CLI's SoftAP transport talks to 192.168.4.1:80 only (docs/protocol.md 1.1), so the run happens in a
private network namespace (rmkit.netns) where that address is on the namespace's loopback: a sandbox
serves its board there, and the CLI adds a profile for the sandbox's cloud, logs in with the sandbox's
user, provisions the board with its PoP and the simulated network, and waits for the mapping. Its own
output is shown as it comes and ends with its `Node ... added to your account successfully!`. Then, or
at the first failure, or on Ctrl-C, the sandbox is stopped with all it started; the namespace's init is
this module, so nothing it started can outlive it either way.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path

from rmkit import REPO_ROOT
from rmkit.benchmarks.espcli_flow import ESPCLI, SOFTAP_IP, cli_environment, softap_address_on_loopback
from rmkit.errors import UserError
from rmkit.espcli import CliRun, Secret, run_cli, shown
from rmkit.factory import USER_MAPPINGS
from rmkit.sandbox_process import SandboxEnded, SandboxProcess
from rmkit.stack import fresh_workdir

DEFAULT_WORKDIR = REPO_ROOT / "build" / "espcli-demo"
SOFTAP = f"{SOFTAP_IP}:80"
# what esp-rainmaker-cli 1.14.1 prints when the node is on the user's account (rmaker_cmd/provision.py):
# "Node added ..." after the secret-key flow's polls, "Node <id> added ..." after challenge-response
ADDED = re.compile(r"Node (\S+ )?added to your account successfully!")
PREFIX = "espcli-demo: "


def say(text: str) -> None:
    """Our own progress lines, on standard error: standard output is the CLI's."""
    print(PREFIX + text, file=sys.stderr, flush=True)


class DemoFailed(Exception):
    """A step failed; str() is one line saying which and why."""


# -- outside the namespace -------------------------------------------------------------------------------

def _cmd_espcli_demo(args: argparse.Namespace) -> int:
    from rmkit import netns

    if not ESPCLI.exists():
        raise UserError(f"{ESPCLI} is missing: run `make espcli` (make espcli-demo does it for you)")
    netns.check_available()
    workdir = fresh_workdir(Path(args.workdir).absolute())
    say(f"a private network namespace with {SOFTAP_IP} (where esp-rainmaker-cli looks for a SoftAP node) on its "
        f"loopback; logs in {workdir}")
    try:
        return netns.run_as_init([sys.executable, "-m", "rmkit.espcli_demo", "--inside", str(workdir),
                                  "--user-mapping", args.user_mapping])
    except KeyboardInterrupt:  # the namespace's init said what it stopped
        return 130


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "espcli-demo", help="Espressif's esp-rainmaker-cli maps a sandbox's board, end to end (make espcli-demo)",
        description=__doc__.split("\n\n", 1)[1].replace("\n", " "),
        epilog="Needs `make espcli` (Espressif's CLI in .venv-espcli) and unprivileged user namespaces (unshare). "
               "Exit status 0 once the CLI said the node was added to the account.")
    p.add_argument("--user-mapping", choices=USER_MAPPINGS, default="secret",
                   help="the board's user_mapping setting, which decides the CLI's flow: secret (default: "
                        "cloud_user_assoc, the node's MQTT report and the CLI's polls, ending with its `Node added "
                        "to your account successfully!`), both or ch_resp (challenge-response: the CLI says `Node "
                        "<id> added ...` before sending the Wi-Fi credentials)")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR),
                   help="where the sandbox's logs and the CLI's profile go (emptied first)")
    p.set_defaults(func=_cmd_espcli_demo)


# -- inside the namespace, as its init ---------------------------------------------------------------------

def _echo(stream: str, line: str) -> None:
    print(line, file=sys.stdout if stream == "stdout" else sys.stderr, flush=True)


def _cli(args: list[str], env: dict, stdin_text: str = "") -> CliRun:
    print("$ esp-rainmaker-cli " + " ".join(shown(args)), flush=True)
    run = run_cli(args, env, stdin_text=stdin_text, echo=_echo)
    if run.rc == "timeout":
        raise DemoFailed(f"esp-rainmaker-cli {args[0]} did not finish within 90 s")
    if isinstance(run.rc, int) and run.rc < 0:
        raise DemoFailed(f"esp-rainmaker-cli {args[0]} was killed ({signal.Signals(-run.rc).name})")
    if "[ERROR]" in run.output or "❌" in run.output:
        failed = next(line for line in run.output.splitlines() if "[ERROR]" in line or "❌" in line)
        raise DemoFailed(f"esp-rainmaker-cli {args[0]} failed: {failed.strip()}")
    return run


def provision_with_espcli(info: dict, workdir: Path) -> str:
    """The CLI's steps against a ready sandbox; the line with which it said the node is on the account."""
    env = cli_environment(workdir / "espcli")
    _cli(["profile", "add", "local", "--base-url", info["cloud_url"]], env)
    _cli(["profile", "switch", "local"], env)
    login = _cli(["login", "--user_name", info["user"], "--password", Secret(info["password"])], env)
    if "Login successful" not in login.output:
        raise DemoFailed("esp-rainmaker-cli login did not say `Login successful!`")
    # the CLI asks to press Enter once this computer is on the node's access point: it is, in here
    provision = _cli(["provision", "--pop", Secret(info["pop"]), "--ssid", info["ssid"],
                      "--passphrase", Secret(info["passphrase"]), "--no-retry"], env, stdin_text="\n")
    added = ADDED.search(provision.output)
    if added is None:
        last = provision.output.strip().splitlines()[-1:] or ["no output"]
        raise DemoFailed(f"esp-rainmaker-cli provision did not add the node to the account: {last[0]}")
    return added.group(0)


def run_inside(workdir: Path, user_mapping: str) -> int:
    from rmkit import netns

    softap_address_on_loopback()
    env = dict(os.environ, RMKIT_RUNTIME_DIR=str(workdir / "run"))  # its board's records stay in here
    sandbox = SandboxProcess([sys.executable, "-m", "rmkit", "sandbox", "--softap", SOFTAP, "--user-mapping",
                              user_mapping, "--workdir", str(workdir / "sandbox")],
                             workdir / "sandbox.out", workdir / "sandbox.err", env=env)
    failed = None
    try:
        say(f"starting a sandbox with its board at {SOFTAP} (user_mapping {user_mapping})")
        info = sandbox.start().wait_ready()
        say(f"sandbox ready: cloud {info['cloud_url']}, node {info.get('softap')}, user {info['user']}")
        provision_with_espcli(info, workdir)
    except (DemoFailed, SandboxEnded) as exc:
        failed = str(exc)
    except KeyboardInterrupt:
        failed = "interrupted"
    finally:
        if sandbox.alive is False and sandbox.proc is not None and failed is None:
            failed = f"the sandbox ended during the run: {sandbox.last_error()}"
        stopped = sandbox.stop()
        leftovers = netns.end_leftovers()
        if leftovers:
            say(f"ended {len(leftovers)} processes the sandbox left: "
                + ", ".join(f"{proc['pid']} {proc['comm']}" for proc in leftovers))
        elif not stopped and failed is None:
            failed = f"the sandbox did not say it stopped (see {sandbox.stdout_file})"
    if failed:
        say(f"{failed}; stopped the sandbox and everything it started (logs in {workdir})")
        return 1
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="(run by `rmkit espcli-demo` inside its namespace)")
    parser.add_argument("--inside", type=Path, required=True)
    parser.add_argument("--user-mapping", choices=USER_MAPPINGS, default="secret")
    args = parser.parse_args(argv)
    # pid 1 of a pid namespace ignores signals it has no handler for: SIGTERM (rmkit.netns.stop) and Ctrl-C
    # end the run like a failure, stopping everything first
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return run_inside(args.inside, args.user_mapping)


if __name__ == "__main__":
    sys.exit(main())
