"""The smallest GC heap at which the node still does its job, for the whole flow and for each phase
(provisioning per transport and mapping, the online phase), firmware as .mpy; and the ESP32 figures they imply.

Each try is a whole run on a fresh virtual board, seconds long, so the search is cost-aware: coarse
steps (8 KiB) first, 1 KiB steps only inside the last coarse bracket, and a try stops as soon as the
node has visibly failed (it crashed at boot, or a request got an error) instead of waiting for a
timeout. Near the edge a size counts only if it works `repeats` times in a row (scheduling moves the
peak by about 1 KiB between runs).

The virtual board is the 64-bit unix port, whose objects are bigger than on an ESP32 (32-bit words,
16-byte GC blocks instead of 32). Each try runs on a fixed heap (VirtualBoard(heap=), no growth) of that
many 64-bit bytes: a floor is what the firmware needs, not what an ESP32's growing heap would hold (the RAM
model's figures, ram_phases.py, say that). The ESP32 equivalent divides by the ratio the board's own RAM
model uses (vboard/ram.py HEAP_RATIO_PERCENT), measured with a 32-bit build of the same MicroPython
(1.38-1.40); this run does not measure it again.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rmkit.cloud_client import CloudClient
from rmkit.flow import board_transport, run_flow
from rmkit.provision.client import Provisioner
from rmkit.provision.mapping import SECRET_KEY
from rmkit.timeline import Timeline
from rmkit.vboard import ram

EMAIL, PASSWORD = "floor@example.com", "floor-password-1"
#: how a try that cannot work shows itself early: the node's main loop died, or the board never served
_BOOT_OUTCOME = r"state: provisioning|node stopped on an unexpected error"


def esp32_heap_ratio() -> float:
    """The 64-bit/32-bit heap ratio of the virtual board's RAM model (one number for model and report)."""
    return ram.heap_ratio()


@dataclass
class Floor:
    works_kib: Optional[int]    # the smallest size that worked (None: not even at the top of the range)
    fails_kib: Optional[int]    # the largest size that failed, next to it
    tries: int
    seconds: float


def coarse_then_fine(low: int, high: int, works: Callable[[int, int], bool], coarse: int = 8,
                     repeats: int = 2) -> tuple[int, int]:
    """The adjacent (fails, works) sizes in KiB, given works(high) and not works(low): bisection in `coarse`
    steps, then in 1 KiB steps inside that bracket. works(kib, repeats) must succeed `repeats` times."""
    lo, hi = low // coarse, -(-high // coarse)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if works(mid * coarse, 1):
            hi = mid
        else:
            lo = mid
    lo, hi = max(low, lo * coarse), min(high, hi * coarse)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if works(mid, repeats):
            hi = mid
        else:
            lo = mid
    return lo, hi


def search(name: str, low: int, high: int, one_try: Callable[[int], bool], say, coarse: int = 8,
           repeats: int = 2) -> Floor:
    """coarse_then_fine over `one_try`, with a progress line per try."""
    started, count = time.monotonic(), [0]

    def works(kib: int, times: int) -> bool:
        for attempt in range(times):
            count[0] += 1
            begun = time.monotonic()
            ok = one_try(kib)
            again = f" (repeat {attempt + 1}/{times})" if times > 1 else ""
            say(f"  heap floor, {name}: {kib}K{again} {'works' if ok else 'fails'} "
                f"({time.monotonic() - begun:.1f} s)")
            if not ok:
                return False
        return True

    if not works(high, 1):
        return Floor(None, high, count[0], time.monotonic() - started)
    fails, ok = coarse_then_fine(low, high, works, coarse, repeats)
    return Floor(ok, fails, count[0], time.monotonic() - started)


# -- the tries ------------------------------------------------------------------------------------

def _board_serving(stack, transport: str):
    """A fresh board that serves provisioning, or None when it failed to boot into it."""
    board = stack.add_board("vb-floor", transport=transport)
    outcome = board.wait_for_log(_BOOT_OUTCOME, timeout=30)
    return board if outcome.group(0) == "state: provisioning" else None


def flow_confirms(kib: int, transport: str = "softap") -> bool:
    """Whether the whole flow (provisioning, reboot, TLS, the node online) confirms on a `kib` KiB board, by the
    mapping the node offers by default (challenge-response). The cloud's mapping timeout is cut to 10 s: a
    flow that works confirms in about 2 s."""
    from rmkit.stack import Stack

    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp, \
            Stack(Path(tmp), heap=f"{kib}K", mapping_timeout=10) as stack:
        try:
            stack.add_user(EMAIL, PASSWORD)
            board = _board_serving(stack, transport)
            if board is None:
                return False
            return run_flow(lambda: board_transport(board), board.pop, 1, stack.ssid, stack.passphrase,
                            stack.cloud.base_url, EMAIL, PASSWORD, Timeline()).status == "confirmed"
        except Exception:  # noqa: BLE001 - an error answer or a dead node: the heap is too small
            return False


def provisions(kib: int, transport: str, mapping: str = SECRET_KEY) -> bool:
    """Whether a `kib` KiB board serving `transport` is provisioned to Connected (Security 1, the user mapping
    by `mapping`, a scan, Wi-Fi) by a client over BLE when it serves BLE, else over SoftAP. Challenge-response
    asks the Stack's cloud for the challenge and has it verify the signature."""
    from rmkit.stack import Stack

    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp, Stack(Path(tmp), heap=f"{kib}K") as stack:
        try:
            cloud = None
            if mapping != SECRET_KEY:
                stack.add_user(EMAIL, PASSWORD)
                cloud = CloudClient(stack.cloud.base_url)
                cloud.login(EMAIL, PASSWORD)
            board = _board_serving(stack, transport)
            if board is None:
                return False
            with board_transport(board, over="softap" if transport == "softap" else "ble") as client:
                Provisioner(client, sec=1, pop=board.pop, poll_interval_s=0.1).provision(
                    stack.ssid, stack.passphrase, "bench-user", str(uuid.uuid4()), scan=True, mapping=mapping,
                    cloud=cloud)
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not fit"
            return False


def online_floor(say, repeats: int = 3, low: int = 40, high: int = 120) -> Floor:
    """The online phase alone (TLS connect, config and mapping publish) with the node's resident modules,
    on the unix port (benchmarks/mqtt_heap.py: its launcher, its 1 KiB bisection)."""
    from rmkit.benchmarks import make_flash, mqtt_heap
    from rmkit.broker import Broker
    from rmkit.pki import Pki

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rmkit-bench-") as tmp:
        tmp = Path(tmp)
        pki = Pki(tmp / "pki")
        firmware = mqtt_heap.precompile(tmp / "fw")
        with Broker(pki, tmp / "broker") as broker:
            flash = make_flash(tmp / "flash", pki, mqtt_heap.NODE, broker.port, pending=("bench-user", "bench-secret"))
            say(f"  heap floor, online phase: bisecting {low}K..{high}K, {repeats} good runs per size")
            kib, _ = mqtt_heap.smallest_heap(firmware, flash, low, high, repeats, mqtt_heap.RESIDENT)
    return Floor(kib, kib - 1, 0, time.monotonic() - started)
