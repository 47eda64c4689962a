"""The Blinka rig backend on Blinka's OS-agnostic board (BLINKA_OS_AGNOSTIC=1), in a subprocess
so the environment is set before `board` is imported; and the rig's bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from umeter.errors import ConfigError
from umeter_hil.rig import BlinkaRig, Rig, board_pins

SCRIPT = r"""
import json, board
from umeter_hil.rig import BlinkaRig
rig = BlinkaRig({"water": board.Dx_OUTPUT}, relay_pin=board.Dx_INPUT_TRUE)
rig.pulse_train("water", 12, 500.0)
levels = [e.level for e in rig.edges]
res = {"pulses": rig.pulses_sent("water"), "levels": levels[:4], "last": levels[-1],
       "relay": rig.relay(), "pin_value": rig._out["water"].value,
       "span": rig.edges[-1].t - rig.edges[0].t}
try:
    rig.pulse_train("gas", 1, 10.0)
except Exception as e:
    res["err"] = str(e)
rig.close()
print(json.dumps(res))
"""


def test_blinka_rig_on_the_os_agnostic_board_emits_pulses_and_reads_the_relay():
    env = dict(os.environ, BLINKA_OS_AGNOSTIC="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["pulses"] == 12
    assert res["levels"] == [0, 1, 0, 1]  # active-low pulses from an idle-high line
    assert res["last"] == 1 and res["pin_value"] is True  # back to idle
    assert res["relay"] is True  # Dx_INPUT_TRUE
    assert res["span"] >= 11 / 500.0  # 12 pulses at 500 Hz take at least 11 periods
    assert "rig has no pulse channel 'gas'" in res["err"]


def test_bad_pulse_train_is_a_config_error():
    class R(Rig):
        channels = ("water",)

    with pytest.raises(ConfigError, match="bad pulse train"):
        R()._check("water", 5, 0.0, 0.5)


def test_board_pins_come_from_the_board_definition_or_defaults():
    assert board_pins({"pulses": [{"name": "water", "pin": 14}], "relay": {"pin": 9}}) == ({"water": 14}, 9)
    assert board_pins({}) == ({"water": 25, "gas": 26}, 2)
    assert BlinkaRig.__doc__
