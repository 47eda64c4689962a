# Shared by the metrology firmware tests: boards and a sim front end feeding a Meter.
# The meter and the sim HAL are imported on the first rig(), not with this module: tests
# that only want board() then do not compile them, and those that do compile them after
# the test module itself, the meter (the larger compile) first, on a collected heap --
# the 128k test heap needs that order.
import gc
import json

_BOARDS = __file__.rsplit("/", 3)[0] + "/boards/"


def board(name="sim", **adc):
    with open(_BOARDS + name + ".json") as f:
        b = json.load(f)
    b.pop("buses", None)  # meter buses (gateway) are not metrology's: keep the 128k heap for the meter
    b["hal"] = "sim"
    b["adc"].update(adc)
    return b


def rig(b, scen, cal=None, options=None):
    gc.collect()  # the previous rig's buffers, before the next is made
    from meternode.metrology.meter import Meter

    gc.collect()
    from meternode.hal.sim import SimHal

    hal = SimHal(b, scen)
    return hal.sampler, Meter(b, cal, options)


def energy_j(r, block, field):
    # a register's content in joules (var-s, VA-s), its remainder included (registers.FIELDS: 8)
    return r.get(block, field) * 3.6 + r.rem[block * 8 + field] / 1000000


def settle(s, m, seconds):
    s.run(m, seconds)
    m.flush()
