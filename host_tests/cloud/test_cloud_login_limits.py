"""Login rate limiting of the local cloud: past N failed logins for one user name within the window,
429 with Retry-After (the right password too), and logins work again once the window has passed."""

import time

import pytest

from support.fixtures_cloud import PASSWORD, ApiClient
from rmkit.cloud import CloudService
from rmkit.cloud.accounts import LoginLimits

WINDOW_S = 2.0


@pytest.fixture
def limited_cloud(tmp_path):
    service = CloudService(tmp_path / "cloud.db", port=0,
                           login_limits=LoginLimits(per_user=3, per_address=8, window_s=WINDOW_S)).start()
    try:
        yield service
    finally:
        service.stop()


def login(api, email, password):
    return api.request("POST", "/v1/login2", {"user_name": email, "password": password})


def test_the_n_plus_first_wrong_login_gets_429_with_retry_after_then_the_right_one_works_again(limited_cloud):
    limited_cloud.add_user("alice@example.com", PASSWORD)
    api = ApiClient(limited_cloud.base_url)
    for _ in range(3):
        assert login(api, "alice@example.com", "wrong password").status == 401
    refused = login(api, "alice@example.com", "wrong password")
    assert refused.status == 429 and refused.body["status"] == "failure"
    assert 1 <= int(refused.headers["Retry-After"]) <= WINDOW_S
    assert login(api, "Alice@example.com", PASSWORD).status == 429  # the right password waits too
    time.sleep(int(refused.headers["Retry-After"]) + 0.1)  # time passing on purpose: the window, as Retry-After says
    assert login(api, "alice@example.com", PASSWORD).status == 200


def test_one_address_trying_many_user_names_is_limited_too(limited_cloud):
    api = ApiClient(limited_cloud.base_url)
    statuses = [login(api, f"user{i}@example.com", "wrong password").status for i in range(9)]
    assert statuses == [401] * 8 + [429]


def test_a_successful_login_clears_the_user_names_failures(limited_cloud):
    limited_cloud.add_user("bob@example.com", PASSWORD)
    api = ApiClient(limited_cloud.base_url)
    for _ in range(2):
        assert login(api, "bob@example.com", "wrong password").status == 401
    assert login(api, "bob@example.com", PASSWORD).status == 200
    for _ in range(3):
        assert login(api, "bob@example.com", "wrong password").status == 401
