"""Policy documents on the host: TOML -> compact form with errors naming the bad key, diff,
and signed policy bundles that the firmware's own verifier accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meternode.policy import schema
from meternode.policy.agent import Agent
from umeter.errors import PolicyError
from umeter.policy import compile_file, compile_source, describe, diff, load_any, policy_bundle
from umeter.signing import fleet_identity, make_target

TOML = """
name = "tou-2026"
utc_offset_min = 60
tariffs = ["offpeak", "day", "peak"]
holidays = ["12-25", "2026-12-26"]

[[seasons]]
name = "winter"
start = "10-01"
weekday = [["00:00", "offpeak"], ["07:00", "day"], ["17:00", "peak"], ["20:00", "day"], ["23:00", "offpeak"]]
weekend = [["00:00", "offpeak"], ["09:00", "day"], ["21:00", "offpeak"]]

[[seasons]]
name = "summer"
start = "04-01"
weekday = [["00:00", "offpeak"], ["08:00", "day"], ["22:00", "offpeak"]]

[prices]
currency = "EUR"
per_kwh = { offpeak = 0.12, day = 0.24, peak = 0.41 }
realtime_max_s = 3600

[[limits]]
kind = "max_power"
level = 7000
hold_s = 10
action = "shed"
shed_s = 60
retries = 3

[[dr]]
trigger = "freq_below"
level = 49.8
for_s = 2
shed_s = 300
restore_random_s = 120

[reporting]
telemetry_s = 10
profile_min = 15
quantities = ["v", "p", "e_imp", "e_exp", "tariff"]
"""


def _src(**over):
    import tomllib

    s = tomllib.loads(TOML)
    s.update(over)
    return s


def test_toml_compiles_to_the_compact_form(tmp_path: Path) -> None:
    p = tmp_path / "tou.toml"
    p.write_text(TOML)
    c = compile_file(p)
    assert c["t"] == ["offpeak", "day", "peak"]
    assert c["h"] == [1225, 20261226]
    assert [s[0] for s in c["s"]] == [401, 1001], "seasons sorted by start"
    assert c["s"][1][1] == [0, 0, 420, 1, 1020, 2, 1200, 1, 1380, 0]
    assert c["s"][0][3] == c["s"][0][1], "holiday defaults to weekend, weekend to weekday"
    assert c["l"] == [[3, 7000.0, 10, 1, 60, 3]]
    assert c["d"] == [[2, 49.8, 0.0, 2, 300, 120]]
    assert schema.check_compact(json.loads(json.dumps(c))) == c, "round trip through JSON"
    assert len(json.dumps(c, separators=(",", ":"))) < len(TOML) / 2, "compact"
    assert c["r"] == [10, 15, ["v", "p", "e_imp", "e_exp", "tariff"]]
    no_rep = _src()
    del no_rep["reporting"]
    assert "r" not in compile_source(no_rep), "no [reporting]: the node keeps its own settings"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tariffs": [f"t{k}" for k in range(9)]}, "policy.tariffs has 9 entries; at most 8"),
        ({"tarifs": ["a"]}, "policy.tarifs is not a known key"),
        ({"utc_offset_min": "60"}, "policy.utc_offset_min must be a number"),
        ({"holidays": ["02-30"]}, "policy.holidays[0] = '02-30' is not a valid date"),
        ({"limits": [{"kind": "max_power", "level": -1}]}, "policy.limits[0].level = -1 is below 0.0"),
        ({"limits": [{"kind": "max_watts", "level": 1}]}, "policy.limits[0].kind must be one of"),
        ({"limits": [{"kind": "max_power", "level": 1, "action": "explode"}]}, "policy.limits[0].action must be one"),
        ({"dr": [{"trigger": "freq_below"}]}, "policy.dr[0].level is missing"),
        ({"dr": [{"trigger": "voltage_outside", "low": 250, "high": 200}]}, "policy.dr[0].high = 200.0 must be above"),
        ({"reporting": {"quantities": ["v", "watts"]}}, "policy.reporting.quantities[1] must be one of"),
        ({"reporting": {"profile_min": 7}}, "policy.reporting.profile_min = 7 does not divide a day"),
    ],
)
def test_bad_policies_name_the_bad_key(change: dict, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        compile_source(_src(**change))
    assert message in str(e.value)
    assert "docs/policy.md" in str(e.value), "hint"


def test_bad_periods_name_the_season_and_entry() -> None:
    s = _src()
    s["seasons"][0]["weekday"] = [["00:00", "offpeak"], ["07:00", "day"], ["06:00", "peak"]]
    with pytest.raises(PolicyError, match=r"policy.seasons\[0\].weekday\[2\] starts at '06:00'"):
        compile_source(s)
    s = _src()
    s["seasons"][1]["weekday"] = [["00:00", "offpeak"], ["08:00", "night"]]
    with pytest.raises(PolicyError, match=r"policy.seasons\[1\].weekday\[1\] tariff must be one of"):
        compile_source(s)
    s = _src()
    s["seasons"][0]["weekday"] = [["01:00", "offpeak"]]
    with pytest.raises(PolicyError, match="must start at 00:00"):
        compile_source(s)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\ntariffs = [\n')
    with pytest.raises(PolicyError, match=r"bad.toml: not valid TOML"):
        compile_file(p)


def test_diff_lists_what_changed() -> None:
    a = compile_source(_src())
    s = _src()
    s["prices"]["per_kwh"]["peak"] = 0.55
    s["dr"][0]["level"] = 49.7
    b = compile_source(s)
    d = {k: (x, y) for k, x, y in diff(a, b)}
    assert d == {
        "price peak": ("0.41", "0.55"),
        "dr[0]": (
            "freq_below level=49.8 for=2s shed=300s random=120s",
            "freq_below level=49.7 for=2s shed=300s random=120s",
        ),
    }
    assert diff(a, a) == []
    assert describe(a)["season 10-01 weekday"] == "00:00=offpeak 07:00=day 17:00=peak 20:00=day 23:00=offpeak"


def test_signed_policy_bundle_is_accepted_by_the_firmware_agent(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    c = compile_source(_src())
    env = policy_bundle(key, "acme", 3, c, make_target(groups=["north"]), campaign="c9")
    (tmp_path / "b.json").write_bytes(env)
    assert load_any(tmp_path / "b.json") == c

    class Clock:
        def time(self):
            import time

            return time.time()

    agent = Agent("n7", fleet_identity(key, "acme", ["north"]), str(tmp_path / "node"), Clock())
    from meternode import ticks

    # a node billing in the policy's time (config utc_offset_min, nodeinit.setup): one in
    # another time refuses it (bundle.py)
    assert agent.handle_policy(env)["why"] == (
        "bad policy: utc_offset_min 60, the node bills in 0 (to move it there: sign with --move-billing-time)"
    )
    ticks.LOCAL_S = c["tz"] * 60
    try:
        r = agent.handle_policy(env)
    finally:
        ticks.LOCAL_S = 0
    assert (r["ok"], r["status"], r["version"], r["campaign"]) == (True, "applied", 3, "c9")
    assert agent.policy() == c
