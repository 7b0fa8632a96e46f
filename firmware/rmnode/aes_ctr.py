"""AES-256-CTR on top of `cryptolib` ECB, with one 128-bit big-endian counter kept across calls.

This is mbedtls_aes_crypt_ctr's behaviour, which Security 1 relies on (spec 3.3): one keystream
per session, consumed in exchange order by both directions, so `crypt` both encrypts and
decrypts and a call may start in the middle of a keystream block.
"""

import cryptolib

_MASK128 = (1 << 128) - 1


class AESCTR:
    def __init__(self, key, counter_block):
        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key, got %d" % len(key))
        if len(counter_block) != 16:
            raise ValueError("CTR needs a 16-byte counter block, got %d" % len(counter_block))
        self._ecb = cryptolib.aes(key, 1)  # mode 1 = ECB on MicroPython
        self._counter = int.from_bytes(counter_block, "big")
        self._left = b""  # unused keystream of the last block

    def _keystream(self, size):
        blocks = (size + 15) // 16
        counters = bytearray(blocks * 16)
        counter = self._counter
        for i in range(blocks):
            counters[i * 16:i * 16 + 16] = counter.to_bytes(16, "big")
            counter = (counter + 1) & _MASK128
        self._counter = counter
        return self._ecb.encrypt(bytes(counters))

    def crypt(self, data):
        size = len(data)
        if not size:
            return b""
        stream = self._left
        if len(stream) < size:
            stream = stream + self._keystream(size - len(stream))
        self._left = stream[size:]
        # XOR as two big ints: about twice as fast as a byte loop on MicroPython
        x = int.from_bytes(bytes(data), "big") ^ int.from_bytes(stream[:size], "big")
        return x.to_bytes(size, "big")
