"""The virtual board is at least as strict as an ESP32 where firmware can tell:

- its clock: 2000-01-01 at power-on, the 2000 epoch, kept across machine.reset(), set through
  machine.RTC; mbedtls checks certificate dates against it, so TLS fails until the clock is set and
  refuses an expired certificate after;
- internal RAM (rmkit/vboard/esp32_ram.c): ESP-IDF's heap regions as ESP32_GENERIC boots with them, the GC
  heap growing into them as py/gc.c grows it, Wi-Fi, sockets, TLS sessions and NimBLE charged; a TLS
  session that does not fit fails with OSError(ENOMEM), NimBLE that does not fit crashes the board;
- what the interpreter says of itself (sys.platform)."""

from __future__ import annotations

import ast
import datetime
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rmkit.vboard.errors import BoardCrashed
from support.paths import VENV_BIN
from rmkit.sntp import SntpServer

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def make_server_pki(directory: Path, not_before: datetime.datetime, not_after: datetime.datetime) -> dict:
    """A CA (DER, for the board) and a localhost server certificate with the given validity (PEM)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clock test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(NOW - 3650 * DAY).not_valid_after(NOW + 3650 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"ca_der": directory / "ca.der", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca_der"].write_bytes(ca.public_bytes(serialization.Encoding.DER))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


class TlsServer:
    """Accepts TLS connections on 127.0.0.1 and says hello; handshake failures are the client's business."""

    def __init__(self, cert: Path, key: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def tls_server_factory(tmp_path):
    servers = []

    def make(name: str, not_before, not_after):
        paths = make_server_pki(tmp_path / name, not_before, not_after)
        server = TlsServer(paths["cert"], paths["key"])
        servers.append(server)
        return server, paths["ca_der"]

    yield make
    for server in servers:
        server.close()


def connect_code(port: int) -> str:
    """Board code: a date-checked TLS connect (CERT_REQUIRED, host name checked); prints the outcome."""
    return f"""
import socket, tls
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = tls.CERT_REQUIRED
ctx.load_verify_locations(open('/ca.der', 'rb').read())
s = socket.socket()
s.connect(socket.getaddrinfo('127.0.0.1', {port})[0][-1])
try:
    t = ctx.wrap_socket(s, server_hostname='localhost')
    print('TLS OK', t.read(5))
    t.close()
except Exception as e:
    s.close()
    print('TLS FAILED', ' '.join(str(e).split()))
"""


def set_rtc_code(when: datetime.datetime) -> str:
    return (f"import machine; machine.RTC().datetime(({when.year}, {when.month}, {when.day}, 0, "
            f"{when.hour}, {when.minute}, {when.second}, 0))")


def board_date(board) -> tuple:
    return tuple(int(v) for v in board.exec("import time; print(*time.gmtime()[:6])").split())


def test_clock_starts_at_2000_counts_from_2000_and_survives_a_reset_but_not_a_power_cut(vboard):
    year, month, day, hour, minute, _ = board_date(vboard)
    assert (year, month, day, hour, minute) == (2000, 1, 1, 0, 0)
    assert vboard.exec("import time; print(time.gmtime(0)[:3], type(time.time()).__name__)").strip() \
        == "(2000, 1, 1) int"

    now = datetime.datetime.now(datetime.timezone.utc)
    vboard.exec(set_rtc_code(now))
    assert board_date(vboard)[:3] == (now.year, now.month, now.day)
    # time.time() counts from 2000 as on the ESP32 port
    seconds = int(vboard.exec("import time; print(time.time())"))
    assert abs(seconds + 946684800 - time.time()) < 5

    vboard.reset()  # machine.reset(): the RTC keeps running
    assert board_date(vboard)[:3] == (now.year, now.month, now.day)
    vboard.power_cut()  # power-on: back to 2000-01-01
    assert board_date(vboard)[:3] == (2000, 1, 1)


def test_tls_fails_before_the_clock_is_set_and_passes_after(vboard, tls_server_factory):
    server, ca_der = tls_server_factory("fresh", NOW - DAY, NOW + 365 * DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())

    before = vboard.exec(connect_code(server.port))
    assert "TLS FAILED" in before and "validity starts in the future" in before

    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    assert vboard.exec(connect_code(server.port)).strip() == "TLS OK b'hello'"


def test_the_node_refuses_an_expired_broker_certificate_once_its_clock_is_right(vboard, tls_server_factory):
    """The firmware's own MQTT client (rmnode.mqtt, CERT_REQUIRED) against a broker whose certificate
    expired yesterday: refused, with mbedtls's reason in the message the node logs."""
    from rmkit.deploy import deploy_to_flash_dir

    deploy_to_flash_dir(vboard.flash_dir)
    server, ca_der = tls_server_factory("expired", NOW - 30 * DAY, NOW - DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())
    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    outcome = vboard.exec(f"""
import asyncio
from rmnode import mqtt
client = mqtt.MQTTClient('N1', 'localhost', {server.port}, ssl_context=mqtt.make_ssl_context(None, None, '/ca.der'),
                          keepalive_s=120, backoff_ms=(1000, 60000), connect_timeout_ms=20000)
try:
    asyncio.run(asyncio.wait_for(client._open(), 10))
    print('CONNECTED')
except Exception as e:
    print('REFUSED', mqtt.describe(e))
""", timeout=20)
    assert "REFUSED ValueError(The certificate validity has expired)" in outcome


def test_the_firmware_sets_the_clock_from_sntp(vboard, tmp_path):
    """rmnode.clock on the board against the harness's SNTP server: RTC set, date right, socket closed."""
    from rmkit.deploy import deploy_to_flash_dir

    deploy_to_flash_dir(vboard.flash_dir)
    with SntpServer() as sntp:
        out = vboard.exec(f"""
import asyncio
from rmnode import clock
print(clock.plausible())
asyncio.run(clock.ensure('127.0.0.1', {sntp.port}))
print(clock.plausible())
""", timeout=20)
        assert sntp.requests == 1
    lines = out.split("\n")
    assert lines[0].strip() == "False" and lines[-2].strip() == "True"
    assert f"clock: time set by SNTP from 127.0.0.1:{sntp.port}" in out
    assert board_date(vboard)[:3] >= (NOW.year, NOW.month, NOW.day)


# -- internal RAM: ESP-IDF's heap and the GC heap growing into it (rmkit/vboard/esp32_ram.c) ----------

# ESP32_GENERIC's HEAP_DATA regions at boot (MicroPython PR #12952 lists them)
BOOT_REGIONS = [240, 7288, 16648, 87144, 15072, 113840]
# mbedtls's record buffers, the first allocations of a TLS session (mbedtls ssl_misc.h)
TLS_IN_BUFFER, TLS_OUT_BUFFER = 16717, 4429


def heap_info(board) -> list:
    return ast.literal_eval(board.exec("import esp32; print(esp32.idf_heap_info(esp32.HEAP_DATA))"))


def ram_stats(board) -> dict:
    return ast.literal_eval(board.exec("import esp32; print(esp32.ram_stats())"))


# Board code: 1 KiB blocks kept in `chunks` until the GC heap has grown twice; prints the GC total and
# ESP-IDF's largest free block at the start and after each growth.
GROW_TWICE = """
import esp32

chunks, steps = [], [esp32.ram_stats()]
while steps[-1]['growths'] < 2 and len(chunks) < 1000:
    chunks.append(bytearray(1024))
    stats = esp32.ram_stats()
    if stats['growths'] != steps[-1]['growths']:
        steps.append(stats)
print([(s['gc_total'], s['largest'], s['free']) for s in steps])
"""


def test_idf_heap_info_lists_the_regions_of_esp32_generic_and_charges_wifi_sockets_and_tls(vboard, tls_server_factory):
    server, ca_der = tls_server_factory("ram", NOW - DAY, NOW + 365 * DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())
    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    regions = heap_info(vboard)
    assert [total for total, *_ in regions] == BOOT_REGIONS
    assert all(largest <= free <= total and low <= free for total, free, largest, low in regions)
    # the first GC area (56 KiB, 56000 B of pool) and the mp_task stack came out of DRAM-main; the D/IRAM
    # region is untouched, its largest block rounded down to a TLSF size class
    assert regions[-1] == (113840, 112968, 110592, 112968)
    boot = ram_stats(vboard)
    assert boot["gc_total"] == 56000 and boot["free"] == sum(free for _, free, *_ in regions)

    vboard.exec("import network; network.WLAN(network.STA_IF).active(True)")
    wifi_on = ram_stats(vboard)["free"]
    assert 28 * 1024 < boot["free"] - wifi_on < 32 * 1024  # esp_wifi_init() and esp_wifi_start()
    out = vboard.exec(connect_code(server.port).replace("    t.close()\n", "    print(esp32.ram_stats())\n    t.close()\n")
                      .replace("import socket, tls", "import socket, tls, esp32"))
    during = ast.literal_eval(out.splitlines()[1])
    # held while the session is open: the socket, both record buffers, the session and the peer's certificate
    assert TLS_IN_BUFFER + TLS_OUT_BUFFER + 2000 < wifi_on - during["free"] < TLS_IN_BUFFER + TLS_OUT_BUFFER + 4000
    assert 12_000 < during["free"] - during["free_min"] < 16_000  # the handshake's working set, gone since
    # closed: all but the context's parsed CA certificate, which goes when the context is collected
    assert 0 < wifi_on - ram_stats(vboard)["free"] < 1024
    vboard.exec("import gc\ndel ctx, s, t\ngc.collect()")  # the socket objects refer to the context
    assert ram_stats(vboard)["free"] == wifi_on


def test_the_gc_heap_grows_as_on_an_esp32_and_gives_an_empty_area_back(vboard):
    """py/gc.c: a second area as large as the heap so far (57360 B for 112000 of pool), then, when that
    much is not left, ESP-IDF's largest free block; areas that a collection leaves empty go back."""
    steps = ast.literal_eval(vboard.exec(GROW_TWICE, timeout=30))
    (total0, largest0, free0), (total1, largest1, free1), (total2, largest2, free2) = steps
    assert (total0, largest0) == (56000, 110592)
    assert total1 == 112000 and free1 == free0 - (57360 + 4)  # the area plus TLSF's block header
    assert largest1 == 55296                                   # what is left of the D/IRAM region
    assert total2 == 112000 + 53952 and free2 == free1 - (largest1 + 4)  # all of that block, 32 B of it the area
    assert largest2 < TLS_IN_BUFFER                            # no room for a TLS session's input buffer now

    after = ast.literal_eval(vboard.exec("import gc, esp32\ndel chunks\ngc.collect()\nprint(esp32.ram_stats())"))
    assert (after["gc_total"], after["givebacks"], after["free"], after["largest"]) == (56000, 2, free0, 110592)
    assert after["gc_peak"] == total2 and after["largest_min"] == largest2


def test_tls_needs_one_block_for_its_input_buffer_not_just_enough_free_ram(vboard, tls_server_factory):
    server, ca_der = tls_server_factory("pieces", NOW - DAY, NOW + 365 * DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())
    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    vboard.take_internal_ram(100_000)  # out of the one big block: what is left lies in pieces
    regions = heap_info(vboard)
    assert sum(free for _, free, *_ in regions) > TLS_IN_BUFFER + TLS_OUT_BUFFER + 15 * 1024
    assert max(largest for *_, largest, _ in regions) < TLS_IN_BUFFER
    assert vboard.exec(connect_code(server.port)).strip() == "TLS FAILED [Errno 12] ENOMEM"
    vboard.take_internal_ram(0)
    assert vboard.exec(connect_code(server.port)).strip() == "TLS OK b'hello'"


def test_a_tls_session_that_does_not_fit_fails_like_on_an_esp32_and_fits_again_later(vboard, tls_server_factory):
    server, ca_der = tls_server_factory("tight", NOW - DAY, NOW + 365 * DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())
    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    vboard.take_internal_ram(ram_stats(vboard)["free"] - 20000)  # 20 KB left: less than a handshake needs
    assert vboard.exec(connect_code(server.port)).strip() == "TLS FAILED [Errno 12] ENOMEM"
    vboard.take_internal_ram(0)
    assert vboard.exec(connect_code(server.port)).strip() == "TLS OK b'hello'"


def test_a_gc_heap_grown_twice_leaves_no_room_for_tls(vboard, tls_server_factory):
    """MicroPython issue #14421: Wi-Fi on, the GC heap grown a second time (into ESP-IDF's largest free
    block): a TLS session no longer fits."""
    server, ca_der = tls_server_factory("grown", NOW - DAY, NOW + 365 * DAY)
    (vboard.flash_dir / "ca.der").write_bytes(ca_der.read_bytes())
    vboard.exec(set_rtc_code(datetime.datetime.now(datetime.timezone.utc)))
    vboard.exec("import network; network.WLAN(network.STA_IF).active(True)")
    assert vboard.exec(connect_code(server.port)).strip() == "TLS OK b'hello'"
    vboard.exec(GROW_TWICE, timeout=30)
    assert vboard.exec(connect_code(server.port)).strip() == "TLS FAILED [Errno 12] ENOMEM"


def test_bluetooth_without_the_ram_for_nimble_crashes_the_board_which_reboots(vboard):
    """v1.24-v1.26 do not check nimble_port_init(): out of internal RAM, BLE().active(True) panics."""
    vboard.take_internal_ram(300_000)  # all there is
    since = vboard.log_offset()
    with pytest.raises(BoardCrashed, match="killed by SIGSEGV"):
        vboard.exec("import bluetooth\nbluetooth.BLE().active(True)")
    log = vboard.read_log(since)
    assert re.search(r"E \(\d+\) BLE_INIT: nimble host init failed", log)
    assert "Guru Meditation Error: Core  1 panic'ed (LoadProhibited)" in log
    assert vboard.crashes == ["MicroPython process crashed: killed by SIGSEGV"]

    vboard.take_internal_ram(0)  # the board rebooted; with its RAM back Bluetooth starts
    before = ram_stats(vboard)["free"]
    assert vboard.exec("import bluetooth\nprint(bluetooth.BLE().active(True))").strip() == "True"
    regions = heap_info(vboard)
    assert regions[0][0] == 15448 and [total for total, *_ in regions[1:]] == BOOT_REGIONS
    on = ram_stats(vboard)["free"]
    assert 17_000 < before - on < 23_000  # about 36 KB taken, 15 KB of it in the released BT region
    vboard.exec("bluetooth.BLE().active(False)")
    assert 14_000 < ram_stats(vboard)["free"] - before < 15_448  # the pools and tasks back, the region stays


def test_the_interpreter_says_it_is_an_esp32(vboard):
    assert vboard.exec("import sys; print(sys.platform)").strip() == "esp32"


# -- the MicroPython version a board runs --------------------------------------------------------------

def rmkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "rmkit"), *args], capture_output=True, text=True, timeout=timeout)


def test_deploy_refuses_a_board_that_runs_micropython_1_23(vboard_factory):
    board = vboard_factory(reported_version="1.23.0", run_main=False)
    assert board.exec("import sys; print(sys.implementation.version[:3])").strip() == "(1, 23, 0)"
    result = rmkit("deploy", "--port", board.url)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"rmkit deploy: the board on {board.url} runs micropython 1.23.0; rmnode needs MicroPython 1.24.0 or newer "
        "(older ones cannot load its DER certificate and key): flash ESP32_GENERIC 1.24.0 or later from "
        "micropython.org first")
    assert not (board.flash_dir / "rmnode").exists()


def test_deploy_over_the_serial_port_puts_the_mpy_firmware_on_a_current_board(vboard_factory):
    board = vboard_factory(run_main=False)
    result = rmkit("deploy", "--port", board.url, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (board.flash_dir / "main.py").exists() and (board.flash_dir / "rmnode" / "clock.mpy").exists()
    assert not list((board.flash_dir / "rmnode").glob("*.py"))


# -- what mpremote shows -------------------------------------------------------------------------------

def mpremote(board, *args: str) -> str:
    result = subprocess.run([str(VENV_BIN / "mpremote"), "connect", str(board.pty_link), "resume", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_mpremote_fs_ls_and_df_print_what_a_board_prints(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    (flash / "lib").mkdir(parents=True)
    (flash / "data.bin").write_bytes(bytes(5000))
    (flash / "lib" / "tiny.py").write_text("x = 1\n")
    board = vboard_factory(flash_dir=flash, run_main=False)
    listing = mpremote(board, "fs", "ls", "/").splitlines()
    assert "        5000 data.bin" in listing  # littlefs reports sizes ("{:12} {}")
    assert "           0 lib/" in listing
    df = mpremote(board, "df").splitlines()
    assert df[0].split() == ["filesystem", "size", "used", "avail", "use%", "mounted", "on"]
    # a 2 MiB littlefs partition: root and lib/ take two blocks each, data.bin two, tiny.py and the
    # board's settings.json one each
    assert df[1].split() == ["<VfsLfs2>", "2097152", str(8 * 4096), str(2097152 - 8 * 4096), "1", "/"]
    assert len(df) == 2
