"""Provisioning client: maps a node to its user (secret key or challenge-response) and hands it the Wi-Fi
credentials over protocomm, gets its node id.

    from rmkit.provision import HttpTransport, Provisioner
    with HttpTransport("127.0.0.1", port) as transport:
        result = Provisioner(transport, sec=1, pop="abcd1234").provision(ssid, passphrase, user_id, secret_key)
        # or, challenge-response when the node offers it, with a logged-in rmkit.cloud_client.CloudClient:
        result = Provisioner(transport, sec=1, pop="abcd1234").provision(ssid, passphrase, mapping="auto", cloud=cloud)
    result.node_id, result.wifi.state, result.mapping
"""

from rmkit.provision.client import ProvisionResult, Provisioner, ScanResult, SignedChallenge, WifiStatus
from rmkit.provision.errors import (ChallengeDeclined, DeviceUnreachable, HandshakeFailed, MappingRefused,
                                    MappingUnavailable, ProtocolError, ProvisionError, TransportError, WifiJoinFailed)
from rmkit.provision.transport import HttpTransport, Transport

__all__ = [
    "ChallengeDeclined", "DeviceUnreachable", "HandshakeFailed", "HttpTransport", "MappingRefused",
    "MappingUnavailable", "ProtocolError", "ProvisionError", "ProvisionResult", "Provisioner", "ScanResult",
    "SignedChallenge", "Transport", "TransportError", "WifiJoinFailed", "WifiStatus",
]
