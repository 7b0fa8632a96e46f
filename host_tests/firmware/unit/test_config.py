"""Factory data, settings and node identity (docs/protocol.md 7.3, 7.4); bad files fall back to defaults."""

import os

from rmnode import cert, config
from fwtest import raises, check, equal, tmpdir, write

MAC = bytes([0x24, 0x0A, 0xC4, 0x1A, 0x2B, 0x3C])

# A self-signed EC certificate whose subject is C=XX, O=rmkit test, CN=Socfz6jwKPv8wDw4AakTts
CERT_DER = bytes.fromhex(
    "308201463081eea003020102020107300a06082a8648ce3d04030230183116301406035504030c0d726d6b69742074"
    "657374204341301e170d3236303130313030303030305a170d3335313233303030303030305a3043310b3009060355"
    "04061302585831133011060355040a0c0a726d6b69742074657374311f301d06035504030c16536f63667a366a774b"
    "5076387744773441616b5474733059301306072a8648ce3d020106082a8648ce3d030107034200047d8856d214815c"
    "4f1307f31460c3b7f12ba9cb198c26d8c441505d128b57d086c64b8e2cb436040b6b807eaf4642ab0caab5d56832ed"
    "0f1d2782ddbfd3d8cd77300a06082a8648ce3d040302034700304402203c0bdf68cc2ec5858cca6522515a3180bf48"
    "5b6e9422bcd360a784245cd77dbc02206871257a9a182beb354960ec82da8842af476a12ec2cac6059f3cf3461c06a31")


def _board(factory=None, settings=None, cert=None):
    root = tmpdir("cfg")
    os.mkdir(root + "/factory")
    if factory is not None:
        write(root + "/factory/factory.json", factory)
    if settings is not None:
        write(root + "/settings.json", settings)
    if cert is not None:
        write(root + "/factory/node.crt.der", cert)
    return root


def test_no_factory_data_uses_mac_identity_and_defaults():
    cfg = config.NodeConfig(MAC, _board())
    equal((cfg.node_id, cfg.node_id_source), ("240AC41A2B3C", "mac"), "node id from MAC")
    equal(cfg.service_name, "PROV_1a2b3c", "service name")
    equal(cfg.sec_ver, 1, "sec_ver")
    equal(cfg.pop, "c41a2b3c", "MAC-derived PoP (docs/protocol.md 7.4)")
    equal((cfg.prov_port, cfg.prov_linger_s), (80, 30), "settings defaults")
    equal((cfg.mqtt_host, cfg.mqtt_port, cfg.topic_prefix, cfg.cert_path), (None, 8883, "", None), "mqtt defaults")


def test_factory_values():
    root = _board('{"node_id": "node-42", "pop": "s3cr3t", "sec_ver": 0, "mqtt_host": "localhost",'
                  ' "mqtt_port": 18883, "topic_prefix": "$aws/rules/x/", "cert": "/factory/node.crt.der",'
                  ' "key": "/factory/node.key.der", "ca": "/factory/ca.crt.der"}',
                  '{"prov_port": 8080, "prov_linger_s": 2, "other": true}')
    cfg = config.NodeConfig(MAC, root)
    equal((cfg.node_id, cfg.node_id_source), ("node-42", "factory"), "factory node id")
    equal((cfg.pop, cfg.sec_ver), ("s3cr3t", 0), "pop and sec_ver")
    equal((cfg.mqtt_host, cfg.mqtt_port, cfg.topic_prefix), ("localhost", 18883, "$aws/rules/x/"), "mqtt")
    equal(cfg.cert_path, root + "/factory/node.crt.der", "cert path under root")
    equal((cfg.prov_port, cfg.prov_linger_s, cfg.settings["other"]), (8080, 2, True), "settings")


def test_node_id_from_certificate_cn():
    root = _board('{"cert": "/factory/node.crt.der", "pop": ""}', cert=CERT_DER)
    cfg = config.NodeConfig(MAC, root)
    equal((cfg.node_id, cfg.node_id_source), ("Socfz6jwKPv8wDw4AakTts", "cert"), "CN")
    equal(cfg.pop, "", "explicit empty PoP kept")


def test_subject_cn_parser():
    equal(cert.subject_cn(CERT_DER), "Socfz6jwKPv8wDw4AakTts", "CN")
    raises(cert.CertError, cert.subject_cn, b"")
    raises(cert.CertError, cert.subject_cn, CERT_DER[:100])
    raises(cert.CertError, cert.subject_cn, b"\x04\x02ab")
    for cut in range(0, len(CERT_DER), 7):
        try:
            cert.subject_cn(CERT_DER[:cut])
        except cert.CertError:
            pass


def test_bad_certificate_falls_back_to_mac():
    cfg = config.NodeConfig(MAC, _board('{"cert": "/factory/node.crt.der"}', cert=b"\x30\x03\x02\x01\x00"))
    equal(cfg.node_id_source, "mac", "bad DER")
    cfg = config.NodeConfig(MAC, _board('{"cert": "/factory/missing.der"}'))
    equal(cfg.node_id_source, "mac", "missing file")


def test_bad_files_and_values_fall_back():
    for factory in ("{not json", "[1, 2]", "", '{"node_id": "a/b", "sec_ver": 2, "mqtt_port": "x", "pop": 5}'):
        cfg = config.NodeConfig(MAC, _board(factory, '{"prov_port": 70000, "prov_linger_s": "soon"}'))
        equal(cfg.node_id, "240AC41A2B3C", "node id for %r" % factory)
        equal((cfg.sec_ver, cfg.pop, cfg.mqtt_port), (1, "c41a2b3c", 8883), "defaults for %r" % factory)
        equal((cfg.prov_port, cfg.prov_linger_s), (80, 30), "settings defaults")


def test_node_id_validation():
    check(config.valid_node_id("240AC41A2B3C"), "mac id")
    for bad in ("", "a/b", "a+b", "a#", "a b", "x" * 65, 5, None):
        check(not config.valid_node_id(bad), "rejects %r" % (bad,))


def test_mac_must_be_six_bytes():
    raises(ValueError, config.NodeConfig, b"\x01\x02", _board())


def test_mqtt_settings_are_checked_not_trusted():
    """A bad MQTT setting costs a log line and the default, never a boot loop (online.build uses these)."""
    cfg = config.NodeConfig(MAC, _board(settings='{"mqtt_keepalive_s": "60", "mqtt_backoff_ms": [1000], '
                                                 '"mqtt_connect_timeout_ms": -1, "node_name": 5, "node_type": ""}'))
    equal((cfg.mqtt_keepalive_s, cfg.mqtt_backoff_ms, cfg.mqtt_connect_timeout_ms), (120, (1000, 60000), 20000),
          "MQTT defaults after bad values")
    equal((cfg.node_name, cfg.node_type), ("rmnode", "Other"), "name/type defaults after bad values")
    cfg = config.NodeConfig(MAC, _board(settings='{"mqtt_keepalive_s": 30, "mqtt_backoff_ms": [200, 2000], '
                                                 '"node_name": "kitchen"}'))
    equal((cfg.mqtt_keepalive_s, cfg.mqtt_backoff_ms, cfg.node_name), (30, (200, 2000), "kitchen"), "good values kept")
    for bad in ('[2000, 200]', '"ab"', '[true, 5000]'):
        cfg = config.NodeConfig(MAC, _board(settings='{"mqtt_backoff_ms": %s}' % bad))
        equal(cfg.mqtt_backoff_ms, (1000, 60000), "backoff %s refused" % bad)


def test_a_float_sec_ver_is_refused():
    cfg = config.NodeConfig(MAC, _board(factory='{"sec_ver": 0.0}'))
    equal(cfg.sec_ver, 1, "0.0 is not Security 0")


def test_provisioning_transport_from_settings_then_factory():
    equal(config.NodeConfig(MAC, _board()).transport, "softap", "default")
    equal(config.NodeConfig(MAC, _board(factory='{"transport": "ble"}')).transport, "ble", "factory")
    cfg = config.NodeConfig(MAC, _board(factory='{"transport": "ble"}', settings='{"transport": "both"}'))
    equal(cfg.transport, "both", "settings override factory data")
    for bad in ('"bluetooth"', '7', '""', 'null', '["ble"]'):
        equal(config.NodeConfig(MAC, _board(settings='{"transport": %s}' % bad)).transport, "softap", bad)


def test_ble_settings():
    cfg = config.NodeConfig(MAC, _board())
    equal((cfg.ble_service_uuid, cfg.ble_idle_s), (None, 60), "defaults: rmnode.ble's service, 60 s")
    cfg = config.NodeConfig(MAC, _board(settings='{"ble_service_uuid": "1775244d-6b43-439b-877c-060f2d9bed07", '
                                                  '"ble_idle_s": 5}'))
    equal((cfg.ble_service_uuid, cfg.ble_idle_s), ("1775244d-6b43-439b-877c-060f2d9bed07", 5), "settings")
    equal(config.NodeConfig(MAC, _board(settings='{"ble_idle_s": 0}')).ble_idle_s, 60, "out of range")
