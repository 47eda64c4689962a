# The reporting window: per-cycle statistics since the last snapshot, and the snapshot
# dict that node.py and the telemetry encoder read (keys cycles, v, f, elements with
# name, i, p, p_min, p_max, e_imp_wh, e_exp_wh; plus q, s, pf, quadrant, reactive and
# apparent energy, voltages, tariff, totals, demand and power quality when enabled).
# Energies are there twice: as float Wh (e_imp_wh ...: convenient, but a single-precision
# float steps by 1 Wh at 10 MWh) and as the registers' exact integers (e_imp_mwh ...), which
# the freeze records and the telemetry encoder use.  The timebase: sample_rate (measured
# sets/s), gaps and lost_sets (the sampler's lost sets, counted by the meter).
import math

from meternode.metrology import floats


class Window:
    def __init__(self, nch, elements):
        self.nch = nch
        self.elements = elements
        # the window's sums in one float array made once (metrology.floats): per element
        # I^2, P, Q (weighted by cycles), P min, P max (5 words), then V^2 per channel, then
        # the frequency (weighted by cycles) (zeros; snapshot() zeroes it again)
        self.w = floats(5 * elements + nch + 1)
        self.w_n = 0  # cycles in the window

    def cycle(self, m, nc, f):
        # One converted batch of nc measured cycles of meter m (its means, f its mean
        # frequency), weighted by nc;
        # p_min / p_max are over batches (one cycle each with metrology.batch_cycles = 1).
        first = self.w_n == 0
        w = self.w
        k = 5 * self.elements
        for c in range(self.nch):
            x = m.vrms[c]
            w[k + c] += x * x * nc
        k = 0
        for e in range(self.elements):
            p = m.p[e]
            x = m.irms[e]
            w[k] += x * x * nc
            w[k + 1] += p * nc
            w[k + 2] += m.q[e] * nc
            if first or p < w[k + 3]:
                w[k + 3] = p
            if first or p > w[k + 4]:
                w[k + 4] = p
            k += 5
        w[-1] += f * nc
        self.w_n += nc

    def snapshot(self, m):
        # Averages over the cycles since the last snapshot (RMS values as RMS of RMS).
        n = self.w_n
        if n == 0:
            return None
        r = m.registers
        w = self.w
        k = 5 * self.elements
        vrms = []  # (loops, not comprehensions: each of those is a function held with the module)
        volts = {}
        for a in range(self.nch):
            vrms.append(math.sqrt(w[k + a] / n))
            if m.cal[a].kind == "voltage":
                volts[m.names[a]] = vrms[a]
        els = []
        for e in range(self.elements):
            a = m.pairs[e][0]
            k = 5 * e
            irms = math.sqrt(w[k] / n)
            p = w[k + 1] / n
            q = w[k + 2] / n
            s = vrms[a] * irms
            pf = p / s if s > 0.0 else 0.0
            qm = r.quadrants(e)  # mvarh
            qv = []
            for x in qm:
                qv.append(x / 1000.0)
            els.append(
                {
                    "name": m.names[m.pairs[e][1]],  # the element's current channel
                    "v": vrms[a],
                    "i": irms,
                    "p": p,
                    "q": q,
                    "s": s,
                    "pf": max(-1.0, min(1.0, pf)),
                    # by the signs of P and Q: 1 = +P +Q (import, inductive), 2 = -P +Q,
                    # 3 = -P -Q, 4 = +P -Q (import, capacitive)
                    "quadrant": (1 if q >= 0.0 else 4) if p >= 0.0 else (2 if q >= 0.0 else 3),
                    "p_min": w[k + 3],
                    "p_max": w[k + 4],
                    "e_imp_wh": r.get(e, 0) / 1000.0,
                    "e_exp_wh": r.get(e, 1) / 1000.0,
                    "e_q_varh": qv,
                    "e_s_vah": (r.get(e, 6) + r.get(e, 7)) / 1000.0,
                    "e_imp_mwh": r.get(e, 0),
                    "e_exp_mwh": r.get(e, 1),
                    "e_q_mvarh": qm,
                    "e_s_mvah": r.get(e, 6) + r.get(e, 7),
                }
            )
        snap = {
            "cycles": n,
            "v": vrms[m.v_channel],
            "voltages": volts,
            "f": w[-1] / n,
            "elements": els,
            "tariff": r.tariff,
            "e_imp_wh": r.total_import() / 1000.0,
            "e_exp_wh": r.total_export() / 1000.0,
            "e_imp_mwh": r.total_import(),
            "e_exp_mwh": r.total_export(),
            "demand_w": m.energy.demand_w,
            "md_w": r.md_mw / 1000.0,
            "sample_rate": m.rate,
            "gaps": m.gaps,
            "lost_sets": m.lost_sets,
        }
        if m.quality is not None:
            snap["pq"] = m.quality.report()
        for k in range(len(w)):  # the next window
            w[k] = 0
        self.w_n = 0
        return snap
