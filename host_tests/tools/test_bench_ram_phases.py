"""make bench's RAM rows come from the virtual board's RAM model log (rmkit.benchmarks.ram_phases): each boot's
GC heap at boot and at its largest, its growths and give-backs, ESP-IDF's largest free block at boot, at its
lowest and at its lowest while a TLS handshake holds RAM. The lines below are a real board's (a SoftAP
provisioning that grew the heap once, then the online boot's TLS connect), cut short."""

from rmkit.benchmarks.ram_phases import boots

RAM_LOG = """1 0 malloc mp_task_stack 16384 #8 gc=0 largest=110592 free=201100
1 0 malloc gc_area 57344 #11 gc=0 largest=110592 free=143752
1 3 simulator gc_heap 58848 #0 gc=56000 largest=110592 free=143752
1 3 ready gc_heap 78400 #0 gc=56000 largest=110592 free=143752
1 7 malloc wifi_start 1280 #31 gc=56000 largest=106496 free=112448
1 11 malloc gc_area 57360 #32 gc=56000 largest=51200 free=55084
1 11 grow gc_area 112000 #32 gc=112000 largest=51200 free=55084
1 13 malloc lwip_socket 60 #3 gc=112000 largest=51200 free=55020
a line of something else
2 0 malloc gc_area 57344 #11 gc=0 largest=110592 free=143752
2 1 ready gc_heap 78400 #0 gc=56000 largest=110592 free=143752
2 318 malloc tls_in 16717 #35 gc=56000 largest=90112 free=92716
2 318 malloc tls_out 4429 #40 gc=56000 largest=86016 free=88280
2 318 malloc tls_handshake 1400 #41 gc=56000 largest=81920 free=86876
2 320 malloc tls_handshake_work 1140 #53 gc=56000 largest=69632 free=72868
2 377 free tls_handshake 1400 #41 gc=56000 largest=69632 free=74272
2 377 free tls_handshake_work 1140 #53 gc=56000 largest=81920 free=85712
2 900 malloc gc_area 57360 #60 gc=56000 largest=24576 free=28000
2 900 grow gc_area 112000 #60 gc=112000 largest=24576 free=28000
2 950 giveback gc_area 56000 #0 gc=56000 largest=81920 free=85712
"""


def test_each_boot_has_its_own_figures():
    provisioning, online = boots(RAM_LOG)

    assert (provisioning.boot, provisioning.gc_at_boot, provisioning.gc_peak) == (1, 56000, 112000)
    assert (provisioning.growths, provisioning.givebacks, provisioning.refused) == (1, 0, 0)
    assert (provisioning.largest_at_boot, provisioning.largest_min) == (110592, 51200)
    assert provisioning.tls_largest_min is None  # no TLS while provisioning

    assert (online.boot, online.gc_at_boot, online.gc_peak, online.growths, online.givebacks) == (2, 56000, 112000, 1, 1)
    assert online.largest_min == 24576  # the growth after the handshake took more than TLS did


def test_the_tls_minimum_is_taken_while_the_handshake_holds_ram_only():
    _, online = boots(RAM_LOG)
    assert online.tls_largest_min == 69632


def test_an_empty_log_has_no_boots():
    assert boots("") == []
