# meternode: the umeter firmware package.  Pure modules (config, codecs, records, policy)
# also import on CPython so the host reuses them; hal/ is the only layer that touches
# machine, rp2, esp32 or network.
#
# Load and forget (docs/memory.md): modules that are needed only now and then (discovery at a
# connect, the policy check when a policy loads) are dropped again after use: forget() takes
# them out of sys.modules and out of their package, so their code is collected once the
# caller lets go of it; the next import loads them again.  Only for modules whose functions
# and classes nothing keeps.  run() loads a module for one call.  Here in the package, not a
# module of their own: every node uses them, and a module costs its object, globals and
# names beyond its code.
import sys

VERSION = "0.1.0"

# CPython (the host tools share the pure modules) has RAM to spare and threads: a module one
# thread forgets while another is importing it makes that import fail ("cannot import name"),
# seen with four boards provisioned in parallel.  There nothing is forgotten.
_KEEP = sys.implementation.name == "cpython"


class ConfigError(ValueError):
    # A bad configuration or board value (config.py re-exports it).  Here, not in config.py:
    # a running node raises it (a calibration command) but keeps none of config.py's checks,
    # which node.py forgets once the node has started (Node.run).
    pass


def _nop(*a):
    # The default of every callback and progress report (one function for the package: each
    # `def` is a function object and its code held with its module)
    pass


def forget(*names):
    if _KEEP:
        return
    for name in names:
        m = sys.modules.pop(name, None)
        if m is not None:
            k = name.rfind(".")
            p = sys.modules.get(name[:k]) if k > 0 else None
            if p is not None and getattr(p, name[k + 1 :], None) is m:
                delattr(p, name[k + 1 :])


def run(module, attr, *args):
    # Runs function `attr` of `module` (code run at start, or now and then: a connect, a
    # command), loaded for the call and forgotten when it returns (a nested run() of the same
    # module finds it loaded).  For an async function the call returns its coroutine, which
    # keeps the module's code alive until it ends.  The heap is collected first: a module
    # compiled from source needs its parse tree in one piece.
    if module not in sys.modules:
        import gc

        gc.collect()
    __import__(module)
    try:
        return getattr(sys.modules[module], attr)(*args)
    finally:
        forget(module)


# the last message read, (offset, text), one object so that a thread (the sim's watchdog)
# never pairs one message's offset with another's text: a flood of one rejection (forged
# commands) reads the file once
_last = (-1, "")


def msg(a, b):
    # Bytes a..b of msgs.txt beside this file: `umeter build` moves the error and log messages
    # of the package's modules there (a message in a .mpy is a string held with its module)
    # and writes `msg(a, b)` where each was (host/umeter/msgfold.py).  Read when one is used,
    # on a path about to allocate for it anyway.  An unreadable file gives a str that names
    # the message and takes any % arguments, so the error it was for is still reported.
    global _last
    m = _last
    if m[0] == a:
        return m[1]
    try:
        with open(__file__[: __file__.rfind("/") + 1] + "msgs.txt", "rb") as f:
            f.seek(a)
            t = f.read(b - a)
        if len(t) == b - a:
            t = str(t, "utf-8")
            _last = (a, t)
            return t
    except (OSError, ValueError):
        pass

    class Lost(str):
        def __mod__(self, x):
            return str(self) + " %r" % (x,)

    return Lost("message %d..%d (msgs.txt unreadable)" % (a, b))
