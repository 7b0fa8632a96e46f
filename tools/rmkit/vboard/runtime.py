"""Where running boards are recorded, so `rmkit repl --name N` finds the board `rmkit vboard` started.

The runtime directory is $RMKIT_RUNTIME_DIR, else $XDG_RUNTIME_DIR/rmkit, else <repo>/build/run.
One JSON record per board name: <runtime dir>/<name>.json.
"""

import json
import os
import re
from pathlib import Path

from rmkit.vboard.errors import BoardError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REPO_ROOT = Path(__file__).resolve().parents[3]


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BoardError(f"board name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
    return name


def runtime_dir() -> Path:
    if os.environ.get("RMKIT_RUNTIME_DIR"):
        path = Path(os.environ["RMKIT_RUNTIME_DIR"])
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "rmkit"
    else:
        path = REPO_ROOT / "build" / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(name: str) -> Path:
    return runtime_dir() / f"{check_name(name)}.json"


def write_record(name: str, record: dict) -> Path:
    path = record_path(name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_record(name: str):
    """The record of a running board, or None (a record whose process is gone is removed)."""
    path = record_path(name)
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not pid_alive(record.get("pid", -1)):
        path.unlink(missing_ok=True)
        return None
    return record


def remove_record(name: str, pid: int) -> None:
    path = record_path(name)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (FileNotFoundError, json.JSONDecodeError):
        pass


def pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_board(board) -> Path:
    """Record a started board under its name, for `rmkit repl --name` (make repl BOARD=) and for the
    flash check below; `rmkit vboard` and `rmkit sandbox` both do, so their printed commands work."""
    return write_record(board.name, {
        "name": board.name, "pid": os.getpid(), "url": board.url, "rfc2217": board.rfc2217_url,
        "tcp_port": board.tcp_port,
        "pty_link": str(Path(board.pty_link).absolute()), "pty": board.pty_path, "mac": board.mac,
        "flash": str(Path(board.flash_dir).resolve()), "softap": "%s:%d" % board.softap,
        "serial_log": str(Path(board.serial_log).resolve()),
        "ble_device": board.service_name, "ble_hci": board.ble_hci,
        "state_dir": str(board.state_dir),  # `rmkit vboard-button` presses its BOOT button there
    })


def board_using_flash(flash: Path):
    """The record of a running board whose flash directory is `flash`, or None: two boards on one
    flash would overwrite each other's files (one board, one flash chip)."""
    wanted = Path(flash).resolve()
    for path in sorted(runtime_dir().glob("*.json")):
        record = read_record(path.stem) if _NAME.match(path.stem) else None
        if record and Path(record.get("flash", "")).resolve() == wanted:
            return record
    return None


def board_at_url(url: str):
    """The record of a running board one of whose serial URLs (socket:// or rfc2217://) is `url`, or None."""
    for path in sorted(runtime_dir().glob("*.json")):
        record = read_record(path.stem) if _NAME.match(path.stem) else None
        if record and url in (record.get("url"), record.get("rfc2217")):
            return record
    return None
