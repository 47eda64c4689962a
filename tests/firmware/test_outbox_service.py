# The uplink service's wiring (store, profile, events, command actions) on MicroPython,
# with a stand-in node: no sampling, no broker.
import json

from meternode.config import ConfigError
from meternode.link.loraservice import check as check_lora
from meternode.link.service import UplinkService
from meternode.store import records
from mptest import eq, heap, raises, scratch_dir


class Clock:
    # the HAL clock's time(): integer epoch seconds (a float would step by 128 s in single
    # precision at this epoch)
    def __init__(self):
        self.t = 1800000000

    def time(self):
        return self.t

    def set_time(self, e):
        self.t = e


class Hal:
    def __init__(self):
        self.clock = Clock()


class NoMeter:
    def snapshot(self):
        return None  # no cycles measured since the last snapshot


class FakeNode:
    def __init__(self, cfg):
        self.id = "svc1"
        self.config = cfg
        self.hal = Hal()
        self.board = {"name": "sim"}
        self.meter = NoMeter()
        self.mains = None
        self.last = '{"v": 230.0}'
        self.seq = 0


def _events(u):
    r = u.log.reader()
    r.seek(1)
    out = []
    while r.next():
        if r.kind == records.EVENT:
            d = r.record()
            out.append((d["event"], d["text"]))
    return out


def _snap(v):
    return {"v": v, "elements": [{"name": "I1", "i": 1.0, "p": 230.0, "e_imp_wh": 1.0, "e_exp_wh": 0.0}]}


@heap("256k")
async def test_service_logs_reboot_profiles_and_reports_dropped_segments():
    d = scratch_dir()
    cfg = {"node_id": "svc1", "profile_s": 60, "store": {"path": d + "/st", "segment_bytes": 1024, "max_bytes": 2048}}
    u = UplinkService(FakeNode(cfg), reason="watchdog")
    eq(_events(u)[0], ("reboot", "watchdog"), "boot reason recorded first")
    t = 1800000000
    for k in range(200):  # 200 minutes of profiles into a 2 KB log
        await u.report(t + 30 * k, _snap(230.0), "{}")
    st = u.log.stats()
    eq(st["dropped"] > 0, True, "oldest segments dropped")
    drops = [e for e in _events(u) if e[0] == "log_dropped"]
    eq(len(drops) > 0, True, "drops reported as events")
    eq(u.log.last_seq > 100, True, "recording went on (%d)" % u.log.last_seq)
    u.log.close()


@heap("256k")
def test_service_actions_validate_config_and_time():
    d = scratch_dir()
    node = FakeNode({"node_id": "svc1", "store": {"path": d + "/st"}, "cmd_key": "00" * 16})
    from meternode.link.actions import Actions

    u = Actions(UplinkService(node))  # what commands do on this node
    u.set_config("telemetry_s", 2.0)
    eq(node.config["telemetry_s"], 2.0, "set")
    e = raises(ValueError, u.set_config, "profile_s", 7 * 60 + 1)
    eq("does not divide a day" in str(e), True, str(e))
    # the load profile needs a snapshot in every interval: telemetry at most half of it, from
    # either side (the default profile_s is 900)
    e = raises(ValueError, u.set_config, "telemetry_s", 600.0)
    eq(str(e), "telemetry_s = 600 is more than half of profile_s = 900: the load profile would miss intervals "
               "with no snapshot in them (at most 450)", "")  # fmt: skip
    u.set_config("telemetry_s", 30.0)
    u.set_config("profile_s", 60)  # 30 s is half of it
    e = raises(ValueError, u.set_config, "telemetry_s", 31.0)
    eq("profile_s = 60" in str(e), True, str(e))
    eq((node.config["telemetry_s"], node.config["profile_s"]), (30.0, 60), "unchanged by the refusal")
    u.set_time(1900000000)
    eq(node.hal.clock.time(), 1900000000, "time set")
    eq(u.relay(True), False, "no relay on this HAL")
    eq(u.read_now(), {"v": 230.0}, "read_now falls back to the last telemetry")


def test_bad_lora_and_store_config_name_the_key():
    e = raises(ConfigError, check_lora, {"lora": {"deveui": "00", "appeui": "0" * 16, "appkey": "0" * 32}})
    eq(str(e), "config.lora.deveui must be 16 hex digits", "deveui")
    e = raises(
        ConfigError, check_lora, {"lora": {"deveui": "0" * 16, "appeui": "0" * 16, "appkey": "0" * 32, "mode": "x"}}
    )
    eq("config.lora.mode" in str(e), True, str(e))
    e = raises(ConfigError, UplinkService, FakeNode({"node_id": "x", "store": {"segment_bytes": 10}}))
    eq("config.store.segment_bytes" in str(e), True, str(e))


@heap("256k")
def test_power_on_boot_records_the_outage_from_the_newest_record_to_now():
    d = scratch_dir()
    cfg = {"node_id": "svc1", "store": {"path": d + "/st"}}
    node = FakeNode(cfg)
    u = UplinkService(node)  # unix port: reason "start"
    eq(_events(u), [("reboot", "start")], "plain start")
    last_ts = u.log.last_ts
    u.log.close()
    node.hal.clock.t = last_ts + 3600  # an hour without power
    u = UplinkService(node, reason="power_on")
    r = u.log.reader()
    r.seek(2)
    got = []
    while r.next():
        d2 = r.record()
        got.append((d2["event"], r.ts, d2["arg"]))
    eq(got, [("power_down", last_ts, 0), ("power_up", last_ts + 3600, 3600), ("reboot", last_ts + 3600, 0)], "outage")


@heap("256k")
def test_a_flood_of_forged_commands_keeps_results_and_events_bounded_and_the_real_answer():
    # Issue 10 row 2: results were queued without limit until the next telemetry period.
    from meternode.link import service
    from meternode.link.actions import make_command

    d = scratch_dir()
    node = FakeNode({"node_id": "svc1", "store": {"path": d + "/st"}, "cmd_key": "00" * 16})
    u = UplinkService(node)
    now = int(node.hal.clock.time())
    u._on_command(make_command(bytes(16), "svc1", "read_now", None, 1, now + 60, "real"))
    for k in range(3000):
        u._on_command(make_command(b"f" * 16, "svc1", "reboot", None, k + 2, now + 60, "f%d" % k))
    eq(len(u._results), service.RESULTS_MAX, "bounded")
    eq(json.loads(u._results[0][1])["id"], "real", "the real answer is kept")
    eq(u.results_dropped, 3001 - service.RESULTS_MAX, "drops counted")
    rej = [e for e in _events(u) if e[0] == "cmd_rejected"]
    eq(len(rej), 16, "refusal events rate-limited")
    st = u.stats()["commands"]
    eq((st["accepted"], st["rejected"], st["held"]), (1, 3000, 2984), "all counted")
    u.log.close()


@heap("256k")
def test_rollback_of_a_key_config_json_left_out_restores_its_default():
    # Found by the fuzzer (CPython): set profile_s on a config without it kept None as the
    # old value, and the rollback then failed with TypeError.
    from meternode.link.actions import make_command

    d = scratch_dir()
    node = FakeNode({"node_id": "svc1", "store": {"path": d + "/st"}, "cmd_key": "00" * 16})
    u = UplinkService(node)
    now = int(node.hal.clock.time())
    u._on_command(make_command(bytes(16), "svc1", "set", {"key": "profile_s", "value": 600}, 1, now + 60, "s"))
    eq(json.loads(u._results[-1][1])["result"], {"key": "profile_s", "old": 900, "new": 600}, "old = default")
    u._on_command(make_command(bytes(16), "svc1", "rollback", {"key": "profile_s"}, 2, now + 60, "r"))
    r = json.loads(u._results[-1][1])
    eq((r["status"], node.config["profile_s"], u.profile.period_s), ("done", 900, 900), "back to the default")
    u.log.close()


class _Link:
    # stands in for MqttLink: up, every publish goes through (or none, when `ok` is False)
    def __init__(self):
        self.up = True
        self.ok = True
        self.sent = []

    async def publish_live(self, leaf, payload, qos=0):
        if self.ok:
            self.sent.append((leaf, json.loads(payload)["id"] if leaf == "cmd/result" else None, qos))
        return self.ok


@heap("256k")
async def test_results_go_out_in_order_with_qos_1_and_a_reboot_waits_for_them():
    # report() publishes the queued command results on …/cmd/result (QoS 1), oldest first,
    # and carries out an accepted reboot only once every result before it went out.
    from meternode.link.actions import make_command

    d = scratch_dir()
    node = FakeNode({"node_id": "svc1", "store": {"path": d + "/st"}, "cmd_key": "00" * 16})
    boots = []
    node.reboot = boots.append  # the node's planned reboot (actions.reboot calls it)
    u = UplinkService(node)
    link = u.link = _Link()
    now = int(node.hal.clock.time())
    u._on_command(make_command(bytes(16), "svc1", "read_now", None, 1, now + 60, "a"))
    u._on_command(make_command(bytes(16), "svc1", "reboot", None, 2, now + 60, "b"))
    link.ok = False  # the link drops every publish: nothing leaves, no reboot
    await u.report(now, _snap(230.0), '{"v": 230.0}')
    eq((len(u._results), boots), (2, []), "results kept, reboot held back")
    link.ok = True
    await u.report(now + 2, _snap(230.0), '{"v": 230.0}')
    eq(link.sent[0], ("telemetry", None, 0), "live telemetry first, QoS 0")
    eq(link.sent[1:], [("cmd/result", "a", 1), ("cmd/result", "b", 1)], "results in order, QoS 1")
    eq((u._results, boots), ([], ["command"]), "then the reboot, once")
    u.log.close()
