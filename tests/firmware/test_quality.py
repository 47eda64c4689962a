# Power quality: class S windows, sag/swell/interruption events, harmonics and THD.
import array
import math

from metrology_rig import board, rig

from meternode.metrology import harmonics
from mptest import approx, eq, heap

_OPTS = {"quality": True}


def _scen(**kw):
    s = {"seed": 4, "enob": 10.0, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0, "angle": 30.0}]}
    s.update(kw)
    return s


def test_goertzel_amplitudes_and_thd_of_a_synthetic_cycle():
    n = 80
    buf = array.array("H", bytes(2 * n))
    for k in range(n):
        x = 1000 * math.sin(2 * math.pi * k / n) + 50 * math.sin(5 * 2 * math.pi * k / n + 0.3)
        x += 30 * math.sin(7 * 2 * math.pi * k / n)
        buf[k] = int(2048 + x + 0.5)
    out = [0.0] * harmonics.ORDERS
    thd = harmonics.spectrum(buf, 0, n, 1, 2048, out)
    approx(out[0], 1000.0, abs_=1.0, what="fundamental")
    approx(out[4], 50.0, abs_=1.0, what="5th")
    approx(out[6], 30.0, abs_=1.0, what="7th")
    approx(out[2], 0.0, abs_=1.0, what="3rd")
    approx(thd, 100 * math.sqrt(50**2 + 30**2) / 1000, abs_=0.1, what="THD %")


def _dft(buf, n, mid, h):
    # the harmonic's amplitude by a direct DFT: every angle reduced to one turn first
    re = 0.0
    im = 0.0
    for k in range(n):
        a = 2.0 * math.pi * ((h * k) % n) / n
        x = buf[k] - mid
        re += x * math.cos(a)
        im += x * math.sin(a)
    return 2.0 * math.sqrt(re * re + im * im) / n


def test_goertzel_keeps_small_harmonics_at_the_floats_resolution_of_the_fundamental():
    # A full-scale fundamental with harmonics of a few counts, in cycles of 80 to 272 sets
    # (4 kS/s at 50 Hz to 10.9 kS/s at 40 Hz): every order within 20 ulp of the
    # fundamental of a direct DFT, on this port's floats (1.2e-7 single, 2.2e-16 double).
    # The plain Goertzel recurrence and end cancel for the low orders: up to 100 ulp at 272
    # sets in single precision, 390 in double; Reinsch's form stays within 5.
    eps = 1.0
    while 1.0 + eps / 2 != 1.0:
        eps /= 2
    for n in (80, 160, 272):
        buf = array.array("H", bytes(2 * n))
        for k in range(n):
            t = 2 * math.pi * k / n
            x = 2000 * math.sin(t + 0.1) + 4 * math.sin(2 * t) + 12 * math.sin(3 * t + 1.0) + 1.5 * math.sin(5 * t)
            buf[k] = int(2048 + x + 0.5)
        out = [0.0] * harmonics.ORDERS
        harmonics.spectrum(buf, 0, n, 1, 2048, out)
        for h in range(1, harmonics.ORDERS + 1):
            ref = _dft(buf, n, 2048, h)
            what = "order %d of a %d-set cycle (eps %g)" % (h, n, eps)
            approx(out[h - 1], ref, rel=0.0, abs_=20 * eps * out[0], what=what)


@heap("192k")
def test_windows_of_10_and_150_cycles_and_harmonics_from_the_meter():
    scen = _scen(voltage={"rms": 230.0, "harmonics": [[5, 0.04, 0.0], [7, 0.02, 0.0]]})
    scen["currents"][0]["harmonics"] = [[3, 0.2, 0.0]]
    s, m = rig(board(), scen, None, _OPTS)
    s.run(m, 3.2)
    q = m.quality
    eq(q.shorts, 1, "one 150-cycle aggregate in 3.2 s")
    eq(q.windows >= 15, True, "basic windows: %d" % q.windows)
    rep = m.snapshot()["pq"]
    approx(rep["window"]["V1"], 230.0 * math.sqrt(1 + 0.04**2 + 0.02**2), rel=2e-3, what="10-cycle RMS")
    approx(rep["short"]["V1"], 230.0 * math.sqrt(1 + 0.04**2 + 0.02**2), rel=2e-3, what="150-cycle RMS")
    approx(rep["harmonics"]["V1"][4], 4.0, abs_=0.15, what="V 5th %")
    approx(rep["harmonics"]["V1"][6], 2.0, abs_=0.15, what="V 7th %")
    approx(rep["thd"]["V1"], math.sqrt(16 + 4), abs_=0.2, what="V THD %")
    approx(rep["harmonics"]["I1"][2], 20.0, abs_=0.5, what="I 3rd %")
    eq(rep["events"], [], "no events")


@heap("192k")
def test_sag_swell_and_interruption_events_with_duration_and_depth():
    ev = [
        {"at": 1.0, "voltage": 0.6, "for": 0.2},
        {"at": 2.0, "voltage": 1.15, "for": 0.3},
        {"at": 3.0, "voltage": 0.0, "for": 0.5},
    ]
    s, m = rig(board(), _scen(events=ev), None, _OPTS)
    s.run(m, 4.6)
    evs = m.quality.events
    eq([e["kind"] for e in evs], ["sag", "swell", "interruption"], "event kinds")
    approx(evs[0]["duration"], 0.2, abs_=0.045, what="sag duration")
    approx(evs[0]["depth"], 0.6 * 230.0, rel=0.02, what="sag residual voltage")
    approx(evs[1]["duration"], 0.3, abs_=0.045, what="swell duration")
    approx(evs[1]["depth"], 1.15 * 230.0, rel=0.02, what="swell peak")
    approx(evs[2]["start"], 3.0, abs_=0.15, what="interruption start")
    approx(evs[2]["duration"], 0.5, abs_=0.15, what="interruption duration")
    eq(m.quality.event_count, 3, "counted")
