# One relay for the whole node, on MicroPython with the real Node (sim board, sim front end):
# an authenticated `relay` command and the policy engine's frequency-dip shed both switch
# the sim relay, the measured power drops to ~0 and comes back, telemetry carries the
# relay's state, and every switch is a relay event in the record log with its reason.
import json
from binascii import unhexlify

from meternode.link.actions import make_command
from meternode.node import Node
from meternode.policy.compile import compile_policy
from meternode.store import records
from mptest import approx, eq, heap, scratch_dir

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
EPOCH = 1800000000


def _board():
    with open(__file__.rsplit("/", 3)[0] + "/boards/sim.json") as f:
        return json.load(f)


def _policy():
    return compile_policy(
        {
            "name": "dip",
            "tariffs": ["flat"],
            "seasons": [{"start": "01-01", "weekday": [["00:00", "flat"]]}],
            "dr": [{"trigger": "freq_below", "level": 49.8, "for_s": 2, "shed_s": 1, "restore_random_s": 2}],
        }
    )


def _node_config(override_s, d):
    return {
        "node_id": "r1",
        "cmd_key": KEY,
        "store": {"path": d + "/st"},
        "checkpoint": {"dir": ""},
        "policy": _policy(),
        "policy_dir": d,
        "relay": {"override_s": override_s},
        "sim": {"seed": 5, "enob": 8.7, "epoch": EPOCH, "currents": [{"rms": 10.0}]},
    }


def _node(override_s, d=None):
    cfg = _node_config(override_s, d or scratch_dir())
    n = Node(_board(), cfg)
    u = n.uplink()
    from meternode.policy.service import PolicyService

    ps = PolicyService(n, log=lambda m: None)
    return n, u, ps


def _run(n, ps, seconds):
    # `seconds` of signal, the policy ticking every second as the node's task does.
    for _ in range(seconds):
        n.hal.sampler.run(n.meter, 1.0)
        ps.tick()


def _p(n, ps):
    # One more second; -> the main element's power averaged over it (what telemetry reports),
    # leaving out the first tenth: the cycle in flight when the relay switched.
    s = n.hal.sampler
    s.run(n.meter, 0.1)
    n.meter.snapshot()
    s.run(n.meter, 0.9)
    if ps is not None:
        ps.tick()
    return n.meter.snapshot()["elements"][0]["p"]


def _relay_events(u):
    r = u.log.reader()
    r.seek(1)
    out = []
    while r.next():
        if r.kind == records.EVENT:
            d = r.record()
            if d["event"] == "relay":
                out.append((d["arg"], d["text"]))
    return out


def _cmd(u, on, ctr):
    c = make_command(unhexlify(KEY), "r1", "relay", {"on": on}, ctr, EPOCH + 3600, "x%d" % ctr)
    return u.commands.handle(c)


@heap("1m")
async def test_a_frequency_dip_shed_opens_the_sim_relay_and_the_power_drops_to_zero():
    n, u, ps = _node(600)
    approx(_p(n, ps), 2300.0, rel=0.01, what="load connected")
    n.hal.sampler.set_freq(49.6)
    _run(n, ps, 4)  # 2 s below 49.8 Hz sheds
    p = _p(n, ps)
    eq((n.hal.relay.on, abs(p) < 3.0), (False, True), "shed by the engine: %r W" % p)
    n.hal.sampler.run(n.meter, 0.2)
    await n._report()
    eq(json.loads(n.last)["relay"], False, "telemetry carries the relay")
    n.hal.sampler.set_freq(50.0)
    _run(n, ps, 5)  # shed_s 1 and a random delay of at most 2 s
    eq(n.hal.relay.on, True, "restored")
    p = _p(n, ps)
    approx(p, 2300.0, rel=0.01, what="load back")
    eq(ps.state()["relay"], True, "policy/state shows the relay")
    eq(_relay_events(u), [(0, "policy dip shed"), (1, "policy dip restore")], "each switch an event with its reason")
    u.log.close()


@heap("1m")
async def test_relay_commands_switch_the_one_relay_and_hold_it_against_the_policy():
    n, u, ps = _node(5)
    r = _cmd(u, False, 1)
    eq((r["ok"], r["result"], n.hal.relay.on), (True, {"on": False}, False), "operator off")
    p = _p(n, ps)
    eq(abs(p) < 3.0, True, "power with the relay open by command: %r W" % p)
    n.hal.sampler.run(n.meter, 0.2)
    await n._report()
    eq(json.loads(n.last)["relay"], False, "telemetry")
    eq(ps.state()["relay_hold"], "latched", "policy/state shows the operator's hold")
    r = _cmd(u, True, 2)
    eq((r["ok"], n.hal.relay.on), (True, True), "operator on: overrides sheds for 5 s")
    n.hal.sampler.set_freq(49.6)
    _run(n, ps, 2)
    approx(_p(n, ps), 2300.0, rel=0.01, what="a dip during the override: the load stays")
    eq(n.hal.relay_ctl.held_off > 0, True, "the engine's shed was held off")
    _run(n, ps, 2)
    p = _p(n, ps)
    eq((n.hal.relay.on, abs(p) < 3.0), (False, True), "override over: the shed applies (%r W)" % p)
    ev = _relay_events(u)
    eq(ev, [(0, "cmd x1"), (1, "cmd x2"), (0, "override ended, policy shed")], "events")
    u.log.close()


@heap("1m")
async def test_a_remote_disconnect_holds_across_a_reboot():
    d = scratch_dir()
    n, u, _ = _node(600, d)
    eq(_cmd(u, False, 1)["ok"], True, "operator off")
    u.log.close()
    n = u = None  # the first boot's node, freed before the second is made
    n = Node(_board(), _node_config(600, d))
    eq(n.hal.relay.on, False, "open from the node's start (the board default is closed)")
    p = _p(n, None)
    eq(abs(p) < 3.0, True, "no power after the reboot: %r W" % p)
