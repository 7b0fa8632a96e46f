"""Provisioning client: hands a node the user id, secret key and Wi-Fi credentials over protocomm, gets its node id.

    from rmkit.provision import HttpTransport, Provisioner
    with HttpTransport("127.0.0.1", port) as transport:
        result = Provisioner(transport, sec=1, pop="abcd1234").provision(ssid, passphrase, user_id, secret_key)
    result.node_id, result.wifi.state
"""

from rmkit.provision.client import ProvisionResult, Provisioner, ScanResult, WifiStatus
from rmkit.provision.errors import (DeviceUnreachable, HandshakeFailed, MappingRefused, ProtocolError,
                                    ProvisionError, TransportError, WifiJoinFailed)
from rmkit.provision.transport import HttpTransport, Transport

__all__ = [
    "DeviceUnreachable", "HandshakeFailed", "HttpTransport", "MappingRefused", "ProtocolError", "ProvisionError",
    "ProvisionResult", "Provisioner", "ScanResult", "Transport", "TransportError", "WifiJoinFailed", "WifiStatus",
]
