"""IEC 62053 accuracy run: the metrology firmware on the unix port, fed by the sim front end.

The test points follow IEC 62053-22 (class 0.2S active energy, transformer-operated) and
IEC 62053-23 (class 2 reactive energy): current from 1 % to 120 % of In at PF 1, 0.5
inductive and 0.8 capacitive, reactive at sin phi 1 and 0.5, influence points (frequency
+-2 %, voltage +-10 %, 5th and 7th harmonics), the starting current (0.1 % In must register)
and creep (115 % Un, no current: less than one pulse of the 1 mWh register in IEC's dt).

The board is a real board definition (default `pico_w`, first voltage and current channel)
with its HAL replaced by `sim`: a 12-bit converter with RP2040-like ENOB (8.7 bits by
default), the board's round-robin conversion skew, and a CT whose phase lead follows the
board's own phase-versus-current table; the firmware corrects both from the calibration.

Each point's error is measured on the energy registers (exact to the microjoule), over
whole mains cycles, against the analytic energy of the simulated signal.  Influence points
are held to the class limit of their base point (a stricter reading than the standard's
"variation" limits).

`rate_error_ppm` makes the simulated sampler run that much off its nominal rate (a crystal's
error the firmware is not told about): the meter's measured timebase (metrology/timebase.py)
takes the real rate from the sampler's timestamps, so the points still pass;
`timebase="fixed"` makes the meter take the nominal rate on trust instead, to show what the
error would do.  Time is the simulation's true time either way.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import unixport
from .errors import ConfigError, DeviceError

U_N = 230.0

# Runs on MicroPython: argv[1] is a JSON file {"board": ..., "points": [...]}; prints one
# JSON line per point.
_RUNNER = r"""
import json, sys
from meternode.hal.sim import SimHal
from meternode.metrology.meter import Meter

def energies(m):
    r = m.registers
    # element 0's registers (import, export, Q1..Q4: fields 0..5) in joules, remainders included
    j = [r.get(0, k) * 3.6 + r.rem[k] / 1000000 for k in range(6)]
    p = j[0] - j[1]
    q = j[2] + j[3] - j[4] - j[5]
    return p, q, sum(r.r) + sum(r.rem), j[0] + j[1], j[2] + j[3] + j[4] + j[5]

job = json.load(open(sys.argv[1]))
board = job["board"]
for pt in job["points"]:
    hal = SimHal(board, pt["scen"])
    m = Meter(board, None, pt.get("options"))
    s = hal.sampler
    m.use_rate(s.rate_actual)
    s.run(m, pt["warmup"])
    m.flush()
    p0, q0, c0, mp0, mq0 = energies(m)
    n0 = m.measured_sets
    s.run(m, pt["seconds"])
    m.flush()
    p1, q1, c1, mp1, mq1 = energies(m)
    t = ((m.measured_sets - n0) & 0x3FFFFFFF) / s.rate_true  # true seconds of the cycles measured
    print(json.dumps({"id": pt["id"], "t": t, "p": (p1 - p0) / t, "q": (q1 - q0) / t,
                      "counts": c1, "moved_p_j": mp1 - mp0, "moved_q_j": mq1 - mq0,
                      "f": m.freq, "cycles": m.cycles,
                      "rate": m.rate, "rate_true": s.rate_true, "rate_nominal": s.rate}))
"""


@dataclass
class Point:
    """One test point: what is simulated and the limit its error must stay within."""

    id: str
    quantity: str  # "active", "reactive", "start" or "creep"
    i_pct: float  # current, % of In
    angle: float  # degrees the current lags the voltage
    limit: float | None  # % error limit (None: start/creep, judged on registration)
    group: str  # label for the table and the plot
    v_pct: float = 100.0
    freq: float = 50.0
    v_harm: list = field(default_factory=list)
    i_harm: list = field(default_factory=list)
    seconds: float = 4.0

    def expected(self, i_n: float) -> float:
        v = U_N * self.v_pct / 100.0
        i = i_n * self.i_pct / 100.0
        a = math.radians(self.angle)
        if self.quantity == "reactive":
            return v * i * math.sin(a)
        p = v * i * math.cos(a)
        for h, rv, pv in self.v_harm:
            for h2, ri, pi in self.i_harm:
                if h == h2:
                    p += v * rv * i * ri * math.cos(h * a - math.radians(pi) + math.radians(pv))
        return p


def _active_limit(i_pct: float, angle: float) -> float:
    if abs(angle) < 1e-6 or abs(abs(angle) - 180.0) < 1e-6:
        return 0.4 if i_pct < 5 else 0.2
    return 0.5 if i_pct < 10 else 0.3


def _reactive_limit(i_pct: float, angle: float) -> float:
    if abs(abs(angle) - 90.0) < 1e-6:
        return 2.5 if i_pct < 5 else 2.0
    return 2.5 if i_pct < 10 else 2.0


def _secs(i_pct: float) -> float:
    return 16.0 if i_pct <= 2 else (8.0 if i_pct <= 10 else 4.0)


def points(quick: bool = False) -> list[Point]:
    """The IEC 62053-22 class 0.2S / 62053-23 class 2 test points (a short set with quick)."""
    pts: list[Point] = []
    ind = 60.0  # PF 0.5 inductive
    cap = -math.degrees(math.acos(0.8))  # PF 0.8 capacitive
    cur = [1, 2, 5, 10, 20, 50, 100, 120]
    for i in cur:
        pts.append(Point(f"P{i}-PF1", "active", i, 0.0, _active_limit(i, 0.0), "PF 1", seconds=_secs(i)))
    for label, ang in (("PF 0.5 ind", ind), ("PF 0.8 cap", cap)):
        for i in cur[1:]:
            tag = "L" if ang > 0 else "C"
            pts.append(Point(f"P{i}-{tag}", "active", i, ang, _active_limit(i, ang), label, seconds=_secs(i)))
    pts.append(Point("P100-EXP", "active", 100, 180.0, 0.2, "PF -1 export"))
    for label, ang, cs in (("sin 1 ind", 90.0, [2, 5, 10, 20, 100, 120]), ("sin 1 cap", -90.0, [10, 100])):
        for i in cs:
            pts.append(
                Point(
                    f"Q{i}-S1{'L' if ang > 0 else 'C'}",
                    "reactive",
                    i,
                    ang,
                    _reactive_limit(i, ang),
                    label,
                    seconds=_secs(i),
                )
            )
    for label, ang, cs in (("sin 0.5 ind", 30.0, [5, 10, 100]), ("sin 0.5 cap", -30.0, [100])):
        for i in cs:
            pts.append(
                Point(
                    f"Q{i}-S05{'L' if ang > 0 else 'C'}",
                    "reactive",
                    i,
                    ang,
                    _reactive_limit(i, ang),
                    label,
                    seconds=_secs(i),
                )
            )
    for f in (49.0, 51.0):
        for ang in (0.0, ind):
            pts.append(
                Point(
                    f"F{f:g}-{'PF1' if ang == 0 else 'L'}",
                    "active",
                    100,
                    ang,
                    _active_limit(100, ang),
                    "frequency ±2 %",
                    freq=f,
                )
            )
    for vp in (90.0, 110.0):
        for ang in (0.0, ind):
            pts.append(
                Point(
                    f"V{vp:g}-{'PF1' if ang == 0 else 'L'}",
                    "active",
                    100,
                    ang,
                    _active_limit(100, ang),
                    "voltage ±10 %",
                    v_pct=vp,
                )
            )
    for h in (5, 7):
        pts.append(
            Point(f"H{h}", "active", 60, 0.0, 0.2, "harmonics", v_harm=[[h, 0.10, 0.0]], i_harm=[[h, 0.40, 0.0]])
        )
    pts.append(Point("START", "start", 0.1, 0.0, None, "starting current", seconds=20.0))
    pts.append(Point("CREEP", "creep", 0.0, 0.0, None, "creep 115 % Un", v_pct=115.0, seconds=20.0))
    if quick:
        keep = {"P1-PF1", "P5-PF1", "P100-PF1", "P2-L", "P10-C", "P100-EXP", "Q100-S1L", "Q10-S05L"}
        keep |= {"F51-L", "V110-PF1", "H5", "START", "CREEP"}
        pts = [p for p in pts if p.id in keep]
    return pts


@dataclass
class Result:
    point: Point
    measured: float
    expected: float
    error_pct: float | None
    passed: bool
    seconds: float
    note: str = ""


@dataclass
class Report:
    board: str
    enob: float
    seed: int
    results: list[Result]
    rate_error_ppm: float = 0.0
    timebase: str = "measured"
    rate_nominal: float = 0.0  # sets/s, the board's
    rate_true: float = 0.0  # sets/s, what the simulated sampler really ran at
    rate_measured: float = 0.0  # sets/s, what the meter took (the last point's)
    conditions: dict = field(default_factory=dict)  # Un, In, Imax, f, ADC, ENOB, seed, durations

    @property
    def rate_measured_ppm(self) -> float:
        """The meter's rate against the true one, ppm."""
        return (self.rate_measured / self.rate_true - 1.0) * 1e6 if self.rate_true else 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def failures(self) -> list[Result]:
        return [r for r in self.results if not r.passed]

    def to_dict(self) -> dict:
        """The whole report: test conditions, every point with its limit (%), and the failures."""
        rows = []
        for r in self.results:
            d = asdict(r.point)
            d.update(
                limit_unit="%" if r.point.limit is not None else None,
                unit="var" if r.point.quantity == "reactive" else "W",
                measured=r.measured,
                expected=r.expected,
                error_pct=r.error_pct,
                passed=r.passed,
                seconds=r.seconds,
                note=r.note,
            )
            rows.append(d)
        return {
            "what": "IEC 62053-22 class 0.2S / 62053-23 class 2 test points on a simulated front end "
            "(a type-test simulation, not a certificate)",
            "board": self.board,
            "enob": self.enob,
            "seed": self.seed,
            "conditions": self.conditions,
            "passed": self.passed,
            "failures": [
                {"id": r.point.id, "error_pct": r.error_pct, "limit_pct": r.point.limit, "note": r.note}
                for r in self.failures()
            ],
            "timebase": {
                "mode": self.timebase,
                "rate_error_ppm": self.rate_error_ppm,
                "rate_nominal": self.rate_nominal,
                "rate_true": self.rate_true,
                "rate_measured": self.rate_measured,
                "measured_error_ppm": self.rate_measured_ppm,
            },
            "points": rows,
        }


def accuracy_board(board: dict) -> dict:
    """The board with its HAL replaced by sim, reduced to its first voltage and current."""
    chans = board.get("channels", [])
    v = next((c for c in chans if c.get("kind") == "voltage"), None)
    i = next((c for c in chans if c.get("kind") == "current"), None)
    if v is None or i is None:
        raise ConfigError(f"board {board.get('name')!r} has no voltage/current pair", hint="pick a metering board")
    i = dict(i, voltage=v["name"])
    return dict(board, hal="sim", channels=[v, i])


def _phase_at(ch: dict, amps: float) -> float:
    cal = ch.get("cal", {})
    t = cal.get("phase_table")
    if not t:
        return float(cal.get("phase", ch.get("phase", 0.0)))
    if amps <= t[0][0]:
        return t[0][1]
    for (a0, p0), (a1, p1) in itertools.pairwise(t):
        if amps <= a1:
            return p0 + (p1 - p0) * (amps - a0) / (a1 - a0)
    return t[-1][1]


def point_seed(seed: int, point_id: str) -> int:
    """The noise seed of one point: from the run's seed and the point's id alone, so a point
    measures the same whichever other points run with it (--quick, --point, the full set)."""
    return (seed * 1_000_003 + zlib.crc32(point_id.encode())) % (1 << 30) or 1


def _job(
    board: dict,
    pts: list[Point],
    enob: float,
    seed: int,
    lead_error: float = 0.0,
    rate_error_ppm: float = 0.0,
    timebase: str = "measured",
) -> dict:
    _vch, ich = board["channels"]
    i_n = ich.get("nominal", 5.0)
    jobs = []
    for p in pts:
        i = i_n * p.i_pct / 100.0
        scen = {
            "freq": p.freq,
            "seed": point_seed(seed, p.id),
            "enob": enob,
            "voltage": {"rms": U_N * p.v_pct / 100.0, "harmonics": p.v_harm},
            "currents": [{"rms": i, "angle": p.angle, "harmonics": p.i_harm, "lead": _phase_at(ich, i) + lead_error}],
            "rate_error_ppm": rate_error_ppm,
        }
        opts = {"timebase": timebase} if timebase != "measured" else None
        jobs.append({"id": p.id, "scen": scen, "warmup": 1.5, "seconds": p.seconds, "options": opts})
    return {"board": board, "points": jobs}


def run(
    board: dict,
    *,
    enob: float = 8.7,
    seed: int = 1,
    quick: bool = False,
    only: list[str] | None = None,
    lead_error: float = 0.0,
    rate_error_ppm: float = 0.0,
    timebase: str = "measured",
    progress: Callable[[int, int, Result], None] | None = None,
) -> Report:
    """Run the test points on the unix port; `progress(done, total, result)` after each.

    `lead_error` adds degrees of CT phase lead that the calibration does not know about
    (what an uncalibrated or wrongly calibrated CT does to the PF 0.5 points).
    `rate_error_ppm` runs the simulated sampler that far off its nominal rate; `timebase`
    "measured" (the firmware's default) or "fixed" (the nominal rate taken on trust).
    """
    if not 4.0 <= enob <= board.get("adc", {}).get("bits", 12):
        raise ConfigError(f"ENOB {enob} is out of range", hint="4 to the board's ADC bits")
    if not -50000.0 <= rate_error_ppm <= 50000.0:
        raise ConfigError(f"rate error {rate_error_ppm:g} ppm is out of range", hint="-50000 to 50000 ppm (±5 %)")
    if timebase not in ("measured", "fixed"):
        raise ConfigError(f"unknown timebase {timebase!r}", hint="measured or fixed")
    b = accuracy_board(board)
    pts = points(quick)
    if only:
        unknown = [x for x in only if x not in {p.id for p in points()}]
        if unknown:
            raise ConfigError(f"unknown test point(s) {', '.join(unknown)}", hint="see `umeter accuracy --list`")
        pts = [p for p in points() if p.id in only]
    by_id = {p.id: p for p in pts}
    i_n = b["channels"][1].get("nominal", 5.0)
    results: list[Result] = []
    rates: dict = {}
    with tempfile.TemporaryDirectory(prefix="umeter-acc-") as tmp:
        script = Path(tmp) / "acc_run.py"
        script.write_text(_RUNNER)
        jobf = Path(tmp) / "job.json"
        jobf.write_text(json.dumps(_job(b, pts, enob, seed, lead_error, rate_error_ppm, timebase)))
        argv = unixport.command(script, str(jobf), heap="512k")
        env = dict(os.environ, MICROPYPATH=unixport.micropypath())
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            rates = {k: d[k] for k in ("rate", "rate_true", "rate_nominal") if k in d}
            p = by_id[d["id"]]
            r = _judge(p, d, i_n)
            results.append(r)
            if progress:
                progress(len(results), len(pts), r)
        err = proc.stderr.read() if proc.stderr else ""
        rc = proc.wait()
    if rc != 0 or len(results) != len(pts):
        last = err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}"
        raise DeviceError(f"the accuracy run stopped on the unix port: {last}", hint="run with -v for the traceback")
    adc = b.get("adc", {})
    conditions = {
        "Un_V": U_N,
        "In_A": i_n,
        "Imax_A": 1.2 * i_n,
        "f_Hz": 50.0,
        "adc_bits": adc.get("bits", 12),
        "adc_rate_Hz": adc.get("rate"),
        "enob": enob,
        "seed": seed,
        "rate_error_ppm": rate_error_ppm,
        "timebase": timebase,
        "warmup_s": 1.5,
        "seconds": {"≤2 % In": 16.0, "≤10 % In": 8.0, "above": 4.0, "start, creep": 20.0},
        "creep": f"115 % Un, no current; at most one pulse (1 mWh) in ≥ {60 * creep_minutes(U_N, 1.2 * i_n):.1f} s",
        "start": "0.1 % In at PF 1 must register",
    }
    return Report(
        board.get("name", "?"),
        enob,
        seed,
        results,
        rate_error_ppm,
        timebase,
        float(rates.get("rate_nominal", 0.0)),
        float(rates.get("rate_true", 0.0)),
        float(rates.get("rate", 0.0)),
        conditions,
    )


# The creep (no-load) test of IEC 62053-22 / -23: at 115 % Un and no current the test output
# may give at most one pulse within dt >= 900e6 / (k m Un Imax) minutes (0.2S; 480e6 for class
# 2 reactive). The node's finest register unit, 1 mWh (1 mvarh), is its test output: k = 1e6
# imp/kWh, m = 1 element, Imax = 120 % In (the highest point).
CREEP_PULSE_J = 3.6


def creep_minutes(u_n: float, i_max: float, k: float = 1e6, m: int = 1) -> float:
    """The shortest creep test, minutes, for class 0.2S with test output constant k (imp/kWh)."""
    return 900e6 / (k * m * u_n * i_max)


def _judge(p: Point, d: dict, i_n: float) -> Result:
    if p.quantity == "creep":
        moved = max(abs(d.get("moved_p_j", 0.0)), abs(d.get("moved_q_j", 0.0)))
        need_s = 60.0 * creep_minutes(U_N, 1.2 * i_n)
        ok = moved < CREEP_PULSE_J and d["t"] >= need_s
        if moved == 0.0:
            note = "no registration"
        else:
            note = f"{moved:.2f} J registered, {'less than' if ok else 'not less than'} one pulse (1 mWh = 3.6 J)"
        if d["t"] < need_s:
            note += f"; too short: the test needs {need_s:.0f} s"
        return Result(p, d["p"], 0.0, None, ok, d["t"], note)
    exp = p.expected(i_n)
    meas = d["q"] if p.quantity == "reactive" else d["p"]
    err = 100.0 * (meas - exp) / abs(exp)
    if p.quantity == "start":
        ok = meas > 0.0
        return Result(p, meas, exp, err, ok, d["t"], "registers" if ok else "does not start")
    return Result(p, meas, exp, err, abs(err) <= (p.limit or 0.0), d["t"])


_LIMIT_AT = (1, 2, 5, 10, 20, 50, 100, 120)  # % In: where the limit rules are evaluated for the plot


def _limit(quantity: str, i_pct: float, angle: float) -> float:
    return _reactive_limit(i_pct, angle) if quantity == "reactive" else _active_limit(i_pct, angle)


_CURVE_GROUPS = ("PF 1", "PF 0.5 ind", "PF 0.8 cap", "sin 1 ind", "sin 1 cap", "sin 0.5 ind", "sin 0.5 cap")


def plot(report: Report, path: str | os.PathLike[str]) -> None:
    """A type-test simulation report on one page: error versus % In per PF group with each
    group's class limits (groups that share a limit share one labelled limit line), the other
    points (export, influence, harmonics, start, creep) as a table, and the test conditions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 8.6))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.15, 1.0))
    axes = {"active": fig.add_subplot(grid[0, 0]), "reactive": fig.add_subplot(grid[0, 1])}
    groups: dict[tuple[str, str], list[Result]] = {}
    others: list[Result] = []
    for r in report.results:
        if r.point.group in _CURVE_GROUPS and r.error_pct is not None:
            groups.setdefault((r.point.quantity, r.point.group), []).append(r)
        else:
            others.append(r)
    for qty, title in (("active", "Active energy, class 0.2S"), ("reactive", "Reactive energy, class 2")):
        ax = axes[qty]
        limits: dict[tuple, tuple[list[str], set[float]]] = {}
        for (q, g), rs in sorted(groups.items(), key=lambda kv: _CURVE_GROUPS.index(kv[0][1])):
            if q != qty:
                continue
            rs.sort(key=lambda r: r.point.i_pct)
            ax.plot([r.point.i_pct for r in rs], [r.error_pct for r in rs], marker="o", label=g)
            # groups whose limits follow the same rule share one limit line (PF 0.5 ind and
            # PF 0.8 cap do: drawn apart, one hid the other)
            rule = tuple(_limit(q, i, rs[0].point.angle) for i in _LIMIT_AT)
            limits.setdefault(rule, ([], set()))[0].append(g)
        styles = iter(((0, (4, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 3))))
        for rule, (names, _xs) in limits.items():
            pts = list(_LIMIT_AT)  # the limit over the whole range, also where a group has one point
            ys = list(rule)
            ls = next(styles, "--")
            label = "limit " + " / ".join(names)
            ax.step(pts, ys, where="post", color="grey", linestyle=ls, linewidth=1.2, label=label)
            ax.step(pts, [-y for y in ys], where="post", color="grey", linestyle=ls, linewidth=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("current, % of In")
        ax.set_ylabel("error, %")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5, loc="lower right")
    c = report.conditions
    cond = (
        f"Un {c.get('Un_V', U_N):g} V · In {c.get('In_A', 0):g} A · Imax {c.get('Imax_A', 0):g} A · "
        f"f {c.get('f_Hz', 50):g} Hz · {c.get('adc_bits', 12)}-bit ADC at {c.get('adc_rate_Hz') or '?'} Hz, "
        f"ENOB {report.enob:g} · seed {report.seed} · warm-up {c.get('warmup_s', 1.5):g} s, then 16 s "
        "(≤ 2 % In), 8 s (≤ 10 % In), 4 s (above), 20 s (start, creep) per point"
    )
    if report.rate_error_ppm or report.timebase != "measured":
        cond += f" · sampler {report.rate_error_ppm:+g} ppm off nominal, {report.timebase} timebase"
    ok = "all points within their limits" if report.passed else f"{len(report.failures())} point(s) FAIL"
    fig.suptitle(
        f"umeter type-test simulation report — board {report.board}, simulated front end: {ok}\n"
        "IEC 62053-22 class 0.2S / IEC 62053-23 class 2 test points through the node firmware; "
        "not a calibration certificate",
        fontsize=11,
    )
    fig.text(0.5, 0.915, cond, ha="center", fontsize=8, color="dimgrey")
    tab = fig.add_subplot(grid[1, :])
    tab.axis("off")
    if others:
        cells = [
            [
                r.point.id,
                r.point.group,
                f"{r.point.i_pct:g}",
                "—" if r.error_pct is None else f"{r.error_pct:+.3f}",
                "—" if r.point.limit is None else f"±{r.point.limit:g} %",
                ("ok" if r.passed else "FAIL") + (f" — {r.note}" if r.note else ""),
            ]
            for r in others
        ]
        t = tab.table(
            cellText=cells,
            colLabels=["point", "group", "% In", "error %", "limit", "result"],
            colWidths=[0.09, 0.16, 0.06, 0.08, 0.08, 0.53],
            loc="upper center",
            cellLoc="left",
        )
        t.auto_set_font_size(False)
        t.set_fontsize(7.5)
        t.scale(1.0, 1.15)
        for (i, _), cell in t.get_celld().items():
            cell.set_linewidth(0.3)
            cell.PAD = 0.02
            if i > 0 and cells[i - 1][5].startswith("FAIL"):
                cell.set_facecolor("#fde0dc")
        tab.set_title("Export, influence quantities, harmonics, starting current and creep", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.905))
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # an .svg keeps its text as text
        fig.savefig(path, dpi=110)
    plt.close(fig)
