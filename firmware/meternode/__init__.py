# meternode: the umeter firmware package.  Pure modules (config, codecs, records, policy)
# also import on CPython so the host reuses them; hal/ is the only layer that touches
# machine, rp2, esp32 or network.
VERSION = "0.1.0"


def forget(*names):
    # Drops modules that are only needed now and then (discovery at a connect, the policy check
    # when a policy loads, OTA slot selection at boot) from sys.modules and from their package,
    # so their code is collected once the caller lets go of it; the next import loads them
    # again.  Only for modules whose functions and classes nothing keeps (docs/memory.md).
    import sys

    for name in names:
        m = sys.modules.pop(name, None)
        if m is not None:
            k = name.rfind(".")
            p = sys.modules.get(name[:k]) if k > 0 else None
            if p is not None and getattr(p, name[k + 1 :], None) is m:
                delattr(p, name[k + 1 :])
