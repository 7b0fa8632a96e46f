"""MappingService.user_nodes: the paging behind GET v1/user/nodes (start_id, num_records -> nodes, total,
next_id), at the service itself; test_cloud_api follows the same pages over HTTP."""

from __future__ import annotations

import pytest

from rmkit.cloud.accounts import Accounts
from rmkit.cloud.mapping import DEFAULT_PAGE_SIZE, MappingService
from rmkit.cloud.storage import Storage
from support.fixtures_cloud import PASSWORD


@pytest.fixture
def page(tmp_path):
    """page(user_name, start_id, limit) -> NodePage, where alice has N1..N6, bob has N0, carol none."""
    storage = Storage(tmp_path / "cloud.db")
    accounts = Accounts(storage)
    user_ids = {name: accounts.add_user(f"{name}@example.com", PASSWORD) for name in ("alice", "bob", "carol")}
    with storage.transaction() as tx:
        for node_id in ("N6", "N1", "N3", "N2", "N5", "N4"):  # stored out of order, listed in id order
            tx.add_user_node(user_ids["alice"], node_id, 1.0)
        tx.add_user_node(user_ids["bob"], "N0", 1.0)
    mapping = MappingService(storage)
    yield lambda name, start_id=None, limit=DEFAULT_PAGE_SIZE: mapping.user_nodes(user_ids[name], start_id, limit)
    storage.close()


def test_pages_follow_next_id_to_the_end(page):
    first = page("alice", None, 4)
    assert (first.nodes, first.total, first.next_id) == (["N1", "N2", "N3", "N4"], 6, "N5")
    last = page("alice", first.next_id, 4)
    assert (last.nodes, last.total, last.next_id) == (["N5", "N6"], 6, None)


def test_a_last_page_that_is_exactly_full_has_no_next_id(page):
    assert page("alice", None, 3).next_id == "N4"
    assert page("alice", "N4", 3).next_id is None
    assert page("alice", None, 6).next_id is None


def test_start_id_need_not_be_a_node_of_the_user(page):
    assert page("alice", "N2x", 2).nodes == ["N3", "N4"]
    assert page("alice", "Z", 2).nodes == []


def test_only_the_users_own_nodes_are_listed_and_counted(page):
    bob = page("bob")
    assert (bob.nodes, bob.total, bob.next_id) == (["N0"], 1, None)
    carol = page("carol")
    assert (carol.nodes, carol.total, carol.next_id) == ([], 0, None)
    assert page("alice").nodes == ["N1", "N2", "N3", "N4", "N5", "N6"]  # the default page holds them all
