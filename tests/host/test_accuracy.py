"""`umeter accuracy`: the IEC 62053 points through the firmware on the unix port."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from umeter import accuracy
from umeter.cli import main_group
from umeter.cli.accuracy import load_board
from umeter.errors import ConfigError


def _umeter(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "umeter", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def quick_report():
    return accuracy.run(load_board("pico_w"), quick=True)


def test_quick_set_every_point_is_within_its_class_limit(quick_report):
    # 0.2S active (+-0.4 % below 5 % In, +-0.2 % above at PF 1; +-0.5/+-0.3 % at PF 0.5 ind /
    # 0.8 cap), class 2 reactive, start registers, creep registers nothing.
    ids = [r.point.id for r in quick_report.results]
    assert ids == [p.id for p in accuracy.points(quick=True)]
    for r in quick_report.results:
        assert r.passed, (r.point.id, r.error_pct, r.point.limit, r.note)
        if r.point.limit is not None:
            assert abs(r.error_pct) <= r.point.limit, r.point.id
    by_id = {r.point.id: r for r in quick_report.results}
    assert by_id["CREEP"].note == "no registration"
    assert by_id["START"].measured > 0.0
    assert by_id["P100-EXP"].measured < 0.0  # export is measured as export
    assert by_id["Q100-S1L"].measured > 0.0  # inductive reactive power is positive


def test_limits_follow_iec_62053_22_and_23():
    pts = {p.id: p for p in accuracy.points()}
    assert (pts["P1-PF1"].limit, pts["P5-PF1"].limit, pts["P120-PF1"].limit) == (0.4, 0.2, 0.2)
    assert (pts["P2-L"].limit, pts["P10-L"].limit, pts["P2-C"].limit, pts["P10-C"].limit) == (0.5, 0.3, 0.5, 0.3)
    assert (pts["Q2-S1L"].limit, pts["Q5-S1L"].limit, pts["Q5-S05L"].limit, pts["Q10-S05L"].limit) == (2.5, 2, 2.5, 2)
    assert math.isclose(math.cos(math.radians(pts["P10-C"].angle)), 0.8)
    assert pts["P10-C"].angle < 0 < pts["P10-L"].angle


def test_uncorrected_ct_phase_lead_of_one_degree_fails_the_pf_05_point():
    # 1 degree of lead the calibration does not know: cos(59)/cos(60) - 1 = +3.0 %.
    rep = accuracy.run(load_board("pico_w"), only=["P100-L", "P100-PF1"], lead_error=1.0)
    r = {x.point.id: x for x in rep.results}
    assert not r["P100-L"].passed
    assert r["P100-L"].error_pct == pytest.approx(100 * (math.cos(math.radians(59)) / 0.5 - 1), abs=0.05)
    assert r["P100-PF1"].passed  # cos near 0 degrees hardly moves


def test_a_sampler_rate_error_is_removed_by_the_measured_timebase_and_shows_without_it():
    # The simulated sampler runs 5000 ppm fast (a timer that cannot divide the rate, a bad
    # crystal; the firmware is not told): the meter measures the real rate and every point
    # stays put; with the nominal rate taken on trust the same points read +0.5 %, outside
    # class 0.2S (the reactive point's class 2 limit still holds).
    pts = ["P100-PF1", "F51-L", "Q100-S1L"]
    rep = accuracy.run(load_board("pico_w"), only=pts, rate_error_ppm=5000.0)
    assert rep.passed, [(r.point.id, r.error_pct) for r in rep.results]
    assert rep.rate_true == pytest.approx(4020.0) and abs(rep.rate_measured_ppm) < 5
    assert all(abs(r.error_pct) < 0.05 for r in rep.results)
    fixed = accuracy.run(load_board("pico_w"), only=pts, rate_error_ppm=5000.0, timebase="fixed")
    assert rep.rate_nominal == fixed.rate_measured == 4000.0
    for r in fixed.results:
        assert r.error_pct == pytest.approx(0.5, abs=0.03), r.point.id
    assert not fixed.passed and [r.point.id for r in fixed.failures()] == ["P100-PF1", "F51-L"]
    res = CliRunner().invoke(main_group, ["accuracy", "--point", "P100-PF1", "--rate-error", "3000", "--json"])
    assert res.exit_code == 0, res.output
    tb = json.loads(res.stdout)["timebase"]
    assert tb["mode"] == "measured" and tb["rate_error_ppm"] == 3000.0 and abs(tb["measured_error_ppm"]) < 5


def test_cli_json_plot_and_exit_codes(tmp_path):
    run = CliRunner().invoke
    res = run(main_group, ["accuracy", "--point", "P100-PF1", "--json", "--plot", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["passed"] is True and [p["id"] for p in d["points"]] == ["P100-PF1"]
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a 4-bit converter misses 0.4 % at 2 % In by about ±2 % (seed 1: -1.6 %): exit 1, the point named
    r = _umeter("accuracy", "--point", "P2-PF1", "--enob", "4")
    assert r.returncode == 1
    assert re.search(r"^P2-PF1 .* FAIL$", r.stdout, re.M), r.stdout
    assert r.stderr.strip().splitlines()[-1] == (
        "umeter: error: 1 point(s) outside the class limit: P2-PF1 — see the FAIL rows above"
    )


def test_bad_inputs_name_what_was_wrong():
    with pytest.raises(ConfigError, match="unknown board 'nope'"):
        load_board("nope")
    with pytest.raises(ConfigError, match="unknown test point"):
        accuracy.run(load_board("pico_w"), only=["BOGUS"])
    with pytest.raises(ConfigError, match="ENOB 3"):
        accuracy.run(load_board("pico_w"), enob=3)
    with pytest.raises(ConfigError, match="rate error 60000 ppm"):
        accuracy.run(load_board("pico_w"), rate_error_ppm=60000.0)
    with pytest.raises(ConfigError, match="no voltage/current pair"):
        accuracy.accuracy_board({"name": "x", "channels": [{"name": "V1", "kind": "voltage"}]})


def test_a_point_measures_the_same_whichever_other_points_run():
    b = load_board("pico_w")
    alone = accuracy.run(b, only=["P5-PF1"]).results[0]
    with_others = {r.point.id: r for r in accuracy.run(b, only=["P1-PF1", "P2-L", "P5-PF1"]).results}
    assert with_others["P5-PF1"].measured == alone.measured  # the noise seed comes from the point's id


def test_creep_allows_less_than_one_pulse_of_the_register_in_the_iec_test_time(monkeypatch):
    # noise seed 2 with an ENOB of 7.2 opens pico_w's creep gate now and then at 115 % Un (at
    # 8.7 it did on some seeds: what failed `--quick`), registering 2 J: under a pulse of the
    # finest register (1 mWh) in a test longer than IEC 62053-22's dt, which is what the
    # standard asks (the sim's noise is the same on every port)
    monkeypatch.setattr(accuracy, "point_seed", lambda seed, pid: 2)
    r = accuracy.run(load_board("pico_w"), enob=7.2, only=["CREEP"]).results[0]
    assert r.passed, r.note
    assert 0.0 < abs(r.measured) * r.seconds < accuracy.CREEP_PULSE_J
    assert re.fullmatch(r"[1-3]\.\d\d J registered, less than one pulse \(1 mWh = 3\.6 J\)", r.note), r.note
    assert accuracy.creep_minutes(230.0, 96.0) * 60 < r.seconds  # 2.4 s needed, 20 s run
    bad = accuracy._judge(r.point, {"p": 1.0, "t": 20.0, "moved_p_j": 3.6, "moved_q_j": 0.0, "counts": 1}, 80.0)
    assert not bad.passed and "not less than one pulse" in bad.note


def test_json_is_self_contained_and_the_table_gives_limits_in_percent(tmp_path):
    r = _umeter("accuracy", "--point", "P2-PF1", "--point", "Q100-S1C", "--enob", "4", "--json")
    assert r.returncode == 1
    d = json.loads(r.stdout)
    assert d["conditions"]["In_A"] == 80.0 and d["conditions"]["Imax_A"] == 96.0 and d["conditions"]["enob"] == 4
    assert [f["id"] for f in d["failures"]] == ["P2-PF1"] and d["failures"][0]["limit_pct"] == 0.4
    assert {p["id"]: p["limit_unit"] for p in d["points"]} == {"P2-PF1": "%", "Q100-S1C": "%"}
    assert "the FAIL rows above" not in r.stderr and 'see the "failures" list of the JSON' in r.stderr
    r = _umeter("accuracy", "--point", "P1-PF1", "--point", "Q10-S1C")
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()}
    assert rows["point"][:9] == ["point", "group", "%", "In", "expected", "measured", "unit", "error", "%"]
    assert rows["P1-PF1"][6:10] == ["W", rows["P1-PF1"][7], "±0.4", "%"], rows["P1-PF1"]
    assert rows["Q10-S1C"][7] == "var" and rows["Q10-S1C"][9:12] == ["±2", "%", "ok"], rows["Q10-S1C"]


def test_plot_is_a_type_test_simulation_report_with_conditions_and_every_point(tmp_path):
    svg = tmp_path / "r.svg"
    rep = accuracy.run(load_board("pico_w"), only=["P2-L", "P10-C", "P100-PF1", "P100-EXP", "CREEP"])
    accuracy.plot(rep, svg)
    text = svg.read_text()
    for want in ("type-test simulation report", "not a calibration certificate", "In 80 A", "Imax 96 A",
                 "ENOB 8.7", "seed 1", "P100-EXP", "CREEP", "limit PF 0.5 ind / PF 0.8 cap"):  # fmt: skip
        assert want in text, want


def test_a_bad_plot_path_fails_before_any_point_runs(tmp_path):
    bad = ((tmp_path / "x.txt", "not a .png/.svg/.pdf file name"), (tmp_path / "no" / "x.png", "does not exist"))
    for path, what in bad:
        r = _umeter("accuracy", "--plot", str(path))
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and what in r.stderr, r.stderr
        assert r.stdout == "", "no point ran"
