# The communication gateway: downstream meter buses (DL/T 645, CJ/T 188, M-Bus, Modbus RTU),
# one reading model, polling and discovery, and the node answering as a DL/T 645 meter.
# The codecs (scanner, dlt645, cjt188, mbus, modbus, reading) are pure: they import on CPython
# too, and the host's `umeter decode` uses them.  Loaded only when config["gateway"] is set.
