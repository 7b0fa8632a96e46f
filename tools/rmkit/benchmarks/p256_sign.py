"""Benchmark (not a test): the node's P-256 signing (rmnode.p256) on the MicroPython unix port, one JSON line out.

- sign_us: RUNS timings of sign() over a 32-byte challenge, in microseconds (p256_timing.py takes the median)
- import_bytes: GC heap that importing rmnode.p256 keeps (its code and the comb table), after gc.collect(),
  rmnode and the built-in modules it uses imported first; key_import_bytes: the same for rmnode.p256_key
- table_bytes: the comb table's own share of that (a copy of the same bytes object)
- garbage_bytes: what one sign() allocates, all of it short-lived (GC disabled while it runs)
- stack_fails_at / stack_passes_at: C stack left (bytes) when sign() was called on a thread with an ESP32's
  budget (esp32_stack.py): the largest amount it failed with and the smallest it worked with

Run (`rmkit.benchmarks.p256_timing` does, with the .mpy a board gets first on MICROPYPATH):
MICROPYPATH=firmware:tools/rmkit/benchmarks .venv/bin/micropython tools/rmkit/benchmarks/p256_sign.py
"""

import gc
import hashlib  # noqa: F401 - imported before the measurement: built in on a board
import json
import time

import micropython  # noqa: F401 - as above
import rmnode  # noqa: F401 - as above

RUNS = 50
KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721  # RFC 6979 A.2.5's test key
STACK_STEP = 32


def heap_cost(action):
    gc.collect()
    before = gc.mem_alloc()
    kept = action()
    gc.collect()
    cost = gc.mem_alloc() - before
    return cost, kept


def import_module(name):
    return __import__(name, None, None, ["*"])


def garbage_of(action):
    gc.collect()
    gc.disable()
    try:
        before = gc.mem_alloc()
        action()
        return gc.mem_alloc() - before
    finally:
        gc.enable()


def stack_bounds(p256):
    """(largest C stack left that sign() failed with, smallest it passed with), each as measured when it
    was called; None where no attempt fell on that side."""
    import esp32_stack

    budget = esp32_stack.ESP32_STACK_BUDGET
    fails_at, passes_at = None, None
    for wanted in range(4096, 0, -STACK_STEP):
        def burn():
            if micropython.stack_use() < budget - wanted:
                return burn()
            left = budget - micropython.stack_use()
            gc.collect()  # a collection sign() triggers itself takes C stack too: start each try alike
            try:
                p256.sign(KEY, b"sample")
                return left, True
            except RuntimeError:  # maximum recursion depth exceeded
                return left, False

        try:
            left, passed = esp32_stack.run(burn)
        except SystemExit:
            break  # the padding itself no longer fits
        if passed:
            passes_at = left if passes_at is None else min(passes_at, left)
        else:
            fails_at = left if fails_at is None else max(fails_at, left)
            if fails_at is not None and wanted < fails_at - 512:
                break
    return fails_at, passes_at


def main():
    import_bytes, p256 = heap_cost(lambda: import_module("rmnode.p256"))
    key_import_bytes, _ = heap_cost(lambda: import_module("rmnode.p256_key"))
    table_bytes, _ = heap_cost(lambda: bytes(memoryview(p256._COMB)))
    challenge = hashlib.sha256(b"challenge").digest()
    p256.sign(KEY, challenge)  # warm: qstrs and the like
    sign_us = []
    for i in range(RUNS):
        message = bytes((i,)) + challenge[1:]
        started = time.ticks_us()
        p256.sign(KEY, message)
        sign_us.append(time.ticks_diff(time.ticks_us(), started))
    garbage_bytes = garbage_of(lambda: p256.sign(KEY, challenge))
    fails_at, passes_at = stack_bounds(p256)
    print(json.dumps({"sign_us": sign_us, "import_bytes": import_bytes, "key_import_bytes": key_import_bytes,
                      "table_bytes": table_bytes, "garbage_bytes": garbage_bytes,
                      "stack_fails_at": fails_at, "stack_passes_at": passes_at}))


main()
