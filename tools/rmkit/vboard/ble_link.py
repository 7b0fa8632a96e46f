"""The simulated air between a virtual board and its centrals: Bumble's virtual link, with what a real
radio link does that Bumble's LocalLink and Controller (bumble/link.py, bumble/controller.py, 0.0.236) do
not.

- A central whose radio falls silent (its host's HCI connection to the radio closes, or its host resets
  its controller) sends no LL_TERMINATE_IND: the board's controller keeps the link until the link's
  supervision timeout has passed without a packet from the central, then tells its host the connection is
  lost with reason Connection Timeout (0x08) (Bluetooth Core v5.4, Vol 6, Part B, 4.5.2; NimBLE's own
  controller does the same in nimble/controller/src/ble_ll_conn.c, ble_ll_conn_event_end:
  ble_ll_conn_end(connsm, BLE_ERR_CONN_SPVN_TMO)). The timeout is the central's: the Timeout field of its
  CONNECT_IND, in units of 10 ms (Vol 6, Part B, 2.3.3.1; ble_ll_conn_periph_start reads it into
  connsm->supervision_tmo), until an LL_CONNECTION_UPDATE_IND changes it (ble_ll_conn_next_event).
  Bumble's controller keeps such a link for ever, and tells its host it has a 100 ms timeout.
- A packet for a device no longer on the air is lost, where Bumble's LocalLink raises
  InvalidArgumentError("Unable to find controller for address ...") into the sender's event loop.
- An active scan gets the advertiser's scan response: Bumble's link carries no SCAN_REQ/SCAN_RSP, and its
  controller reports the advertising data a second time as the scan response, so a board's name (in its
  scan response, docs/protocol.md 1.2) would never be seen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable, Optional

from bumble import hci, ll
from bumble.controller import Connection, Controller
from bumble.link import LocalLink

log = logging.getLogger(__name__)

# Vol 6, Part B, 2.3.3.1: connSupervisionTimeout = Timeout * 10 ms
SUPERVISION_TIMEOUT_UNIT_S = 0.010
# LL control PDUs that carry a new Timeout for the link (Vol 6, Part B, 2.4.2.1; Bumble's ll.py)
_TIMEOUT_UPDATES = (ll.ConnectionUpdateInd, ll.ConnectionRateInd, ll.SubrateInd)


class Air(LocalLink):
    """Bumble's LocalLink on which a packet for a device that is not there is lost, as over the air."""

    def send_ll_control_pdu(self, sender_address: hci.Address, receiver_address: hci.Address,
                            packet: ll.ControlPdu) -> None:
        if self.find_le_controller(receiver_address) is None:
            log.debug("LL %s from %s to %s: nobody there to receive it", type(packet).__name__, sender_address,
                      receiver_address)
            return
        super().send_ll_control_pdu(sender_address, receiver_address, packet)

    def link_lost(self, central_address: hci.Address, peripheral_address: hci.Address) -> None:
        """The central at `central_address` fell silent on its link to `peripheral_address`: the peripheral's
        controller times the link out."""
        peripheral = self.find_le_controller(peripheral_address)
        if isinstance(peripheral, BoardController):
            peripheral.peer_silent(central_address)


class BoardController(Controller):
    """The board's controller: it knows each link's supervision timeout, and drops a link whose central
    fell silent once that timeout has passed. `on_link_lost(handle, timeout_s)` is called when the silence
    begins, `on_link_timed_out(handle)` just before the host hears of it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervision_timeout_s: dict[int, float] = {}  # by connection handle
        self.on_link_lost: Callable[[int, float], None] = lambda handle, timeout_s: None
        self.on_link_timed_out: Callable[[int], None] = lambda handle: None

    def on_le_connect_ind(self, packet: ll.ConnectInd) -> None:
        super().on_le_connect_ind(packet)
        connection = self.le_connections.get(packet.initiator_address)
        if connection is not None:
            self.supervision_timeout_s[connection.handle] = packet.timeout * SUPERVISION_TIMEOUT_UNIT_S

    def on_ll_control_pdu(self, sender_address: hci.Address, packet: ll.ControlPdu) -> None:
        connection = self.le_connections.get(sender_address)
        if connection is not None and isinstance(packet, _TIMEOUT_UPDATES):
            self.supervision_timeout_s[connection.handle] = packet.timeout * SUPERVISION_TIMEOUT_UNIT_S
        super().on_ll_control_pdu(sender_address, packet)

    def on_le_disconnected(self, connection: Connection, reason: int) -> None:
        self.supervision_timeout_s.pop(connection.handle, None)
        super().on_le_disconnected(connection, reason)

    def peer_silent(self, central_address: hci.Address) -> None:
        connection = self.le_connections.get(central_address)
        if connection is None:
            return
        timeout_s = self.supervision_timeout_s.get(connection.handle, 0.0)
        self.on_link_lost(connection.handle, timeout_s)
        asyncio.get_running_loop().call_later(timeout_s, self._time_out, connection)

    def _time_out(self, connection: Connection) -> None:
        # the same link still up: nothing was heard from the central since (a link the host disconnected,
        # or a board that powered off, is gone from le_connections)
        if self.le_connections.get(connection.peer_address) is not connection:
            return
        self.on_link_timed_out(connection.handle)
        self.on_le_disconnected(connection, hci.HCI_CONNECTION_TIMEOUT_ERROR)


class CentralController(Controller):
    """A central's controller on the air, driven by its host over HCI. Its active scans get the advertiser's
    real scan response (`scan_response_of(address)`, None for advertisers it does not know); fall_silent()
    is its radio going off without a word (also on an HCI Reset, which ends a controller's links,
    Vol 4, Part E, 7.3.2)."""

    scan_response_of: Callable[[hci.Address], Optional[bytes]] = staticmethod(lambda address: None)

    def fall_silent(self) -> None:
        for connection in list(self.le_connections.values()):
            del self.le_connections[connection.peer_address]
            if isinstance(self.link, Air):
                self.link.link_lost(connection.self_address, connection.peer_address)

    def on_hci_reset_command(self, command: hci.HCI_Reset_Command):
        self.fall_silent()
        return super().on_hci_reset_command(command)

    def on_advertising_pdu(self, pdu) -> None:
        response = self.scan_response_of(pdu.advertiser_address)
        if response is None:
            super().on_advertising_pdu(pdu)
            return
        send = self.send_hci_packet

        def with_scan_response(packet) -> None:
            send(_with_scan_response(packet, response))

        self.send_hci_packet = with_scan_response
        try:
            super().on_advertising_pdu(pdu)
        finally:
            del self.send_hci_packet


def _with_scan_response(packet, response: bytes):
    """An advertising report event whose scan responses carry `response` instead of the advertising data."""
    if isinstance(packet, hci.HCI_LE_Advertising_Report_Event):
        scan_rsp = hci.HCI_LE_Advertising_Report_Event.EventType.SCAN_RSP
        return hci.HCI_LE_Advertising_Report_Event([
            dataclasses.replace(report, data=response) if report.event_type == scan_rsp else report
            for report in packet.reports])
    if isinstance(packet, hci.HCI_LE_Extended_Advertising_Report_Event):
        scan_response = hci.HCI_LE_Extended_Advertising_Report_Event.EventType.SCAN_RESPONSE
        return hci.HCI_LE_Extended_Advertising_Report_Event([
            dataclasses.replace(report, data=response) if report.event_type & scan_response else report
            for report in packet.reports])
    return packet
