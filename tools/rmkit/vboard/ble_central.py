"""A Bumble central on an HCI transport: a virtual board's radio (ble_radio.BleRadio) over its HCI port,
or any transport Bumble opens (a USB Bluetooth controller: "usb:0").

Real ATT/GATT from the host side: scanning, connecting, MTU exchange, discovery, long reads and
prepared writes are Bumble's. Used by tests and by `rmkit provision --transport ble`.
"""

import asyncio
from typing import Optional


class BleCentral:
    """Async; `async with BleCentral(hci) as central:` powers on a fresh central. `hci` is a virtual
    board's HCI port or a Bumble transport spec ("tcp-client:127.0.0.1:PORT", "usb:0")."""

    def __init__(self, hci, mtu: int = 517):
        self.hci = f"tcp-client:127.0.0.1:{hci}" if isinstance(hci, int) else hci
        self.mtu = mtu
        self.device = None
        self.connection = None
        self.peer = None
        self._transport = None

    async def __aenter__(self) -> "BleCentral":
        from bumble.device import Device
        from bumble.hci import Address
        from bumble.transport import open_transport

        self._transport = await open_transport(self.hci)
        self.device = Device.with_hci("rmkit-central", Address("F0:F1:F2:F3:F4:F5"), self._transport.source,
                                      self._transport.sink)
        await self.device.power_on()
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            if self.connection is not None:
                await asyncio.wait_for(self.connection.disconnect(), 2)
        except Exception:  # noqa: BLE001 - the board may have dropped it already
            pass
        if self._transport is not None:
            await self._transport.close()

    async def vanish(self) -> None:
        """Close the HCI transport without disconnecting, as a killed process does: no LL_TERMINATE_IND goes
        out, and the peripheral learns of it only at the link's supervision timeout."""
        transport, self._transport, self.connection = self._transport, None, None
        await transport.close()

    async def scan(self, name: Optional[str] = None, timeout: float = 5.0):
        """The first advertiser (whose complete local name is `name`, if given) -> (address, name)."""
        from bumble.core import AdvertisingData

        found = asyncio.get_running_loop().create_future()

        def on_advertisement(advertisement):
            local = advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
            if (name is None or local == name) and not found.done():
                found.set_result((advertisement.address, local))

        self.device.on("advertisement", on_advertisement)
        await self.device.start_scanning(active=True)
        try:
            return await asyncio.wait_for(found, timeout)
        finally:
            self.device.remove_listener("advertisement", on_advertisement)
            await self.device.stop_scanning()

    async def find(self, device: str, timeout: float = 10.0):
        """The advertiser named `device` (complete local name) or at address `device` -> (address, its one
        advertised 128-bit service UUID, lower case); RuntimeError naming what was wrong."""
        from bumble.core import AdvertisingData

        found = asyncio.get_running_loop().create_future()

        def on_advertisement(advertisement):
            local = advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
            address = str(advertisement.address).split("/")[0]
            if device in (local, address) or device.upper() == address.upper():
                uuids = advertisement.data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
                if uuids is not None and not found.done():
                    found.set_result((advertisement.address, uuids))

        self.device.on("advertisement", on_advertisement)
        await self.device.start_scanning(active=True)
        try:
            address, uuids = await asyncio.wait_for(found, timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"no device {device} advertising a service within {timeout:g} s") from None
        finally:
            self.device.remove_listener("advertisement", on_advertisement)
            await self.device.stop_scanning()
        if len(uuids) != 1:
            raise RuntimeError(f"{device} advertises {len(uuids)} service UUIDs, a provisioning node one")
        return address, str(uuids[0]).lower()

    async def connect(self, address, exchange_mtu: bool = True, supervision_timeout_ms: Optional[int] = None):
        """Connect, exchange the MTU and discover everything. The link's supervision timeout is Bumble's
        (720 ms, bumble/device.py DEVICE_DEFAULT_CONNECTION_SUPERVISION_TIMEOUT) unless given."""
        from bumble.device import ConnectionParametersPreferences, Peer
        from bumble.hci import Phy

        preferences = None
        if supervision_timeout_ms is not None:
            preferences = {Phy.LE_1M: ConnectionParametersPreferences(supervision_timeout=supervision_timeout_ms)}
        self.connection = await self.device.connect(address, timeout=5.0, connection_parameters_preferences=preferences)
        self.peer = Peer(self.connection)
        if exchange_mtu:
            await self.peer.request_mtu(self.mtu)
        await self.peer.discover_services()
        for service in self.peer.services:
            await service.discover_characteristics()
            for characteristic in service.characteristics:
                await characteristic.discover_descriptors()
        return self.peer

    def characteristic(self, uuid: str):
        from bumble.core import UUID

        for service in self.peer.services:
            for characteristic in service.characteristics:
                if characteristic.uuid == UUID(uuid):
                    return characteristic
        raise KeyError(uuid)
