"""`make bench` says what it is doing during its long searches (each try of the heap-floor bisection is
a whole mapping flow of several seconds): one line per try, printed as the try starts and completed
when it ends."""

from rmkit import bench


def test_heap_floor_search_prints_a_line_per_try(monkeypatch, capsys):
    tried = []

    def flow(heap, workdir, transport="softap"):
        kib = int(heap.rstrip("K"))
        tried.append(kib)
        print("<flow>", end="")  # where the try's own output would land: after its announcement
        return {"status": "confirmed" if kib >= 96 else "timedout"}

    monkeypatch.setattr(bench, "_flow_once", flow)
    bench.bench_heap_floor(low_kib=64, high_kib=120, step_kib=8)
    out = capsys.readouterr().out.splitlines()
    tries = [line for line in out if line.startswith("  heap floor: the whole flow over softap at ")]
    assert len(tries) == len(tried) >= 3, out
    for kib, line in zip(tried, tries):
        assert line.startswith(f"  heap floor: the whole flow over softap at {kib}K ...<flow>")
        assert line.endswith(" s)") and ("confirms" in line) == (kib >= 96)
    assert out[-1].startswith("smallest virtual-board heap at which the whole flow over softap confirms: 96K")
