"""ESP32 flash images: read and check them (what the ROM and ESP-IDF's bootloader check before they run
one, and what `rmkit flash` checks before it writes one), and build small valid ones (tests, and the
virtual board's factory flash).

Layout of an application image (ESP-IDF "App Image Format"; byte facts as esptool's bin_image.py reads
them):

    0   u8  magic 0xE9            4  u32 entry point
    1   u8  segment count         8  u8  wp_pin, 3 x u8 SPI drive strengths
    2   u8  SPI flash mode        12 u16 chip id (0 ESP32, 9 ESP32-S3, ...)
    3   u8  flash size | freq     14 u8 min rev, u16 min_rev_full, u16 max_rev_full, 4 reserved,
                                  23 u8 hash_appended (1: a SHA-256 of the image follows it)
    24  segments: u32 load address, u32 length, data
        then 0-15 pad bytes and one checksum byte (0xEF XOR every segment data byte), so that the
        image so far is a multiple of 16 bytes; then the 32-byte SHA-256 of all of that if
        hash_appended.

The first segment of an app whose load address is in the ESP32's DROM window starts with
esp_app_desc_t: magic 0xABCD5432, secure_version, 8 reserved bytes, version[32],
project_name[32], time[16], date[16], idf_ver[32], app_elf_sha256[32], ... (256 bytes in all).
MicroPython's ESP32 firmware says project_name "micropython".

A MicroPython firmware file for the ESP32 (ESP32_GENERIC-*.bin) is flash from 0x1000 on: the
second-stage bootloader at 0x1000, the partition table at 0x8000, the app at 0x10000 (the factory
partition). Chips after the ESP32-S2 put the bootloader at 0x0 (0x2000 on the C5 and P4).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Optional

IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
HEADER_LEN = 24
SEGMENT_HEADER_LEN = 8
MAX_SEGMENTS = 16
DIGEST_LEN = 32
APP_DESC_MAGIC = 0xABCD5432
APP_DESC_LEN = 256
# the ESP32's flash-mapped data window (esptool: ESP32ROM.DROM_MAP_START/END)
ESP32_DROM = (0x3F400000, 0x3F800000)
ESP32_IROM = (0x400D0000, 0x40400000)

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_MAX = 0xC00
PARTITION_MAGIC = 0x50AA
PARTITION_MD5_MAGIC = 0xEBEB
APP_TYPE, DATA_TYPE = 0x00, 0x01
FACTORY_SUBTYPE, OTA0_SUBTYPE = 0x00, 0x10


@dataclass(frozen=True)
class Chip:
    image_id: int       # the chip id field of an image header
    name: str           # as esptool prints it
    esptool_arg: str    # esptool --chip
    firmware_offset: int  # where a MicroPython firmware .bin (bootloader first) goes


#: Every chip a MicroPython firmware file can be for, by the chip id in its header: where its
#: bootloader, and so the firmware file, starts in flash. (Checked against esptool's own targets by
#: the tests.)
CHIPS = {chip.image_id: chip for chip in (
    Chip(0, "ESP32", "esp32", 0x1000),
    Chip(2, "ESP32-S2", "esp32s2", 0x1000),
    Chip(9, "ESP32-S3", "esp32s3", 0x0),
    Chip(5, "ESP32-C3", "esp32c3", 0x0),
    Chip(12, "ESP32-C2", "esp32c2", 0x0),
    Chip(13, "ESP32-C6", "esp32c6", 0x0),
    Chip(20, "ESP32-C61", "esp32c61", 0x0),
    Chip(16, "ESP32-H2", "esp32h2", 0x0),
    Chip(23, "ESP32-C5", "esp32c5", 0x2000),
    Chip(18, "ESP32-P4", "esp32p4", 0x2000),
)}


class ImageError(ValueError):
    """Not a valid image; `reason` is one of magic, segments, truncated, checksum, hash, chip, desc."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Segment:
    addr: int
    offset: int   # of the data, from the start of the image
    length: int


@dataclass
class Image:
    chip_id: int
    entry: int
    flash_mode: int
    flash_size_freq: int
    segments: list = field(default_factory=list)
    hash_appended: bool = False
    checksum: int = 0           # stored
    length: int = 0             # bytes, checksum and digest included
    app_desc: Optional[dict] = None


def checksum(data, state: int = CHECKSUM_SEED) -> int:
    """The ROM's image checksum: XOR of every byte, seeded with 0xEF."""
    if not data:
        return state
    # XOR of all bytes, 8 at a time
    words = len(data) // 8
    acc = 0
    if words:
        for (word,) in struct.iter_unpack("<Q", memoryview(data)[:words * 8]):
            acc ^= word
    for shift in range(0, 64, 8):
        state ^= (acc >> shift) & 0xFF
    for byte in bytes(data[words * 8:]):
        state ^= byte
    return state


def header_chip_id(data: bytes) -> Optional[int]:
    """The chip id of an image header (bytes 12-13), or None when `data` does not start with one."""
    if len(data) < HEADER_LEN or data[0] != IMAGE_MAGIC:
        return None
    return struct.unpack_from("<H", data, 12)[0]


def read_image(buf, start: int = 0, limit: Optional[int] = None, verify: bool = True, base: int = 0) -> Image:
    """Parse the image at `start` of `buf` (bytes-like), not reading past `limit` (a partition's end);
    check its checksum and SHA-256 when `verify`. Raises ImageError as ESP-IDF's esp_image would
    refuse it. `base`: the flash address of buf[0], for the messages."""
    view = memoryview(buf)
    where = f"image at {base + start:#x}"
    end = len(view) if limit is None else min(len(view), start + limit)
    if end - start < HEADER_LEN:
        raise ImageError("truncated", f"{where} is truncated: {max(0, end - start)} bytes, "
                         f"the header alone has {HEADER_LEN}")
    magic, count, mode, size_freq, entry = struct.unpack_from("<BBBBI", view, start)
    if magic != IMAGE_MAGIC:
        raise ImageError("magic", f"{where} has invalid magic byte 0x{magic:02x}")
    chip_id = struct.unpack_from("<H", view, start + 12)[0]
    hash_appended = view[start + 23] == 1
    if count == 0 or count > MAX_SEGMENTS:
        raise ImageError("segments", f"{where} has {count} segments (1..{MAX_SEGMENTS})")
    image = Image(chip_id=chip_id, entry=entry, flash_mode=mode, flash_size_freq=size_freq,
                  hash_appended=hash_appended)
    pos = start + HEADER_LEN
    state = CHECKSUM_SEED
    for index in range(count):
        if pos + SEGMENT_HEADER_LEN > end:
            raise ImageError("truncated", f"{where} is truncated: segment {index} header "
                             f"at {base + pos:#x} is past its end ({base + end:#x})")
        addr, length = struct.unpack_from("<II", view, pos)
        pos += SEGMENT_HEADER_LEN
        if pos + length > end:
            raise ImageError("truncated", f"{where} is truncated: segment {index} "
                             f"({length} bytes at {base + pos:#x}) ends past {base + end:#x}")
        image.segments.append(Segment(addr, pos - start, length))
        if verify:
            state = checksum(view[pos:pos + length], state)
        pos += length
    pos += 15 - (pos - start) % 16          # pad so that the checksum byte ends a 16-byte block
    if pos >= end:
        raise ImageError("truncated", f"{where} is truncated: no checksum byte at {base + pos:#x}")
    image.checksum = view[pos]
    pos += 1
    if verify and state != image.checksum:
        raise ImageError("checksum", f"Checksum failed. Calculated 0x{state:02x} read 0x{image.checksum:02x}")
    if hash_appended:
        if pos + DIGEST_LEN > end:
            raise ImageError("truncated", f"{where} is truncated: its SHA-256 digest is missing")
        if verify and hashlib.sha256(view[start:pos]).digest() != bytes(view[pos:pos + DIGEST_LEN]):
            raise ImageError("hash", "Image hash failed - image is corrupt")
        pos += DIGEST_LEN
    image.length = pos - start
    image.app_desc = _find_app_desc(view, start, image)
    return image


def _find_app_desc(view, start: int, image: Image) -> Optional[dict]:
    for seg in image.segments:
        if ESP32_DROM[0] <= seg.addr < ESP32_DROM[1] or seg.addr >> 24 == 0x3C:  # 0x3C: DROM of newer chips
            if seg.length >= APP_DESC_LEN:
                return parse_app_desc(view[start + seg.offset:start + seg.offset + APP_DESC_LEN])
            return None
    return None


def _text(raw: bytes) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_app_desc(raw) -> Optional[dict]:
    """esp_app_desc_t as a dict, or None when `raw` does not start with its magic word."""
    raw = bytes(raw)
    if len(raw) < APP_DESC_LEN or struct.unpack_from("<I", raw)[0] != APP_DESC_MAGIC:
        return None
    return {"secure_version": struct.unpack_from("<I", raw, 4)[0], "version": _text(raw[16:48]),
            "project_name": _text(raw[48:80]), "time": _text(raw[80:96]), "date": _text(raw[96:112]),
            "idf_ver": _text(raw[112:144]), "app_elf_sha256": raw[144:176].hex()}


def app_desc(project_name: str, version: str, idf_ver: str = "v5.2.2", date: str = "Jan  1 2025",
             time: str = "00:00:00") -> bytes:
    """A 256-byte esp_app_desc_t."""
    def fixed(text, size):
        data = text.encode()
        if len(data) >= size:
            raise ValueError(f"{text!r} does not fit {size - 1} bytes")
        return data.ljust(size, b"\0")
    elf_sha = hashlib.sha256(f"{project_name} {version}".encode()).digest()
    return (struct.pack("<II", APP_DESC_MAGIC, 0) + bytes(8) + fixed(version, 32) + fixed(project_name, 32)
            + fixed(time, 16) + fixed(date, 16) + fixed(idf_ver, 32) + elf_sha).ljust(APP_DESC_LEN, b"\0")


def build_image(segments: list, entry: int, chip_id: int = 0, hash_appended: bool = True,
                flash_mode: int = 2, flash_size_freq: int = 0x20) -> bytes:
    """An image from [(load address, data)], data padded to 4 bytes (flash mode 2 = DIO, 0x20 = 4MB
    at 40 MHz)."""
    out = bytearray(struct.pack("<BBBBI", IMAGE_MAGIC, len(segments), flash_mode, flash_size_freq, entry))
    out += struct.pack("<BBBBHBHH4xB", 0xEE, 0, 0, 0, chip_id, 0, 0, 399, 1 if hash_appended else 0)
    state = CHECKSUM_SEED
    for addr, data in segments:
        data = bytes(data) + b"\0" * (-len(data) % 4)
        out += struct.pack("<II", addr, len(data)) + data
        state = checksum(data, state)
    out += b"\0" * (15 - len(out) % 16)
    out.append(state)
    if hash_appended:
        out += hashlib.sha256(out).digest()
    return bytes(out)


@dataclass(frozen=True)
class Partition:
    type: int
    subtype: int
    offset: int
    size: int
    label: str


#: MicroPython's ESP32_GENERIC partition table (partitions-4MiB.csv): nvs, phy_init, factory, vfs
MICROPYTHON_PARTITIONS = (
    Partition(DATA_TYPE, 0x02, 0x9000, 0x6000, "nvs"),
    Partition(DATA_TYPE, 0x01, 0xF000, 0x1000, "phy_init"),
    Partition(APP_TYPE, FACTORY_SUBTYPE, 0x10000, 0x1F0000, "factory"),
    Partition(DATA_TYPE, 0x81, 0x200000, 0x200000, "vfs"),
)


def partition_table(parts=MICROPYTHON_PARTITIONS) -> bytes:
    """The binary partition table: 32-byte entries, then the MD5 entry, then 0xFF."""
    entries = b"".join(struct.pack("<HBBII16sI", PARTITION_MAGIC, p.type, p.subtype, p.offset, p.size,
                                   p.label.encode(), 0) for p in parts)
    md5 = struct.pack("<H", PARTITION_MD5_MAGIC) + b"\xff" * 14 + hashlib.md5(entries).digest()
    return (entries + md5).ljust(PARTITION_TABLE_MAX, b"\xff")


def read_partition_table(raw) -> list:
    """Partitions of a binary table; ImageError("magic"/"checksum") as ESP-IDF's esp_partition_table_verify."""
    raw = bytes(raw)
    parts = []
    for index in range(len(raw) // 32):
        entry = raw[index * 32:index * 32 + 32]
        magic = struct.unpack_from("<H", entry)[0]
        if magic == PARTITION_MAGIC:
            _, ptype, subtype, offset, size, label, _ = struct.unpack("<HBBII16sI", entry)
            parts.append(Partition(ptype, subtype, offset, size, _text(label)))
        elif magic == PARTITION_MD5_MAGIC:
            if hashlib.md5(raw[:index * 32]).digest() != entry[16:]:
                raise ImageError("checksum", "Incorrect MD5 checksum")
            break
        elif magic == 0xFFFF and parts:
            break
        else:
            raise ImageError("magic", f"partition {index} invalid magic number 0x{magic:x}")
    if not parts:
        raise ImageError("magic", "partition 0 invalid magic number 0xffff")
    return parts


def boot_partition(parts: list) -> Optional[Partition]:
    """The app the bootloader starts without OTA data: the factory app, else the first OTA slot."""
    apps = [p for p in parts if p.type == APP_TYPE]
    for part in apps:
        if part.subtype == FACTORY_SUBTYPE:
            return part
    ota = sorted((p for p in apps if OTA0_SUBTYPE <= p.subtype < 0x20), key=lambda p: p.subtype)
    return ota[0] if ota else None


def build_bootloader(chip_id: int = 0) -> bytes:
    """A small, valid second-stage bootloader image: what the ROM loads from 0x1000 (it is never run)."""
    code = b"\x36\x41\x00" + b"\x00" * 1021    # an IRAM segment: `entry a1, 32` and zeros
    data = bytes([0x50]) + bytes(79)           # esp_bootloader_desc_t magic, no details
    return build_image([(0x3FFF0030, data), (0x40078000, code)], entry=0x40078000, chip_id=chip_id,
                       hash_appended=True)


def build_app(project_name: str = "micropython", version: str = "v1.26.0", size: int = 64 * 1024,
              chip_id: int = 0, seed: int = 1, hash_appended: bool = True) -> bytes:
    """A valid app image of about `size` bytes: a DROM segment starting with esp_app_desc_t, an IROM
    segment, and a DRAM and an IRAM segment, laid out as ESP-IDF's 64 KiB MMU pages want them. The
    filler compresses about as MicroPython's firmware does (2:3)."""
    body = max(size - 0x200, 0x1000)
    rng = hashlib.sha256(f"{seed}".encode()).digest()
    filler = bytearray()
    block = 0
    while len(filler) < body:      # 64 random bytes, then 32 bytes of a repeated pattern
        filler += hashlib.sha512(rng + block.to_bytes(4, "little")).digest() + bytes([block & 0xFF]) * 32
        block += 1
    filler = bytes(filler[:body])
    drom = app_desc(project_name, version) + filler[:body // 3]
    irom = filler[body // 3:]
    segments = [(0x3F400020, drom), (0x3FFB0000, b"\x00" * 256), (0x40080000, b"\x36\x41\x00\x00" * 64),
                (0x400D0020, irom)]
    return _layout_app(segments, chip_id, hash_appended)


def _layout_app(segments, chip_id, hash_appended) -> bytes:
    # flash-mapped segments must sit at file offset == load address modulo 64 KiB, as esptool's
    # elf2image lays them out; RAM segments fill the gaps
    flash = [(a, d) for a, d in segments if ESP32_DROM[0] <= a < ESP32_DROM[1] or ESP32_IROM[0] <= a < ESP32_IROM[1]]
    ram = [(a, bytes(d)) for a, d in segments if (a, d) not in flash]
    out = []
    pos = HEADER_LEN
    for addr, data in flash:
        gap = (addr - SEGMENT_HEADER_LEN - pos) % 0x10000
        if gap:
            if gap < SEGMENT_HEADER_LEN:
                gap += 0x10000
            pad = gap - SEGMENT_HEADER_LEN
            if ram and len(ram[0][1]) >= pad:
                a, d = ram[0]
                out.append((a, d[:pad]))
                ram[0] = (a + pad, d[pad:]) if len(d) > pad else None
                ram = [r for r in ram if r]
            else:
                out.append((0, b"\0" * pad))
            pos += gap
        data = bytes(data) + b"\0" * (-len(data) % 4)
        out.append((addr, data))
        pos += SEGMENT_HEADER_LEN + len(data)
    out += ram
    return build_image(out, entry=0x40080000, chip_id=chip_id, hash_appended=hash_appended)


def build_firmware(app: Optional[bytes] = None, chip_id: int = 0) -> bytes:
    """A firmware file as micropython.org ships ESP32_GENERIC: flash from 0x1000 on, bootloader,
    partition table at 0x8000, app at 0x10000."""
    app = build_app(chip_id=chip_id) if app is None else app
    base = 0x1000
    out = bytearray(b"\xff" * (0x10000 - base))
    boot = build_bootloader(chip_id)
    out[0:len(boot)] = boot
    out[PARTITION_TABLE_OFFSET - base:PARTITION_TABLE_OFFSET - base + PARTITION_TABLE_MAX] = partition_table()
    return bytes(out) + app


def check_firmware(data: bytes) -> tuple:
    """(Chip, app Image or None) of a firmware file that starts with a bootloader, as `rmkit flash`
    writes it; ImageError when it is not an image, is truncated or corrupt. The app is found through
    the partition table when the file carries one (an ESP32/ESP32-S2 file: table at file offset
    0x7000), and checked whole."""
    chip_id = header_chip_id(data)
    if chip_id is None:
        shown = data[:4].hex() or "empty"
        raise ImageError("magic", f"it does not start with an ESP image header (magic 0xE9; it starts {shown})")
    chip = CHIPS.get(chip_id)
    if chip is None:
        raise ImageError("chip", f"its header names chip id {chip_id}, which is no chip this tool knows")
    first = read_image(data, base=chip.firmware_offset)
    table_at = PARTITION_TABLE_OFFSET - chip.firmware_offset
    if len(data) <= table_at or data[table_at:table_at + 2] == b"\xff\xff":
        if len(data) > table_at and first.length < table_at:
            return chip, None   # a bootloader and nothing else: not truncated, just short
        return chip, first if first.app_desc else None
    try:
        parts = read_partition_table(data[table_at:table_at + PARTITION_TABLE_MAX])
    except ImageError as exc:
        raise ImageError(exc.reason, f"its partition table at {PARTITION_TABLE_OFFSET:#x} is invalid: {exc}") from None
    part = boot_partition(parts)
    if part is None:
        return chip, None
    app_at = part.offset - chip.firmware_offset
    if len(data) <= app_at:
        raise ImageError("truncated", f"it ends at {chip.firmware_offset + len(data):#x}, before its app at "
                         f"{part.offset:#x}")
    try:
        app = read_image(data, app_at, part.size, base=chip.firmware_offset)
    except ImageError as exc:
        raise ImageError(exc.reason, f"its app: {exc}") from None
    return chip, app
