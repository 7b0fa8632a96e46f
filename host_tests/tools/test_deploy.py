"""rmkit deploy: the firmware onto a virtual board's flash directory or onto a board over its serial
port (here: a virtual board's pty or socket:// URL), by one code path. The board's file list and hashes
decide what is copied, files the build no longer has are removed (a .py beside its .mpy too), main.py
is written last, so an interrupted deploy leaves no main.py and the next deploy finishes it; files
that are not the firmware's are never touched. The virtual board's flash fills up as littlefs does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rmkit.errors import UserError
from rmkit.factory import write_factory_data
from rmkit.net import free_port
from rmkit.vboard.errors import BoardError
from support.paths import FIRMWARE, REPO_ROOT, VENV_BIN
from support.wait import wait_until

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

PARTITION = 2 * 1024 * 1024
BLOCK = 4096


# -- the virtual board's flash is as full as a board's -------------------------------------------------

def test_a_missing_file_is_the_same_enoent_traceback_as_on_a_board(vboard_factory, tmp_path):
    """What mpremote's `fs cp` reads back for each file it copies: no frame of the simulator's flash in it (a
    board's VFS is C), and the calls that answer it still work."""
    board = vboard_factory(flash_dir=tmp_path / "flash", run_main=False)
    with pytest.raises(BoardError) as missing:
        board.exec("import os\nos.stat('/nope.mpy')")
    traceback = str(missing.value).split("code raised on the board:\n", 1)[1]
    assert traceback.splitlines() == ["Traceback (most recent call last):", '  File "<stdin>", line 2, in <module>',
                                      "OSError: [Errno 2] ENOENT"], traceback
    out = board.exec("import os\nos.mkdir('/d')\nos.chdir('/d')\nprint(os.getcwd(), os.stat('/d')[0] & 0x4000)\n"
                     "os.chdir('/')\nopen('/d/f', 'w').close()\nos.remove('/d/f')\nos.rmdir('/d')\nprint('/d' in os.listdir('/'))")
    assert out.split() == ["/d", str(0x4000), "False"], out



def test_a_write_past_the_partition_fails_with_enospc_as_on_littlefs(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "filler.bin").write_bytes(bytes(PARTITION - 40 * BLOCK))
    board = vboard_factory(flash_dir=flash, run_main=False)
    free_blocks = int(board.exec("import os; print(os.statvfs('/')[3])"))
    assert 0 < free_blocks < 40
    out = board.exec(f"""
f = open('/x.bin', 'wb')
n = 0
try:
    while True:
        n += f.write(bytes({BLOCK}))
except OSError as e:
    print('FAILED', e.errno, n)
f.close()
""")
    assert out.split() == ["FAILED", str(errno.ENOSPC), str(free_blocks * BLOCK)]
    # what was written stays, and removing it gives the room back; small writes still work
    assert (flash / "x.bin").stat().st_size == free_blocks * BLOCK
    board.exec("import os; os.remove('/x.bin')")
    assert board.exec("f = open('/s.txt', 'w'); f.write('ok'); f.close(); print(open('/s.txt').read())").strip() == "ok"
    board.exec("import os; os.remove('/s.txt')")
    # appending counts the blocks the file has already
    (flash / "y.bin").write_bytes(bytes(free_blocks * BLOCK - 10))
    with pytest.raises(BoardError, match="OSError: 28"):
        board.exec("f = open('/y.bin', 'ab'); f.write(bytes(9)); f.write(bytes(2))")
    assert (flash / "y.bin").stat().st_size == free_blocks * BLOCK - 1


# -- helpers -----------------------------------------------------------------------------------------

def rmkit(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "rmkit"), *args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def deployed(result: subprocess.CompletedProcess) -> tuple[list[str], list[str]]:
    """(copied, removed) as the deploy's output names them."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    copied = [line.split()[2] for line in lines if line.startswith("deploy: copy ")]
    removed = [line.split()[2] for line in lines if line.startswith("deploy: remove ")]
    return copied, removed


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("rmkit deploy: ")
    return lines[0]


@pytest.fixture
def firmware(tmp_path) -> Path:
    """A copy of firmware/ that a test may change (others edit firmware/ meanwhile)."""
    copy = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return copy


def expected_files(firmware: Path) -> set[str]:
    files = {"boot.py", "main.py"}
    files |= {p.relative_to(firmware).with_suffix(".mpy").as_posix() for p in (firmware / "rmnode").rglob("*.py")}
    return files


def board_files(flash: Path) -> set[str]:
    return {p.relative_to(flash).as_posix() for p in flash.rglob("*") if p.is_file()}


def not_firmware(flash: Path) -> dict:
    """Files that are not the firmware's, as a board holds them: they must never change."""
    files = {"factory/factory.json": b'{"node_id": "N1"}', "factory/node.key.der": b"\x30\x01key",
             "settings.json": b"{}", "state.json": b'{"pending_mapping": null}', "lib/mine.py": b"x = 1\n",
             "notes.txt": b"mine", "main.mpy": b"M\x06"}
    for rel, data in files.items():
        (flash / rel).parent.mkdir(parents=True, exist_ok=True)
        (flash / rel).write_bytes(data)
    return files


def unchanged(flash: Path, files: dict) -> bool:
    return all((flash / rel).read_bytes() == data for rel, data in files.items())


# -- a virtual board's flash directory -----------------------------------------------------------------

def test_first_deploy_copies_everything_then_nothing_and_a_change_copies_one_file(firmware, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()  # a board's flash, as `make vboard` makes it
    copied, removed = deployed(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware)))
    assert set(copied) == expected_files(firmware) and removed == []
    assert copied[-1] == "main.py"  # written last: the deploy is complete once it is there
    assert board_files(flash) == expected_files(firmware)

    again = rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware))
    assert deployed(again) == ([], [])
    assert f"all {len(expected_files(firmware))} files up to date" in again.stdout

    clock = firmware / "rmnode" / "clock.py"
    clock.write_text(clock.read_text() + "\nCHANGED = 1\n")
    assert deployed(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware))) == (["rmnode/clock.mpy"], [])


def test_a_removed_source_disappears_and_stale_or_shadowing_files_in_rmnode_go_too(firmware, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    deployed(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware)))
    mine = not_firmware(flash)
    (firmware / "rmnode" / "cert.py").unlink()
    (flash / "rmnode" / "store.py").write_text("raise ImportError('the old source')\n")  # would shadow store.mpy
    (flash / "rmnode" / "old" / "deep").mkdir(parents=True)
    (flash / "rmnode" / "old" / "deep" / "gone.mpy").write_bytes(b"M")
    copied, removed = deployed(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware)))
    assert copied == [] and sorted(removed) == ["rmnode/cert.mpy", "rmnode/old/deep/gone.mpy", "rmnode/store.py"]
    assert not (flash / "rmnode" / "old").exists()
    assert board_files(flash) == expected_files(firmware) | set(mine)
    assert unchanged(flash, mine)


def test_an_interrupted_deploy_leaves_no_main_py_and_the_next_one_finishes_it(firmware, tmp_path, monkeypatch):
    from rmkit import deploy

    flash = tmp_path / "flash"
    deploy.deploy_to_flash_dir(flash, source=firmware)
    (firmware / "rmnode" / "__init__.py").write_text('VERSION = "9.9.9"\n')
    for name in ("clock.py", "config.py", "wifi.py"):
        (firmware / "rmnode" / name).write_text((firmware / "rmnode" / name).read_text() + "\nCHANGED = 1\n")
    copies = []
    real_copy = shutil.copyfile

    def copy_then_power_cut(src, dest):
        if not Path(dest).is_relative_to(flash):  # the build's own copies
            return real_copy(src, dest)
        if len(copies) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or the host losing power, between two files
        copies.append(dest)
        return real_copy(src, dest)

    monkeypatch.setattr(deploy.shutil, "copyfile", copy_then_power_cut)
    with pytest.raises(KeyboardInterrupt):
        deploy.deploy_to_flash_dir(flash, source=firmware)
    monkeypatch.undo()
    # half the new modules are there, and nothing says the firmware is complete: no main.py, so a board
    # boots to its REPL (and `make vboard` says there is no firmware) instead of mixing old and new modules
    assert len(copies) == 2 and not (flash / "main.py").exists() and (flash / "main.py.part").exists()

    result = rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware))
    copied, _ = deployed(result)
    assert "holds firmware files but no main.py: an earlier deploy did not finish; finishing it" in result.stdout
    assert len(copied) == 2 and "main.py" not in copied  # main.py was right: parked, then put back
    assert (flash / "main.py").exists() and not (flash / "main.py.part").exists()
    assert deployed(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware))) == ([], [])


def test_a_full_flash_is_refused_before_anything_is_written(firmware, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "filler.bin").write_bytes(bytes(PARTITION - 8 * BLOCK))
    line = one_error_line(rmkit("deploy", "--flash", str(flash), "--firmware", str(firmware)))
    assert re.fullmatch(r"rmkit deploy: the flash directory \S+'s filesystem is full: the firmware needs [\d.]+ KiB "
                        r"more than the [\d.]+ KiB free; remove files you no longer need \(mpremote fs ls, "
                        r"mpremote fs rm\) and deploy again", line), line
    assert board_files(flash) == {"filler.bin"}


def test_a_flash_path_that_is_a_file_is_one_line(tmp_path):
    flash = tmp_path / "flash.bin"
    flash.write_bytes(b"\xff")
    assert "is a file" in one_error_line(rmkit("deploy", "--flash", str(flash)))


def test_a_mistyped_flash_directory_is_refused_saying_how_to_make_a_new_board(tmp_path):
    """make deploy FLASH=vboards/nothre (vboards/nothere meant): no new board made behind the user's back."""
    (tmp_path / "vboards" / "nothere").mkdir(parents=True)
    typo = tmp_path / "vboards" / "nothre"
    line = one_error_line(rmkit("deploy", "--flash", str(typo)))
    assert line == (f"rmkit deploy: no virtual board's flash at {typo} (a typo?); a new board gets one when it first "
                    f"starts: make vboard BOARD=nothre FLASH={typo}, then deploy to it")
    assert not typo.exists()


# -- a board on a serial port (a virtual board's pty or socket:// URL) -------------------------------------

def test_serial_deploy_removes_the_py_files_mpremote_cp_left_and_touches_nothing_else(vboard_factory, firmware,
                                                                                      tmp_path):
    board = vboard_factory(run_main=False)
    deployed(rmkit("deploy", "--flash", str(board.flash_dir), "--firmware", str(firmware)))
    mine = not_firmware(board.flash_dir)
    # what the README's old way, `mpremote cp -r firmware/rmnode :`, leaves: sources MicroPython imports
    # before the .mpy files beside them (three of them here, to keep it quick)
    leftovers = tmp_path / "cp-r" / "rmnode"
    leftovers.mkdir(parents=True)
    for name in ("clock.py", "config.py", "wifi.py"):
        shutil.copy(firmware / "rmnode" / name, leftovers / name)
    subprocess.run([str(VENV_BIN / "mpremote"), "connect", str(board.pty_link), "resume", "fs", "cp", "-r",
                    str(leftovers), ":"], check=True, capture_output=True, timeout=120)
    assert board.exec("import rmnode.clock; print(rmnode.clock.__file__)").strip() == "rmnode/clock.py"

    result = rmkit("deploy", "--port", board.url, "--firmware", str(firmware))
    copied, removed = deployed(result)
    assert copied == [] and sorted(removed) == ["rmnode/clock.py", "rmnode/config.py", "rmnode/wifi.py"]
    assert "deploy: remove rmnode/clock.py (MicroPython would import it instead of rmnode/clock.mpy)" \
        in result.stdout.splitlines()
    assert board_files(board.flash_dir) == expected_files(firmware) | set(mine) | {"settings.json"}
    assert unchanged(board.flash_dir, mine)
    assert board.exec("import rmnode.clock; print(rmnode.clock.__file__)").strip() == "rmnode/clock.mpy"


def test_serial_deploy_of_a_change_copies_one_file_and_the_board_runs_it_after_the_soft_reset(vboard_factory,
                                                                                             firmware):
    board = vboard_factory(run_main=False)
    first = rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware))
    assert len(deployed(first)[0]) == len(expected_files(firmware))
    assert "runs MicroPython 1." in first.stdout and "soft reset" in first.stdout
    assert board.exec("import rmnode; print(rmnode.VERSION)").strip() != "9.9.9-new"  # imported now

    init = firmware / "rmnode" / "__init__.py"
    init.write_text(re.sub(r'VERSION = "[^"]*"', 'VERSION = "9.9.9-new"', init.read_text()))
    copied, removed = deployed(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware)))
    assert (copied, removed) == (["rmnode/__init__.mpy"], [])
    # the soft reset dropped the old module: the REPL imports the new one
    assert board.exec("import rmnode; print(rmnode.VERSION)").strip() == "9.9.9-new"
    assert deployed(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware))) == ([], [])


def test_a_board_that_resets_mid_deploy_is_one_line_boots_to_nothing_and_the_next_deploy_finishes(vboard_factory,
                                                                                                 firmware):
    board = vboard_factory()  # main.py runs at every boot, once there is one
    flash = board.flash_dir
    proc = subprocess.Popen([str(VENV_BIN / "rmkit"), "deploy", "--port", str(board.pty_link), "--firmware",
                             str(firmware)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def three_copied() -> bool:
        assert proc.poll() is None, proc.communicate()
        return len(list((flash / "rmnode").glob("*.mpy")) if (flash / "rmnode").is_dir() else []) >= 3

    wait_until(three_copied, 60, interval=0.01, what="three modules on the board")
    board.reset()
    out, err = proc.communicate(timeout=120)
    line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert line == (f"rmkit deploy: the board on {board.pty_link} reset or stopped answering during the deploy; "
                    "it holds no main.py until a deploy completes: deploy again to finish it")
    assert not (flash / "main.py").exists()
    assert "main.py" not in deployed(subprocess.CompletedProcess(proc.args, 0, out, ""))[0]

    result = rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware))
    copied, _ = deployed(result)
    assert "an earlier deploy did not finish; finishing it" in result.stdout and "main.py" in copied
    assert len(copied) < len(expected_files(firmware))
    assert board_files(flash) >= expected_files(firmware)
    assert deployed(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware))) == ([], [])


def test_a_board_whose_filesystem_is_full_is_one_line_and_keeps_its_firmware(vboard_factory, firmware, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "filler.bin").write_bytes(bytes(PARTITION - 8 * BLOCK))
    board = vboard_factory(flash_dir=flash, run_main=False)
    line = one_error_line(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware)))
    assert re.fullmatch(rf"rmkit deploy: the board on {re.escape(str(board.pty_link))}'s filesystem is full: the "
                        r"firmware needs [\d.]+ KiB more than the [\d.]+ KiB free; remove files you no longer need "
                        r"\(mpremote fs ls, mpremote fs rm\) and deploy again", line), line
    assert board_files(flash) == {"filler.bin", "settings.json"}


def test_a_filesystem_that_fills_up_during_the_deploy_is_one_line(vboard_factory, firmware, tmp_path, monkeypatch):
    """littlefs counts blocks its own way, so a board can fill up although the estimate said it fits."""
    from rmkit import deploy

    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "filler.bin").write_bytes(bytes(PARTITION - 12 * BLOCK))
    board = vboard_factory(flash_dir=flash, run_main=False)
    monkeypatch.setattr(deploy, "check_room", lambda *args: None)
    with pytest.raises(UserError) as failure:
        deploy.deploy_with_mpremote(str(board.pty_link), source=firmware)
    assert str(failure.value) == (f"the board on {board.pty_link}'s filesystem filled up during the deploy; it holds "
                                  "no main.py until a deploy completes: remove files you no longer need (mpremote "
                                  "fs ls, mpremote fs rm) and deploy again")
    assert not (flash / "main.py").exists()


def test_a_board_on_micropython_1_23_is_refused_before_anything_is_written(vboard_factory):
    board = vboard_factory(reported_version="1.23.0", run_main=False)
    line = one_error_line(rmkit("deploy", "--port", str(board.pty_link)))
    assert line == (f"rmkit deploy: the board on {board.pty_link} runs micropython 1.23.0; rmnode needs MicroPython "
                    "1.24.0 or newer (older ones cannot load its DER certificate and key): flash ESP32_GENERIC "
                    "1.24.0 or later from micropython.org first")
    assert board_files(board.flash_dir) == {"settings.json"}


def test_a_port_that_does_not_exist_or_where_nothing_answers_is_one_line(tmp_path):
    missing = tmp_path / "ttyUSB9"
    assert one_error_line(rmkit("deploy", "--port", str(missing))) == (
        f"rmkit deploy: there is no {missing}: plug the board in and give its port (ls /dev/ttyUSB* /dev/ttyACM*), "
        "e.g. make deploy PORT=/dev/ttyUSB0")
    url = f"socket://127.0.0.1:{free_port()}"
    assert one_error_line(rmkit("deploy", "--port", url)) == (
        f"rmkit deploy: nothing answers at {url}: start the virtual board first (make vboard) or give the URL it "
        "printed")


def test_a_busy_port_is_one_line(vboard):
    # another program holding the port as mpremote, screen or pyserial hold one: an exclusive lock
    fd = os.open(vboard.pty_link, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert one_error_line(rmkit("deploy", "--port", str(vboard.pty_link))) == (
            f"rmkit deploy: {vboard.pty_link} is busy: another program has it open (a REPL, screen, another "
            "mpremote?); close it and deploy again")
    finally:
        os.close(fd)
    assert not (vboard.flash_dir / "main.py").exists()


def test_deploy_to_the_flash_of_a_running_board_goes_through_its_port(vboard_factory, firmware, tmp_path):
    """make deploy FLASH= while make vboard runs on that flash: through the board's pty, so it is stopped,
    checked and soft reset like any board."""
    from rmkit.vboard import runtime

    env = {"RMKIT_RUNTIME_DIR": str(tmp_path / "run")}
    saved = os.environ.get("RMKIT_RUNTIME_DIR")
    os.environ.update(env)  # runtime.record_board writes where the child process will look
    try:
        board = vboard_factory(run_main=False)
        runtime.record_board(board)
    finally:
        if saved is None:
            del os.environ["RMKIT_RUNTIME_DIR"]
        else:
            os.environ["RMKIT_RUNTIME_DIR"] = saved
    result = rmkit("deploy", "--flash", str(board.flash_dir), "--firmware", str(firmware), env=env)
    assert f"deploy: board {board.name} runs on {board.flash_dir}: deploying through its port" in result.stdout
    assert "runs MicroPython 1." in result.stdout and "soft reset" in result.stdout
    assert set(deployed(result)[0]) == expected_files(firmware)


def test_a_path_that_is_not_a_serial_port_is_one_line(tmp_path):
    assert one_error_line(rmkit("deploy", "--port", str(tmp_path))) == (
        f"rmkit deploy: {tmp_path} is not a serial port: give the board's, e.g. /dev/ttyUSB0 "
        "(ls /dev/ttyUSB* /dev/ttyACM*)")


def test_a_fresh_board_with_micropythons_own_boot_py_is_not_taken_for_an_interrupted_deploy(vboard_factory,
                                                                                           firmware):
    board = vboard_factory(run_main=False)
    (board.flash_dir / "boot.py").write_text("# This file is executed on every boot (including wake-boot from "
                                             "deepsleep)\n")
    result = rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware))
    assert "did not finish" not in result.stdout
    assert set(deployed(result)[0]) == expected_files(firmware)


# The last commit whose firmware had four modules under their earlier names; the current names say what each
# runs or serves (README, Layout). A board deployed from then holds these .mpy files.
EARLIER_NAMES_COMMIT = "bfbefa655d658a11a94fe0bab07a33218911fbb8"
EARLIER_NAMES = {"rmnode/node_prov.mpy", "rmnode/prov.mpy", "rmnode/node_online.mpy", "rmnode/online.mpy"}


def test_the_firmware_deploys_over_an_earlier_one_whose_modules_had_other_names(vboard_factory, firmware, pki,
                                                                                tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", EARLIER_NAMES_COMMIT,
                              "firmware"], capture_output=True, timeout=60)
    assert archive.returncode == 0, ("this test reads the earlier firmware from the repository's history (a git "
                                     f"clone, not an export): {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(earlier)], input=archive.stdout, check=True, timeout=60)
    board = vboard_factory()  # runs main.py at every boot, once there is one
    write_factory_data(board.flash_dir, pki, pop="abcd1234")
    factory = {p for p in board_files(board.flash_dir) if p.startswith("factory/")}

    deployed(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(earlier / "firmware")))
    assert EARLIER_NAMES <= board_files(board.flash_dir)
    since = board.log_offset()
    board.reset()
    board.wait_for_log(r"node: state: provisioning", since=since, timeout=30)  # the earlier node runs

    copied, removed = deployed(rmkit("deploy", "--port", str(board.pty_link), "--firmware", str(firmware)))
    assert EARLIER_NAMES <= set(removed) and {"rmnode/prov_phase.mpy", "rmnode/prov_endpoints.mpy"} <= set(copied)
    assert board_files(board.flash_dir) - {"settings.json"} == expected_files(firmware) | factory
    since = board.log_offset()
    board.reset()
    board.wait_for_log(r"node: state: provisioning", since=since, timeout=30)  # the current node
    assert "Traceback" not in board.read_log(since)
