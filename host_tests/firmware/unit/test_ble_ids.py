"""The BLE transport's identifiers (docs/protocol.md 1.2): endpoint UUIDs derived from the service UUID as
ESP-IDF derives them, the 16-bit ids per endpoint, and the service-UUID check applied to settings."""

from rmnode import ble
from fwtest import check, equal

SERVICE = "021a9004-0382-4aea-bff4-6b3f1c5adfb4"


def test_characteristic_uuid_replaces_the_third_and_fourth_bytes():
    equal(ble.characteristic_uuid(SERVICE, 0xFF51), "021aff51-0382-4aea-bff4-6b3f1c5adfb4", "prov-session")
    equal(ble.characteristic_uuid("1775244d-6b43-439b-877c-060f2d9bed07", 0xFF53),
          "1775ff53-6b43-439b-877c-060f2d9bed07", "proto-ver on network_provisioning's service")


def test_endpoint_ids_fixed_then_extra_in_name_order():
    endpoints = ["cloud_user_assoc", "prov-config", "zz-extra", "proto-ver", "prov-session", "prov-scan", "prov-ctrl"]
    equal(ble.endpoint_ids(endpoints), [("prov-ctrl", 0xFF4F), ("prov-scan", 0xFF50), ("prov-session", 0xFF51),
                                        ("prov-config", 0xFF52), ("proto-ver", 0xFF53),
                                        ("cloud_user_assoc", 0xFF54), ("zz-extra", 0xFF55)], "ids")
    equal(ble.endpoint_ids(["proto-ver", "prov-session"]), [("prov-session", 0xFF51), ("proto-ver", 0xFF53)],
          "a fixed endpoint keeps its id when others are missing")


def test_service_uuid_check():
    check(ble.valid_service_uuid(SERVICE), "lower case")
    check(ble.valid_service_uuid(SERVICE.upper()), "upper case")
    for bad in ("", SERVICE[:-1], SERVICE + "0", SERVICE.replace("-", "x"), "021a9004-0382-4aea-bff4-6b3f1c5adfbg",
                None, 7, "021a90040382-4aea-bff4-6b3f1c5adfb4-"):
        check(not ble.valid_service_uuid(bad), repr(bad))
