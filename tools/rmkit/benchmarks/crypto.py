"""Benchmark (not a test): the node's own crypto on the MicroPython unix port, one JSON line out.

X25519 (rmnode.x25519: one scalar multiplication, as each Security 1 handshake does twice: the
device key pair and the shared secret) and AES-256-CTR (rmnode.aes_ctr over cryptolib ECB) per KiB,
RUNS timings each in microseconds; bench_crypto.py takes the medians.

Run (`rmkit bench` does): MICROPYPATH=firmware .venv/bin/micropython tools/rmkit/benchmarks/crypto.py
"""

import json
import os
import time

from rmnode import x25519
from rmnode.aes_ctr import AESCTR

RUNS = 20
KIB = 1024


def timed_us(action):
    started = time.ticks_us()
    action()
    return time.ticks_diff(time.ticks_us(), started)


def main():
    peer = x25519.public_key(os.urandom(32))
    x25519_us = [timed_us(lambda: x25519.shared_secret(os.urandom(32), peer)) for _ in range(RUNS)]
    stream = AESCTR(os.urandom(32), os.urandom(16))
    block = bytes(KIB)
    aes_us = [timed_us(lambda: stream.crypt(block)) for _ in range(RUNS)]
    print(json.dumps({"x25519_us": x25519_us, "aes_ctr_kib_us": aes_us}))


main()
