# The uplink's and the record log's counters as dicts (UplinkService.stats() with the MQTT
# link's, RecordLog.stats(), Outbox.stats()): for tests and diagnostics.  Nothing on a running node asks
# for them, so each stats() loads this module for its call and forgets it after (meternode.forget):
# a node holds neither this code nor its key names (docs/memory.md).


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
    return d
