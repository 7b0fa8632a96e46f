"""The virtual board looks like an ESP32 on a serial port: mpremote and ampy drive it unchanged,
Ctrl-C and resets behave as on the board, the flash persists, the network follows the air file."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from support.fixtures_vboard import write_air
from support.paths import VENV_BIN
from rmkit.vboard import BoardCrashed, BoardError, VirtualBoard
from rmkit.vboard.board import SIM_HEAP_ALLOWANCE

pytestmark = pytest.mark.board  # tier: virtual boards (support/tiers.py)

MPREMOTE = str(VENV_BIN / "mpremote")
AMPY = str(VENV_BIN / "ampy")


def run_tool(*argv, timeout=30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def port_of(board, transport: str) -> str:
    return board.url if transport == "socket" else str(board.pty_link)


def mac_bytes(board) -> bytes:
    return bytes(int(part, 16) for part in board.mac.split(":"))


@pytest.mark.parametrize("transport", ["socket", "pty"])
def test_mpremote_exec_fs_and_run(vboard, tmp_path, transport):
    port = port_of(vboard, transport)
    out = run_tool(MPREMOTE, "connect", port, "exec",
                   "import network; print(network.WLAN(network.STA_IF).config('mac'))")
    assert out.strip() == repr(mac_bytes(vboard))

    script = tmp_path / "hello.py"
    script.write_text("print('hello', 6 * 7)\n")
    run_tool(MPREMOTE, "connect", port, "fs", "cp", str(script), ":hello.py")
    assert (vboard.flash_dir / "hello.py").read_text() == script.read_text()
    assert "hello.py" in run_tool(MPREMOTE, "connect", port, "fs", "ls")
    assert run_tool(MPREMOTE, "connect", port, "fs", "cat", "hello.py") == script.read_text()
    assert run_tool(MPREMOTE, "connect", port, "run", str(script)).strip() == "hello 42"
    run_tool(MPREMOTE, "connect", port, "fs", "rm", "hello.py")
    assert "hello.py" not in run_tool(MPREMOTE, "connect", port, "fs", "ls")
    assert not (vboard.flash_dir / "hello.py").exists()


@pytest.mark.parametrize("transport", ["socket", "pty"])
def test_mpremote_soft_reset_and_mount(vboard, tmp_path, transport):
    port = port_of(vboard, transport)
    run_tool(MPREMOTE, "connect", port, "resume", "exec", "kept = 1")
    assert run_tool(MPREMOTE, "connect", port, "resume", "exec", "print('kept' in globals())").strip() == "True"
    since = vboard.log_offset()
    run_tool(MPREMOTE, "connect", port, "soft-reset")
    vboard.wait_for_log(r"MPY: soft reboot\r\n", since=since)
    assert run_tool(MPREMOTE, "connect", port, "resume", "exec", "print('kept' in globals())").strip() == "False"

    local = tmp_path / "local"
    local.mkdir()
    (local / "helper.py").write_text("VALUE = 'from the host'\n")
    out = run_tool(MPREMOTE, "connect", port, "mount", str(local), "exec",
                   "import helper, os; print(helper.VALUE); print(sorted(os.listdir()))")
    assert "from the host" in out
    assert "['helper.py']" in out


def test_ampy_put_get_ls_run_over_pty(vboard, tmp_path):
    # ampy 1.1.0 opens its port with serial.Serial(), which takes device paths only (no socket://)
    port = str(vboard.pty_link)
    source = tmp_path / "data.py"
    source.write_text("print('ran', sum(range(10)))\n")
    run_tool(AMPY, "--port", port, "put", str(source), "data.py")
    assert (vboard.flash_dir / "data.py").read_text() == source.read_text()
    listing = run_tool(AMPY, "--port", port, "ls").split()
    assert "/data.py" in listing
    assert run_tool(AMPY, "--port", port, "get", "data.py").strip() == source.read_text().strip()
    assert run_tool(AMPY, "--port", port, "run", str(source)).strip() == "ran 45"


def test_ctrl_c_interrupts_raw_paste_code_and_main(vboard_factory):
    board = vboard_factory(run_main=True)
    (board.flash_dir / "main.py").write_text("print('main looping')\nwhile True:\n    pass\n")
    board.reset()
    board.wait_for_log("main looping")
    # board.exec interrupts main.py with Ctrl-C before entering the raw REPL
    assert board.exec("print('after main')").strip() == "after main"
    board.wait_for_log(r"KeyboardInterrupt")

    # mpremote runs code with raw-paste; --no-follow leaves the loop running
    since = board.log_offset()
    run_tool(MPREMOTE, "connect", board.url, "resume", "exec", "--no-follow",
             "print('spinning')\nwhile True:\n    pass")
    board.wait_for_log("spinning", since=since)
    assert board.exec("print('interrupted')").strip() == "interrupted"
    board.wait_for_log(r"KeyboardInterrupt", since=since)


def test_ctrl_c_interrupts_the_main_thread_not_a_thread_it_started(vboard_factory):
    # on a board Ctrl-C interrupts the main task; the unix port raises KeyboardInterrupt in whichever thread
    # got the process's SIGINT (one whose signals are not blocked at that moment), so the board sends it to the
    # main thread only
    board = vboard_factory(run_main=True)
    (board.flash_dir / "main.py").write_text(
        "import _thread, gc, time\n"
        "count = 0\n"
        "def spin():\n"  # collecting: the unix port's collector blocks signals in the thread it stops
        "    global count\n"
        "    while True:\n"
        "        gc.collect()\n"
        "        count += 1\n"
        "for _ in range(3):\n"
        "    _thread.start_new_thread(spin, ())\n"
        "print('main looping')\n"
        "while True:\n"
        "    time.sleep_ms(1)\n")
    board.reset()
    board.wait_for_log("main looping")
    before = int(board.exec("print(count)").strip())  # interrupts main.py
    for round in range(5):  # the main thread loops again, and Ctrl-C interrupts it again; the threads run on
        since = board.log_offset()
        run_tool(MPREMOTE, "connect", board.url, "resume", "exec", "--no-follow",
                 "import time\nprint('looping again')\nwhile True:\n    time.sleep_ms(1)")
        board.wait_for_log("looping again", since=since)
        now = int(board.exec("print(count)").strip())
        board.wait_for_log(r"KeyboardInterrupt", since=since)
        assert now > before, (round, before, now)
        before = now
    assert "Unhandled exception in thread" not in board.read_log()


# Three threads collect garbage in a loop while the main thread moves its only references between two lists
# and allocates (so that what a collection wrongly freed is soon reused): the unix port, with no GIL, let the
# main thread run on while another thread's collection marked, and lost such objects or hung (seen: a module
# global resolving to another function); a board's GIL stops it. Each collection must stop the main thread.
GC_RACE = """\
import _thread, gc, os, time
stop = [False]
running = [0]
def storm():
    running[0] += 1
    while not stop[0]:
        gc.collect()
    running[0] -= 1
for _ in range(3):
    _thread.start_new_thread(storm, ())
N = 100
a = [[i, "v%d" % i] for i in range(N)]
b = [None] * N
rounds = lost = 0
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 3000:
    rounds += 1
    for i in range(N):
        x = a[i]
        a[i] = None
        b[i] = x
        x = None
    for i in range(N):
        x = b[i]
        b[i] = None
        a[i] = x
        x = None
    junk = [[j, j] for j in range(20)]
    for i in range(N):
        o = a[i]
        if type(o) is not list or len(o) != 2 or o[0] != i or o[1] != "v%d" % i:
            lost += 1
            a[i] = [i, "v%d" % i]
stop[0] = True
while running[0]:
    time.sleep_ms(1)
print(rounds, lost, os.getenv("VBRAM stats"))
"""


def test_a_collection_stops_every_other_thread_as_the_esp32_gil_does(vboard):
    out = vboard.exec(GC_RACE, timeout=60).split()
    rounds, lost = int(out[0]), int(out[1])
    stats = dict(field.split("=") for field in out[2:])
    assert lost == 0, out
    assert rounds > 10, out  # the main thread was not starved by threads that collect back to back
    stops, stopped = int(stats["world_stops"]), int(stats["threads_stopped"])
    assert stops > 100, stats
    assert stopped >= stops, stats  # each collection stopped at least one other thread


def test_ctrl_c_at_the_friendly_repl(vboard):
    with socket.create_connection(("127.0.0.1", vboard.tcp_port)) as sock:
        since = vboard.log_offset()
        sock.sendall(b"\r\x03")
        vboard.wait_for_log(r">>> ", since=since)
        sock.sendall(b"import time\r")
        # the loop says when it runs (the echo shows the call, not the joined words), so Ctrl-C comes in it
        sock.sendall(b"for i in range(10**9): i or print('loop', 'running'); time.sleep(0.01)\r\r")
        vboard.wait_for_log(r"loop running", since=since)
        sock.sendall(b"\x03")
        vboard.wait_for_log(r"KeyboardInterrupt", since=since)
        sock.sendall(b"print('still', 'here')\r")
        vboard.wait_for_log(r"still here", since=since)
    assert not vboard.crashes


def test_flash_survives_reset_and_power_cut(vboard):
    vboard.exec("f = open('kept.txt', 'w'); f.write('before reset'); f.close()")
    vboard.reset()
    assert vboard.exec("print(open('kept.txt').read())").strip() == "before reset"
    vboard.power_cut()
    assert vboard.exec("print(open('/kept.txt').read())").strip() == "before reset"
    assert (vboard.flash_dir / "kept.txt").read_text() == "before reset"


def test_boot_and_main_run_at_power_on_and_after_every_reset(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot.py ran')\n")
    (flash / "main.py").write_text("import machine\nprint('main.py ran, cause', machine.reset_cause())\n")
    board = vboard_factory(flash_dir=flash)
    board.wait_for_log(r"boot\.py ran\r?\nmain\.py ran, cause 1\r?\n")  # PWRON_RESET

    # machine.reset() is ESP_RST_SW, which the ESP32 port reads as HARD_RESET (ports/esp32/modmachine.c)
    since = board.log_offset()
    board.reset()
    board.wait_for_log(r"SW_CPU_RESET.*\r\nboot\.py ran\r?\nmain\.py ran, cause 2", since=since)

    since = board.log_offset()
    run_tool(MPREMOTE, "connect", board.url, "resume", "exec", "--no-follow", "import machine; machine.reset()")
    board.wait_for_log(r"SW_CPU_RESET.*\r\nboot\.py ran\r?\nmain\.py ran, cause 2", since=since)

    # Ctrl-D at the friendly REPL: soft reboot runs boot.py and main.py again
    since = board.log_offset()
    with socket.create_connection(("127.0.0.1", board.tcp_port)) as sock:
        sock.sendall(b"\r\x02")
        board.wait_for_log(">>> ", since=since)
        sock.sendall(b"\x04")
        board.wait_for_log(r"MPY: soft reboot\r\nboot\.py ran\r?\nmain\.py ran, cause 5", since=since)  # SOFT_RESET

    # soft reset from the raw REPL (what mpremote does): boot.py only, as on the ESP32
    since = board.log_offset()
    run_tool(MPREMOTE, "connect", board.url, "exec", "print('fresh')")
    match = board.wait_for_log(r"MPY: soft reboot\r\nboot\.py ran\r?\n", since=since)
    board.wait_for_log("fresh", since=match.end())
    assert "main.py ran" not in board.read_log(match.end())


def test_no_main_skips_boot_files(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("print('main.py ran')\n")
    board = vboard_factory(flash_dir=flash, run_main=False)
    assert board.exec("print('ready')").strip() == "ready"
    assert "main.py ran" not in board.read_log()


def test_network_follows_the_air_file(vboard_factory, tmp_path):
    air = write_air(tmp_path / "air.json",
                    {"ssid": "home", "password": "correct horse", "rssi": -42, "channel": 11,
                     "ip": "127.0.0.7", "join_s": 0.2},
                    {"ssid": "cafe", "rssi": -71, "channel": 1}, scan_s=0.2)
    board = vboard_factory(air=air)
    board.exec("import network, time\n"
               "sta = network.WLAN(network.STA_IF)\n"
               "sta.active(True)\n"
               "sta.config(reconnects=1)\n"  # two attempts, then status() shows the reason
               "def join(ssid, key):\n"
               "    sta.connect(ssid, key)\n"
               "    first = sta.status()\n"
               "    t0 = time.ticks_ms()\n"
               "    while sta.status() == network.STAT_CONNECTING and time.ticks_diff(time.ticks_ms(), t0) < 3000:\n"
               "        time.sleep_ms(20)\n"
               "    print(first, sta.status(), sta.isconnected(), sta.ifconfig()[0])\n")
    consts = board.exec("print(network.STAT_CONNECTING, network.STAT_GOT_IP, network.STAT_WRONG_PASSWORD, "
                        "network.STAT_NO_AP_FOUND, network.STAT_IDLE)").split()
    assert consts == ["1001", "1010", "202", "201", "1000"]  # ESP32 port values

    assert board.exec("join('home', 'correct horse')").split() == ["1001", "1010", "True", "127.0.0.7"]
    assert board.exec("print(sta.status('rssi'), sta.config('channel'), sta.config('essid'))").split() == \
        ["-42", "11", "home"]
    assert board.exec("sta.disconnect(); print(sta.status(), sta.isconnected())").split() == ["1000", "False"]
    # a wrong passphrase: 4-way handshake timeout, as ESP32s report it
    assert board.exec("join('home', 'wrong')").split() == ["1001", "15", "False", "0.0.0.0"]
    assert board.exec("join('nowhere', 'x')").split() == ["1001", "201", "False", "0.0.0.0"]

    board.exec("sta.disconnect(); time.sleep_ms(150)")  # no scan while the driver still retries 'nowhere'
    took_ms, scan = board.exec("t0 = time.ticks_ms(); aps = sta.scan(); print(time.ticks_diff(time.ticks_ms(), t0))\n"
                               "for ap in aps: print(ap)").strip().split("\n", 1)
    assert int(took_ms) >= 200  # a scan blocks the board for the air's scan_s
    scan = scan.splitlines()
    assert len(scan) == 2
    assert scan[0].startswith("(b'home', b'") and scan[0].endswith(", 11, -42, 3, False)")
    assert scan[1].startswith("(b'cafe', b'") and scan[1].endswith(", 1, -71, 0, False)")

    # change the air while the board runs: the AP "nowhere" appears, "cafe" goes away
    write_air(air, {"ssid": "nowhere", "password": "x" * 8, "join_s": 0.1}, {"ssid": "home", "password": "p" * 8},
              {"ssid": "attic", "hidden": True}, scan_s=0.05)
    assert board.exec("print([ap[0] for ap in sta.scan()])").strip() == "[b'nowhere', b'home', b'']"
    assert board.exec("join('nowhere', 'xxxxxxxx')").split() == ["1001", "1010", "True", "127.0.0.1"]


def test_network_fault_drops_the_link_and_station_retries(vboard_factory, tmp_path):
    air = write_air(tmp_path / "air.json",
                    {"ssid": "flaky", "password": "p" * 8, "join_s": 0.1, "drop_after_s": 0.3},
                    {"ssid": "broken", "fail": "assoc", "join_s": 0.05})
    board = vboard_factory(air=air)
    # the simulation's clock stepped by hand (its _now), so a busy host cannot push a look past its window
    out = board.exec("import network, time\n"
                     "clock = [time.ticks_ms()]\n"
                     "network._now = lambda: clock[0]\n"
                     "def after(ms): clock[0] = time.ticks_add(clock[0], ms)\n"
                     "sta = network.WLAN(network.STA_IF); sta.active(True)\n"
                     "sta.connect('flaky', 'pppppppp'); after(200); print(sta.isconnected())\n"
                     "after(250); print(sta.isconnected(), sta.status())\n"
                     "after(150); print(sta.isconnected())\n"
                     "sta.config(reconnects=1); sta.connect('broken', ''); after(300); print(sta.status())\n")
    assert out.split() == ["True", "False", "1001", "True", "203"]


def test_machine_and_softap_look_like_an_esp32(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "settings.json").write_text(json.dumps({"prov_linger_s": 5, "prov_port": 80}))
    board = vboard_factory(flash_dir=flash, mac="24:0a:c4:00:01:fe", softap="127.0.0.1:18080")
    assert board.softap == ("127.0.0.1", 18080)
    assert json.loads((flash / "settings.json").read_text()) == {"prov_linger_s": 5, "prov_port": 18080}
    out = board.exec("import machine, network, sys\n"
                     "ap = network.WLAN(network.AP_IF); ap.active(True)\n"
                     "ap.config(essid='PROV_01fe', password='abcdefgh', authmode=network.AUTH_WPA2_PSK)\n"
                     "print(machine.unique_id() == network.WLAN(network.STA_IF).config('mac'))\n"
                     "print(ap.config('mac'), ap.config('essid'), ap.ifconfig()[0])\n"
                     "print(sys.path, machine.reset_cause() == machine.PWRON_RESET)\n"
                     "print(sorted(__import__('os').listdir('/')))\n")
    lines = out.splitlines()
    assert lines[0] == "True"
    assert lines[1] == "b'$\\n\\xc4\\x00\\x01\\xff' PROV_01fe 127.0.0.1"  # AP MAC = base MAC + 1
    assert lines[2] == "['', '.frozen', '/lib'] True"
    assert lines[3] == "['settings.json']"
    with pytest.raises(BoardError, match="ValueError: unknown config param"):
        board.exec("print(ap.config('password'))")


def test_heap_option_sets_the_firmware_heap(vboard_factory):
    # None: an ESP32's first GC area, 56000 B of pool, in 64-bit bytes (it grows later, as on a board)
    for heap, size in (("110K", 110 * 1024), ("64K", 64 * 1024), (None, 56000 * 140 // 100)):
        board = vboard_factory(heap=heap, name=f"heap{heap}")
        free, total = map(int, board.exec("import gc; gc.collect(); print(gc.mem_free(), gc.mem_free() + gc.mem_alloc())").split())
        assert size <= total <= size + SIM_HEAP_ALLOWANCE + 1024
        # the firmware gets about `heap` (and what the simulator's boot code frees later), not 2 MB
        assert 0.9 * size <= free <= size + 2048
        if heap is not None:
            with pytest.raises(BoardError, match="MemoryError"):
                board.exec("b = bytearray(%d)" % (size + 4096))


def test_without_a_c_compiler_a_board_says_in_one_line_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("RMKIT_RUNTIME_DIR", str(tmp_path / "run"))  # nothing compiled there yet
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(BoardError, match=r"^[^\n]*no C compiler: install gcc \(Debian/Ubuntu: apt-get install gcc\)"):
        VirtualBoard("nocc", flash_dir=tmp_path / "flash").start()


def test_two_boards_at_once(vboard_factory):
    one = vboard_factory("left")
    two = vboard_factory("right")
    assert one.mac != two.mac and one.mac.startswith("24:0a:c4:")
    assert {one.tcp_port, two.tcp_port, one.softap[1], two.softap[1]}.__len__() == 4
    one.exec("open('who.txt', 'w').write('left')")
    two.exec("open('who.txt', 'w').write('right')")
    for board in (one, two):
        out = run_tool(MPREMOTE, "connect", board.url, "exec",
                       "import network; print(network.WLAN(network.STA_IF).config('mac')); print(open('who.txt').read())")
        assert out.split() == [repr(mac_bytes(board)), board.name]


def test_exec_returns_the_board_traceback(vboard):
    with pytest.raises(BoardError, match=r"(?s)File \"<stdin>\", line 2.*ZeroDivisionError"):
        vboard.exec("x = 1\nx / 0")
    assert vboard.exec("print('fine')").strip() == "fine"


def test_wait_for_log_timeout_names_pattern_tail_and_path(vboard):
    vboard.exec("print('something else')")
    with pytest.raises(BoardError) as info:
        vboard.wait_for_log(r"never printed", timeout=0.3)
    message = str(info.value)
    assert "'never printed'" in message and "something else" in message and str(vboard.serial_log) in message


def test_crash_of_micropython_is_reported_not_a_hang(vboard):
    since = vboard.log_offset()
    os.kill(vboard._sup.child_pid(), signal.SIGSEGV)
    t0 = time.monotonic()
    with pytest.raises(BoardCrashed, match="killed by SIGSEGV"):
        vboard.wait_for_log(r"never printed", timeout=30, since=since)
    assert time.monotonic() - t0 < 10
    vboard.wait_for_log(r"\[vboard\] MicroPython process crashed: killed by SIGSEGV", since=since)
    assert vboard.crashes == ["MicroPython process crashed: killed by SIGSEGV"]
    # like an ESP32 after a panic, the board reboots and is usable again; ESP_RST_PANIC reads as HARD_RESET
    assert vboard.exec("import machine; print(machine.reset_cause())").strip() == "2"


def test_no_process_outlives_the_board(vboard_factory):
    board = vboard_factory()
    board.reset()
    board.power_cut()
    pids = board.pids
    assert len(pids) == 3
    link = board.pty_link
    board.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not link.exists() and not link.is_symlink()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", board.tcp_port), timeout=1)


def test_main_py_errors_print_like_on_the_esp32(vboard_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text("x = 1\nraise ValueError('bad config')\n")
    board = vboard_factory(flash_dir=flash)
    match = board.wait_for_log(r"Traceback \(most recent call last\):\r?\n(.*\r?\n)*?ValueError: bad config\r?\n")
    assert match.group(0).splitlines()[1:] == ['  File "main.py", line 2, in <module>', "ValueError: bad config"]
    # the REPL comes up afterwards with main.py's globals, as on the board
    assert board.exec("print(x)").strip() == "1"


def test_flash_supports_atomic_replace_by_rename(vboard):
    # temp file + rename is how firmware (rmnode.store) replaces a file on littlefs
    out = vboard.exec("import os\n"
                      "open('/state.json', 'w').write('old')\n"
                      "open('/state.json.tmp', 'w').write('new')\n"
                      "os.rename('/state.json.tmp', '/state.json')\n"
                      "open('a.txt', 'w').write('rel'); os.rename('a.txt', 'b.txt')\n"
                      "print(open('/state.json').read(), sorted(os.listdir('/')))\n")
    assert out.strip() == "new ['b.txt', 'settings.json', 'state.json']"
    assert (vboard.flash_dir / "state.json").read_text() == "new"


def test_a_baud_rate_paces_what_the_host_sends_as_a_uart_does(vboard_factory):
    """VirtualBoard(baud=115200): at most 11,520 bytes a second reach the board (8N1), in order and complete."""
    payload = "".join(chr(0x41 + i % 26) for i in range(3000))
    code = f"s = {payload!r}\nprint(len(s), sum(map(ord, s)))"
    board = vboard_factory(run_main=False, baud=115200)
    started = time.monotonic()
    assert board.exec(code, timeout=20).strip() == f"{len(payload)} {sum(map(ord, payload))}"
    assert time.monotonic() - started >= len(code) / 11520
