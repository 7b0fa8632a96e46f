"""Which user-node mapping flow a provisioning run takes: challenge-response when the node offers it
(docs/protocol.md 7.1), else the secret key on cloud_user_assoc (docs/protocol.md 4).

Espressif's clients decide from proto-ver alone: a top-level `rmaker_extra` whose `cap` lists
`ch_resp` means challenge-response (esp-rainmaker-cli 1.14.1,
`challenge_response.has_challenge_response_capability`), and there is no falling back from a failed
challenge-response to the secret key. `auto` here does the same; `ch_resp` and `secret` force one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rmkit.provision.errors import MappingUnavailable

if TYPE_CHECKING:
    from rmkit.cloud_client import MappingChallenge

AUTO = "auto"
CHALLENGE_RESPONSE = "ch_resp"
SECRET_KEY = "secret"
CHOICES = (AUTO, CHALLENGE_RESPONSE, SECRET_KEY)
DEFAULT_CHALLENGE_TIMEOUT_S = 360  # what esp-rainmaker-cli asks the cloud for


class ChallengeCloud(Protocol):
    """The cloud's half of challenge-response mapping (rmkit.cloud_client.CloudClient is one)."""

    def initiate_mapping(self, timeout_s: int = DEFAULT_CHALLENGE_TIMEOUT_S) -> "MappingChallenge": ...

    def verify_mapping(self, request_id: str, node_id: str, signature: bytes) -> None: ...


@dataclass(frozen=True)
class MappingChoice:
    method: str  # CHALLENGE_RESPONSE or SECRET_KEY
    reason: str  # for the progress line


def offers_challenge_response(version_info: dict) -> bool:
    """True when the node's proto-ver JSON advertises challenge-response (docs/protocol.md 2.2)."""
    extra = version_info.get("rmaker_extra")
    caps = extra.get("cap") if isinstance(extra, dict) else None
    return isinstance(caps, list) and CHALLENGE_RESPONSE in caps


def choose_mapping(requested: str, version_info: dict, have_cloud: bool) -> MappingChoice:
    """The flow to run for `requested` (one of CHOICES) on a node whose proto-ver says `version_info`.
    Challenge-response needs the cloud: it issues the challenge and checks the node's answer."""
    if requested not in CHOICES:
        raise ValueError(f"mapping {requested!r}: give one of {', '.join(CHOICES)}")
    offered = offers_challenge_response(version_info)
    if requested == SECRET_KEY:
        return MappingChoice(SECRET_KEY, "asked for")
    if requested == CHALLENGE_RESPONSE:
        if not offered:
            raise MappingUnavailable("node does not offer challenge-response mapping (its proto-ver lists no "
                                     "rmaker_extra cap 'ch_resp'); use --mapping auto or secret")
        return MappingChoice(CHALLENGE_RESPONSE, "asked for")
    if not offered:
        return MappingChoice(SECRET_KEY, "the node does not offer ch_resp")
    if not have_cloud:
        return MappingChoice(SECRET_KEY, "the node offers ch_resp, but without a cloud there is no challenge")
    return MappingChoice(CHALLENGE_RESPONSE, "the node offers ch_resp")
