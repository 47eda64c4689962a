# Metrology: viper kernels -> per-cycle sums -> calibrated quantities -> energy registers.
import array


def floats(n):
    # n zeros in an array of the port's float precision (single on a board), for the meter's
    # per-channel and per-element values: a list's floats are a heap object each once
    # written (docs/memory.md).  Here, in the package every metrology module loads, rather
    # than a module of its own (a module costs ~0.1-0.2 KB held beyond its code).
    tc = "d" if 1 + 1e-9 > 1 else "f"
    return array.array(tc, bytes((8 if tc == "d" else 4) * n))
