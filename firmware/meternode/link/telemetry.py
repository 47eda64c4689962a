# Telemetry payloads and topics.  JSON on MQTT (human-readable, Home Assistant friendly);
# the compact binary codec for LoRaWAN lives beside it later and carries the same fields.
import json


def topic(prefix, node_id, leaf):
    return "%s/%s/%s" % (prefix, node_id, leaf)


def _r(x, nd):
    return None if x is None else round(x, nd)


def encode(node_id, seq, ts, snap, overruns=0, mains=None):
    # snap is Meter.snapshot(); the totals (p, e_imp_wh, e_exp_wh) add up the elements whose
    # board role is "main" (the grid connection), named in `mains` (None: every element),
    # so a sub-circuit CT is reported but not counted twice.
    els = []
    p_tot = 0.0
    imp = 0.0
    exp = 0.0
    for e in snap["elements"]:
        if mains is None or e["name"] in mains:
            p_tot += e["p"]
            imp += e["e_imp_wh"]
            exp += e["e_exp_wh"]
        els.append(
            {
                "name": e["name"],
                "i": _r(e["i"], 3),
                "p": _r(e["p"], 2),
                "p_min": _r(e["p_min"], 2),
                "p_max": _r(e["p_max"], 2),
                "e_imp_wh": _r(e["e_imp_wh"], 3),
                "e_exp_wh": _r(e["e_exp_wh"], 3),
            }
        )
    return json.dumps(
        {
            "node": node_id,
            "seq": seq,
            "ts": int(ts),
            "v": _r(snap["v"], 3),
            "f": _r(snap["f"], 3),
            "p": _r(p_tot, 2),
            "e_imp_wh": _r(imp, 3),
            "e_exp_wh": _r(exp, 3),
            "cycles": snap["cycles"],
            "overruns": overruns,
            "elements": els,
        }
    )


def decode(payload):
    # Host side (and tests): bytes -> dict, with the fields checked.
    d = json.loads(payload)
    for key in ("node", "seq", "ts", "v", "p", "e_imp_wh", "e_exp_wh", "elements"):
        if key not in d:
            raise ValueError("telemetry payload lacks %r" % key)
    return d
