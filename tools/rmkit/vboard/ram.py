"""The host side of the virtual board's ESP32 RAM model: builds the preloaded library that holds the
model (esp32_ram.c, compiled on first use) and says how a board's process is started with it.

The model itself (ESP-IDF's heap, MicroPython's GC heap growing into it, mbedtls's sessions) lives in
the board's process; esp32_ram.c says what it models and where each number comes from.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from rmkit.vboard import runtime
from rmkit.vboard.errors import BoardError

log = logging.getLogger(__name__)

SHIM_SOURCE = Path(__file__).resolve().parent / "esp32_ram.c"
#: compiled into the same preload library: C stack room for the unix port's own work in threads
THREAD_STACKS_SOURCE = SHIM_SOURCE.with_name("thread_stacks.c")
#: and: a garbage collection stops the board's other threads, as the ESP32 port's GIL does
GC_WORLD_SOURCE = SHIM_SOURCE.with_name("gc_world.c")
SOURCES = (SHIM_SOURCE, THREAD_STACKS_SOURCE, GC_WORLD_SOURCE)
HEADERS = (SHIM_SOURCE.with_name("gc_world.h"),)
#: 64-bit bytes of unix-port GC heap per 100 bytes of ESP32 GC heap for the same firmware: measured
#: against a 32-bit build of the same MicroPython, 1.38-1.40 (the firmware's objects, 8-byte words and
#: 32-byte GC blocks against 4-byte words and 16-byte blocks). An average: objects differ.
HEAP_RATIO_PERCENT = 140
#: all of an ESP32's data RAM, 0x3FFAE000-0x40000000 (esp-idf components/heap/port/esp32/memory_layout.c):
#: no GC heap the model lets grow can be larger, so the unix port's heap is sized from it
ESP32_DRAM_BYTES = 0x40000000 - 0x3FFAE000
CFLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra")
LIBS = ("-ldl", "-lpthread")


def c_compiler() -> str:
    """$CC, else cc, gcc or clang from PATH; BoardError in one line naming what to install."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate
    raise BoardError("the virtual board's RAM model is C compiled on first use and there is no C compiler: "
                     "install gcc (Debian/Ubuntu: apt-get install gcc) or set CC")


def shim_library() -> Path:
    """The compiled model: built once per version of esp32_ram.c into the runtime dir and shared by
    every board, like the simulator's .mpy files."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in (*SOURCES, *HEADERS))).hexdigest()[:16]
    out = runtime.runtime_dir() / "shim-cache" / digest / "esp32_ram.so"
    if out.exists():
        return out
    compiler = c_compiler()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"esp32_ram.{os.getpid()}.tmp")  # next to it: os.replace() stays on one filesystem
    argv = [*compiler.split(), *CFLAGS, "-o", str(tmp), *map(str, SOURCES), *LIBS]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BoardError(f"compiling the virtual board's RAM model with {compiler} failed: {exc}") from None
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise BoardError(f"compiling the virtual board's RAM model ({SHIM_SOURCE.name}) with {compiler} failed: {first}")
    os.replace(tmp, out)  # atomic: boards starting in parallel never load half a library
    log.info("vboard: RAM model compiled into %s", out)
    return out


def process_environment(fixed_heap: Optional[int]) -> dict:
    """What the model reads at power-on: a fixed firmware heap in 64-bit bytes ("" for the ESP32 model
    with growth) and the ratio of the 64-bit port's heap to an ESP32's."""
    return {"LD_PRELOAD": str(shim_library()), "VBOARD_HEAP": str(fixed_heap or ""),
            "VBOARD_HEAP_RATIO": str(HEAP_RATIO_PERCENT)}


def unix_heap_bytes(fixed_heap: Optional[int], simulator_allowance: int) -> int:
    """-X heapsize for a board: the simulator's own modules plus the largest firmware heap the model can
    allow (the fixed heap, or every byte of the ESP32's data RAM in 64-bit bytes), plus py/gc.c's
    tables (allocation, finaliser and weakref bits: 4 bits per 32-byte block, 1/64)."""
    firmware = fixed_heap if fixed_heap else ESP32_DRAM_BYTES * HEAP_RATIO_PERCENT // 100
    return (firmware + simulator_allowance) * 65 // 64


def heap_ratio() -> float:
    return HEAP_RATIO_PERCENT / 100


def model_constant(name: str) -> int:
    """A number esp32_ram.c defines (`#define NAME 123`), e.g. TLS_HANDSHAKE_PEAK, for reports."""
    match = re.search(rf"^#define {name} (\d+)\b", SHIM_SOURCE.read_text(), re.MULTILINE)
    if match is None:
        raise KeyError(f"{SHIM_SOURCE.name} defines no number {name}")
    return int(match.group(1))


def read_ram_log(state_dir: Path) -> str:
    """The model's event log of a running board (one line per operation of the model, every boot)."""
    try:
        return (state_dir / "ram.log").read_text()
    except FileNotFoundError:
        return ""
