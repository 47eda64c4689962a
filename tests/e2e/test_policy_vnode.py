"""Policies end to end on virtual nodes (the real firmware on the unix port, sim front end,
real Mosquitto): the tariff registers split energy by the calendar, a frequency dip sheds the
relay and restores it after the randomised delay, and signed bundles arrive over MQTT."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from policy_vnode import Listener, VNode

from meternode.policy import smallenc
from umeter.policy import compile_source, policy_bundle
from umeter.signing import fleet_identity, make_target

NOON = 1795435200  # 2026-11-23 12:00 UTC, a Monday
START = NOON - 8  # the sim clock starts 8 s before the tariff switch
KEY = Ed25519PrivateKey.generate()
CMD_KEY = bytes(range(16, 48))  # the node's HMAC key


def _policy(name: str = "noon-switch") -> dict:
    day = [["00:00", "morning"], ["12:00", "afternoon"]]
    return compile_source(
        {
            "name": name,
            "tariffs": ["morning", "afternoon"],
            "seasons": [{"start": "01-01", "weekday": day}],
            "dr": [{"trigger": "freq_below", "level": 49.8, "for_s": 2, "shed_s": 1, "restore_random_s": 3}],
        }
    )


def _config(node: str, broker, **extra) -> dict:
    c = {
        "node_id": node,
        "telemetry_s": 1.0,
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 30, "discovery": False},
        "sim": {
            "realtime": True,
            "epoch": START,
            "voltage": {"rms": 230.0},
            "currents": [{"rms": 10.0, "angle": 0.0}],
            "events": [{"at": 12.0, "freq": 49.6}, {"at": 16.0, "freq": 50.0}],
        },
        "fleet": fleet_identity(KEY, "acme", ["north"]),
    }
    c.update(extra)
    return c


def test_tariffs_and_frequency_dip_on_a_virtual_node_then_signed_bundles(mosquitto, tmp_path: Path) -> None:
    lis = Listener(mosquitto.host, mosquitto.port, "vn1")
    try:
        with VNode(tmp_path / "vn1", _config("vn1", mosquitto, policy=_policy(), cmd_key=CMD_KEY.hex())) as vn:
            events = []

            def restored(leaf, m):
                if leaf == "policy/event":
                    events.append(m)
                return leaf == "policy/event" and m["event"] == "restore"

            lis.wait(restored, 60, "relay restored after the frequency dip", vn)
            by = {}
            for e in events:
                by.setdefault(e["event"], []).append(e)
            assert [e["value"] for e in by["tariff"]] == [0, 1], "morning, then afternoon at 12:00"
            assert by["tariff"][1]["t"] == NOON, "switched on the first tick of 12:00"
            dip_at = by["dr"][0]["t"]
            # the sim's dip starts at sim t = 12 s (START + 12); 2 s below 49.8 Hz sheds
            assert START + 13 <= dip_at <= START + 16, dip_at - START
            assert by["shed"][0]["t"] == dip_at
            end = by["dr_end"][0]
            assert 0 <= end["value"] <= 3, "random delay within restore_random_s"
            assert end["t"] >= dip_at + 1, "shed at least shed_s"
            assert by["restore"][0]["t"] - end["t"] in (end["value"], end["value"] + 1), "restored after the delay"
            # the tariff registers split the energy at 12:00 (2.3 kW resistive load); the shed
            # opened the sim board's relay, so no energy registers while it was open
            st, _ = lis.wait(lambda leaf, m: leaf == "policy/state" and m["t"] >= NOON + 12, 30, "state", vn)
            morning, afternoon = st["tariff_wh"]
            per_s = 2300.0 / 3600.0
            shed = by["restore"][0]["t"] - by["shed"][0]["t"]
            assert shed >= 1
            assert 4 * per_s < morning <= 8.5 * per_s, morning
            assert abs(afternoon - (st["t"] - NOON - shed) * per_s) < 2.5 * per_s, (afternoon, st["t"] - NOON, shed)
            # a signed policy bundle over MQTT: applied; tampered: rejected; replayed: not newer
            env = policy_bundle(KEY, "acme", 1, _policy("pushed"), make_target(groups=["north"]), campaign="e2e")
            lis.publish("policy/bundle", env)
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "policy result", vn)
            assert (r["ok"], r["status"], r["version"], r["campaign"]) == (True, "applied", 1, "e2e"), r
            st, _ = lis.wait(lambda leaf, m: leaf == "policy/state" and m["policy"] == "pushed", 20, "new policy", vn)
            assert st["version"] == 1
            bad = json.loads(env)
            bad["m"] = bad["m"].replace('"version":1', '"version":2')
            lis.publish("policy/bundle", json.dumps(bad).encode())
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "tampered result", vn)
            assert (r["ok"], r["why"].split(":")[0]) == (False, "bad signature")
            lis.publish("policy/bundle", env)
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "replay result", vn)
            assert (r["ok"], r["why"].split(":")[0], r["version"]) == (False, "not newer", 1)
            # a LoRa-sized price frame (HMAC + counter) over MQTT; a replay of it does nothing
            frame = smallenc.encode_price(CMD_KEY, "vn1", 1, 0.77, 10)
            lis.publish("policy/small", frame)
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "price result", vn)
            assert (r["ok"], r["price"], r["valid_s"]) == (True, 0.77, 600), r
            st, _ = lis.wait(lambda leaf, m: leaf == "policy/state" and m["price"] == 0.77, 20, "price in force", vn)
            lis.publish("policy/small", frame)
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "replayed frame", vn)
            assert (r["ok"], r["why"].split(":")[0]) == (False, "replayed")
            assert "Traceback" not in vn.log()
    finally:
        lis.close()


def test_relay_command_and_policy_topics_survive_a_broker_restart(mosquitto, tmp_path: Path) -> None:
    # The policy service's topics ride on MqttLink.extra_topics: after Mosquitto restarts
    # (no persistence: every subscription is gone) the node subscribes them again by itself.
    # On the way, an operator's relay command opens the sim relay and the power drops to ~0.
    from meternode.link.actions import make_command

    cfg = _config("vn2", mosquitto, policy=_policy(), cmd_key=CMD_KEY.hex())
    cfg["mqtt"].update({"backoff_min_ms": 100, "backoff_max_ms": 500})
    cfg["sim"]["events"] = []
    lis = Listener(mosquitto.host, mosquitto.port, "vn2")
    try:
        with VNode(tmp_path / "vn2", cfg) as vn:
            tm, _ = lis.wait(lambda leaf, m: leaf == "telemetry" and m["p"] > 2000, 30, "telemetry under load", vn)
            assert tm["relay"] is True
            exp = START + 3600
            lis.publish("cmd", make_command(CMD_KEY, "vn2", "relay", {"on": False}, 1, exp, "off1"))
            r, _ = lis.wait(lambda leaf, m: leaf == "cmd/result", 20, "relay command result", vn)
            assert (r["ok"], r["result"]) == (True, {"on": False}), r
            # the cycle in flight when the relay opened may be in the first report: skip it
            lis.wait(lambda leaf, m: leaf == "telemetry" and m["relay"] is False, 10, "relay open", vn)
            tm, _ = lis.wait(lambda leaf, m: leaf == "telemetry", 10, "telemetry with the relay open", vn)
            assert tm["relay"] is False and abs(tm["p"]) < 3.0 and tm["elements"][0]["i"] < 0.2, tm
            st, _ = lis.wait(lambda leaf, m: leaf == "policy/state", 20, "policy state", vn)
            assert (st["relay"], st["relay_hold"]) == (False, "latched"), st
            lis.close()
            mosquitto.stop()
            mosquitto.start()
            lis = Listener(mosquitto.host, mosquitto.port, "vn2")
            lis.wait(lambda leaf, m: leaf == "state" and m == b"online", 30, "node back online", vn)
            env = policy_bundle(KEY, "acme", 1, _policy("after-restart"), make_target(groups=["north"]))
            lis.publish("policy/bundle", env)
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "bundle result after the restart", vn)
            assert (r["ok"], r["status"], r["version"]) == (True, "applied", 1), r
            st, _ = lis.wait(lambda leaf, m: leaf == "policy/state" and m["policy"] == "after-restart", 20, "new", vn)
            assert st["relay"] is False, "a new policy does not undo the operator's off"
            assert "Traceback" not in vn.log()
    finally:
        lis.close()


def test_a_bundle_signed_to_move_the_billing_time_moves_it_for_good(mosquitto, tmp_path: Path) -> None:
    # Almaty's nodes were provisioned in UTC+6 (config and policy); the country moved to UTC+5.
    # The new policy signed without --move-billing-time is refused, naming both times; signed
    # with it (manifest billing_tz), it is applied, the move is an event, the node's status
    # says UTC+5, and so it does after a reboot, though its config still says UTC+6.
    from meternode.link.actions import make_command

    def pol(tz: int) -> dict:
        day = [["00:00", "std"]]
        return compile_source(
            {
                "name": f"kz{tz}",
                "utc_offset_min": tz,
                "tariffs": ["std"],
                "seasons": [{"start": "01-01", "weekday": day}],
            }
        )

    cfg = _config("vn3", mosquitto, policy=pol(360), cmd_key=CMD_KEY.hex(), utc_offset_min=360)
    cfg["sim"]["events"] = []
    lis = Listener(mosquitto.host, mosquitto.port, "vn3")
    n = 0

    def billing_time(vn) -> int:
        nonlocal n
        n += 1
        lis.publish("cmd", make_command(CMD_KEY, "vn3", "status", {}, n, START + 86400, f"st{n}"))
        r, _ = lis.wait(lambda leaf, m: leaf == "cmd/result" and m.get("id") == f"st{n}", 30, "status", vn)
        return r["result"]["clock"]["utc_offset_min"]

    try:
        with VNode(tmp_path / "vn3", cfg) as vn:
            lis.wait(lambda leaf, m: leaf == "state" and m == b"online", 30, "online", vn)
            assert billing_time(vn) == 360
            target = make_target(groups=["north"])
            lis.publish("policy/bundle", policy_bundle(KEY, "acme", 1, pol(300), target))
            r, _ = lis.wait(lambda leaf, m: leaf == "policy/result", 20, "policy result", vn)
            assert (r["ok"], r["why"]) == (
                False,
                "bad policy: utc_offset_min 300, the node bills in 360 "
                "(to move it there: sign with --move-billing-time)",
            ), r
            lis.publish("policy/bundle", policy_bundle(KEY, "acme", 1, pol(300), target, billing_tz=300))
            moved = []  # (the move's event record is published before the result)

            def result(leaf, m):
                if leaf == "event" and "billing time" in m.get("text", ""):
                    moved.append(m["text"])
                return leaf == "policy/result"

            r, _ = lis.wait(result, 20, "policy result", vn)
            assert (r["ok"], r["status"], r["version"]) == (True, "applied", 1), r
            if not moved:
                lis.wait(lambda leaf, m: result(leaf, m) or bool(moved), 30, "the move's event", vn)
            assert moved == ["policy billing time 300 min, was 360"], moved
            assert billing_time(vn) == 300
            boots = vn.boots
            n += 1
            lis.publish("cmd", make_command(CMD_KEY, "vn3", "reboot", {}, n, START + 86400, "rb"))
            lis.wait(lambda leaf, m: leaf == "cmd/result" and m.get("id") == "rb", 30, "reboot result", vn)
            lis.wait(lambda leaf, m: leaf == "state" and m == b"online", 60, "online again", vn)
            assert vn.boots > boots
            assert billing_time(vn) == 300, "the signed policy's time at the next start"
            assert "Traceback" not in vn.log()
    finally:
        lis.close()
