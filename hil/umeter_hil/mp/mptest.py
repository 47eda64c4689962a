# Firmware-test helpers that run on MicroPython (unix port or a board).
#
# The decorators are read by the host (pytest) from the test file's source before the
# test runs: @heap("256k") sets the unix port's heap, @timeout(s) the wall-clock limit,
# @needs("viper", "ssl", "host:mosquitto") the capabilities.  On the device they return
# the function unchanged (MicroPython functions carry no attributes).
import os

import micropython


def needs(*caps):
    def deco(fn):
        return fn

    return deco


def heap(size):
    def deco(fn):
        return fn

    return deco


def timeout(seconds):
    def deco(fn):
        return fn

    return deco


def host_value(name):
    # Values the host hands to a test (a broker's port, a scratch directory).
    v = os.getenv("MPTEST_" + name.upper().replace(":", "_").replace("-", "_"))
    if v is None:
        raise KeyError("host value %s not provided" % name)
    return v


def scratch_dir():
    return host_value("scratch")


class RTC:
    # A board's RTC for a test: whole seconds; what set_time was given.
    def __init__(self, t):
        self.t = t
        self.sets = []

    def time(self):
        return self.t

    def set_time(self, t):
        self.sets.append(t)
        self.t = t


def _call(fn, a):
    # Fixed-arity calls: fn(*a) would itself allocate (MicroPython builds the argument
    # array on the heap for star calls), so expand by hand.
    n = len(a)
    if n == 0:
        return fn()
    if n == 1:
        return fn(a[0])
    if n == 2:
        return fn(a[0], a[1])
    if n == 3:
        return fn(a[0], a[1], a[2])
    if n == 4:
        return fn(a[0], a[1], a[2], a[3])
    if n == 5:
        return fn(a[0], a[1], a[2], a[3], a[4])
    if n == 6:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5])
    if n == 7:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6])
    if n == 8:
        return fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7])
    raise ValueError("assert_no_alloc takes at most 8 arguments; wrap the call in a closure")


def assert_no_alloc(fn, *args):
    # Calls fn(*args) with the heap locked: any allocation raises MemoryError inside,
    # which we turn into an AssertionError naming the function.  Returns fn's result.
    # Results of 2**30 or more are boxed ints and allocate: return them through arrays.
    micropython.heap_lock()
    try:
        r = _call(fn, args)
    except MemoryError:
        micropython.heap_unlock()
        raise AssertionError("%s allocated on the heap" % _name(fn))
    micropython.heap_unlock()
    return r


def raises(exc_type, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc_type as e:
        return e
    raise AssertionError("%s did not raise %s" % (_name(fn), exc_type.__name__))


def approx(actual, expected, rel=1e-9, abs_=0.0, what="value"):
    tol = max(abs_, rel * abs(expected))
    if abs(actual - expected) > tol:
        raise AssertionError(
            "%s %r differs from %r by %r (tolerance %r)" % (what, actual, expected, actual - expected, tol)
        )


def eq(actual, expected, what="value"):
    if actual != expected:
        raise AssertionError("%s: got %r, expected %r" % (what, actual, expected))


def _name(fn):
    try:
        return fn.__name__
    except AttributeError:
        return repr(fn)
