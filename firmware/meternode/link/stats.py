# The uplink's and the record log's counters as dicts (UplinkService.stats() with the MQTT
# link's, RecordLog.stats(), Outbox.stats()) and the node's health (node(): the `status`
# command).  A running node asks for them only when an operator does, so each stats() loads
# this module for its call and forgets it after (meternode.forget): a node holds neither this
# code nor its key names (docs/memory.md).


def log(g):
    n = 0
    for s in g.segs:
        n += s[3]
    return {
        "segments": len(g.segs),
        "records": n,
        "bytes": g.bytes_used(),
        "first_seq": g.first_seq(),
        "last_seq": g.last_seq,
        "dropped": g.dropped,
        "corrupt": g.corrupt,
        "torn": g.torn,
        "unwritten": g.unwritten,
        "hw": g._hw,
    }


def outbox(ob):
    return {
        "acked": ob.cursor.acked,
        "backlog": ob.backlog(),
        "in_flight": len(ob._pending),
        "published": ob.published,
        "dup": ob.dups,
        "ack_timeouts": ob.timeouts,
        "unreadable": ob.skipped,
        "missing": ob.missing,
        "rewinds": ob.rewinds,
    }


def service(svc):
    d = {"log": log(svc.log), "cursor": svc.cursor.acked, "results_dropped": svc.results_dropped}
    c = svc.commands
    if c is not None:
        h = c.limiter.held if c.limiter else 0  # (made at the first refusal)
        d["commands"] = {"accepted": c.accepted, "rejected": c.rejected, "failed": c.failed, "held": h}
    if svc.outbox is not None:
        d["outbox"] = outbox(svc.outbox)
    k = svc.link
    if k is not None:
        d["link"] = {"up": k.up, "ups": k.ups, "downs": k.downs, "error": str(k.last_error or "")}
    if svc.lora is not None:
        d["lora"] = lora(svc.lora)
    return d


def lora(ll):
    # LoRaWAN's health: the session, what went out and what the network took (the cursor
    # advances on its ACK), today's airtime against the budget, the modem's line.
    m = ll.modem
    return {
        "joined": m.joined,
        "acked": ll.cursor.acked,
        "sent": ll.sent,
        "nacks": ll.nacks,
        "failures": ll.failures,
        "merged": ll.merged,
        "unreadable": ll.unreadable,
        "airtime_ms": ll.gov.used_ms,
        "budget_ms": ll.gov.daily_budget_ms,
        "busy": m.busy,
        "noise": m.noise,
        "errors": m.errors,
        "reboots": m.reboots,
        "error": str(ll.last_error or ""),
    }


def node(n):
    # The node's health for the `status` command (docs/uplink.md, "Commands"): what an operator
    # of a node nobody visits asks before anything else -- is its heap holding (free after a
    # collection now, the lowest seen at a report since boot), have its tasks been restarted,
    # does it keep up with the ADC, is its flash taking the checkpoints, is the uplink
    # delivering.
    import gc

    from meternode import VERSION, ticks

    gc.collect()
    free = gc.mem_free()
    m = n.meter
    d = {
        "version": VERSION,
        "reset": n.reset_cause,
        "safe": n.safe,
        # (this collection is one more reading: before the first report it is the only one)
        "heap": {"free": free, "alloc": gc.mem_alloc(), "low": min(free, n.heap_low)},
        "meter": {"gaps": m.gaps, "lost_sets": m.lost_sets, "overruns": n.hal.sampler.overruns},
        "ckpt_errors": n.ckpt_errors,
        # the wall clock and the billing time its freezes and periods follow
        "clock": {"epoch": int(n.hal.clock.time()), "utc_offset_min": ticks.LOCAL_S // 60},
    }
    ntp = getattr(n, "ntp", None)  # Wi-Fi boards (link/wifi.py clock_sync)
    if ntp is not None:
        d["clock"]["ntp"] = {"at": ntp[0], "error": ntp[1]}
    svc = n.uplink_service
    lt = svc is not None and svc.lora is not None and svc.lora.nettime  # LoRaWAN DeviceTimeReq (link/nettime.py)
    if lt:
        d["clock"]["lorawan"] = {"at": lt[0], "error": lt[1]}
    sup = n.supervisor
    if sup is not None:
        d["up_s"] = sup.up_s
        d["restarts"] = sup.restarts
        d["starved"] = sup.starved
        d["tasks"] = {w.name: [w.restarts, w.stalls, w.error] for w in sup.watches}
    if svc is not None:
        d["uplink"] = service(svc)
    return d
