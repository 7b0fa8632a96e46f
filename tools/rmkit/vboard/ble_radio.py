"""The virtual board's Bluetooth LE radio: a Bumble host stack on the host side.

The board's `bluetooth` module (sim/vb_bluetooth.py) cannot run Bumble (it is MicroPython), so it
talks to this radio over a local TCP socket, one JSON object a line. The radio holds the board's
GATT server in a Bumble `Device` whose `Controller` sits on a Bumble `LocalLink` (the air,
ble_link.Air). Centrals reach that air through `hci_port`: every TCP connection to it gets a fresh
Bumble `Controller` on the same link, driven over HCI (H4 framing) by whatever host connects, e.g. a
Bumble `Device` with transport `tcp-client:127.0.0.1:<hci_port>` (rmkit.vboard.ble_central). So a
central talks real ATT/GATT to the board: MTU exchange, discovery, long reads (Read Blob), prepared
writes.

What the radio does as an ESP32 (MicroPython's NimBLE binding) does:
- a characteristic or descriptor value lives in a buffer of 20 bytes unless the board enlarged it
  (`gatts_set_buffer`) or wrote a longer value itself (`gatts_write` grows it); a central's longer
  write is silently truncated to the buffer (in append mode, appended up to it);
- the ATT MTU the server offers is 23 until the board calls `config(mtu=N)`; a central's MTU
  exchange then settles on min(N, its own) and the board gets _IRQ_MTU_EXCHANGED;
- every read by a central raises _IRQ_GATTS_READ_REQUEST on the board, whose handler's return value
  (0, or an ATT error code) decides whether the read succeeds;
- every ATT request is answered as NimBLE answers it, each attribute's read and write permissions
  enforced (ble_att_server);
- a central that vanishes without disconnecting (its HCI connection closes) is dropped at its link's
  supervision timeout, and the board gets _IRQ_CENTRAL_DISCONNECT then (ble_link).

Board -> radio: {"op": "on"|"off"|"mtu"|"name"|"adv"|"reg"|"write"|"buf"|"notify"|"disc"|"rr", ...};
radio -> board: {"ev": <MicroPython IRQ number>, ...} and {"re": ...} (the reply to "reg"). Values
travel as hex.
"""

import asyncio
import importlib.util
import json
import logging
import socket
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

DEFAULT_ATTR_LEN = 20  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
DEFAULT_MTU = 23
IRQ_CENTRAL_CONNECT = 1
IRQ_CENTRAL_DISCONNECT = 2
IRQ_GATTS_WRITE = 3
IRQ_GATTS_READ_REQUEST = 4
IRQ_MTU_EXCHANGED = 21
# Seconds the board's IRQ handler may take to answer a read: NimBLE sets no limit of its own, the
# central's ATT transaction times out after 30 s (Bluetooth Core, Vol 3 Part F 3.3.3)
READ_REQUEST_TIMEOUT = 30.0


def ble_mac(base_mac: str) -> str:
    """An ESP32's BT MAC is its base (Wi-Fi station) MAC + 2."""
    value = (int(base_mac.replace(":", ""), 16) + 2) & (1 << 48) - 1
    text = f"{value:012x}"
    return ":".join(text[i:i + 2] for i in range(0, 12, 2))


class _Attr:
    __slots__ = ("value", "alloc", "append")

    def __init__(self):
        self.value = b""
        self.alloc = DEFAULT_ATTR_LEN
        self.append = False


class RadioEvent(tuple):
    """What the radio saw, for tests: a tuple ("connect", handle), ("disconnect", handle, reason),
    ("lost", handle, supervision_timeout_s), ("advertise",), ("write", handle, written, kept), ("read",
    handle) or ("mtu", mtu), with `at`, its time.monotonic()."""

    at: float

    def __new__(cls, *fields) -> "RadioEvent":
        event = super().__new__(cls, fields)
        event.at = time.monotonic()
        return event


# MicroPython's gatts_register_services flags (extmod/modbluetooth.h), as NimBLE takes them (ble_gatt.h)
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_READ_ENCRYPTED = 0x0200
FLAG_READ_AUTHENTICATED = 0x0400
FLAG_WRITE_ENCRYPTED = 0x1000
FLAG_WRITE_AUTHENTICATED = 0x2000


def attribute_permissions(flags: int, descriptor: bool):
    """Bumble permissions for an attribute MicroPython registers with `flags`, as NimBLE sets its ATT flags
    (ble_att_server enforces them): readable with FLAG_READ, writable with FLAG_WRITE or
    FLAG_WRITE_NO_RESPONSE (ble_gatts.c ble_gatts_att_flags_from_chr_flags); a characteristic's
    encryption and authentication flags too, a descriptor's none (MicroPython's
    extmod/nimble/modbluetooth_nimble.c, mp_bluetooth_gatts_register_service). Authorization flags are
    left out: nothing on the board refuses it (ble_att_server.access_error)."""
    from bumble.att import Attribute

    permissions = Attribute.Permissions(0)
    if flags & FLAG_READ:
        permissions |= Attribute.READABLE
    if flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE):
        permissions |= Attribute.WRITEABLE
    if not descriptor:
        for flag, permission in ((FLAG_READ_ENCRYPTED, Attribute.READ_REQUIRES_ENCRYPTION),
                                 (FLAG_READ_AUTHENTICATED, Attribute.READ_REQUIRES_AUTHENTICATION),
                                 (FLAG_WRITE_ENCRYPTED, Attribute.WRITE_REQUIRES_ENCRYPTION),
                                 (FLAG_WRITE_AUTHENTICATED, Attribute.WRITE_REQUIRES_AUTHENTICATION)):
            if flags & flag:
                permissions |= permission
    return permissions


class BleRadio:
    """One board's radio. start() binds 127.0.0.1 ports and runs an asyncio loop in a thread."""

    def __init__(self, name: str, base_mac: str):
        self.name = name
        self.address = ble_mac(base_mac).upper()
        self.board_port = 0
        self.hci_port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._board_socks = []
        self._link = None
        self._power: Optional[asyncio.Lock] = None  # held by each operation on the board's stack
        self._centrals = 0
        # per board session
        self._writer: Optional[asyncio.StreamWriter] = None
        self._device = None
        self._controller = None
        self._att_server = None
        self._attrs: dict = {}
        self._mtu = DEFAULT_MTU
        self._gap_name = "MPY ESP32"
        self._adv = None  # (interval_us, adv_data, resp_data, connectable) while advertising
        self._adv_data = b""
        self._resp_data = b""
        self._pending_reads: dict = {}
        self._read_id = 0
        self.events: list[RadioEvent] = []  # for tests; wait_for_event() waits for one
        self._event_added = threading.Condition()

    # ---- events (any thread) ------------------------------------------------------------------

    def _record(self, *fields) -> None:
        with self._event_added:
            self.events.append(RadioEvent(*fields))
            self._event_added.notify_all()

    def wait_for_event(self, matches: Callable[[RadioEvent], bool], timeout: float, since: int = 0) -> RadioEvent:
        """The first event from index `since` on for which `matches` is true; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._event_added:
            while True:
                found = next((event for event in self.events[since:] if matches(event)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"BLE radio {self.name}: no such event within {timeout:g} s "
                                       f"(events since: {self.events[since:][-10:]})")
                self._event_added.wait(left)

    # ---- lifecycle (any thread) ---------------------------------------------------------------

    def start(self) -> "BleRadio":
        if importlib.util.find_spec("bumble") is None:
            raise RuntimeError("Bumble is not installed (the virtual board's BLE radio needs it): run `make setup`")
        board = socket.socket()
        board.bind(("127.0.0.1", self.board_port))
        board.listen(2)
        hci = socket.socket()
        hci.bind(("127.0.0.1", self.hci_port))
        hci.listen(8)
        self.board_port, self.hci_port = board.getsockname()[1], hci.getsockname()[1]
        self._board_socks = [board, hci]
        self._thread = threading.Thread(target=self._run, name=f"ble-radio-{self.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("BLE radio did not start")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            # The board's stack goes down before the loop stops: a loop stopped in the middle of one of its
            # HCI commands leaves Bumble's host completing a wait that was cancelled (InvalidStateError,
            # logged with a traceback)
            try:
                asyncio.run_coroutine_threadsafe(self._power_off(), loop).result(5)
            except Exception:  # noqa: BLE001 - stopping goes on whatever the stack did
                log.debug("BLE radio %s: power-off at stop failed", self.name, exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for sock in self._board_socks:
            sock.close()
        self._board_socks = []

    def _run(self) -> None:
        from rmkit.vboard.ble_link import Air

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._link = Air()
        self._power = asyncio.Lock()
        board, hci = self._board_socks
        loop.run_until_complete(asyncio.start_server(self._board_session, sock=board))
        loop.run_until_complete(asyncio.start_server(self._central_session, sock=hci))
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    # ---- centrals: a fresh controller on the link per HCI connection --------------------------

    async def _central_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_central(reader, writer)
        except asyncio.CancelledError:
            writer.close()

    async def _serve_central(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from bumble.transport.common import StreamPacketSource

        from rmkit.vboard.ble_link import CentralController

        self._centrals += 1
        number = self._centrals

        class Sink:
            def on_packet(self, packet):
                if not writer.is_closing():
                    writer.write(packet)

        controller = CentralController(
            f"central-{number}", host_sink=Sink(), link=self._link,
            public_address=f"C0:00:00:00:{number >> 8 & 255:02X}:{number & 255:02X}")
        controller.scan_response_of = self._scan_response_of
        source = StreamPacketSource()
        source.set_packet_sink(controller)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                source.data_received(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            # The central's host went away without a word (a killed client, a closed laptop): no
            # LL_TERMINATE_IND goes out, as when a phone's radio goes off, and the board keeps each link until
            # its supervision timeout (ble_link)
            if controller.le_connections:
                log.info("BLE radio %s: central %d gone without disconnecting", self.name, number)
            controller.fall_silent()
            if controller in self._link.controllers:
                self._link.remove_controller(controller)
            writer.close()

    def _scan_response_of(self, address) -> Optional[bytes]:
        """The board's scan response data when `address` is the board advertising, else None."""
        if self._adv is None or self._device is None or str(address).split("/")[0].upper() != self.address:
            return None
        return self._resp_data

    # ---- the board ----------------------------------------------------------------------------

    def _send(self, message: dict) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(json.dumps(message).encode() + b"\n")

    async def _board_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_board(reader, writer)
        except asyncio.CancelledError:  # the radio stops (asyncio would log a cancelled handler)
            writer.close()

    async def _serve_board(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a new board process (power-on, reset) is a new session: the previous one's stack is gone
        if self._writer is not None:
            self._writer.close()
        await self._power_off()
        self._writer = writer
        self._attrs, self._mtu, self._adv, self._gap_name = {}, DEFAULT_MTU, None, "MPY ESP32"
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    async with self._power:  # the stack's operations one at a time (stop() powers it off)
                        await self._handle(json.loads(line))
                except Exception:  # noqa: BLE001 - a bad request must not kill the radio
                    log.exception("ble radio %s: request %r failed", self.name, line[:200])
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
                await self._power_off()
            writer.close()

    async def _handle(self, msg: dict) -> None:
        op = msg["op"]
        if op == "on":
            await self._switch_on()
        elif op == "off":
            await self._switch_off()
        elif op == "mtu":
            self._mtu = int(msg["mtu"])
            if self._device is not None:
                self._device.gatt_server.max_mtu = self._mtu
        elif op == "name":
            self._gap_name = msg["name"]
            if self._device is not None:
                self._device.name = self._gap_name
        elif op == "adv":
            await self._advertise(msg)
        elif op == "reg":
            self._send({"re": await self._register(msg["services"])})
        elif op == "write":
            attr = self._attrs.get(msg["h"])
            if attr is not None:
                attr.value = bytes.fromhex(msg["v"])
                attr.alloc = max(attr.alloc, len(attr.value))  # a local write grows the buffer
        elif op == "buf":
            attr = self._attrs.get(msg["h"])
            if attr is not None:
                attr.alloc, attr.append = int(msg["len"]), bool(msg["append"])
        elif op == "notify":
            connection = self._device and self._device.lookup_connection(msg["c"])
            attr = self._attrs.get(msg["h"])
            if connection and attr is not None:
                await self._device.gatt_server.notify_subscriber(
                    connection, self._device.gatt_server.get_attribute(msg["h"]),
                    bytes.fromhex(msg["v"]) if msg.get("v") is not None else attr.value, force=True)
        elif op == "disc":
            connection = self._device and self._device.lookup_connection(msg["c"])
            if connection:
                await connection.disconnect()
        elif op == "rr":
            future = self._pending_reads.pop(msg["id"], None)
            if future is not None and not future.done():
                future.set_result(int(msg["code"]))

    async def _power_off(self) -> None:
        async with self._power:
            await self._switch_off()

    async def _switch_on(self) -> None:
        if self._device is not None:
            return
        from bumble.device import Device
        from bumble.hci import Address
        from bumble.host import Host
        from bumble.transport.common import AsyncPipeSink

        from rmkit.vboard.ble_att_server import install
        from rmkit.vboard.ble_link import BoardController

        controller = BoardController(f"board-{self.name}", link=self._link, public_address=self.address)
        controller.on_link_lost = self._on_link_lost
        controller.on_link_timed_out = self._on_link_timed_out
        device = Device(name=self._gap_name, address=Address(self.address, Address.RANDOM_DEVICE_ADDRESS),
                        host=Host(controller, AsyncPipeSink(controller)))
        self._att_server = install(device)
        device.gatt_server.max_mtu = self._mtu
        device.on(device.EVENT_CONNECTION, self._on_connection)
        await device.power_on()
        self._controller, self._device = controller, device

    async def _switch_off(self) -> None:
        device, self._device = self._device, None
        controller, self._controller = self._controller, None
        att_server, self._att_server = self._att_server, None
        if att_server is not None:
            att_server.close()
        for future in self._pending_reads.values():
            if not future.done():
                future.set_result(0x0E)  # unlikely error: the stack went away
        self._pending_reads.clear()
        if device is None:
            return
        for connection in list(device.connections.values()):
            try:
                await connection.disconnect()
            except Exception:  # noqa: BLE001
                pass
        try:
            await device.stop_advertising()
        except Exception:  # noqa: BLE001
            pass
        await asyncio.sleep(0.02)
        if controller in self._link.controllers:
            self._link.remove_controller(controller)

    async def _advertise(self, msg: dict) -> None:
        from bumble.hci import OwnAddressType

        device = self._device
        if device is None:
            return
        if msg.get("adv") is not None:
            self._adv_data = bytes.fromhex(msg["adv"])
        if msg.get("resp") is not None:
            self._resp_data = bytes.fromhex(msg["resp"])
        if device.is_advertising:
            await device.stop_advertising()
        if msg.get("interval_us") is None:
            self._adv = None
            return
        self._adv = msg
        interval_ms = max(20.0, msg["interval_us"] / 1000.0)
        from bumble.device import AdvertisingType

        kind = (AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE if msg.get("conn", True)
                else AdvertisingType.UNDIRECTED_SCANNABLE)
        await device.start_advertising(advertising_type=kind, own_address_type=OwnAddressType.RANDOM,
                                       advertising_data=self._adv_data, scan_response_data=self._resp_data,
                                       advertising_interval_min=interval_ms, advertising_interval_max=interval_ms)
        self._record("advertise")

    async def _register(self, services: list) -> list:
        """Services as [[uuid, [[uuid, flags, [[uuid, flags], ...]], ...]], ...] -> value handles,
        per service, as MicroPython's gatts_register_services returns them."""
        from bumble.core import UUID
        from bumble.gatt import Characteristic, Descriptor, Service

        if self._device is None:
            return None
        # registering again replaces the whole database, as on the board: a fresh stack
        if self._attrs or self._device.gatt_server.services:
            await self._switch_off()
            await self._switch_on()
        device = self._device
        built, shape = [], []
        for service_uuid, characteristics in services:
            chars, kinds = [], []
            for char_uuid, flags, descriptors in characteristics:
                descs = [Descriptor(UUID(d_uuid), attribute_permissions(d_flags, descriptor=True), self._value())
                         for d_uuid, d_flags in descriptors]
                char = Characteristic(UUID(char_uuid), flags & 0xFF, attribute_permissions(flags, descriptor=False),
                                      self._value(), descs)
                chars.append(char)
                kinds.append((char, descs))
            built.append(Service(UUID(service_uuid), chars))
            shape.append(kinds)
        device.add_services(built)
        handles = []
        for kinds in shape:
            row = []
            for char, descs in kinds:
                for attr in [char] + descs:
                    handle = attr.handle
                    self._attrs[handle] = _Attr()
                    attr.value.handle = handle
                    row.append(handle)
            handles.append(row)
        return handles

    def _value(self):
        from bumble.gatt import CharacteristicValue

        value = CharacteristicValue()
        value._read = lambda connection, value=value: self._on_read(connection, value.handle)
        value._write = lambda connection, data, value=value: self._on_write(connection, value.handle, data)
        return value

    async def _on_read(self, connection, handle: int) -> bytes:
        from bumble.att import ATT_Error

        attr = self._attrs[handle]
        self._read_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending_reads[self._read_id] = future
        self._record("read", handle)
        self._send({"ev": IRQ_GATTS_READ_REQUEST, "c": connection.handle, "h": handle, "id": self._read_id})
        try:
            code = await asyncio.wait_for(future, READ_REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            self._pending_reads.pop(self._read_id, None)
            code = 0x0E
        if code:
            raise ATT_Error(error_code=code, att_handle=handle)
        return attr.value

    def _on_write(self, connection, handle: int, data: bytes) -> None:
        attr = self._attrs[handle]
        value = attr.value + data if attr.append else data
        # ESP32 (NimBLE): the value is copied into the attribute's buffer, the rest silently dropped
        attr.value = bytes(value[:attr.alloc])
        self._record("write", handle, len(data), len(attr.value))
        self._send({"ev": IRQ_GATTS_WRITE, "c": connection.handle, "h": handle, "v": attr.value.hex()})

    def _on_connection(self, connection) -> None:
        peer = connection.peer_address
        detail = {"c": connection.handle, "at": 0 if peer.is_public else 1,
                  "a": bytes(reversed(bytes(peer))).hex()}
        self._record("connect", connection.handle)
        self._send(dict(ev=IRQ_CENTRAL_CONNECT, **detail))

        def on_disconnection(reason: int) -> None:
            # MicroPython's _IRQ_CENTRAL_DISCONNECT carries no reason (modbluetooth_nimble.c,
            # central_gap_event_cb), so only the radio's events and log have it
            log.debug("BLE radio %s: central disconnected, reason 0x%02X", self.name, reason)
            self._record("disconnect", connection.handle, reason)
            self._send(dict(ev=IRQ_CENTRAL_DISCONNECT, **detail))

        def on_mtu():
            self._record("mtu", connection.att_mtu)
            self._send({"ev": IRQ_MTU_EXCHANGED, "c": connection.handle, "mtu": connection.att_mtu})

        connection.on(connection.EVENT_DISCONNECTION, on_disconnection)
        connection.on(connection.EVENT_CONNECTION_ATT_MTU_UPDATE, on_mtu)

    def _on_link_lost(self, handle: int, supervision_timeout_s: float) -> None:
        log.info("BLE radio %s: central on connection %d silent; the link times out in %.2f s (its supervision "
                 "timeout)", self.name, handle, supervision_timeout_s)
        self._record("lost", handle, supervision_timeout_s)

    def _on_link_timed_out(self, handle: int) -> None:
        log.info("BLE radio %s: connection %d timed out (0x08), the board is told", self.name, handle)
