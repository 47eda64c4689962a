"""`umeter export`: the records a node published (made by the firmware's own encoders, stored
by the consumer as from the broker) out as CSV, on SQLite and PostgreSQL: interval energy from
the registers, exact; an interval after a missing record has none and says why, and the
missing record is named; freezes dated in the node's billing time."""

from __future__ import annotations

import calendar
import csv
import io
import json
import sys

from meternode.store import records as fw
from umeter import ui
from umeter.cli import main
from umeter.consumer import Consumer
from umeter.export import export, utc_offsets
from umeter.inventory import Fleet
from umeter.store import open_store

T0 = calendar.timegm((2026, 12, 1, 0, 0, 0))
E0 = 1_000_000_000  # mWh: 1000 kWh on the import register at T0
OFF = 60  # the node bills in UTC+1


class _Quiet(Consumer):
    def _publish(self, topic, payload):  # (no broker: the gap's resend request goes nowhere)
        pass


def _put(c, seq, kind, ts, body, node="n1"):
    d = fw.to_json_dict(node, kind, seq, ts, body)
    d["held"] = 1
    c.ingest(f"umeter/{node}/{fw.topic_leaf(kind)}", json.dumps(d).encode())


def _fill(db):
    c = _Quiet(db, gap_wait=0.0)
    for k in range(1, 11):  # quarter hours; record 5 never arrives
        if k != 5:
            prof = fw.profile(900, E0 + 250_000 * k, 17 * k, (2301, 2280, 2330), (1200, 900, 1500), (2650, -1800, 3400))
            _put(c, k, fw.PROFILE, T0 + 900 * k, prof)
    midnight = T0 + 86400 - OFF * 60  # 2 Dec 00:00 local
    _put(c, 11, fw.DAILY, midnight, fw.freeze(E0 + 24_000_000, 500, 1234, 56))
    _put(c, 12, fw.DAILY, midnight + 86400, fw.freeze(E0 + 31_500_123, 700, 1300, 60))
    nov1, dec1 = calendar.timegm((2026, 11, 1, 0, 0, 0)) - OFF * 60, T0 - OFF * 60
    _put(c, 13, fw.MONTHLY, nov1, fw.freeze(E0 - 300_000_000, 0, 900, 20, (0, 0)))
    _put(c, 14, fw.MONTHLY, dec1, fw.freeze(E0, 400, 1200, 50, (7_250_000, dec1 - 86400 * 3)))
    _put(c, 15, fw.EVENT, T0 + 100, fw.event(fw.EV_RELAY, 0, "cmd off"))
    c.close()


def _by_seq(table):
    return {r[-1]: dict(zip(table.header, r, strict=True)) for r in table.rows}


def test_profile_intervals_with_exact_energy_a_gap_and_the_missing_record_named(db_url):
    _fill(db_url)
    s = open_store(db_url)
    t = export(s, "profile")
    rows = _by_seq(t)
    assert sorted(rows) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert rows[1]["status"] == "first exported" and rows[1]["import_kwh"] == ""
    r = rows[2]
    assert (r["start"], r["end"], r["period_s"]) == ("2026-12-01T00:15:00Z", "2026-12-01T00:30:00Z", 900)
    assert (r["import_kwh"], r["export_kwh"], r["status"]) == ("0.250000", "0.000017", "ok")
    assert (r["import_register_kwh"], r["v_avg"], r["i_max_a"]) == ("1000.500000", "230.1", "1.500")
    assert r["p_min_w"] == "-180.0"
    assert rows[6]["import_kwh"] == "" and rows[6]["status"] == "gap: the previous record ends at 2026-12-01T01:00:00Z"
    assert rows[7]["import_kwh"] == "0.250000"
    assert t.warnings == ["n1: record 5 missing (lost by the node or not yet resent): the series has a hole"]
    assert t.incomplete == 2
    # from the third interval on: the one before the range gives the first its energy
    t = export(s, "profile", since=T0 + 900 * 3, until=T0 + 900 * 5)
    assert [(r[-1], r[4], r[-2]) for r in t.rows] == [(3, "0.250000", "ok"), (4, "0.250000", "ok")]
    assert t.warnings == [], "no hole inside 3..4"
    t = export(s, "daily", ["n1", "n9"], since=T0 + 10 * 86400)
    assert (t.rows, t.warnings) == ([], ["n1: no daily records in the range", "n9: no daily records in the range"])
    s.close()


def test_freezes_are_dated_in_the_nodes_billing_time(db_url):
    _fill(db_url)
    s = open_store(db_url)
    days = _by_seq(export(s, "daily"))
    assert (days[11]["day"], days[11]["frozen_at"]) == ("2026-12-01", "2026-12-01T23:00:00Z")
    assert (days[12]["day"], days[12]["import_kwh"], days[12]["status"]) == ("2026-12-02", "7.500123", "ok")
    assert (days[12]["water_l"], days[12]["gas_l"]) == (1300, 60)
    months = _by_seq(export(s, "monthly"))
    assert (months[13]["month"], months[14]["month"]) == ("2026-10", "2026-11")
    assert (months[14]["import_kwh"], months[14]["max_demand_kw"]) == ("300.000000", "7.250")
    assert months[14]["max_demand_end"] == "2026-11-27T23:00:00Z"
    assert months[13]["max_demand_kw"] == "" and months[13]["max_demand_end"] == ""
    utc = _by_seq(export(s, "daily", offset_min=0))
    assert utc[11]["day"] == "2026-12-01", "23:00 UTC: still the 1st in UTC too (1 s before the freeze)"
    ev = export(s, "events")
    assert ev.rows == [["n1", "2026-12-01T00:01:40Z", 15, 7, "relay", 0, "cmd off"]]
    s.close()


def test_the_offset_is_read_from_a_local_midnight():
    assert utc_offsets(T0) == [0]
    assert utc_offsets(T0 - 3600) == [60]
    assert utc_offsets(T0 + 5 * 3600) == [-300]
    # between 10:00 and 12:00 UTC a midnight is one east and one west of the date line
    assert utc_offsets(T0 - 14 * 3600) == [840, -600]
    assert utc_offsets(T0 + 12 * 3600) == [720, -720]
    assert utc_offsets(T0 - 11 * 3600 - 45 * 60) == [705]  # UTC-12:15 is no node's
    assert utc_offsets(T0 + 9 * 3600 + 45 * 60) == [-585]
    assert utc_offsets(T0 + 7) == []


HAWAII = -600


def _fill_hawaii(db, node="hw"):
    """Two days frozen at Honolulu's midnight (10:00 UTC): UTC+14's midnight as well."""
    c = _Quiet(db, gap_wait=0.0)
    midnight = T0 - HAWAII * 60  # 1 Dec 00:00 in UTC-10
    _put(c, 1, fw.DAILY, midnight, fw.freeze(E0, 0, 0, 0), node)
    _put(c, 2, fw.DAILY, midnight + 86400, fw.freeze(E0 + 12_000_000, 0, 0, 0), node)
    c.close()


def test_a_midnight_that_fits_two_offsets_is_dated_by_the_fleets_and_warned_without_it(tmp_path):
    db = str(tmp_path / "m.sqlite")
    _fill_hawaii(db)
    s = open_store(db)
    # nothing known: the eastern reading, a day off for Honolulu, and a warning naming both
    t = export(s, "daily")
    assert [r[1] for r in t.rows] == ["2026-12-01", "2026-12-02"]
    assert t.warnings == [
        "hw: its freezes are at local midnight in UTC+14:00 or UTC-10:00: dated in UTC+14:00; "
        "give --utc-offset-min, or let `umeter fleet health` ask the node its own"
    ]
    # the fleet database knows it: its own days, no doubt
    t = export(s, "daily", known={"hw": HAWAII})
    assert [r[1] for r in t.rows] == ["2026-11-30", "2026-12-01"] and t.warnings == []
    assert dict(zip(t.header, t.rows[1], strict=True))["import_kwh"] == "12.000000"
    # the fleet database says what the freezes cannot be: they win, and it is named
    t = export(s, "daily", known={"hw": 60})
    assert [r[1] for r in t.rows] == ["2026-12-01", "2026-12-02"]
    assert t.warnings == [
        "hw: the fleet database has UTC+01:00, but its newest freeze is at local midnight in UTC+14:00 or "
        "UTC-10:00 (provisioned again with another offset?): dated by its freezes in UTC+14:00"
    ]
    # an offset given that the freezes do not fit: as given, and named
    t = export(s, "daily", offset_min=0)
    assert [r[1] for r in t.rows] == ["2026-12-01", "2026-12-02"]  # (UTC's days, as asked)
    assert t.warnings == [
        "hw: 2 of its freezes are not at local midnight in the UTC given (the first, seq 1, is in UTC+14:00 or "
        "UTC-10:00): dated as given"
    ]
    s.close()


def test_a_billing_time_moved_between_freezes_dates_each_by_its_own_and_the_longer_day_has_its_energy(tmp_path):
    # Almaty's node moved from UTC+6 to UTC+5 on 29 February 2024 (a signed policy): its
    # freezes at 18:00 UTC, then 19:00 UTC; the 29th was 25 h long and has its energy
    db = str(tmp_path / "m.sqlite")
    c = _Quiet(db, gap_wait=0.0)
    feb28 = calendar.timegm((2024, 2, 28, 0, 0, 0))
    h = 3600
    for seq, ts, e in ((1, feb28 - 6 * h, 0), (2, feb28 + 18 * h, 24_000), (3, feb28 + 43 * h, 49_000),
                       (4, feb28 + 67 * h, 73_000)):  # fmt: skip
        _put(c, seq, fw.DAILY, ts, fw.freeze(E0 + e * 1000, 0, 0, 0), "kz")
    c.close()
    s = open_store(db)
    t = export(s, "daily")
    got = [(r[1], r[3], r[-2]) for r in t.rows]
    assert got == [("2024-02-27", "", "first exported"), ("2024-02-28", "24.000000", "ok"),
                   ("2024-02-29", "25.000000", "ok"), ("2024-03-01", "24.000000", "ok")]  # fmt: skip
    assert t.warnings == []
    assert t.notes == [
        "kz: billing time moved from UTC+06:00 to UTC+05:00 before the freeze at 2024-02-29T19:00:00Z (seq 3)"
    ]
    s.close()


def test_the_command_dates_freezes_by_the_fleet_database(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ui.err, "file", sys.stderr)
    monkeypatch.setenv("UMETER_HOME", str(tmp_path / "home"))
    db = str(tmp_path / "m.sqlite")
    _fill_hawaii(db)
    assert main(["export", "daily", "--db", db, "--json"]) == 0
    out = capsys.readouterr()
    assert [json.loads(ln)["day"] for ln in out.out.splitlines()] == ["2026-12-01", "2026-12-02"]
    assert "UTC+14:00 or UTC-10:00" in out.err
    assert not (tmp_path / "home" / "fleet.sqlite").exists(), "export makes no fleet database"
    # provisioned from this host (umeter provision records the offset its config gave)
    fl = Fleet(tmp_path / "home" / "fleet.sqlite")
    fl.bind("e66038b7134f5a30", "hw", "sim", "oahu", None, None)
    fl.record("e66038b7134f5a30", status="ok", utc_offset_min=HAWAII)
    assert main(["export", "daily", "--db", db, "--json"]) == 0
    out = capsys.readouterr()
    assert [json.loads(ln)["day"] for ln in out.out.splitlines()] == ["2026-11-30", "2026-12-01"]
    assert "warning" not in out.err


def test_the_command_writes_csv_and_strict_fails_on_a_hole(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ui.err, "file", sys.stderr)  # (bound when ui was imported)
    db = str(tmp_path / "meter.sqlite")
    _fill(db)
    out = tmp_path / "p.csv"
    assert main(["export", "profile", "--db", db, "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 9 and rows[1]["import_kwh"] == "0.250000"
    err = capsys.readouterr().err
    assert "warning: n1: record 5 missing" in err
    assert f"9 profile rows of 1 node to {out}; 2 without interval energy (see status)" in err
    assert main(["export", "profile", "--db", db, "--strict", "-o", str(out)]) == 1
    assert "1 missing-record warning(s), 2 row(s) without interval energy" in capsys.readouterr().err
    assert main(["export", "daily", "--db", db, "--from", "2026-12-02T00:00Z", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(ln)["day"] for ln in lines] == ["2026-12-02"], "the freeze at 2 Dec 23:00 UTC only"
    assert main(["export", "events", "--db", db]) == 0
    got = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert got[0][:5] == ["node", "time", "seq", "code", "event"] and got[1][4] == "relay"
    assert main(["export", "profile", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no store at" in capsys.readouterr().err
    assert main(["export", "profile", "--db", db, "--from", "2026-12-02", "--to", "2026-12-01"]) == 1
    assert "is not after --from" in capsys.readouterr().err
