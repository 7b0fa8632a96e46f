"""`rmkit vboard` / `rmkit repl` as a developer uses them: start a board, connect with the printed
mpremote line, open a REPL, Ctrl-C; bad input gives one clear line and a non-zero exit."""

import json
import os
import threading
import re
import shlex
import signal
import socket
import subprocess
import time

import pytest

from support.paths import REPO_ROOT, VENV_BIN
from support.wait import wait_until

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

RMKIT = str(VENV_BIN / "rmkit")


@pytest.fixture
def cli_env(tmp_path):
    """Runtime records in the test's own folder, so a developer's `make vboard` is never touched."""
    return dict(os.environ, RMKIT_RUNTIME_DIR=str(tmp_path / "run"))


def child_pids(pid: int) -> set:
    pids = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def read_until(proc, marker: str, timeout: float = 20.0) -> str:
    text = ""
    deadline = time.monotonic() + timeout
    while marker not in text:
        assert time.monotonic() < deadline, f"no {marker!r} from rmkit vboard; got:\n{text}"
        line = proc.stdout.readline()
        assert line, f"rmkit vboard exited ({proc.poll()}) before {marker!r}; got:\n{text}"
        text += line
    return text


def test_vboard_cli_connect_repl_and_ctrl_c(tmp_path, artifacts_dir, cli_env):
    log = artifacts_dir / "cli.serial.log"
    proc = subprocess.Popen([RMKIT, "vboard", "--name", "clibrd", "--flash", str(tmp_path / "flash"),
                             "--pty", str(tmp_path / "clibrd.pty"), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    try:
        banner = read_until(proc, "Ctrl-C stops the board.")
        mac = re.search(r"MAC ([0-9a-f:]{17})", banner).group(1)
        exec_line = next(line for line in banner.splitlines() if "mpremote connect socket://" in line)
        before = log.stat().st_size
        out = subprocess.run(shlex.split(exec_line), capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == mac
        # the line ends with `+ reset`: wait for the board to be back at its REPL before typing there
        wait_until(lambda: re.search(rb"rst:0xc.*>>> ", log.read_bytes()[before:], re.S), 15,
                   what="the board to come back after the exec line's reset")

        record = json.loads((tmp_path / "run" / "clibrd.json").read_text())
        assert record["pid"] == proc.pid and record["mac"] == mac

        repl = subprocess.Popen([RMKIT, "repl", "--name", "clibrd"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=cli_env)
        try:
            assert repl.stdout.readline().startswith(b"Connected to")  # its ready line: connected to the board
            repl.stdin.write(b"\rprint(6 * 7)\r")
            repl.stdin.flush()
            wait_until(lambda: b"\n42" in log.read_bytes(), 10, what="the REPL line to run")
            repl.stdin.write(b"\x1d")  # Ctrl-] quits
            repl.stdin.flush()
            repl_out, _ = repl.communicate(timeout=10)
        finally:
            if repl.poll() is None:
                repl.kill()
                repl.wait()
        assert repl.returncode == 0
        assert b"42" in repl_out

        board_pids = child_pids(proc.pid)
        assert board_pids, "rmkit vboard started no MicroPython process"
    finally:
        _stop_board(proc)
    assert proc.returncode == 0, proc.stderr.read()
    for pid in board_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (tmp_path / "run" / "clibrd.json").exists()
    assert not os.path.lexists(tmp_path / "clibrd.pty")
    assert "Traceback" not in proc.stderr.read()


def run_rmkit(cli_env, *args):
    return subprocess.run([RMKIT, *args], capture_output=True, text=True, timeout=30, env=cli_env)


def assert_one_line_error(proc, *expected):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_repl_on_unknown_board(cli_env):
    assert_one_line_error(run_rmkit(cli_env, "repl", "--name", "nosuchboard"),
                          "no virtual board named 'nosuchboard' is running")


def test_vboard_port_already_in_use(tmp_path, cli_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_rmkit(cli_env, "vboard", "--flash", str(tmp_path / "flash"), "--port", str(port))
    assert_one_line_error(proc, f"TCP port {port}", "already in use")


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"aps": [{"ssid": "home", "channel": 99}]}', "aps[0].channel must be an integer 1..14, got 99"),
    ('{"aps": [{"ssid": "home", "pasword": "typo"}]}', "unknown key 'pasword'"),
])
def test_vboard_bad_air_file(tmp_path, cli_env, content, expected):
    air = tmp_path / "air.json"
    if content is not None:
        air.write_text(content)
    proc = run_rmkit(cli_env, "vboard", "--flash", str(tmp_path / "flash"), "--air", str(air))
    assert_one_line_error(proc, str(air), expected)


def test_vboard_flash_path_is_a_file(tmp_path, cli_env):
    flash = tmp_path / "flash.bin"
    flash.write_bytes(b"\xff" * 16)
    proc = run_rmkit(cli_env, "vboard", "--flash", str(flash))
    assert_one_line_error(proc, f"flash path {flash} is a file")
    assert flash.read_bytes() == b"\xff" * 16  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "run") == ["flash.bin"]  # and nothing written


@pytest.mark.parametrize("args, expected", [
    (["--mac", "24:0a:c4:zz:00:01"], "MAC '24:0a:c4:zz:00:01'"),
    (["--heap", "lots"], "heap size 'lots'"),
    (["--softap", "localhost"], "--softap 'localhost'"),
    (["--name", "bad name"], "board name 'bad name'"),
])
def test_vboard_bad_options(tmp_path, cli_env, args, expected):
    assert_one_line_error(run_rmkit(cli_env, "vboard", "--flash", str(tmp_path / "flash"), *args), expected)


def _start_quiet_board(cli_env, name, flash):
    proc = subprocess.Popen([RMKIT, "vboard", "--name", name, "--flash", str(flash), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    read_until(proc, "Ctrl-C stops the board.")
    return proc


def _stop_board(proc):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_board_of_the_same_name_or_on_the_same_flash_is_refused_naming_the_make_knob(tmp_path, cli_env):
    flash = tmp_path / "vb1"
    first = _start_quiet_board(cli_env, "vb1", flash)
    try:
        twice = run_rmkit(cli_env, "vboard", "--name", "vb1", "--flash", str(tmp_path / "other"))
        assert_one_line_error(twice, "board vb1 is already running", "BOARD=")
        sharing = run_rmkit(cli_env, "vboard", "--name", "vb2", "--flash", str(flash))
        assert_one_line_error(sharing, f"flash {flash} is in use by board vb1", "FLASH=")
    finally:
        _stop_board(first)
    assert not (tmp_path / "other").exists()


def test_without_an_air_file_the_board_gets_a_lab_network_and_says_how_to_provision(tmp_path, cli_env):
    flash = tmp_path / "vb1"
    proc = subprocess.Popen([RMKIT, "vboard", "--name", "vb1", "--flash", str(flash), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env)
    try:
        banner = read_until(proc, "Ctrl-C stops the board.")
    finally:
        _stop_board(proc)
    air = json.loads((tmp_path / "vb1.air.json").read_text())
    passphrase = air["aps"][0]["password"]
    assert f"simulated network 'rmkit-lab', passphrase {passphrase}" in banner
    assert "no firmware on this flash yet" in banner and f"make deploy FLASH={flash}" in banner


def test_deploy_to_a_running_board_then_ctrl_d_says_how_to_provision_it_with_no_raw_repl_noise(tmp_path, cli_env):
    """The walk-through: `make vboard`, `make deploy` to its flash (through its port), Ctrl-D at its REPL. The board's
    console shows no traceback or raw-REPL byte of the deploy's mpremote session; deploy says what state it left the
    board in; when the firmware starts, make vboard prints its PoP and the `rmkit provision` line, which provisions
    it; the printed mpremote exec line leaves the firmware running (it starts again and says so again)."""
    flash = tmp_path / "dep"
    vboard = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "vboard", "BOARD=dep", f"FLASH={flash}"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", env=cli_env, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(vboard.stdout), daemon=True).start()

    def wait_for(text: str, count: int = 1, timeout: float = 30) -> str:
        def seen() -> bool:
            assert vboard.poll() is None, f"make vboard exited before {text!r} (x{count}):\n{''.join(lines)}"
            return "".join(lines).count(text) >= count

        wait_until(seen, timeout, interval=0.05, what=f"{text!r} (x{count})", detail=lambda: "".join(lines))
        return "".join(lines)

    try:
        banner = wait_for("Ctrl-C stops the board.")
        assert "no firmware on this flash yet" in banner
        deploy = subprocess.run(["make", "-s", "-o", ".venv/.installed", "deploy", f"FLASH={flash}"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120, env=cli_env)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        assert deploy.stdout.splitlines()[-1] == (
            "deploy: the board restarted MicroPython without running main.py (a soft reset from the raw REPL runs "
            "boot.py only) and waits at its REPL; the new firmware starts at the next reset: press the board's reset "
            "button, or Ctrl-D at its REPL (make repl BOARD=dep)")
        port = int(re.search(r"serial \(socket\) socket://127\.0\.0\.1:(\d+)", banner).group(1))
        with socket.create_connection(("127.0.0.1", port)) as console:
            console.sendall(b"\x04")  # Ctrl-D at the REPL
            text = wait_for("provisioning: SoftAP HTTP at")
        console_after_banner = text[len(banner):]
        for noise in ("Traceback", "ENOENT", "raw REPL", "\ufffd", "R\x01"):
            assert noise not in console_after_banner, f"{noise!r} on the board's console:\n{console_after_banner}"

        exec_line = next(line for line in banner.splitlines() if " resume exec " in line)
        assert exec_line.rstrip().endswith("+ reset"), exec_line
        ran = subprocess.run(shlex.split(exec_line), capture_output=True, text=True, timeout=30, env=cli_env)
        assert ran.returncode == 0, ran.stderr
        text = wait_for("provisioning: SoftAP HTTP at", count=2)  # the firmware runs again

        provision = [line.strip() for line in text.splitlines() if " provision --host " in line][-1]
        done = subprocess.run(shlex.split(provision), capture_output=True, text=True, timeout=60, env=cli_env)
        assert done.returncode == 0 and re.search(r"node_id [0-9A-F]{12}", done.stdout), done.stdout + done.stderr
    finally:
        os.killpg(vboard.pid, signal.SIGINT)
        try:
            vboard.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(vboard.pid, signal.SIGKILL)
            vboard.wait()
