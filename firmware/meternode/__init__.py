# meternode: the umeter firmware package.  Pure modules (config, codecs, records, policy)
# also import on CPython so the host reuses them; hal/ is the only layer that touches
# machine, rp2, esp32 or network.
VERSION = "0.1.0"
