# Telemetry payloads and topics.  JSON on MQTT (human-readable, Home Assistant friendly);
# the compact binary codec for LoRaWAN lives beside it later and carries the same fields.
#
# Energies are written from the registers' integers (milli-units, the snapshot's e_*_mwh
# keys) as exact decimals: a single-precision float (every board) steps by 1 Wh at 10 MWh,
# and json.dumps would print that.  Each goes into the dict as the bytes of its JSON number,
# "<units>.<3 digits>", and into the text as they are (no class of its own to hold).
#
# The node writes each payload into one buffer it keeps (encode_into): a payload is several
# hundred bytes, and a heap that has run for a day has few free runs that long left between
# its long-lived objects -- building the text anew every period (json.dumps growing its
# string, then a copy per energy value) failed now and then with 20 KB free in small pieces
# (docs/memory.md).  Every piece written is a small string; the text is json.dumps's own
# (its separators, and its form of every key, string and number).
import json


def topic(prefix, node_id, leaf):
    return "%s/%s/%s" % (prefix, node_id, leaf)


def _r(x, n):
    return None if x is None else round(x, n)


def _wh(e, key):
    # e[key] in Wh (varh, VAh): the exact integer under the key of the unit's milli-unit
    # (e_imp_wh -> e_imp_mwh, e_q_varh -> e_q_mvarh) where there is one
    i = key.rindex("_") + 1
    x = e.get(key[:i] + "m" + key[i:])
    exact = x is not None
    if not exact:
        x = e[key]
    if not isinstance(x, list):
        return b"%d.%03d" % (x // 1000, x % 1000) if exact else _r(x, 3)
    out = []  # (a loop: a comprehension is a function held with the module)
    for v in x:
        out.append(b"%d.%03d" % (v // 1000, v % 1000) if exact else _r(v, 3))
    return out


def encode_into(buf, node_id, seq, ts, snap, overruns=0, mains=None, pulses=None, relay=None):
    # Writes the payload into the bytearray buf -> its length; IndexError when it does not
    # fit (buf holds part of it then).  snap is Meter.snapshot().  The totals count only the
    # elements on the grid connection
    # (board role "main", named in `mains`; None: every element), so a sub-circuit CT is
    # reported but not counted twice: p is their vector sum, e_imp_wh / e_exp_wh the meter's
    # total registers (netted as metrology.netting says) where the snapshot has them.
    # `pulses` is PulseService.readings() (water, gas, S0), when the board has pulse inputs.
    # `relay` is the board relay's state (True = load connected), None without a relay.
    # The measured timebase, where the meter gives it: sample_rate (sets/s), gaps and
    # lost_sets (sets the sampler lost).
    els = []
    p_tot = 0.0
    imp = 0.0
    exp = 0.0
    for e in snap["elements"]:
        if mains is None or e["name"] in mains:
            p_tot += e["p"]
            imp += e["e_imp_wh"]
            exp += e["e_exp_wh"]
        d = {
            "name": e["name"],
            "i": _r(e["i"], 3),
            "p": _r(e["p"], 2),
            "p_min": _r(e["p_min"], 2),
            "p_max": _r(e["p_max"], 2),
            "e_imp_wh": _wh(e, "e_imp_wh"),
            "e_exp_wh": _wh(e, "e_exp_wh"),
        }
        # the full meter (Meter.snapshot, metrology/meter.py) adds reactive, apparent, PF and
        # quadrant registers.  Each key is written out: a short literal is an interned name,
        # a tuple of them an object per key held with the module (docs/memory.md)
        if "q" in e:
            d["q"] = _r(e["q"], 2)
        if "s" in e:
            d["s"] = _r(e["s"], 2)
        if "pf" in e:
            d["pf"] = _r(e["pf"], 4)
        if "e_s_vah" in e:
            d["e_s_vah"] = _wh(e, "e_s_vah")
        if "e_q_varh" in e:
            d["e_q_varh"] = _wh(e, "e_q_varh")
        if "quadrant" in e:
            d["quadrant"] = e["quadrant"]
        els.append(d)
    d = {
        "node": node_id,
        "seq": seq,
        "ts": int(ts),
        "v": _r(snap["v"], 3),
        "f": _r(snap["f"], 3),
        "p": _r(p_tot, 2),
        "e_imp_wh": _wh(snap, "e_imp_wh") if "e_imp_wh" in snap else _r(imp, 3),
        "e_exp_wh": _wh(snap, "e_exp_wh") if "e_exp_wh" in snap else _r(exp, 3),
        "cycles": snap["cycles"],
        "overruns": overruns,
        "elements": els,
    }
    k = "sample_rate"  # (a literal over 10 characters is an object at each place it is written)
    if k in snap:
        d[k] = _r(snap[k], 3)
        d["gaps"] = snap["gaps"]
        d["lost_sets"] = snap["lost_sets"]
    if "tariff" in snap:
        d["tariff"] = snap["tariff"]
    if "demand_w" in snap:
        d["demand_w"] = _r(snap["demand_w"], 1)
    if "md_w" in snap:
        d["md_w"] = _r(snap["md_w"], 1)
    if "voltages" in snap and len(snap["voltages"]) > 1:
        vs = d["voltages"] = {}  # (a loop: a comprehension is a function held with the module)
        for k, v in snap["voltages"].items():
            vs[k] = _r(v, 3)
    if "pq" in snap:
        d["pq"] = snap["pq"]
    if pulses:
        d["pulses"] = pulses
    if relay is not None:
        d["relay"] = relay
    return _w(buf, 0, d)


def _put(buf, n, s):
    b = s.encode() if isinstance(s, str) else s
    m = n + len(b)
    if m > len(buf):
        raise IndexError("telemetry: %d bytes do not fit a %d-byte buffer" % (m, len(buf)))
    buf[n:m] = b
    return m


def _w(buf, n, v):
    # v as JSON at buf[n:] -> the end
    if isinstance(v, dict):
        n = _put(buf, n, "{")
        sep = ""
        for k in v:
            n = _put(buf, n, sep)
            sep = ", "
            n = _put(buf, n, json.dumps(k))
            n = _put(buf, n, ": ")
            n = _w(buf, n, v[k])
        return _put(buf, n, "}")
    if isinstance(v, (list, tuple)):
        n = _put(buf, n, "[")
        sep = ""
        for x in v:
            n = _put(buf, n, sep)
            sep = ", "
            n = _w(buf, n, x)
        return _put(buf, n, "]")
    if isinstance(v, bytes):  # an exact energy (_wh)
        return _put(buf, n, v)
    return _put(buf, n, json.dumps(v))
