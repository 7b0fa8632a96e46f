"""Deploy over the serial port, timed: our deploy (rmkit.deploy, the one code path `make deploy PORT=`
takes) of the whole firmware onto an erased virtual board and then of a one-file change, beside
`mpremote fs cp -r` of the same built tree (boot.py, main.py, rmnode/) onto an erased board and again
after the same change (mpremote skips files whose SHA-256 the board already holds).

The one-file change is made on the board's side: one module on its flash gets other contents, so the
build stays the repository's (firmware/ is never touched; its build in build/firmware is cached as
for `make deploy`) and both tools find exactly that file to copy. All over the board's pty, its UART
paced at a DevKit's 115200 baud toward the board (VirtualBoard(baud=)), so the bytes each method writes
cost what they cost through a real board's USB-serial bridge.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rmkit.deploy import BUILD_DIR, SerialPort, build, built_files, deploy
from rmkit.vboard import VirtualBoard

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
#: the module the one-file change alters on the board
CHANGED = "rmnode/online_reports.mpy"


class _ErasedBoard:
    """A virtual board on a new, empty flash directory (an erased board: it boots to the REPL)."""

    def __init__(self, workdir: Path, name: str, baud: int):
        self.flash = workdir / name
        self.board = VirtualBoard(name, self.flash, pty_link=workdir / f"{name}.pty", log_path=workdir / f"{name}.log",
                                  baud=baud)

    def __enter__(self) -> "_ErasedBoard":
        self.flash.mkdir()
        self.board.start()
        self.pty = self.board.pty_path
        return self

    def __exit__(self, *exc) -> None:
        self.board.stop()
        shutil.rmtree(self.flash, ignore_errors=True)


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _mpremote_cp(pty: str, tree: Path) -> None:
    subprocess.run([MPREMOTE, "connect", pty, "fs", "cp", "-r", "boot.py", "main.py", "rmnode", ":"], cwd=tree,
                   check=True, capture_output=True, text=True, timeout=300)


def _change_one_file(flash: Path, run: int) -> None:
    path = flash / CHANGED
    path.write_bytes(path.read_bytes() + b"bench edit %d" % run)


#: a DevKit's USB-serial bridge
BAUD = 115200


def measure(runs: int, say, baud: int = BAUD) -> dict:
    """Seconds per method (lists, one value per run) and the bytes each writes, at `baud` toward the board."""
    samples = {key: [] for key in ("rmkit_whole", "rmkit_one", "mpremote_whole", "mpremote_one")}
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-deploy-") as tmp:
        tmp = Path(tmp)
        tree = tmp / "tree"
        shutil.copytree(build(BUILD_DIR), tree, ignore=shutil.ignore_patterns("*.tmp"))
        for run in range(1, runs + 1):
            with _ErasedBoard(tmp, f"vb-deploy-{run}", baud) as erased:
                seconds, whole = _timed(lambda: deploy(SerialPort(erased.pty)))
                samples["rmkit_whole"].append(seconds)
                _change_one_file(erased.flash, run)
                seconds, one = _timed(lambda: deploy(SerialPort(erased.pty)))
                samples["rmkit_one"].append(seconds)
            if one.copied != [CHANGED]:
                raise RuntimeError(f"the one-file change deployed {one.copied}, not just {CHANGED}")
            with _ErasedBoard(tmp, f"vb-mpremote-{run}", baud) as erased:
                samples["mpremote_whole"].append(_timed(lambda: _mpremote_cp(erased.pty, tree))[0])
                _change_one_file(erased.flash, run)
                samples["mpremote_one"].append(_timed(lambda: _mpremote_cp(erased.pty, tree))[0])
            say(f"  deploy, run {run}/{runs}: ours {samples['rmkit_whole'][-1]:.2f} s whole, "
                f"{samples['rmkit_one'][-1]:.2f} s one file; mpremote cp -r {samples['mpremote_whole'][-1]:.2f} s, "
                f"{samples['mpremote_one'][-1]:.2f} s")
        files = built_files(tree)
        whole_bytes = sum(p.stat().st_size for p in files.values())
        one_bytes = files[CHANGED].stat().st_size
    return {"seconds": samples, "files": len(whole.copied), "whole_bytes": whole_bytes, "one_file_bytes": one_bytes,
            "changed": CHANGED, "baud": baud}
