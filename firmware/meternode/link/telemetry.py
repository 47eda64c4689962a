# Telemetry payloads and topics.  JSON on MQTT (human-readable, Home Assistant friendly);
# the compact binary codec for LoRaWAN lives beside it later and carries the same fields.
#
# Energies are written from the registers' integers (milli-units) as exact decimals: a
# single-precision float (every board) steps by 1 Wh at 10 MWh, and json.dumps would print
# that.  Each such value goes into the dict as a marker string and is put into the JSON
# text as "<units>.<3 digits>" after dumps.
import json

_MARK = "@umeter-milli-%d@"


def topic(prefix, node_id, leaf):
    return "%s/%s/%s" % (prefix, node_id, leaf)


def _r(x, nd):
    return None if x is None else round(x, nd)


def _milli(x, subs):
    # x milli-units (an int >= 0) as an exact decimal in the JSON text (see the header)
    subs.append(x)
    return _MARK % (len(subs) - 1)


def _energy(e, key, ikey, subs):
    # e[ikey] (exact integer, milli-units) where the snapshot has it, else e[key] (float)
    x = e.get(ikey)
    return _r(e[key], 3) if x is None else _milli(x, subs)


def _element(e, subs):
    d = {
        "name": e["name"],
        "i": _r(e["i"], 3),
        "p": _r(e["p"], 2),
        "p_min": _r(e["p_min"], 2),
        "p_max": _r(e["p_max"], 2),
        "e_imp_wh": _energy(e, "e_imp_wh", "e_imp_mwh", subs),
        "e_exp_wh": _energy(e, "e_exp_wh", "e_exp_mwh", subs),
    }
    # the full meter (metrology.report) adds reactive, apparent, PF and quadrant registers
    for key, nd in (("q", 2), ("s", 2), ("pf", 4)):
        if key in e:
            d[key] = _r(e[key], nd)
    if "e_s_vah" in e:
        d["e_s_vah"] = _energy(e, "e_s_vah", "e_s_mvah", subs)
    if "quadrant" in e:
        d["quadrant"] = e["quadrant"]
    if "e_q_mvarh" in e:
        d["e_q_varh"] = [_milli(x, subs) for x in e["e_q_mvarh"]]
    elif "e_q_varh" in e:
        d["e_q_varh"] = [_r(x, 3) for x in e["e_q_varh"]]
    return d


def _fill(text, subs):
    # the markers -> exact decimals; a marker that is not exactly once in the text (a
    # string value that happens to look like one) leaves the text as it was: float fallback
    for k, x in enumerate(subs):
        m = '"' + _MARK % k + '"'
        if text.count(m) != 1:
            return None
        text = text.replace(m, "%d.%03d" % (x // 1000, x % 1000))
    return text


def encode(node_id, seq, ts, snap, overruns=0, mains=None, pulses=None, relay=None):
    # snap is Meter.snapshot().  The totals count only the elements on the grid connection
    # (board role "main", named in `mains`; None: every element), so a sub-circuit CT is
    # reported but not counted twice: p is their vector sum, e_imp_wh / e_exp_wh the meter's
    # total registers (netted as metrology.netting says) where the snapshot has them.
    # `pulses` is PulseService.readings() (water, gas, S0), when the board has pulse inputs.
    # `relay` is the board relay's state (True = load connected), None without a relay.
    # The measured timebase, where the meter gives it: sample_rate (sets/s), gaps and
    # lost_sets (the sampler's lost sets).
    d = _encode(node_id, seq, ts, snap, overruns, mains, pulses, relay, [])
    if d is None:  # a marker clash: the plain floats
        d = _encode(node_id, seq, ts, snap, overruns, mains, pulses, relay, None)
    return d


def _encode(node_id, seq, ts, snap, overruns, mains, pulses, relay, subs):
    els = []
    p_tot = 0.0
    imp = 0.0
    exp = 0.0
    for e in snap["elements"]:
        if mains is None or e["name"] in mains:
            p_tot += e["p"]
            imp += e["e_imp_wh"]
            exp += e["e_exp_wh"]
        els.append(_element(e, subs) if subs is not None else _element(_floats(e), []))
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
    if subs is not None:
        for key in ("imp", "exp"):
            x = snap.get("e_%s_mwh" % key)
            if x is not None:
                d["e_%s_wh" % key] = _milli(x, subs)
    if "sample_rate" in snap:
        d["sample_rate"] = _r(snap["sample_rate"], 3)
        d["gaps"] = snap.get("gaps", 0)
        d["lost_sets"] = snap.get("lost_sets", 0)
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
    text = json.dumps(d)
    return text if not subs else _fill(text, subs)


def _floats(e):
    # an element without its exact integers (the float fallback)
    return {k: v for k, v in e.items() if not k.endswith("mwh") and not k.endswith("mvarh") and not k.endswith("mvah")}


def decode(payload):
    # Host side (and tests): bytes -> dict, with the fields checked.
    d = json.loads(payload)
    for key in ("node", "seq", "ts", "v", "p", "e_imp_wh", "e_exp_wh", "elements"):
        if key not in d:
            raise ValueError("telemetry payload lacks %r" % key)
    return d
