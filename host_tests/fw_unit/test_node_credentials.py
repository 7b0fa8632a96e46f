"""Wi-Fi credentials on flash: any bytes round-trip through state.json (SSIDs need not be UTF-8)."""

from rmnode import node
from rmnode.store import Store
from fwtest import equal, tmpdir


def test_utf8_credentials_stay_readable_text():
    equal(node._to_flash(b"Home Net"), "Home Net", "UTF-8 SSID stored as text")
    equal(node._from_flash("Home Net"), b"Home Net", "and read back as bytes")


def test_non_utf8_credentials_round_trip_through_the_store():
    ssid, passphrase = b"\xff\xfeCaf\xe9", bytes(range(0, 64))
    store = Store(tmpdir("cred") + "/state.json")
    store.set(node.WIFI_KEY, {"ssid": node._to_flash(ssid), "passphrase": node._to_flash(passphrase)})
    again = Store(store.path).get(node.WIFI_KEY)
    equal((node._from_flash(again["ssid"]), node._from_flash(again["passphrase"])), (ssid, passphrase),
          "non-UTF-8 bytes survive")
    equal(node._shown(ssid), "fffe436166e9", "a non-UTF-8 SSID is logged as hex")
