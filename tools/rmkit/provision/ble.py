"""Protocomm over BLE (GATT) on the host: the client side of docs/protocol.md 1.2.

Two centrals behind one Transport:
- BumbleTransport: Google's Bumble host stack on an HCI transport it drives itself: a virtual board's
  radio (`tcp-client:127.0.0.1:PORT`, printed by `rmkit vboard` and `rmkit sandbox`) or a USB Bluetooth
  controller (`usb:0`, which Bumble takes over from the operating system);
- BleakTransport: the operating system's Bluetooth stack (BlueZ, CoreBluetooth, WinRT) through bleak,
  as Espressif's esp-rainmaker-cli does, for real boards.

Both find the node by its advertised name (PROV_xxxxxx) or address, connect, take the service the node
advertises, and build the endpoint table from each characteristic's 0x2901 user description, as
Espressif's client does; a node without descriptors offers only the three fixed endpoints. An exchange
is a write with response, then a read of the same characteristic; the stack does long writes and reads.
The session is the connection: closing it ends the node's session.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Awaitable, Optional, TypeVar

from rmkit.provision.errors import DeviceUnreachable, TransportError
from rmkit.provision.transport import Transport

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_DESCRIPTION = "2901"
# docs/protocol.md 1.2: what a client falls back to when the node names no endpoints
FIXED_ENDPOINTS = {"prov-session": "ff51", "prov-config": "ff52", "proto-ver": "ff53"}
NO_SYSTEM_BLUETOOTH = ("this computer's Bluetooth is not usable through bleak (%s): on Linux BlueZ must run with "
                       "an adapter powered on; a virtual board's radio needs --hci tcp-client:127.0.0.1:PORT, a USB "
                       "Bluetooth controller --hci usb:0")
# The largest request our node takes over BLE (firmware/rmnode/ble.py MAX_REQUEST): the stack would
# silently cut a longer write, so it is refused here
MAX_REQUEST = 512


def endpoint_table(service_uuid: str, descriptions: dict[str, bytes]) -> dict[str, str]:
    """Endpoint name -> characteristic UUID, from {characteristic UUID: its 0x2901 value}; the fixed three
    derived from the service UUID when a needed one is not described (Espressif's client does the same)."""
    table = {bytes(value).decode("utf-8", "replace").strip("\0").lower(): uuid.lower()
             for uuid, value in descriptions.items()}
    if not all(name in table for name in FIXED_ENDPOINTS):
        service = service_uuid.lower()
        table = {name: service[:4] + short + service[8:] for name, short in FIXED_ENDPOINTS.items()}
    return table


class _LoopThread:
    """An asyncio loop in a thread of its own, so that the synchronous Transport can drive an async stack."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return future.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class _GattTransport(Transport):
    """The exchange and error mapping shared by both centrals; subclasses supply the coroutines."""

    label = "BLE"
    device: str
    timeout: float

    def __init__(self, device: str, timeout: float):
        self.device = device
        self.timeout = timeout
        self.endpoints: dict[str, str] = {}
        self._io = _LoopThread(f"ble-{device}")
        try:
            self._io.run(self._open(), timeout + 10)
        except Exception as exc:
            self._shutdown()
            raise DeviceUnreachable("connect", f"{device} over BLE: {_describe(exc)}") from exc
        log.debug("endpoints: %s", self.endpoints)

    def send(self, endpoint: str, data: bytes) -> bytes:
        uuid = self.endpoints.get(endpoint)
        if uuid is None:
            raise TransportError(endpoint, f"the node offers no such endpoint over BLE (it has: "
                                           f"{', '.join(sorted(self.endpoints))})")
        if not data or len(data) > MAX_REQUEST:
            raise ValueError(f"{endpoint}: request of {len(data)} bytes (node accepts 1..{MAX_REQUEST} over BLE)")
        try:
            body = self._io.run(self._exchange(uuid, data), self.timeout)
        except Exception as exc:
            raise TransportError(endpoint, _describe(exc)) from exc
        log.debug("%s: %d bytes -> %d bytes", endpoint, len(data), len(body))
        return body

    def close(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._io.run(self._close(), 5)
        except Exception:  # noqa: BLE001 - closing must not raise; the link may be gone already
            log.debug("BLE close failed", exc_info=True)
        self._io.stop()

    async def _open(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def _exchange(self, uuid: str, data: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    async def _close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class BumbleTransport(_GattTransport):
    """A Bumble central on HCI transport `hci` (e.g. tcp-client:127.0.0.1:PORT, usb:0)."""

    def __init__(self, device: str, hci: str, timeout: float = 15.0, scan_timeout: float = 10.0):
        self.hci = hci
        self.scan_timeout = scan_timeout
        self._central = None
        self._characteristics: dict = {}
        super().__init__(device, timeout)

    async def _open(self) -> None:
        from rmkit.vboard.ble_central import BleCentral

        self._central = central = BleCentral(self.hci)
        await central.__aenter__()
        address, service_uuid = await central.find(self.device, self.scan_timeout)
        peer = await central.connect(address)
        service = next((s for s in peer.services if str(s.uuid).lower() == service_uuid), None)
        if service is None:
            raise RuntimeError(f"it does not offer the service it advertises ({service_uuid})")
        descriptions = {}
        for characteristic in service.characteristics:
            self._characteristics[str(characteristic.uuid).lower()] = characteristic
            for descriptor in characteristic.descriptors:
                if str(descriptor.type.to_hex_str()).lower().endswith(USER_DESCRIPTION) and \
                        len(descriptor.type.to_bytes()) == 2:
                    descriptions[str(characteristic.uuid).lower()] = await descriptor.read_value()
        self.endpoints = endpoint_table(service_uuid, descriptions)

    async def _exchange(self, uuid: str, data: bytes) -> bytes:
        characteristic = self._characteristics.get(uuid)
        if characteristic is None:
            raise RuntimeError(f"characteristic {uuid} not found")
        await characteristic.write_value(data, with_response=True)
        return bytes(await characteristic.read_value())

    async def _close(self) -> None:
        if self._central is not None:
            central, self._central = self._central, None
            await central.__aexit__(None, None, None)


class BleakTransport(_GattTransport):
    """The operating system's Bluetooth through bleak (real boards); `device` is a name or an address."""

    def __init__(self, device: str, timeout: float = 15.0, scan_timeout: float = 10.0):
        self.scan_timeout = scan_timeout
        self._client = None
        super().__init__(device, timeout)

    async def _open(self) -> None:
        try:
            from bleak import BleakClient, BleakScanner
        except ImportError as exc:  # pragma: no cover - bleak is in requirements-dev.txt
            raise RuntimeError("bleak is not installed: run `make setup`") from exc

        found: list = []

        def matches(device, advertisement) -> bool:
            if self.device in (device.name, advertisement.local_name) or \
                    device.address.lower() == self.device.lower():
                found.append(advertisement)
                return True
            return False

        try:
            device = await BleakScanner.find_device_by_filter(matches, timeout=self.scan_timeout)
        except (OSError, RuntimeError) as exc:
            raise RuntimeError(NO_SYSTEM_BLUETOOTH % _describe(exc)) from exc
        except Exception as exc:  # bleak's own errors: BleakError, BleakDBusError ("no adapter", "powered off")
            if type(exc).__module__.startswith("bleak"):
                raise RuntimeError(NO_SYSTEM_BLUETOOTH % _describe(exc)) from exc
            raise
        if device is None:
            raise RuntimeError(f"no device {self.device} advertising within {self.scan_timeout:g} s")
        uuids = found[-1].service_uuids if found else []
        if len(uuids) != 1:
            raise RuntimeError(f"it advertises {len(uuids)} service UUIDs, a provisioning node one")
        service_uuid = uuids[0].lower()
        self._client = client = BleakClient(device)
        await client.connect()
        service = client.services.get_service(service_uuid)
        if service is None:
            raise RuntimeError(f"it does not offer the service it advertises ({service_uuid})")
        descriptions = {}
        for characteristic in service.characteristics:
            for descriptor in characteristic.descriptors:
                if descriptor.uuid[4:8] == USER_DESCRIPTION:
                    descriptions[characteristic.uuid] = await client.read_gatt_descriptor(descriptor.handle)
        self.endpoints = endpoint_table(service_uuid, descriptions)

    async def _exchange(self, uuid: str, data: bytes) -> bytes:
        await self._client.write_gatt_char(uuid, data, response=True)
        return bytes(await self._client.read_gatt_char(uuid))

    async def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.disconnect()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    name = type(exc).__name__
    if name == "ATT_Error":  # Bumble: the node refused the request
        return f"node answered ATT error {getattr(exc, 'error_name', '') or getattr(exc, 'error_code', '')}"
    if "Disconnect" in name or "disconnect" in str(exc).lower():
        return "the node dropped the connection"
    text = str(exc)
    return text or name


def open_ble(device: str, hci: Optional[str], timeout: float, scan_timeout: float = 10.0) -> Transport:
    """Bumble on `hci` when given, else the operating system's stack (bleak)."""
    if hci:
        return BumbleTransport(device, hci, timeout=timeout, scan_timeout=scan_timeout)
    return BleakTransport(device, timeout=timeout, scan_timeout=scan_timeout)

