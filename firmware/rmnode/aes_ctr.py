"""AES-256-CTR on top of `cryptolib` ECB, with one 128-bit big-endian counter kept across calls.

This is mbedtls_aes_crypt_ctr's behaviour, which Security 1 relies on (docs/protocol.md 3.3): one keystream
per session, consumed in exchange order by both directions, so `crypt` both encrypts and
decrypts and a call may start in the middle of a keystream block.
"""

import cryptolib

try:
    from micropython import const
except ImportError:  # CPython, for host-side unit tests
    def const(value):
        return value

_MASK128 = (1 << 128) - 1
# Keystream is made and applied this many bytes at a time: a 4 KB request costs its output buffer
# plus a few chunk-sized temporaries, not several full-size copies (which ran a 110K heap out of
# memory at 3.5 KB).
_CHUNK = const(256)


class AESCTR:
    def __init__(self, key, counter_block):
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key, got %d" % len(key))
        if len(counter_block) != 16:
            raise ValueError("CTR needs a 16-byte counter block, got %d" % len(counter_block))
        self._ecb = cryptolib.aes(key, 1)  # mode 1 = ECB on MicroPython
        self._counter = int.from_bytes(counter_block, "big")
        self._left = b""  # unused keystream of the last block
        self._counters = bytearray(_CHUNK)

    def _keystream(self, size):
        """The next `size` (at most _CHUNK) bytes of keystream, rounded up to whole blocks."""
        blocks = (size + 15) // 16
        counters = self._counters
        counter = self._counter
        for i in range(blocks):
            counters[i * 16:i * 16 + 16] = counter.to_bytes(16, "big")
            counter = (counter + 1) & _MASK128
        self._counter = counter
        return self._ecb.encrypt(memoryview(counters)[:blocks * 16])

    def crypt(self, data):
        """`data` XOR the next len(data) bytes of keystream, as a new bytearray."""
        size = len(data)
        out = bytearray(size)
        source = memoryview(data)
        stream = self._left
        done = 0
        while done < size:
            if not stream:
                stream = self._keystream(min(size - done, _CHUNK))
            n = min(len(stream), size - done)
            # XOR as two big ints: about twice as fast as a byte loop on MicroPython
            x = int.from_bytes(source[done:done + n], "big") ^ int.from_bytes(stream[:n], "big")
            out[done:done + n] = x.to_bytes(n, "big")
            stream = stream[n:]
            done += n
        self._left = stream
        return out
