"""Pending mapping lifecycle, reset rule (docs/protocol.md 5.3, user-id check on), payloads and topics (docs/protocol.md 5.2, 5.4)."""

import json
import sys

if sys.implementation.name == "micropython" and ".frozen" not in sys.path:
    sys.path.append(".frozen")  # the runner's MICROPYPATH drops the frozen asyncio package

from rmnode.store import Store
from rmnode.mapping import MappingState, MappingError, check_mapping, mapping_payload, reset_payload, json_string
from rmnode import online_reports as online
from fwtest import raises, check, equal, tmpdir


def _state():
    path = tmpdir("map") + "/state.json"
    return MappingState(Store(path)), path


def test_payload_is_compact_with_espressif_key_order():
    equal(mapping_payload("N1", "u1", "s1"), '{"node_id":"N1","user_id":"u1","secret_key":"s1"}', "plain")
    equal(mapping_payload("N1", "u1", "s1", True), '{"node_id":"N1","user_id":"u1","secret_key":"s1","reset":true}',
          "reset")
    equal(reset_payload("N1"), '{"node_id":"N1","user_id":"esp-rmaker","secret_key":"failed","reset":true}', "factory")


def test_json_strings_escape_quotes_backslashes_and_controls():
    equal(json_string('a"b\\c\x01'), '"a\\"b\\\\c\\u0001"', "escapes")
    # control characters are found in the UTF-8 bytes (no per-character str on MicroPython): never a
    # byte of a multi-byte character
    equal(json_string("\u00e9t\u00e9\x1f"), '"\u00e9t\u00e9\\u001f"', "non-ASCII kept, control escaped")
    equal(json_string("\u00e9t\u00e9"), '"\u00e9t\u00e9"', "non-ASCII alone")
    equal(json.loads(mapping_payload('n"1', "u\\", "k")), {"node_id": 'n"1', "user_id": "u\\", "secret_key": "k"}, "parses")


def test_first_mapping_is_persisted_at_once_and_carries_reset():
    state, path = _state()
    state.set_pending("user-1", "secret-1")
    # a reboot right now finds it on flash
    again = MappingState(Store(path))
    equal(again.payload("N1"), '{"node_id":"N1","user_id":"user-1","secret_key":"secret-1","reset":true}', "payload")


def test_acknowledged_stores_user_id_and_clears_pending():
    state, path = _state()
    state.set_pending("user-1", "secret-1")
    entry = state.pending()
    state.acknowledged(entry)
    again = MappingState(Store(path))
    equal(again.pending(), None, "pending after PUBACK")
    equal(again.mapped_user_id(), "user-1", "stored user id")
    equal(again.payload("N1"), None, "nothing to publish")


def test_same_user_again_has_no_reset_and_a_new_user_does():
    state, _ = _state()
    state.set_pending("user-1", "secret-1")
    state.acknowledged(state.pending())
    state.set_pending("user-1", "secret-2")
    check(not state.pending()["reset"], "same user must not reset")
    equal(state.payload("N1"), '{"node_id":"N1","user_id":"user-1","secret_key":"secret-2"}', "same user")
    state.acknowledged(state.pending())
    state.set_pending("user-2", "secret-3")
    check(state.pending()["reset"], "new owner must reset")
    # docs/protocol.md 5.3: the previous owner's id is erased until the new mapping's PUBACK
    equal(state.mapped_user_id(), None, "stored user id while a new owner is pending")


def test_a_newer_mapping_survives_the_ack_of_an_older_one():
    state, _ = _state()
    state.set_pending("user-1", "secret-1")
    in_flight = state.pending()
    state.set_pending("user-2", "secret-2")
    state.acknowledged(in_flight)
    equal(state.pending()["user_id"], "user-2", "still pending")


def test_bad_mappings_are_refused_without_echoing_the_secret():
    state, _ = _state()
    for user_id, secret_key in (("", "k"), ("u", ""), (None, "k"), ("u", 5), ("u" * 129, "k"), ("u\n", "k"),
                                ("esp-rmaker", "k")):
        raises(MappingError, state.set_pending, user_id, secret_key)
        raises(MappingError, check_mapping, user_id, secret_key)  # the same check, for cloud_user_assoc
    error = raises(MappingError, state.set_pending, "u", "topsecret\x00")
    check("topsecret" not in str(error), "secret leaked into the message")
    equal(state.pending(), None, "nothing stored")
    check_mapping("u" * 128, "\u00e9" * 128)  # the limit counts characters, not UTF-8 bytes


def test_malformed_stored_entry_is_ignored_not_raised():
    state, path = _state()
    state.store.set("pending_mapping", "garbage")
    equal(state.pending(), None, "string entry")
    state.store.set("pending_mapping", {"user_id": "u"})
    equal(state.payload("N1"), None, "entry without secret")


def test_drop_pending_keeps_the_stored_user_id():
    state, _ = _state()
    state.set_pending("user-1", "secret-1")
    state.acknowledged(state.pending())
    state.set_pending("user-2", "secret-2")  # another owner: user-1 erased until user-2's PUBACK
    state.drop_pending()
    equal((state.pending(), state.mapped_user_id()), (None, None), "dropped; the reset it decided stays decided")
    state.set_pending("user-1", "secret-3")
    check(state.pending()["reset"], "so user-1 again resets too")


def test_erase_forgets_everything_about_the_mapping():
    state, _ = _state()
    state.set_pending("user-1", "secret-1")
    state.acknowledged(state.pending())
    state.set_pending("user-2", "secret-2")
    state.erase()
    equal((state.pending(), state.mapped_user_id()), (None, None), "after erase")


def test_topics_plain_and_basic_ingest():
    equal(online.topic("", "N1", "user/mapping"), "node/N1/user/mapping", "plain")
    equal(online.topic("$aws/rules/esp_user_node_mapping/", "N1", "user/mapping"),
          "$aws/rules/esp_user_node_mapping/node/N1/user/mapping", "basic ingest mapping")
    equal(online.topic("$aws/rules/esp_user_node_mapping/", "N1", "config"),
          "$aws/rules/esp_node_config/node/N1/config", "basic ingest config uses its own rule")
    equal(online.topic("lab/", "N1", "config"), "lab/node/N1/config", "other prefix")


def test_node_config_is_minimal_rainmaker_json():
    text = online.node_config("N1", "Lamp", "Lightbulb", "1.2.3", "esp32")
    equal(text, '{"node_id":"N1","config_version":"2020-03-20","info":{"name":"Lamp","fw_version":"1.2.3",'
                '"type":"Lightbulb","platform":"esp32"},"devices":[]}', "config")
    equal(json.loads(text)["info"]["platform"], "esp32", "parses")
