"""Each boot's RAM figures from a virtual board's RAM model log (board.ram_log(), vboard/esp32_ram.c): the GC
heap it booted with and the largest it reached (ESP32 bytes), its growths and give-backs, and ESP-IDF's largest
free internal RAM block at boot, at its lowest and at its lowest during a TLS handshake.

The log has one line per operation of the model, `<boot> <ms> <what> <tag> <bytes> #<handle> gc=<GC total>
largest=<largest free block> free=<free total>`, the figures as they are after it. A node's provisioning and
online phases are separate boots (it reboots into station mode), so each phase's figures are its boot's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_LINE = re.compile(r"^(?P<boot>\d+) \d+ (?P<what>\S+) (?P<tag>\S+) -?\d+ #-?\d+ gc=(?P<gc>\d+) "
                   r"largest=(?P<largest>\d+) free=(?P<free>\d+)$")
#: mbedtls_ssl_setup() takes the input buffer first; the handshake's parameters go when it is over
#: (esp32_ram.c charges them under these tags)
TLS_START, TLS_HANDSHAKE_OVER = ("malloc", "tls_in"), ("free", "tls_handshake")


@dataclass
class BootRam:
    boot: int
    gc_at_boot: int                  # GC heap total once the simulator is up (ESP32 bytes)
    gc_peak: int                     # the largest GC heap total in this boot
    growths: int
    givebacks: int
    refused: int                     # growths the model refused (no block large enough: MemoryError)
    largest_at_boot: int             # ESP-IDF's largest free internal RAM block
    largest_min: int
    tls_largest_min: Optional[int]   # its lowest while a TLS handshake held RAM; None: no TLS in this boot


def boots(ram_log: str) -> list[BootRam]:
    """One BootRam per boot in the log, in order."""
    lines: dict[int, list[re.Match]] = {}
    for text in ram_log.splitlines():
        match = _LINE.match(text.strip())
        if match:
            lines.setdefault(int(match["boot"]), []).append(match)
    return [_boot(number, matches) for number, matches in sorted(lines.items())]


def _boot(number: int, matches: list[re.Match]) -> BootRam:
    def count(what: str) -> int:
        return sum(1 for m in matches if m["what"] == what)

    ready = next((m for m in matches if m["what"] == "ready"), matches[0])
    return BootRam(boot=number, gc_at_boot=int(ready["gc"]), gc_peak=max(int(m["gc"]) for m in matches),
                   growths=count("grow"), givebacks=count("giveback"), refused=count("refuse"),
                   largest_at_boot=int(ready["largest"]), largest_min=min(int(m["largest"]) for m in matches),
                   tls_largest_min=_tls_largest_min(matches))


def _tls_largest_min(matches: list[re.Match]) -> Optional[int]:
    """The lowest largest-free-block from the first handshake's start until its parameters are freed."""
    during, lowest = False, None
    for m in matches:
        event = (m["what"], m["tag"])
        if event == TLS_START:
            during = True
        if during:
            lowest = int(m["largest"]) if lowest is None else min(lowest, int(m["largest"]))
            if event == TLS_HANDSHAKE_OVER:
                break
    return lowest
