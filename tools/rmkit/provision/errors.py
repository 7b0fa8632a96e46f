"""What can go wrong while provisioning a node, one exception per cause the user can act on."""

from __future__ import annotations


class ProvisionError(Exception):
    """Base of every provisioning failure; str() is a one-line message without secrets."""


class TransportError(ProvisionError):
    """The request did not get a 200 answer: connection lost, timeout, or an HTTP error status."""

    def __init__(self, endpoint: str, detail: str, status: int | None = None):
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.status = status


class DeviceUnreachable(TransportError):
    """No TCP connection to the node at all (wrong address, node not running, not on its access point)."""


class HandshakeFailed(ProvisionError):
    """The prov-session handshake failed: with Security 1 almost always a wrong proof of possession (PoP)."""


class ProtocolError(ProvisionError):
    """The node answered something this client does not understand (bad protobuf, unexpected field)."""


class MappingRefused(ProvisionError):
    """cloud_user_assoc answered a non-zero Status (docs/protocol.md 4.1: InvalidParam=1, InvalidState=2)."""

    def __init__(self, status: int, status_name: str):
        super().__init__(f"node refused the user mapping: status {status} ({status_name})")
        self.status = status
        self.status_name = status_name


class WifiJoinFailed(ProvisionError):
    """The node could not join the Wi-Fi network; `reason` is AuthError or NetworkNotFound when known."""

    def __init__(self, state: str, reason: str | None, ssid: str):
        detail = f"{state}, reason {reason}" if reason else state
        super().__init__(f"node could not join Wi-Fi '{ssid}': {detail}")
        self.state = state
        self.reason = reason
        self.ssid = ssid


class ChallengeDeclined(ProvisionError):
    """ch_resp answered a status other than Success (docs/protocol.md 7.1: Fail 1, InvalidParam 2, Disabled 3)."""

    def __init__(self, status: int, status_name: str, detail: str = ""):
        super().__init__(f"node declined to sign the mapping challenge: status {status} ({status_name})"
                         + (f"; {detail}" if detail else ""))
        self.status = status
        self.status_name = status_name


class MappingUnavailable(ProvisionError):
    """The user-node mapping flow that was asked for is one the node does not offer."""


class ConfigRefused(ProvisionError):
    """prov-config SetConfig answered a status other than Success (docs/protocol.md 2.4): a join of other
    credentials is under way, or the node took none."""

    def __init__(self, status: int, status_name: str):
        super().__init__(f"prov-config set: node answered {status_name}")
        self.status = status
        self.status_name = status_name
