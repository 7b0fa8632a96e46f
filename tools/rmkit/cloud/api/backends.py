"""The accounts and mapping services a request works with: create_app attaches them to the app, so
views and the auth decorator find them through `current_app` instead of closing over them."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from rmkit.cloud.accounts import Accounts
from rmkit.cloud.challenge_mapping import ChallengeService
from rmkit.cloud.mapping import MappingService

_KEY = "rmkit.cloud"


@dataclass(frozen=True)
class Backends:
    accounts: Accounts
    mapping: MappingService  # the secret-key flow
    challenges: ChallengeService  # challenge-response mapping


def attach(app: Flask, backends: Backends) -> None:
    app.extensions[_KEY] = backends


def backends() -> Backends:
    """The backends of the app handling the current request."""
    return current_app.extensions[_KEY]
