"""The virtual board's chip below MicroPython: its SPI flash, the ESP32 ROM's serial download mode
(and esptool's flasher stub once esptool has uploaded it), what the ROM and the second-stage
bootloader do with the flash at boot, and how DTR/RTS reach EN and IO0.

Everything here is plain data in, bytes out: the supervisor (supervisor.py) owns the I/O and the
clock. Facts about the protocol (command numbers, packet layout, status bytes, register addresses,
eFuse bit positions) are as esptool 5 reads them (loader.py, targets/esp32.py, cmds.py); the code is
this project's own.

Download-mode protocol, as esptool speaks it: SLIP frames (0xC0 ... 0xC0, 0xDB 0xDC for 0xC0 and
0xDB 0xDD for 0xDB). A request is `u8 0, u8 op, u16 length, u32 checksum, data`; the answer is
`u8 1, u8 op, u16 length, u32 value, data, status`. Status is 4 bytes from the ROM (`0, 0, 0, 0`
or `1, error, 0, 0`) and 2 from the stub (`0, 0` or `error, 0` with errors 0xC0-0xC9). The checksum
of data-carrying requests is 0xEF XOR every payload byte.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rmkit import espimage

# ---- the SPI flash chip --------------------------------------------------------------------

FLASH_SIZE = 4 * 1024 * 1024
SECTOR = 0x1000
#: JEDEC id of the emulated part: Winbond W25Q32JV (manufacturer 0xEF, memory type 0x40, 4 MB = 0x16)
JEDEC_ID = (0xEF, 0x40, 0x16)
# a JESD216 header: "SFDP", revision 1.6, one parameter header (the basic table); the rest reads 0xFF
SFDP = b"SFDP\x06\x01\x00\xff" + b"\x00\x06\x01\x10\x80\x00\x00\xff"


def factory_flash() -> bytearray:
    """What a virtual board's flash holds before anything wrote it: MicroPython's layout (bootloader
    at 0x1000, partition table at 0x8000, an app that names itself "micropython" at 0x10000, a
    64 KiB stand-in for the real one), erased elsewhere. The filesystem partition (0x200000-) is
    the board's flash directory, not these bytes."""
    data = bytearray(b"\xff" * FLASH_SIZE)
    firmware = espimage.build_firmware(espimage.build_app(size=64 * 1024))
    data[0x1000:0x1000 + len(firmware)] = firmware
    return data


class SpiFlash:
    """The board's 4 MB NOR flash, kept in one file that survives resets, power cuts and restarts.

    Until something writes it, the file does not exist and the flash reads as factory_flash() (a
    board that came with MicroPython). Programming can only clear bits (new = old AND data), an
    erase sets whole 4 KiB sectors to 0xFF, and addresses wrap at 4 MB as on the chip.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._data: Optional[bytearray] = None
        self._fd: Optional[int] = None

    @property
    def written(self) -> bool:
        """True once anything was written or erased (the file exists)."""
        return self.path.exists()

    def _load(self) -> bytearray:
        if self._data is None:
            try:
                data = bytearray(self.path.read_bytes())
            except FileNotFoundError:
                data = factory_flash()
            else:
                data = (data + b"\xff" * FLASH_SIZE)[:FLASH_SIZE]
            self._data = data
        return self._data

    def read(self, offset: int, length: int) -> bytes:
        data = self._load()
        return b"".join(bytes(data[start:start + n]) for start, n in _spans(offset, length))

    def write(self, offset: int, payload: bytes) -> None:
        data = self._load()
        pos = 0
        for start, n in _spans(offset, len(payload)):
            old = int.from_bytes(data[start:start + n], "little")
            new = int.from_bytes(payload[pos:pos + n], "little")
            data[start:start + n] = (old & new).to_bytes(n, "little")
            self._persist(start, n)
            pos += n

    def erase(self, offset: int, length: int) -> None:
        """Erase every sector that [offset, offset+length) touches."""
        if length <= 0:
            return
        first = offset - offset % SECTOR
        last = offset + length + (-(offset + length)) % SECTOR
        data = self._load()
        for start, n in _spans(first, min(last - first, FLASH_SIZE)):
            data[start:start + n] = b"\xff" * n
            self._persist(start, n)

    def erase_all(self) -> None:
        self.erase(0, FLASH_SIZE)

    def _persist(self, start: int, n: int) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():  # first write: the whole chip, atomically
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_bytes(self._data)
                os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_RDWR)
        os.pwrite(self._fd, self._data[start:start + n], start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._data = None


def _spans(offset: int, length: int):
    offset %= FLASH_SIZE
    while length > 0:
        n = min(length, FLASH_SIZE - offset)
        yield offset, n
        length -= n
        offset = 0


# ---- boot: what the ROM and the second-stage bootloader make of the flash -----------------------

@dataclass
class Boot:
    """The outcome of a boot from flash.

    kind: "micropython" (run it), "rom" (the ROM finds no bootloader: prints `lines` again and again
    until the RTC watchdog resets the chip), "bootloader" (the bootloader finds no bootable app:
    prints `lines`, resets, again), "foreign" (a valid app, not MicroPython: the chip runs code a
    virtual board cannot).
    """
    kind: str
    lines: list
    reason: str
    app: Optional[dict] = None


def boot_from(flash: SpiFlash) -> Boot:
    if not flash.written:
        return Boot("micropython", [], "MicroPython (the factory flash)")
    # ROM: the second-stage bootloader at 0x1000
    word = struct.unpack("<I", flash.read(0x1000, 4))[0]
    if word & 0xFF != espimage.IMAGE_MAGIC:
        return Boot("rom", [f"invalid header: 0x{word:08x}"], f"no bootloader at 0x1000 (invalid header: 0x{word:08x})")
    try:
        espimage.read_image(flash.read(0x1000, 0x7000), base=0x1000)
    except espimage.ImageError as exc:
        return Boot("rom", [f"{exc}", "ets_main.c 371 "], f"the bootloader at 0x1000 is invalid: {exc}")
    # bootloader: partition table, then the factory (or first OTA) app
    try:
        parts = espimage.read_partition_table(flash.read(espimage.PARTITION_TABLE_OFFSET, espimage.PARTITION_TABLE_MAX))
    except espimage.ImageError as exc:
        return Boot("bootloader", [f"E (31) flash_parts: {exc}", "E (35) boot: Failed to verify partition table",
                                   "E (40) boot: load partition table error!"],
                    f"no valid partition table at 0x8000 ({exc})")
    part = espimage.boot_partition(parts)
    if part is None:
        return Boot("bootloader", ["E (47) boot: No bootable app partitions in the partition table"],
                    "the partition table has no app partition")
    label = "Factory app" if part.subtype == espimage.FACTORY_SUBTYPE else f"OTA app {part.label}"
    failed = [f"E (58) boot: {label} partition is not bootable",
              "E (62) boot: No bootable app partitions in the partition table"]
    raw = flash.read(part.offset, part.size)
    if raw[0] != espimage.IMAGE_MAGIC:
        why = f"image at {part.offset:#x} has invalid magic byte (nothing flashed here?)"
        return Boot("bootloader", [f"E (52) esp_image: {why}"] + failed, f"no app at {part.offset:#x} ({why})")
    try:
        image = espimage.read_image(raw, base=part.offset)
    except espimage.ImageError as exc:
        return Boot("bootloader", [f"E (52) esp_image: {exc}"] + failed, f"the app at {part.offset:#x} is invalid: {exc}")
    if image.chip_id != 0:
        why = f"mismatch chip ID, expected 0, found {image.chip_id}"
        return Boot("bootloader", [f"E (52) esp_image: {why}"] + failed, f"the app at {part.offset:#x} is not for an ESP32 ({why})")
    desc = image.app_desc
    if not desc or desc["project_name"] != "micropython":
        name = desc["project_name"] if desc else "(no app description)"
        return Boot("foreign", [], f"the app at {part.offset:#x} is {name!r}, not MicroPython", desc)
    return Boot("micropython", [], f"MicroPython {desc['version']}", desc)


# ---- DTR/RTS -> EN/IO0 ---------------------------------------------------------------------------

#: The window after EN rises in which IO0 low selects download mode. On a board the RC on EN delays
#: the strap latch by a few ms; over RFC 2217 every line change costs esptool's pyserial client at
#: least 50 ms (it polls for the server's acknowledgement), so esptool's classic sequence, which
#: pulls IO0 low one change after releasing EN, lands 50-100 ms late. (esptool's own RFC 2217
#: server, esp_rfc2217_server, replays the sequence locally for the same reason.) IO0 low at any
#: moment of the window counts; EN released with IO0 high all along boots from flash at its end.
STRAP_WINDOW_S = 0.15


class ResetLines:
    """A serial adapter's DTR and RTS (True = asserted) as the chip's EN and IO0 see them.

    circuit "uart": the two-transistor auto-reset circuit of ESP32 DevKits (EN low iff RTS and not
    DTR, IO0 low iff DTR and not RTS); IO0 counts within STRAP_WINDOW_S after EN rises.
    circuit "usb-jtag": the USB-Serial/JTAG peripheral of newer chips: reset while RTS and not DTR,
    and download boot if DTR was asserted just before the reset began (esptool's sequence passes
    (DTR,RTS) = (1,1) -> (0,1) for that).

    set() returns "reset" when the chip enters reset, "release" when it leaves it, else None.
    """

    def __init__(self, circuit: str = "uart"):
        if circuit not in ("uart", "usb-jtag"):
            raise ValueError(f"reset circuit {circuit!r} must be 'uart' or 'usb-jtag'")
        self.circuit = circuit
        self.dtr = False
        self.rts = False
        self._usb_download = False

    @property
    def in_reset(self) -> bool:
        return self.rts and not self.dtr

    @property
    def io0_low(self) -> bool:
        return self.dtr and not self.rts

    def set(self, dtr: Optional[bool] = None, rts: Optional[bool] = None) -> Optional[str]:
        was_reset, was_dtr = self.in_reset, self.dtr
        if dtr is not None:
            self.dtr = bool(dtr)
        if rts is not None:
            self.rts = bool(rts)
        if self.in_reset and not was_reset:
            self._usb_download = was_dtr
            return "reset"
        if was_reset and not self.in_reset:
            return "release"
        return None

    @property
    def usb_download(self) -> bool:
        """usb-jtag: did the reset that just ended ask for download mode?"""
        return self._usb_download


# ---- download mode ---------------------------------------------------------------------------------

CMD = {"FLASH_BEGIN": 0x02, "FLASH_DATA": 0x03, "FLASH_END": 0x04, "MEM_BEGIN": 0x05, "MEM_END": 0x06,
       "MEM_DATA": 0x07, "SYNC": 0x08, "WRITE_REG": 0x09, "READ_REG": 0x0A, "SPI_SET_PARAMS": 0x0B,
       "SPI_ATTACH": 0x0D, "READ_FLASH_SLOW": 0x0E, "CHANGE_BAUDRATE": 0x0F, "FLASH_DEFL_BEGIN": 0x10,
       "FLASH_DEFL_DATA": 0x11, "FLASH_DEFL_END": 0x12, "SPI_FLASH_MD5": 0x13, "ERASE_FLASH": 0xD0,
       "ERASE_REGION": 0xD1, "READ_FLASH": 0xD2, "RUN_USER_CODE": 0xD3}
NAMES = {op: name for name, op in CMD.items()}
STUB_ONLY = {0xD0, 0xD1, 0xD2, 0xD3}

# ROM errors (status 1, then this byte) and the stub's (this byte, then 0)
ROM_BAD_MESSAGE, ROM_CHECKSUM, ROM_FLASH_WRITE, ROM_DEFLATE = 0x05, 0x07, 0x08, 0x0B
STUB_BAD_LEN, STUB_CHECKSUM, STUB_INVALID, STUB_NOT_FLASHING, STUB_INFLATE = 0xC0, 0xC1, 0xC3, 0xC6, 0xC7
STUB_NOT_ENOUGH, STUB_TOO_MUCH = 0xC8, 0xC9

# registers esptool reads on an ESP32 (targets/esp32.py)
CHIP_MAGIC_REG, CHIP_MAGIC = 0x40001000, 0x00F01D83
EFUSE_BASE = 0x3FF5A000
APB_CTL_DATE = 0x3FF6607C
UART_CLKDIV = 0x3FF40014
RTCCALICFG1 = 0x3FF5F06C
GPIO_STRAP = 0x3FF44038
SPI_BASE = 0x3FF42000
SPI_CMD, SPI_ADDR, SPI_USR, SPI_USR1, SPI_USR2 = (SPI_BASE + off for off in (0x00, 0x04, 0x1C, 0x20, 0x24))
SPI_MISO_DLEN, SPI_W0 = SPI_BASE + 0x2C, SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
XTAL_HZ = 40_000_000
CK8M_EFUSE = 64                  # EFUSE_RD_CK8M_FREQ: with the calibration below, the ROM computes 40 MHz
RTC_CALI = XTAL_HZ * 40 // (15625 * CK8M_EFUSE)


def mac_crc8(mac: bytes) -> int:
    """CRC-8 of the eFuse MAC (reflected polynomial 0x8C, initial value 0), as the ROM checks it."""
    crc = 0
    for byte in mac:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def efuse_words(mac: bytes) -> list:
    """BLOCK0 read registers of an ESP32-D0WD-V3 (revision v3.0): dual core, 240 MHz, Wi-Fi and BT,
    ADC Vref calibrated, no flash encryption or secure boot, this MAC (and its CRC) in words 1-2."""
    words = [0] * 8
    words[1] = int.from_bytes(mac[2:6], "big")
    words[2] = mac_crc8(mac) << 16 | mac[0] << 8 | mac[1]
    words[3] = 1 << 15 | 1 << 13 | 1 << 9      # rev bit 0, CPU rating set (240 MHz), package D0WD
    words[4] = 0x0B << 8 | CK8M_EFUSE          # ADC Vref, 8M clock calibration
    words[5] = 1 << 20                         # rev bit 1
    return words


def slip(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class Loader:
    """The ROM's serial loader of one download-mode session, and esptool's stub once uploaded.

    feed(bytes) takes what the host sent and returns what the chip answers; `event` is then "run"
    (leave for the app in flash), "reboot" (a CPU reset: back into download mode, the straps being
    latched) or "ram" (jump to code loaded to RAM, which a virtual board cannot run), else None.
    """

    def __init__(self, flash: SpiFlash, mac: bytes, baud: int = 115200):
        self.flash = flash
        self.mac = bytes(mac)
        self.baud = baud
        self.stub = False
        self.event: Optional[str] = None
        self._efuse = efuse_words(self.mac)
        self._regs: dict = {}
        self._inbuf = bytearray()
        self._out = bytearray()
        self._writing: Optional[dict] = None
        self._mem: Optional[dict] = None
        self._reading: Optional[dict] = None

    def feed(self, data: bytes) -> bytes:
        buf = self._inbuf
        buf += data
        while self.event is None:
            start = buf.find(0xC0)
            if start < 0:
                buf.clear()
                break
            end = buf.find(0xC0, start + 1)
            if end < 0:
                del buf[:start]
                break
            frame = bytes(buf[start + 1:end])
            if not frame:               # out of step: this 0xC0 opens the next frame
                del buf[:end]
                continue
            del buf[:end + 1]
            self._frame(frame.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))
        if self.event is not None:
            buf.clear()
        out, self._out = bytes(self._out), bytearray()
        return out

    # ---- framing of answers ----

    def _answer(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        if self.stub:
            status = bytes([error, 0])
        else:
            status = bytes([1, error, 0, 0]) if error else bytes(4)
        body = data + status
        self._out += slip(struct.pack("<BBHI", 1, op, len(body), value) + body)

    def _fail(self, op: int, rom_error: int, stub_error: int) -> None:
        self._answer(op, error=stub_error if self.stub else rom_error)

    # ---- requests ----

    def _frame(self, frame: bytes) -> None:
        if self._reading is not None and len(frame) == 4:
            self._read_ack(struct.unpack("<I", frame)[0])
            return
        if len(frame) < 8 or frame[0] != 0:
            return  # not a request: the ROM ignores it
        _, op, size, chk = struct.unpack_from("<BBHI", frame)
        data = frame[8:]
        if size != len(data):
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return
        handler = getattr(self, "_do_" + NAMES.get(op, "unknown").lower(), None)
        if handler is None or (op in STUB_ONLY and not self.stub) or (op == 0x0E and self.stub):
            self._fail(op, ROM_BAD_MESSAGE, STUB_INVALID)
            return
        try:
            handler(op, data, chk)
        except struct.error:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)

    def _do_sync(self, op, data, chk):
        if data[:4] != b"\x07\x07\x12\x20":
            return
        value = 0 if self.stub else 0x20120707   # any non-zero value: esptool tells ROM from stub by it
        for _ in range(8):                      # esptool reads one answer and then 7 more
            self._answer(op, value)

    def _do_read_reg(self, op, data, chk):
        (addr,) = struct.unpack_from("<I", data)
        self._answer(op, self._read_reg(addr))

    def _do_write_reg(self, op, data, chk):
        for pos in range(0, len(data) - 15, 16):
            addr, value, mask, _delay = struct.unpack_from("<IIII", data, pos)
            self._regs[addr] = (self._regs.get(addr, 0) & ~mask | value & mask) & 0xFFFFFFFF
            if addr == SPI_CMD and value & SPI_CMD_USR:
                self._spi_command()
        self._answer(op)

    def _read_reg(self, addr: int) -> int:
        if addr == CHIP_MAGIC_REG:
            return CHIP_MAGIC
        if EFUSE_BASE <= addr < EFUSE_BASE + 4 * len(self._efuse):
            return self._efuse[(addr - EFUSE_BASE) // 4]
        if addr == APB_CTL_DATE:
            return 1 << 31 | 0x16042000          # bit 31: revision bit 2 (a v3 chip)
        if addr == UART_CLKDIV:
            return XTAL_HZ // max(self.baud, 1)  # the ROM auto-bauds to whatever the host uses
        if addr == RTCCALICFG1:
            return RTC_CALI << 7
        if addr == GPIO_STRAP:
            return 0x03                           # IO0 low: download boot
        return self._regs.get(addr, 0)

    def _spi_command(self) -> None:
        """SPI0 'user command' (esptool's run_spiflash_command): RDID, SFDP and status reads answer;
        everything else (write enable, reset, power down) is accepted and does nothing here."""
        command = self._regs.get(SPI_USR2, 0) & 0xFF
        usr = self._regs.get(SPI_USR, 0)
        miso_bits = (self._regs.get(SPI_MISO_DLEN, 0) & 0xFFFFFF) + 1 if usr & (1 << 28) else 0
        addr_bits = ((self._regs.get(SPI_USR1, 0) >> 26) & 0x3F) + 1 if usr & (1 << 30) else 0
        addr = self._regs.get(SPI_ADDR, 0) >> (32 - addr_bits) if addr_bits else 0
        reply = b""
        if command == 0x9F:                         # RDID
            reply = bytes(JEDEC_ID)
        elif command == 0x5A:                       # RDSFDP
            reply = (SFDP[addr:] + b"\xff" * 8)[:8]
        elif command in (0x05, 0x35, 0x15):        # status registers: all clear
            reply = b"\x00" * 4
        elif command == 0xAB:                       # release power-down: device id
            reply = bytes([JEDEC_ID[2] - 1])
        if miso_bits:
            value = int.from_bytes(reply[:4].ljust(4, b"\0"), "little")
            self._regs[SPI_W0] = value & ((1 << min(miso_bits, 32)) - 1)
        self._regs[SPI_CMD] = self._regs.get(SPI_CMD, 0) & ~SPI_CMD_USR

    def _do_spi_attach(self, op, data, chk):
        struct.unpack_from("<I", data)
        self._answer(op)

    def _do_spi_set_params(self, op, data, chk):
        struct.unpack_from("<IIIIII", data)
        self._answer(op)

    def _do_change_baudrate(self, op, data, chk):
        new, _old = struct.unpack_from("<II", data)
        self._answer(op)
        self.baud = new

    # flash writes: FLASH_BEGIN/DATA/END and the compressed FLASH_DEFL_*

    def _do_flash_begin(self, op, data, chk, deflate=False):
        size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        if len(data) >= 20 and struct.unpack_from("<I", data, 16)[0]:
            self._fail(op, ROM_BAD_MESSAGE, STUB_INVALID)   # encrypted writes: no flash encryption here
            return
        self.flash.erase(offset, size)   # the ROM erases up front; the stub as it goes, which ends the same
        self._writing = {"deflate": deflate, "offset": offset, "size": size, "block": block_size, "seq": 0,
                         "written": 0, "inflate": zlib.decompressobj() if deflate else None}
        self._answer(op)

    def _do_flash_defl_begin(self, op, data, chk):
        self._do_flash_begin(op, data, chk, deflate=True)

    def _block(self, op, data, chk, deflate) -> Optional[bytes]:
        state = self._writing
        if state is None or state["deflate"] != deflate:
            self._fail(op, ROM_BAD_MESSAGE, STUB_NOT_FLASHING)
            return None
        length, seq, _, _ = struct.unpack_from("<IIII", data)
        payload = data[16:]
        if length != len(payload):
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return None
        if espimage.checksum(payload) != chk & 0xFF:
            self._fail(op, ROM_CHECKSUM, STUB_CHECKSUM)
            return None
        if seq == state["seq"] - 1:
            self._answer(op)    # a block sent again after a lost answer: written already
            return None
        if seq != state["seq"]:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return None
        state["seq"] += 1
        return payload

    def _do_flash_data(self, op, data, chk):
        payload = self._block(op, data, chk, deflate=False)
        if payload is None:
            return
        state = self._writing
        self.flash.write(state["offset"] + (state["seq"] - 1) * state["block"], payload)
        self._answer(op)

    def _do_flash_defl_data(self, op, data, chk):
        payload = self._block(op, data, chk, deflate=True)
        if payload is None:
            return
        state = self._writing
        try:
            out = state["inflate"].decompress(payload)
        except zlib.error:
            self._writing = None
            self._fail(op, ROM_DEFLATE, STUB_INFLATE)
            return
        if state["written"] + len(out) > state["size"]:
            self._fail(op, ROM_FLASH_WRITE, STUB_TOO_MUCH)
            return
        self.flash.write(state["offset"] + state["written"], out)
        state["written"] += len(out)
        self._answer(op)

    def _do_flash_end(self, op, data, chk):
        state, self._writing = self._writing, None
        if (self.stub and state and state["deflate"] and state["size"] and not state["inflate"].eof
                and op == CMD["FLASH_DEFL_END"]):
            self._answer(op, error=STUB_NOT_ENOUGH)
            return
        (stay,) = struct.unpack_from("<I", data) if len(data) >= 4 else (1,)
        self._answer(op)
        if not stay:
            self.event = "reboot"      # a CPU reset: the ROM again, in download mode
        elif not self.stub:
            self.event = "run"         # the ROM leaves for the app in flash

    def _do_flash_defl_end(self, op, data, chk):
        self._do_flash_end(op, data, chk)

    def _do_spi_flash_md5(self, op, data, chk):
        addr, size = struct.unpack_from("<II", data)
        digest = hashlib.md5(self.flash.read(addr, size))
        self._answer(op, data=digest.digest() if self.stub else digest.hexdigest().encode())

    def _do_read_flash_slow(self, op, data, chk):
        addr, size = struct.unpack_from("<II", data)
        if size > 64:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return
        self._answer(op, data=self.flash.read(addr, size).ljust(64, b"\0"))

    # the stub's own commands

    def _do_erase_flash(self, op, data, chk):
        self.flash.erase_all()
        self._answer(op)

    def _do_erase_region(self, op, data, chk):
        addr, size = struct.unpack_from("<II", data)
        if addr % SECTOR or size % SECTOR:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return
        self.flash.erase(addr, size)
        self._answer(op)

    def _do_read_flash(self, op, data, chk):
        addr, size, block, in_flight = struct.unpack_from("<IIII", data)
        if not block or not in_flight:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return
        self._answer(op)
        payload = self.flash.read(addr, size)
        self._reading = {"data": payload, "block": block, "window": block * in_flight, "sent": 0, "acked": 0}
        self._read_ack(0)

    def _read_ack(self, acked: int) -> None:
        state = self._reading
        state["acked"] = max(state["acked"], acked)
        data, block = state["data"], state["block"]
        while state["sent"] < len(data) and state["sent"] - state["acked"] < state["window"]:
            self._out += slip(data[state["sent"]:state["sent"] + block])
            state["sent"] = min(state["sent"] + block, len(data))
        if state["acked"] >= len(data):
            self._out += slip(hashlib.md5(data).digest())
            self._reading = None

    def _do_run_user_code(self, op, data, chk):
        self.event = "run"

    # RAM: MEM_BEGIN/DATA/END, how esptool uploads its stub

    def _do_mem_begin(self, op, data, chk):
        size, _blocks, _block_size, offset = struct.unpack_from("<IIII", data)
        self._mem = {"offset": offset, "size": size, "seq": 0, "data": bytearray()}
        self._answer(op)

    def _do_mem_data(self, op, data, chk):
        length, seq, _, _ = struct.unpack_from("<IIII", data)
        payload = data[16:]
        mem = self._mem
        if mem is None or length != len(payload) or seq != mem["seq"]:
            self._fail(op, ROM_BAD_MESSAGE, STUB_BAD_LEN)
            return
        if espimage.checksum(payload) != chk & 0xFF:
            self._fail(op, ROM_CHECKSUM, STUB_CHECKSUM)
            return
        mem["data"] += payload
        mem["seq"] += 1
        self._answer(op)

    def _do_mem_end(self, op, data, chk):
        no_entry, entry = struct.unpack_from("<II", data)
        self._mem = None
        self._answer(op)
        if no_entry:
            return
        if self.stub:
            self.event = "ram"
            return
        # The uploaded code is taken for esptool's flasher stub (RAM code is never executed here):
        # it takes over the UART and greets the host.
        self.stub = True
        self._out += slip(b"OHAI")
