# The uplink's and the record log's counters as dicts (UplinkService.stats() with the MQTT
# link's, RecordLog.stats(), Outbox.stats()) and the node's health (node(): the `status`
# command).  A running node asks for them only when an operator does, so each stats() loads
# this module for its call and forgets it after (meternode.forget): a node holds none of its
# code. Its names (keys, parameters, the attributes it reads) are interned when it loads and
# kept for ever, as every module's are (docs/memory.md): what only a LoRaWAN node has is in
# link/lorastats.py, so `status` leaves 8 on a node without LoRa (it left 27).
from meternode import run


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


def outbox(o):
    return {
        "acked": o.cursor.acked,
        "backlog": o.backlog(),
        "in_flight": len(o._pending),
        "published": o.published,
        "dup": o.dups,
        "ack_timeouts": o.timeouts,
        "unreadable": o.skipped,
        "missing": o.missing,
        "rewinds": o.rewinds,
    }


def service(s):
    d = {"log": log(s.log), "cursor": s.cursor.acked, "results_dropped": s.results_dropped}
    c = s.commands
    if c is not None:
        h = c.limiter.held if c.limiter else 0  # (made at the first refusal)
        d["commands"] = {"accepted": c.accepted, "rejected": c.rejected, "failed": c.failed, "held": h}
    if s.outbox is not None:
        d["outbox"] = outbox(s.outbox)
    k = s.link
    if k is not None:
        d["link"] = {"up": k.up, "ups": k.ups, "downs": k.downs, "error": str(k.last_error or "")}
    if s.lora is not None:  # (link/lorastats.py: its names only where LoRaWAN is)
        d["lora"] = run("meternode.link.lorastats", "lora", s.lora)
    return d


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
    s = n.uplink_service
    if s is not None and s.lora is not None:
        run("meternode.link.lorastats", "clock", d["clock"], s.lora)
    sup = n.supervisor
    if sup is not None:
        d["up_s"] = sup.up_s
        d["restarts"] = sup.restarts
        d["starved"] = sup.starved
        d["tasks"] = {w.name: [w.restarts, w.stalls, w.error] for w in sup.watches}
    if s is not None:
        d["uplink"] = service(s)
    return d
