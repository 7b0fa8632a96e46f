"""Wi-Fi credentials on flash: any bytes round-trip through state.json (SSIDs need not be UTF-8)."""

from rmnode import credentials, log
from rmnode.store import Store
from fwtest import equal, tmpdir


def test_utf8_credentials_stay_readable_text():
    equal(credentials.to_flash(b"Home Net"), "Home Net", "UTF-8 SSID stored as text")
    equal(credentials.from_flash("Home Net"), b"Home Net", "and read back as bytes")


def test_non_utf8_credentials_round_trip_through_the_store():
    ssid, passphrase = b"\xff\xfeCaf\xe9", bytes(range(0, 64))
    store = Store(tmpdir("cred") + "/state.json")
    credentials.save(store, ssid, passphrase)
    equal(credentials.load(Store(store.path)), (ssid, passphrase), "non-UTF-8 bytes survive")
    equal(log.shown(ssid), "fffe436166e9", "a non-UTF-8 SSID is logged as hex")


def test_malformed_or_missing_credentials_mean_provision_again():
    store = Store(tmpdir("cred") + "/state.json")
    equal(credentials.load(store), None, "nothing stored")
    for bad in ({"ssid": 7, "passphrase": "x"}, {"passphrase": "x"}, {"ssid": "", "passphrase": "x"},
                {"ssid": {"hex": "zz"}, "passphrase": "x"}, "not an object"):
        store.set(credentials.WIFI_KEY, bad)
        equal(credentials.load(store), None, "malformed %r" % (bad,))
