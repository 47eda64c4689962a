# What the MQTT uplink does once, at start: config.mqtt checked with its TLS context, the
# state of the MqttLink and of the Outbox.  Only nodes with MQTT load it (the uplink service's
# wiring, which every node with a record log runs, is store/storeinit.py's).  Loaded for the
# call and forgotten when it returns (meternode.run, docs/memory.md): a running node does not
# hold this code.  Each function is a method kept out of its class, `self` the resident object
# it fills (an MqttLink, an Outbox); the classes keep the methods a running node uses.


def link(self, node_id, m, outbox, on_command, describe, log):
    # MqttLink.__init__
    from meternode import _nop, forget
    from meternode.link.mqtt import Backoff
    from meternode.node import log as _log

    self._ssl = check_mqtt(m)  # config.mqtt checked, the TLS context made
    # The connect path (link/mqttconn.py) is loaded per connection; once now too, while the
    # heap is emptiest: its names are interned for good then, not at a reconnect in a heap
    # cut up by a long run, where they may need a new qstr pool (docs/memory.md).
    __import__("meternode.link.mqttconn")
    forget("meternode.link.mqttconn")
    self.node_id = node_id
    self.m = m
    self.prefix = m.get("prefix", "umeter")
    self.outbox = outbox
    self.on_command = on_command  # callback(payload bytes) for …/cmd
    self.describe = describe  # callable -> dict for discovery (channels, firmware)
    self.log = log or _log
    self.extra_topics = {}  # leaf -> callback(payload, retained), see link/uplink.py
    self.client = None  # the connected client (None while down)
    self._c = None  # the client of the attempt in hand, connected or not
    self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
    self.up = False
    self.ups = 0
    self.downs = 0
    self.last_error = None
    self.backoff = Backoff(m.get("backoff_min_ms", 500), m.get("backoff_max_ms", 30000))


def outbox(self, log, cursor, node_id, prefix, rate, window, ack_timeout_ms):
    # Outbox.__init__
    import asyncio

    from meternode import _nop
    from meternode.store import records
    from meternode.ticks import ms

    if rate <= 0:
        raise ValueError("mqtt.backlog_rate = %r must be above 0" % (rate,))
    if not 1 <= window <= 64:
        raise ValueError("mqtt.window = %r must be 1..64" % (window,))
    self.log = log
    self.cursor = cursor
    self.node_id = node_id
    self.rate = rate
    self.window = window
    self.ack_timeout_ms = ack_timeout_ms
    self._reader = log.reader()
    self._pending = []  # [seq, pid, acked, sent_ms] in send order
    self._sent_hi = cursor.acked  # highest seq sent so far
    self._rewind = 0  # seq to go back to, asked by the consumer (…/resend)
    self._want = 0  # seq the reader should return next (a higher one leaves a gap)
    self._gap = 0  # next seq of a gap to send as `missing` (0: none)
    self._gap_end = 0
    self._pid = 0
    self._kick = asyncio.Event()  # an ACK, a new record, a resend request, the ticker
    self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
    self.tokens = float(window)  # the bucket (the names are link/limiter.py's)
    self._t = ms()  # ticks_ms of the last refill (fractional tokens carry over)
    self._topics = {}  # record kind -> topic; the kinds of one topic share its string
    for k in (records.PROFILE, records.DAILY, records.MONTHLY, records.EVENT, records.READING):
        t = "%s/%s/%s" % (prefix, node_id, records.topic_leaf(k))
        for v in self._topics.values():
            if v == t:
                t = v
        self._topics[k] = t
    # counters, for stats() and tests
    self.published = 0
    self.dups = 0
    self.timeouts = 0
    self.skipped = 0
    self.missing = 0
    self.rewinds = 0
    self.on_unreadable = None  # callable(seq, why): an event, once per record (the service's)
    self._unreadable_hi = 0
    self.persist_errors = 0  # cursor writes that failed (flash full)


def check_mqtt(m):
    # MqttLink.__init__: the uplink keys of config["mqtt"] (config.py checks the basic ones);
    # -> the TLS context for config.mqtt.tls, else None.
    from meternode.config import ConfigError, need

    where = "config.mqtt"
    need(m, "host", str, where)
    need(m, "port", int, where, default=1883, lo=1, hi=65535)
    need(m, "prefix", str, where, default="umeter")
    need(m, "keepalive", int, where, default=30, lo=5, hi=3600)
    need(m, "clean", bool, where, default=False)
    need(m, "backlog_rate", float, where, default=20.0, lo=0.01, hi=10000.0)
    need(m, "window", int, where, default=8, lo=1, hi=64)
    need(m, "ack_timeout_ms", int, where, default=10000, lo=100, hi=600000)
    need(m, "backoff_min_ms", int, where, default=500, lo=10, hi=600000)
    need(m, "backoff_max_ms", int, where, default=30000, lo=10, hi=3600000)
    need(m, "discovery", bool, where, default=True)
    if "user" in m:
        need(m, "user", str, where)
        need(m, "password", str, where, default="")
    tls = need(m, "tls", dict, where, default={})
    if not tls:
        return None
    need(tls, "ca", str, where + ".tls")
    need(tls, "server_hostname", str, where + ".tls", default=m["host"])
    try:
        with open(tls["ca"], "rb") as f:
            ca = f.read()
    except OSError:
        raise ConfigError("config.mqtt.tls.ca: %s cannot be read" % tls["ca"])
    from meternode.link import tls as _tls

    return _tls.context(ca)
