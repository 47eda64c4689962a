# Telemetry payloads and topics.  JSON on MQTT (human-readable, Home Assistant friendly);
# the compact binary codec for LoRaWAN lives beside it later and carries the same fields.
import json


def topic(prefix, node_id, leaf):
    return "%s/%s/%s" % (prefix, node_id, leaf)


def _r(x, nd):
    return None if x is None else round(x, nd)


def _element(e):
    d = {
        "name": e["name"],
        "i": _r(e["i"], 3),
        "p": _r(e["p"], 2),
        "p_min": _r(e["p_min"], 2),
        "p_max": _r(e["p_max"], 2),
        "e_imp_wh": _r(e["e_imp_wh"], 3),
        "e_exp_wh": _r(e["e_exp_wh"], 3),
    }
    # the full meter (metrology.report) adds reactive, apparent, PF and quadrant registers
    for key, nd in (("q", 2), ("s", 2), ("pf", 4), ("e_s_vah", 3)):
        if key in e:
            d[key] = _r(e[key], nd)
    if "quadrant" in e:
        d["quadrant"] = e["quadrant"]
    if "e_q_varh" in e:
        d["e_q_varh"] = [_r(x, 3) for x in e["e_q_varh"]]
    return d


def encode(node_id, seq, ts, snap, overruns=0, mains=None, pulses=None, relay=None):
    # snap is Meter.snapshot().  The totals count only the elements on the grid connection
    # (board role "main", named in `mains`; None: every element), so a sub-circuit CT is
    # reported but not counted twice: p is their vector sum, e_imp_wh / e_exp_wh the meter's
    # total registers (netted as metrology.netting says) where the snapshot has them.
    # `pulses` is PulseService.readings() (water, gas, S0), when the board has pulse inputs.
    # `relay` is the board relay's state (True = load connected), None without a relay.
    els = []
    p_tot = 0.0
    imp = 0.0
    exp = 0.0
    for e in snap["elements"]:
        if mains is None or e["name"] in mains:
            p_tot += e["p"]
            imp += e["e_imp_wh"]
            exp += e["e_exp_wh"]
        els.append(_element(e))
    d = {
        "node": node_id,
        "seq": seq,
        "ts": int(ts),
        "v": _r(snap["v"], 3),
        "f": _r(snap["f"], 3),
        "p": _r(p_tot, 2),
        "e_imp_wh": _r(snap.get("e_imp_wh", imp), 3),
        "e_exp_wh": _r(snap.get("e_exp_wh", exp), 3),
        "cycles": snap["cycles"],
        "overruns": overruns,
        "elements": els,
    }
    for key in ("tariff", "demand_w", "md_w"):
        if key in snap:
            d[key] = _r(snap[key], 1) if key != "tariff" else snap[key]
    if "voltages" in snap and len(snap["voltages"]) > 1:
        d["voltages"] = {k: _r(v, 3) for k, v in snap["voltages"].items()}
    if "pq" in snap:
        d["pq"] = snap["pq"]
    if pulses:
        d["pulses"] = pulses
    if relay is not None:
        d["relay"] = relay
    return json.dumps(d)


def decode(payload):
    # Host side (and tests): bytes -> dict, with the fields checked.
    d = json.loads(payload)
    for key in ("node", "seq", "ts", "v", "p", "e_imp_wh", "e_exp_wh", "elements"):
        if key not in d:
            raise ValueError("telemetry payload lacks %r" % key)
    return d
