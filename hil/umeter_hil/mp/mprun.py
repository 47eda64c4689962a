# Runs one firmware test function on MicroPython and reports the result on the last line.
# Usage: micropython mprun.py <test-dir> <module> <function> <async:0|1> <caps,comma,separated>
import sys

_TAG = "@@MPTEST-RESULT "


def _probe(cap):
    # Returns None when the capability is present, else the reason it is missing.
    if cap.startswith("host:"):
        return None  # checked by the host before the run
    if cap in ("viper", "native"):
        src = "import micropython\n@micropython.%s\ndef _f(x:int)->int:\n    return x+1\n_f(1)\n" % cap
        try:
            exec(src)
        except Exception as e:
            return "emitter %s unavailable (%s)" % (cap, e)
        return None
    try:
        __import__(cap)
    except ImportError:
        return "module %s not available on this port" % cap
    return None


def _near_a_wrap():
    # Like a board's, the firmware's wall ticks (meternode.ticks) start a few seconds before
    # they wrap, so every test crosses a wrap (the sim HAL's clock does the same; a test
    # may rebase them elsewhere).
    try:
        from meternode import ticks
    except ImportError:
        return  # not the umeter firmware
    ticks.rebase(ticks.MASK + 1 - 4000, ticks.MASK + 1 - 2000000)  # 4 s and 2 s before the wraps


def main():
    test_dir, modname, fname, is_async, caps = sys.argv[1:6]
    for cap in [c for c in caps.split(",") if c]:
        why = _probe(cap)
        if why:
            print(_TAG + "skip " + why)
            return
    sys.path.insert(0, test_dir)
    _near_a_wrap()
    mod = __import__(modname)
    fn = getattr(mod, fname)
    try:
        if is_async == "1":
            import asyncio

            asyncio.run(fn())
        else:
            fn()
    except Exception as e:
        sys.print_exception(e)
        print(_TAG + "fail " + type(e).__name__)
        return
    print(_TAG + "pass")


main()
