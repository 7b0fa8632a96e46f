"""Benchmark (not a test): the node's crypto timed where it runs, one JSON line out (microseconds).

- x25519_us: one X25519 scalar multiplication (rmnode.x25519), as each Security 1 handshake does twice
- aes_ctr_kib_us: AES-256-CTR per KiB (rmnode.aes_ctr over cryptolib ECB), timed over AES_KIB KiB at a time
- sec1_handshake_us: the device side of a Security 1 handshake (Cmd0 + Cmd1, sec1.py), client work excluded
- p256_sign_us: one ECDSA P-256 sign() (rmnode.p256) of a 64-byte challenge like the cloud's

The same code runs on the bare unix port (crypto_timing.py) and on virtual boards at host and at ESP32
speed (esp32_crypto.py), so each figure has a counterpart measured the same way. Times are the process's
own ticks_us: on a board whose CPU is paced (rmkit.vboard.cpu) they include its pauses, i.e. the board's time.
Each operation runs once untimed, then `runs` times back to back: the pacer stops a process after the fact
(a slice of CPU late, more when a burst starts from idle), so an operation timed right after idle would run
unpaced and leave its pauses to the next one; back to back, what one leaves the next pays, and the mean of
the run is the board's time to within a slice over the run (esp32_crypto.py takes the mean). For the same
reason AES-CTR is timed over 16 KiB: 1 KiB takes less CPU than one slice.

Run: MICROPYPATH=<firmware build>:tools/rmkit/benchmarks micropython -c "import node_crypto; node_crypto.main(20, 20, 20, 20)"
"""

import json
import os
import time

# RFC 6979 A.2.5's P-256 test key: any valid scalar signs in the same time
KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
# the cloud issues 64 printable ASCII bytes (docs/protocol.md 7.1)
CHALLENGE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
KIB = 1024
AES_KIB = 16


def _timed_us(action, runs):
    """`runs` timings of action(), back to back after one untimed call."""
    action()
    times = []
    for _ in range(runs):
        started = time.ticks_us()
        action()
        times.append(time.ticks_diff(time.ticks_us(), started))
    return times


def x25519_us(runs):
    from rmnode import x25519

    peer = x25519.public_key(os.urandom(32))
    return _timed_us(lambda: x25519.shared_secret(os.urandom(32), peer), runs)


def aes_ctr_kib_us(runs):
    from rmnode.aes_ctr import AESCTR

    stream = AESCTR(os.urandom(32), os.urandom(16))
    block = bytes(AES_KIB * KIB)
    return [us / AES_KIB for us in _timed_us(lambda: stream.crypt(block), runs)]


def sec1_handshake_us(runs):
    import sec1

    prov = sec1.provisioning()
    times = []
    for session_id in range(runs + 1):  # the first one untimed, as _timed_us does
        cmd0_us, cmd1_us, _ = sec1.handshake_us(prov, session_id)
        times.append(cmd0_us + cmd1_us)
    return times[1:]


def p256_sign_us(runs):
    from rmnode import p256

    return _timed_us(lambda: p256.sign(KEY, CHALLENGE), runs)


def main(x25519_runs, aes_runs, handshake_runs, sign_runs):
    print(json.dumps({"x25519_us": x25519_us(x25519_runs), "aes_ctr_kib_us": aes_ctr_kib_us(aes_runs),
                      "sec1_handshake_us": sec1_handshake_us(handshake_runs), "p256_sign_us": p256_sign_us(sign_runs)}))
