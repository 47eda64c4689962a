# Shared by the metrology firmware tests: boards and a sim front end feeding a Meter.
import gc
import json

# Meter first: the larger compile, on the emptier heap (the 128k test heap needs this order)
from meternode.metrology.meter import Meter  # isort: split

from meternode.hal.sim import SimHal

_BOARDS = __file__.rsplit("/", 3)[0] + "/boards/"


def board(name="sim", **adc):
    with open(_BOARDS + name + ".json") as f:
        b = json.load(f)
    b["hal"] = "sim"
    b["adc"].update(adc)
    return b


def rig(b, scen, cal=None, options=None):
    gc.collect()  # the previous rig's buffers, before the next is made
    hal = SimHal(b, scen)
    return hal.sampler, Meter(b, cal, options)


def settle(s, m, seconds):
    s.run(m, seconds)
    m.flush()
