# The MQTT link supervisor: connects (TCP or TLS), announces the node (retained `online`
# state, last will `offline`), subscribes to its command topic, publishes Home Assistant
# discovery, then hands the connection to the outbox until it drops; reconnects with
# jittered exponential backoff.  Link up/down are events with a reason, counted in stats().
#
# Other services take topics of their own through `extra_topics`, a public dict
# leaf -> callback(payload, retained): the link subscribes to <prefix>/<node>/<leaf> (QoS 1)
# on every connect and reconnect and routes each message on it to the callback.  A leaf
# added while the link is up is subscribed by `subscribe_extra()` (or at the next connect).

from meternode import run
from meternode.ticks import sleep_ms as _sleep_ms


class MqttLink:
    def __init__(self, node_id, m, outbox=None, on_command=None, describe=None, log=None):
        # Made once (link/linkinit.py, loaded for it and forgotten after): config.mqtt
        # checked, the TLS context, the state (attributes listed there).
        run("meternode.link.linkinit", "link", self, node_id, m, outbox, on_command, describe, log)

    def topic(self, leaf):
        return "%s/%s/%s" % (self.prefix, self.node_id, leaf)

    def _on_message(self, t, payload, retained):
        pre = "%s/%s/" % (self.prefix, self.node_id)
        if payload is None:  # longer than any free block: dropped by the client (mqtt.py)
            self.log("%s: message dropped: no memory for it" % t)
        if t.startswith(pre) and self.extra_topics:
            cb = self.extra_topics.get(t[len(pre) :])
            if cb is not None:
                try:
                    cb(payload, retained)
                except Exception as e:  # a service's bug must not take the link down
                    self.log("%s: handler failed: %r" % (t, e))
                return
        if payload is None:
            return  # a command's sender hears nothing: it is retried or expires
        if t == self.topic("cmd") and self.on_command is not None:
            self.on_command(payload)
        elif t == self.topic("resend") and self.outbox is not None and payload:
            try:
                self.outbox.resend_from(int(payload))
            except ValueError:
                self.log("ignored resend request %r" % payload)

    async def run(self):
        # Reconnects forever.  Whatever fails in one connection attempt (a refused connect, a
        # timeout, a MemoryError making the client or its buffers) is logged and retried
        # after the backoff: it never ends the link task.  Cancelled (the supervisor restarts
        # a stalled link, or the node stops), the connection in hand goes with it: its reader
        # task never outlives the link task.
        m = self.m
        where = "%s:%d" % (m["host"], m.get("port", 1883))
        try:
            while True:
                self.beat()
                self._c = None
                try:
                    # the client made, connected and the node announced (link/mqttconn.py: loaded
                    # per connection, forgotten after); self._c is the client from its making on
                    await run("meternode.link.mqttconn", "open", self)
                    c = self.client = self._c
                    if self.describe is not None and self.m.get("discovery", True):
                        # Home Assistant discovery (link/discovery.py, loaded for it once the
                        # connect path is forgotten: the heap never holds both).  Best effort: a
                        # heap with no room for it now does not keep the link down.
                        try:
                            await run("meternode.link.discovery", "announce", self, c)
                        except MemoryError as e:
                            self.log("discovery not published: %s" % e)
                    self.up = True
                    self.ups += 1
                    self.backoff.reset()
                    self.log("link up: %s%s" % (where, " (session kept)" if c.session_present else ""))
                    if self.outbox is not None:
                        await self.outbox.run_connection(c)
                    while c.connected:
                        self.beat()
                        await _sleep_ms(100)
                    self.last_error = c.error
                    self.log("link down: %s" % c.error)
                except Exception as e:
                    self.last_error = e
                    self._failed(e)
                if self.up:
                    self.downs += 1
                self.client = None
                self.up = False
                c = self._c
                if c is not None:
                    try:
                        await c.disconnect()
                    except Exception as e:
                        self._failed(e)
                self._c = None
                await _sleep_ms(self.backoff.next_ms())
        finally:
            c = self._c
            if c is not None:
                c.drop()
            self._c = self.client = None
            if self.up:
                self.downs += 1
            self.up = False

    def _failed(self, e):
        if isinstance(e, MemoryError):
            import gc

            gc.collect()  # what the failed attempt held goes before the next one
        try:
            self.log("link error: %s" % (e,))
        except MemoryError:
            pass

    async def subscribe_extra(self, leaves=None):
        # Subscribes `leaves` (default: every extra topic) on the current connection; False
        # when the link is down (the next connect subscribes them all).
        c = self.client
        if c is None or not c.connected:
            return False
        for leaf in leaves if leaves is not None else list(self.extra_topics):
            await c.subscribe(self.topic(leaf), 1)
        return True

    async def publish_live(self, leaf, payload, qos=0):
        # Sent when the link is up, dropped otherwise (QoS 0 live data: telemetry); QoS 1 waits
        # for the PUBACK (command results).  -> whether it went.
        c = self.client
        if c is None or not c.connected:
            return False
        try:
            await c.publish(self.topic(leaf), payload, qos=qos)
            return True
        except Exception as e:
            self.log("%s not sent: %s" % (leaf, e))
            return False
