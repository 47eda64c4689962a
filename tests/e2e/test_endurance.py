"""The accelerated soak, short: three simulated days of the real node (benchmarks/endurance.py)
with two power cuts, a broker outage and a nearly full flash, against its invariants."""

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
        [sys.executable, str(SOAK), "--days", "3", "--seed", "1", "--utc-offset-min", "330", "--keep", str(tmp_path)],
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
    assert res["utc_offset_min"] == 330
    assert res["freezes"]["daily"] >= 2 and res["freeze_mismatches"] == 0
    assert res["register_regressions"] == 0
    assert res["records"] > 250  # 288 profile intervals in 3 days, less the outages, plus events
    assert res["memory_errors"] == 0
    assert res["heap_growth_bytes"] is not None and res["heap_growth_bytes"] <= 2048
