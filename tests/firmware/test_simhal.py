# The sim front end: deterministic with a seed, noise at the configured ENOB, DC offset,
# rails, events, and clear errors for bad scenarios.
import array
import gc
import math

from metrology_rig import board

from meternode.config import ConfigError
from meternode.hal.sim import SimHal
from mptest import approx, eq, raises


def _block(scen, b=None):
    gc.collect()
    s = SimHal(b or board(), scen).sampler
    buf = array.array("H", bytes(2 * s.nch * s.block_sets))
    s.fill(buf)
    return s, buf


def test_same_seed_same_samples_other_seed_other_samples():
    scen = {"seed": 7, "enob": 8.7, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]}
    _, a = _block(scen)
    _, b = _block(dict(scen))
    scen["seed"] = 8
    _, c = _block(scen)
    eq(bytes(a) == bytes(b), True, "same seed")
    eq(bytes(a) != bytes(c), True, "other seed differs")


def test_noise_matches_the_enob_and_dc_offset_shifts_the_mean():
    # no signal: counts = mid + dc + noise; noise rms of an 8.7-bit converter in 12 bits
    scen = {"seed": 1, "enob": 8.7, "dc": 5.0, "voltage": {"rms": 0.0}, "currents": []}
    s = SimHal(board(), scen).sampler
    buf = array.array("H", bytes(2 * s.nch * s.block_sets))
    xs = array.array("H", bytes(2 * 800))
    for b in range(5):
        s.fill(buf)
        for k in range(160):
            xs[160 * b + k] = buf[3 * k]
    mean = sum(xs) / 800
    rms = math.sqrt(sum((x - mean) ** 2 for x in xs) / 800)
    approx(mean, 2048 + 5, abs_=0.3, what="mean with dc 5")
    approx(rms, 2.0**3.3 / math.sqrt(12.0), rel=0.08, what="noise rms")


def test_overload_clips_at_the_rails():
    _, buf = _block({"seed": 1, "voltage": {"rms": 1000.0}, "currents": [{"rms": 500.0}]})
    eq(max(buf), 4095, "top rail")
    eq(min(buf), 0, "bottom rail")


def test_fundamental_and_harmonic_amplitudes_in_counts():
    # 230 V at 0.2 V/count: peak 1626.5 counts; a 10 % 3rd harmonic adds its own peak
    s, buf = _block({"seed": 1, "voltage": {"rms": 230.0, "harmonics": [[3, 0.1, 0.0]]}, "currents": []})
    xs = [buf[3 * k] - 2048 for k in range(s.block_sets)]
    n = len(xs)
    for h, amp in ((1, 230.0 * math.sqrt(2) / 0.2), (3, 23.0 * math.sqrt(2) / 0.2)):
        re = sum(x * math.cos(2 * math.pi * h * k / 80) for k, x in enumerate(xs)) * 2 / n
        im = sum(x * math.sin(2 * math.pi * h * k / 80) for k, x in enumerate(xs)) * 2 / n
        approx(math.sqrt(re * re + im * im), amp, rel=0.002, what="harmonic %d amplitude" % h)


def test_sag_event_scales_the_voltage_for_its_duration():
    scen = {"seed": 1, "voltage": {"rms": 230.0}, "events": [{"at": 0.04, "voltage": 0.5, "for": 0.04}]}
    s = SimHal(board(), scen).sampler
    buf = array.array("H", bytes(2 * s.nch * s.block_sets))
    peaks = []
    for _ in range(3):
        s.fill(buf)
        peaks.append(max(buf[3 * k] for k in range(s.block_sets)) - 2048)
    approx(peaks[1] / peaks[0], 0.5, abs_=0.01, what="sag depth")
    approx(peaks[2] / peaks[0], 1.0, abs_=0.01, what="after the sag")


def test_bad_scenarios_name_the_key():
    for scen, key in (
        ({"voltage": {"rms": "x"}}, "sim.voltages[0].rms"),
        ({"currents": [{"rms": 1.0, "harmonics": [[3, 0.1]]}]}, "sim.currents[0].harmonics[0]"),
        ({"currents": [{"rms": 1.0, "harmonics": [[1.5, 0.1, 0.0]]}]}, "order"),
        ({"freq": 5.0}, "sim.freq"),
        ({"enob": 13.0}, "sim.enob"),
        ({"events": [{"at": 1.0}]}, "sim.events[0]"),
        ({"currents": [5]}, "sim.currents[0]"),
    ):
        e = raises(ConfigError, SimHal, board(), scen)
        eq(key in str(e), True, "%r names %s" % (str(e), key))
