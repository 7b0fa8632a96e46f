"""Every v1 route that acts for a user is behind @requires_user. The routes come from the app's URL map,
so a route added later without the decorator fails here: called without a usable token it must answer
401 in RainMaker's error shape, and its view must not run (nothing stored changes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask

from rmkit.cloud.accounts import Accounts
from rmkit.cloud.api import create_app
from rmkit.cloud.mapping import MappingService
from rmkit.cloud.storage import Storage
from support.fixtures_cloud import PASSWORD, db_snapshot

PUBLIC_V1 = {("POST", "/v1/login2")}  # where tokens come from
# a body each view would act on if it ran: a guard that lets it through changes storage
ACTIONABLE_BODY = {"operation": "add", "node_id": "N1", "secret_key": "k", "user_name": "alice@example.com",
                   "password": PASSWORD, "timeout": 360}

NO_TOKEN = {"status": "failure", "error_code": 101010, "description": "missing Authorization header (access token)"}
NOT_A_TOKEN = {"status": "failure", "error_code": 101011,
               "description": "Unauthorized: the Authorization header is not a token"}


@dataclass
class Cloud:
    app: Flask
    token: str  # alice's access token
    db_path: Path

    def guarded_routes(self) -> list[tuple[str, str]]:
        return sorted(v1_routes(self.app) - PUBLIC_V1)


def v1_routes(app: Flask) -> set[tuple[str, str]]:
    return {(method, rule.rule) for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/")
            for method in rule.methods - {"HEAD", "OPTIONS"}}


@pytest.fixture
def cloud(tmp_path):
    storage = Storage(tmp_path / "cloud.db")
    accounts = Accounts(storage)
    accounts.add_user("alice@example.com", PASSWORD)
    token = accounts.login("alice@example.com", PASSWORD).accesstoken
    yield Cloud(create_app(accounts, MappingService(storage)), token, tmp_path / "cloud.db")
    storage.close()


def test_the_route_lists_are_not_stale(cloud):
    assert PUBLIC_V1 <= v1_routes(cloud.app)
    # logout2, user, user/nodes, mapping PUT and GET, mapping/initiate and mapping/verify
    assert len(cloud.guarded_routes()) == 7


@pytest.mark.parametrize("headers, status, body", [
    ({}, 401, NO_TOKEN),
    ({"Authorization": "   "}, 401, NO_TOKEN),
    ({"Authorization": "e30.e30.\xe9t\xe9"}, 401, NOT_A_TOKEN),  # non-ASCII: refused before any compare
    ({"Authorization": "x" * 4097}, 401, NOT_A_TOKEN),
], ids=["none", "blank", "non-ascii", "too-long"])
def test_every_guarded_route_refuses_a_request_without_a_usable_token(cloud, headers, status, body):
    client = cloud.app.test_client()
    before = db_snapshot(cloud.db_path)
    for method, path in cloud.guarded_routes():
        response = client.open(path, method=method, json=ACTIONABLE_BODY, headers=headers,
                               query_string="request_id=r1&logout_all=true")
        assert (response.status_code, response.get_json()) == (status, body), (method, path)
    assert db_snapshot(cloud.db_path) == before


def test_every_guarded_route_refuses_a_forged_token(cloud):
    client = cloud.app.test_client()
    header, payload, _ = cloud.token.split(".")
    for method, path in cloud.guarded_routes():
        response = client.open(path, method=method, json=ACTIONABLE_BODY,
                               headers={"Authorization": f"{header}.{payload}.forged"})
        assert response.status_code == 401, (method, path)
        assert response.get_json()["error_code"] == 101011, (method, path)


def test_every_guarded_route_lets_a_valid_token_through(cloud):
    client = cloud.app.test_client()
    for method, path in cloud.guarded_routes():
        if path == "/v1/logout2":
            continue  # would end the session the other routes use; test_cloud_api covers logout
        response = client.open(path, method=method, json=ACTIONABLE_BODY, headers={"Authorization": cloud.token},
                               query_string="request_id=r1")
        assert response.status_code != 401, (method, path, response.get_data(as_text=True))
