# LoRaWAN's part of the node's health (link/stats.py, the `status` command), in a module of
# its own: its keys and the LoRa link's attribute names are interned by whatever loads them
# and kept for ever, so only a node with LoRaWAN loads this (once per `status`, forgotten
# after, as stats.py is); a node without it interns none of them.


def lora(k):
    # -> uplink.lora: the session, what went out and what the network took (the cursor
    # advances on its ACK), today's airtime against the budget, the modem's line.
    m = k.modem
    return {
        "joined": m.joined,
        "acked": k.cursor.acked,
        "sent": k.sent,
        "nacks": k.nacks,
        "failures": k.failures,
        "merged": k.merged,
        "unreadable": k.unreadable,
        "airtime_ms": k.gov.used_ms,
        "budget_ms": k.gov.daily_budget_ms,
        "busy": m.busy,
        "noise": m.noise,
        "errors": m.errors,
        "reboots": m.reboots,
        "error": str(k.last_error or ""),
    }


def clock(c, k):
    # clock.lorawan into the status's clock dict `c`: the last network time (DeviceTimeReq,
    # link/nettime.py) and its error, when the link asks for it (lora.time_s)
    t = k.nettime
    if t:
        c["lorawan"] = {"at": t[0], "error": t[1]}
