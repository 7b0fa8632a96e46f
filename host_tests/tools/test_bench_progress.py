"""`make bench` says what it is doing during its long searches (each try of a heap-floor bisection is a
whole run on a fresh board, seconds long): one line per try as it ends; and the search is cost-aware:
coarse 8 KiB steps first, 1 KiB steps only inside the last coarse bracket, sizes near the edge tried
`repeats` times."""

from rmkit.benchmarks import heap_floor


def test_heap_floor_search_prints_a_line_per_try_and_steps_by_1k_only_near_the_edge():
    tried, lines = [], []

    def one_try(kib):
        tried.append(kib)
        return kib >= 93

    floor = heap_floor.search("whole flow, SoftAP", 64, 120, one_try, lines.append, repeats=2)

    assert (floor.works_kib, floor.fails_kib) == (93, 92)
    assert floor.tries == len(tried) == len(lines)
    assert tried[:4] == [120, 88, 104, 96]  # the top first, then 8 KiB steps
    assert all(kib % 8 == 0 for kib in tried[:4]) and all(88 < kib < 96 for kib in tried[4:])
    assert tried.count(93) == 2  # the floor itself worked twice in a row
    for kib, line in zip(tried, lines):
        assert line.startswith(f"  heap floor, whole flow, SoftAP: {kib}K") and line.endswith(" s)")
        assert ("works" in line) == (kib >= 93)


def test_a_size_that_fails_even_at_the_top_of_the_range_ends_the_search_at_once():
    lines = []
    floor = heap_floor.search("provisioning, BLE", 40, 112, lambda kib: False, lines.append)
    assert (floor.works_kib, floor.fails_kib, floor.tries) == (None, 112, 1)
    assert len(lines) == 1


def test_the_esp32_ratio_is_the_virtual_boards_own():
    assert heap_floor.esp32_heap_ratio() == 1.4
