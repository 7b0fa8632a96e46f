# Simulated ESP32 `esp32` module for the virtual board, and the simulator's door to the ESP32 RAM
# model. The model is C, preloaded into this process (rmkit/vboard/esp32_ram.c): ESP-IDF's heap as
# ESP32_GENERIC boots with it, MicroPython's GC heap growing into it as on a board, and mbedtls's TLS
# sessions and parsed certificates. This module answers esp32.idf_heap_info() from it and charges what
# the simulated drivers take from ESP-IDF's heap on a board:
# - Wi-Fi (vb_network): esp_wifi_init() at the first network.WLAN() (MicroPython ports/esp32
#   network_wlan.c esp_initialise_wifi(), never undone), esp_wifi_start() while an interface is active;
# - each socket the firmware opens (vb_socket): lwIP's connection state until it is closed;
# - NimBLE (vb_bluetooth): BLE().active(True) gives the BT controller's classic-BT RAM back as a new
#   region, then allocates the controller, the host's buffer pools and the host task; a board that
#   cannot is one whose nimble_port_init() fails, which v1.24-v1.26 do not check: it panics.
# The protocol (os.getenv("VBRAM ...")) is described in esp32_ram.c.
# Installed as sys.modules["esp32"] by vb_boot.py.
import os
import time

HEAP_DATA = 4  # MALLOC_CAP_8BIT
HEAP_EXEC = 1  # MALLOC_CAP_EXEC

# Wi-Fi. "wifi stack (28kiB for initialisation, 2.5kiB for active" (MicroPython issue #8940). What
# esp_wifi_init() allocates: 10 static RX buffers of 1.6 KB (esp_wifi Kconfig
# ESP_WIFI_STATIC_RX_BUFFER_NUM, the port's sdkconfig leaves it), the Wi-Fi task's stack of 6656 B and
# its TCB, and driver state, the two default netifs and management buffers in ~1 KB pieces.
WIFI_INIT = (1600,) * 10 + (6656, 352) + (1024,) * 5 + (534,)
WIFI_START = (1280, 1280)
# lwIP, per socket while it is open: netconn, tcp_pcb, receive mailbox and its semaphore (~0.5 KB;
# in MicroPython issue #14421 a bare socket() takes about 1 KB off the largest free block). The
# segments in flight (issue #8940 counts "~4-7kiB per socket" with them: the TCP windows, TCP_SND_BUF
# and TCP_WND 5760 by default) are transient and, for the node's MQTT messages of a few hundred bytes,
# small; the TLS handshake's large flight is in the handshake's 15 KiB (esp32_ram.c).
SOCKET = (60, 200, 110, 100)
# NimBLE on ESP32 (ESP-IDF v5.2/v5.4 defaults; MicroPython's boards/sdkconfig.ble):
# - esp_bt_controller_mem_release(ESP_BT_MODE_CLASSIC_BT) in nimble_port_init() (esp-nimble
#   nimble_port.c; bt.c esp_bt_controller_rom_mem_release) gives 0x3FFB2730-0x3FFB6388 back once:
#   heap_caps_add_region() mallocs its heap_t, then puts the region at the head of the list;
BT_RELEASED_REGION = 15448
HEAP_T = 28
# - the controller: its task's stack (esp_task.h ESP_TASK_BT_CONTROLLER_STACK 3584) and TCB, and its
#   own queues, semaphores and blob allocations (closed source; ~4 KB estimated);
BT_CONTROLLER = (3584, 352) + (1024,) * 4
# - the host's transport and msys pools (esp-nimble transport.c ble_buf_alloc, os_msys_init.c; Kconfig
#   defaults): EVT 30 x 72, EVT discardable 8 x 72, CMD 1 x 260, ACL 24 x ~304, msys1 12 x 256,
#   msys2 24 x 320;
NIMBLE_POOLS = (2160, 576, 260, 7296, 3072, 7680)
# - the NimBLE host task (nimble_port_freertos_init): CONFIG_BT_NIMBLE_TASK_STACK_SIZE 6144 and TCB.
NIMBLE_HOST_TASK = (6144, 352)
NIMBLE_STARTUP_TIMEOUT_MS = 2000  # extmod/nimble/modbluetooth_nimble.c, waiting for the host to sync
ENOBUFS = 105
ETIMEDOUT = 116

_boot_ms = time.ticks_ms()
_wifi = None   # handles of esp_wifi_init()'s allocations, once it ran
_wifi_on = None
_bt_released = False
_nimble = None


# Without the model (these modules imported on a plain unix port, as the firmware's unit tests do)
# nothing is charged and idf_heap_info() raises.
_MODEL = os.getenv("VBRAM stats") is not None


def _ram(command):
    answer = os.getenv("VBRAM " + command)
    if answer is None:
        raise RuntimeError("the RAM model (esp32_ram.so) is not preloaded into this process")
    return answer


def _take(tag, sizes, fd=None):
    """ESP-IDF allocations, all or none: their handles, or None when one does not fit."""
    handles = []
    if not _MODEL:
        return handles
    suffix = "" if fd is None else " %d" % fd
    for size in sizes:
        handle = int(_ram("malloc %s %d%s" % (tag, size, suffix)))
        if not handle:
            _give(handles)
            return None
        handles.append(handle)
    return handles


def _give(handles):
    for handle in handles or ():
        _ram("free %d" % handle)


def idf_heap_info(capabilities):
    """(total, free, largest free block, minimum free ever) per region, as ports/esp32/modesp32.c."""
    if not capabilities & HEAP_DATA:
        return []
    return [tuple(int(v) for v in region.split(",")) for region in _ram("info").split(";")]


def ram_stats():
    """The model's figures (esp32_ram.c stats_line()): gc_total, largest, largest_min, ... as ints."""
    return {key: int(value) for key, value in (item.split("=") for item in _ram("stats").split())}


def charge_wifi_init():
    global _wifi
    if _wifi is None:
        _wifi = _take("wifi_init", WIFI_INIT)
        if _wifi is None:  # ESP_ERR_NO_MEM, as v1.26's network_common.c reports it
            raise OSError("WiFi Out of Memory")


def charge_wifi_active(on):
    """esp_wifi_start() when the first interface goes active, esp_wifi_stop() when the last one stops."""
    global _wifi_on
    if on and _wifi_on is None:
        _wifi_on = _take("wifi_start", WIFI_START)
        if _wifi_on is None:
            raise OSError("WiFi Out of Memory")
    elif not on and _wifi_on is not None:
        _give(_wifi_on)
        _wifi_on = None


def charge_socket(fd):
    """lwIP's state for a new socket, freed by the model when `fd` is closed; False when it does not fit
    (the ESP32 port then raises OSError(ENOBUFS), MicroPython issue #14421)."""
    return _take("lwip_socket", SOCKET, fd) is not None


def nimble_start():
    """What BLE().active(True) allocates on an ESP32; a board that cannot panics and resets."""
    global _bt_released, _nimble
    if not _bt_released and _MODEL:
        _take("bt_heap_t", (HEAP_T,))  # kept for good, as the region
        _ram("region %d" % BT_RELEASED_REGION)
        _bt_released = True
    controller = _take("bt_controller", BT_CONTROLLER)
    if controller is None:
        _panic("controller init failed")
    pools = _take("nimble_pools", NIMBLE_POOLS)
    if pools is None:
        _panic("nimble host init failed")
    task = _take("nimble_host_task", NIMBLE_HOST_TASK)
    if task is None:
        # nimble_port_init() succeeded; the host task was never created (nimble_port_freertos_init()
        # does not check), so the host never syncs: mp_bluetooth_init() times out and deinits
        time.sleep_ms(NIMBLE_STARTUP_TIMEOUT_MS)
        _give(controller + pools)
        raise OSError(ETIMEDOUT)
    _nimble = controller + pools + task


def nimble_stop():
    """BLE().active(False): nimble_port_deinit() frees the pools, the tasks and the controller's
    allocations; the released region stays."""
    global _nimble
    _give(_nimble)
    _nimble = None


def _panic(why):
    # extmod/nimble/modbluetooth_nimble.c (v1.24-v1.26) ignores nimble_port_init()'s error and starts
    # the host task on an event queue that was never set up: ESP-IDF's panic handler reports a
    # LoadProhibited on core 1 and reboots (esp-idf issue #14355). Here the process ends on a signal,
    # which the host reports as a crash and answers with a reboot.
    print("E (%d) BLE_INIT: %s" % (time.ticks_diff(time.ticks_ms(), _boot_ms), why))
    print("Guru Meditation Error: Core  1 panic'ed (LoadProhibited). Exception was unhandled.")
    print()
    print("Rebooting...")
    import machine

    machine._vboard_exit("SEGV")


__name__ = "esp32"
