"""Virtual nodes (the real firmware on the unix port) publish telemetry through a real broker."""

from __future__ import annotations

import time

from umeter.sim import SimRun, scenario


def _wait_for(run: SimRun, messages: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = run.snapshot()
        if all(v.messages >= messages for v in views):
            return {v.node_id: v for v in views}
        assert not run.dead_nodes(), run.dead_nodes()[0].log_tail()
        time.sleep(0.1)
    raise AssertionError(f"telemetry missing after {timeout} s: {[(v.node_id, v.messages) for v in run.snapshot()]}")


def test_virtual_nodes_publish_accurate_signed_telemetry(any_broker):
    with SimRun(nodes=2, broker_url=any_broker.url, telemetry_s=0.5) as run:
        views = _wait_for(run, 4)
    house, solar = views["node-01"], views["node-02"]
    assert house.scenario.name == "house" and solar.scenario.name == "solar"
    for v in (house, solar):
        want = v.scenario.sim["voltage"]["rms"]
        got = v.telemetry["v"]
        assert abs(got - want) / want < 0.005, f"{v.node_id}: V {got} vs scenario {want}"
        assert 49.95 < v.telemetry["f"] < 50.05
        assert v.state == "online"
    # a house importing: positive power, import register grows, export stays zero
    assert house.telemetry["p"] > 0
    assert house.telemetry["e_imp_wh"] > 0 and house.telemetry["e_exp_wh"] == 0
    # solar exporting: negative power at the grid CT, export register grows, import stays zero
    assert solar.telemetry["p"] < 0
    assert solar.telemetry["e_exp_wh"] > 0 and solar.telemetry["e_imp_wh"] == 0
    # the grid CT's power matches V * I * cos(angle) of the scenario within 1 %
    c = scenario("house").sim["currents"][0]
    import math

    want_p = scenario("house").sim["voltage"]["rms"] * c["rms"] * math.cos(math.radians(c["angle"]))
    assert abs(house.telemetry["p"] - want_p) / want_p < 0.01


def test_telemetry_sequence_numbers_increase_without_gaps(mosquitto):
    seen: list[int] = []
    with SimRun(nodes=1, broker_url=mosquitto.url, telemetry_s=0.3) as run:
        deadline = time.monotonic() + 20
        last = None
        while len(seen) < 5 and time.monotonic() < deadline:
            t = run.snapshot()[0].telemetry
            if t and t["seq"] != last:
                last = t["seq"]
                seen.append(last)
            time.sleep(0.02)
    assert len(seen) >= 5
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
