"""The accelerated soak, short: three simulated days of the real node (benchmarks/endurance.py)
on a real LittleFS on a Pico W's flash, with two power cuts, a broker outage and a nearly full
flash, against its invariants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from umeter.broker import mosquitto_path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "endurance.py"


@pytest.mark.timeout(900)
def test_three_simulated_days_with_power_cuts_outages_and_a_full_flash_keep_every_invariant(tmp_path):
    if mosquitto_path() is None:
        pytest.skip("Mosquitto is not installed (apt-get install mosquitto); CI installs it")
    p = subprocess.run(
        # India's time, moved to UTC+4:30 after 36 h as a signed policy moves it (a day of 25 h)
        [
            sys.executable,
            str(SOAK),
            "--days",
            "3",
            "--seed",
            "1",
            "--utc-offset-min",
            "330",
            "--move",
            "36:270",
            "--keep",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=880,
    )
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 0, f"invariants failed: {res['failed']}\n{p.stderr[-3000:]}"
    assert res["failed"] == []
    # the run did what it says, and the invariants hold
    assert res["simulated_days"] >= 3
    assert res["power_cuts"] == 2 and res["boots"] == 3
    assert res["broker_outages"] >= 1
    assert res["log_dropped"] > 0, "the record log ran at its retention bound"
    assert res["enospc_writes"] > 0, "writes met a full flash"
    assert res["last_epoch"] > 2**31
    assert res["energy_error_ppm"] <= 10
    assert res["freq_error_mhz"] <= 1
    assert res["records_lost"] == 0 and res["records_duplicated"] == 0
    # billing: each midnight frozen once, the profile record ending then holding the same
    # registers as the freeze, and no record's registers below an earlier one's. The node bills
    # in India's time (+5:30): a daily freeze at a UTC midnight instead of a local one counts
    # as a lost record above
    assert res["utc_offset_min"] == 330 and res["moved_utc_offset_min"] == [36 * 3600, 270]
    # the full node (commands, the demo policy, signed bundles) moved by a policy signed with
    # --move-billing-time, sent by the soak's operator over the broker from hour 36 (again after
    # a refusal, a failure or no answer), applied by the node's fleet agent: its event dates it
    assert res["node"] == "fleet" and res["moved_at_s"] >= 36 * 3600
    assert "policy result: applied" in res["events"]
    assert res["freezes"]["daily"] >= 2 and res["freeze_mismatches"] == 0 and res["misplaced_freezes"] == 0
    assert res["register_regressions"] == 0
    assert res["records"] > 250  # 288 profile intervals in 3 days, less the outages, plus events
    assert res["memory_errors"] == 0
    assert res["heap_growth_bytes"] is not None and res["heap_growth_bytes"] <= 2048
    # the node's files were on a real LittleFS on a Pico W's flash, its build beside them, cut
    # by the power twice wherever LittleFS was; its wear was counted, and the flash outlasts
    # a meter's service life at that rate
    fl = res["flash"]
    assert fl["board"] == "pico_w" and fl["blocks"] == 212 and fl["static_blocks"] > 100
    assert fl["erases"] > 0 and fl["writes_per_day"]["ckpt"] > 0
    assert fl["years_levelled"] >= 20
    _billing_export(tmp_path / "records.sqlite")


def _billing_export(db: Path) -> None:
    # what the soak stored, out through `umeter export` as a billing system reads it: the days
    # in India's time, read from the freezes; each day's kWh the registers' difference; every
    # profile interval's kWh its registers' difference, and no interval that follows its
    # predecessor left without energy (only the first and those after the power cuts)
    import csv
    import io
    import itertools

    notes = []

    def run(*argv: str) -> list[dict]:
        r = subprocess.run([sys.executable, "-m", "umeter", "export", *argv, "--db", str(db)], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "warning" not in r.stderr, r.stderr
        notes.extend(ln for ln in r.stderr.splitlines() if ln.startswith("note:"))
        return list(csv.DictReader(io.StringIO(r.stdout)))

    def mwh(kwh: str) -> int:
        whole, frac = kwh.split(".")
        return int(whole) * 1_000_000 + int(frac)

    days = run("daily")
    assert len(days) >= 2
    # local midnights at UTC+5:30, then at UTC+4:30 from the day the billing time moved
    at = [d["frozen_at"][10:] for d in days]
    k = at.index("T19:30:00Z")
    assert k >= 1 and at == ["T18:30:00Z"] * k + ["T19:30:00Z"] * (len(at) - k), at
    assert len(notes) == 1 and "moved from UTC+05:30 to UTC+04:30" in notes[0], notes
    for a, b in itertools.pairwise(days):
        assert b["status"] == "ok" and mwh(b["import_kwh"]) == mwh(b["import_register_kwh"]) - mwh(
            a["import_register_kwh"]
        )
    prof = run("profile")
    assert len(prof) > 200
    for a, b in itertools.pairwise(prof):
        if b["start"] == a["end"]:
            assert b["status"] == "ok"
            assert mwh(b["import_kwh"]) == mwh(b["import_register_kwh"]) - mwh(a["import_register_kwh"])
        else:
            assert b["status"].startswith("gap:") and b["import_kwh"] == ""
    gaps = [r for r in prof if r["status"].startswith("gap:")]
    assert 1 <= len(gaps) <= 8, [g["start"] for g in gaps]  # the power cuts' and outages' intervals
