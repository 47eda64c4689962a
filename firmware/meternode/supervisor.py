# The supervisor: owns every long-running task of the node, like a device nobody visits.
#
#   sup = Supervisor(log, wdt=halinit.make_watchdog(board, config))
#   w = sup.add("sampling", start, stall_ms=5000)   # start(watch) -> a fresh coroutine
#   await sup.run()                                  # never returns
#
# - A task that ends or raises (MemoryError included) is contained: it is logged, passed to
#   `on_fail(watch, why)` (the node records it as a TASK event in the record log) and started
#   again by calling start(watch) after a bounded backoff (backoff_min_ms doubling up to
#   backoff_max_ms).  Only that task is touched; the others go on.
# - Progress: a task calls `watch.beat()` at least once every `stall_ms` (wall time; its
#   start counts as one).  beat() stores a small int and allocates nothing, so a sampling
#   loop may call it per block.  A long wait is split or the stall limit covers it; a task
#   may change its own `watch.stall_ms` (e.g. when its period is reconfigured).  A task that
#   made no progress for stall_ms is "stalled": it is cancelled and restarted like a failed
#   one (CancelledError is a BaseException: `except Exception` in the task does not stop it;
#   a task holding a connection or helper tasks closes them in a `finally`).
#   stall_ms = 0: an input-driven task (the LoRa modem's line reader) that may rightly wait
#   for outside bytes for ever; it has no progress deadline and is restarted only when it
#   ends or raises (whoever waits for its input has a timeout of its own).
# - The watchdog (hal.halinit.make_watchdog: machine.WDT on boards, a stand-in on the sim board) is
#   fed every check_ms only while every task is running and made progress within its
#   stall_ms, or is waiting out its restart backoff (the supervisor holds it).  If the
#   event loop itself is stuck (a task spinning without awaiting, a call blocked in C),
#   nothing feeds the watchdog and the board resets.
# - Crash loop: a task that fails `loop_fails` times in a row, each run shorter than
#   stable_ms, keeps dying; on_loop(watch, why) is called (the node counts it in the
#   persisted crash-loop state, checkpoints its registers and reboots; after `safe_after`
#   such reboots in a row it boots into the safe configuration, see tasks.py).  With no
#   on_loop, the task keeps being restarted at the longest backoff.  A run of stable_ms
#   clears a task's failure count.  on_up(s) is called from the supervision loop about once
#   a second with the seconds run() has run (the node clears its persisted crash-loop count
#   after stable_s there, and ends a safe configuration after safe_hold_s).
#
# Modules whose loops run inside a task (MqttLink, Outbox, LoRaLink, WifiSupervisor,
# PolicyService) have a `beat` attribute, a no-op by default, that the node points at the
# task's watch.beat (tasks.py).  This module is the mechanism only; which tasks a node runs,
# their stall limits and what a crash loop does are in tasks.py.
import asyncio

from meternode.ticks import add as _add
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms


class Watch:
    # One supervised task: how to start it, its progress and its failures.  What only a
    # failure changes is read from these class defaults until one sets it on the instance:
    # a healthy task's instance holds seven attributes, not twelve (its dict one size
    # smaller, measured ~30 B a task on a 32-bit port)
    task = None  # the asyncio task that runs it, and again after each failure
    # 0 running, 1 stalled (cancelled, not yet unwound), 2 waiting out the backoff before a
    # restart
    state = 0
    due = 0  # ticks_ms of that restart
    fails = 0  # failures in a row, each run shorter than stable_ms
    restarts = 0  # restarts since boot
    stalls = 0  # of which for lack of progress
    error = ""  # why it failed last

    def __init__(self, name, start, stall_ms):
        self.name = name
        self.start = start  # start(watch) -> coroutine, called for every (re)start
        self.stall_ms = stall_ms
        self.t = _now()  # last progress (ticks_ms)
        self.started = self.t

    def beat(self):
        self.t = _now()


class Supervisor:
    def __init__(
        self,
        log=print,
        wdt=None,
        on_fail=None,
        on_loop=None,
        check_ms=1000,
        backoff_min_ms=500,
        backoff_max_ms=60000,
        loop_fails=5,
        stable_ms=600000,
        on_up=None,
    ):
        self.log = log
        self.wdt = wdt  # feed(); None: no watchdog
        self.on_fail = on_fail  # on_fail(watch, why): every failure (the node records an event)
        self.on_loop = on_loop  # on_loop(watch, why): a task keeps dying
        # on_up(s): about once a second, the whole seconds run() has run (the node's
        # crash-loop bookkeeping: a plain call from the supervision loop, not a task of its own)
        self.on_up = on_up
        self.up_s = 0
        self.check_ms = check_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.loop_fails = loop_fails
        self.stable_ms = stable_ms
        self.watches = []
        self.restarts = 0  # all tasks, since boot
        self.feeds = 0
        self.starved = 0  # checks that did not feed the watchdog
        self.running = False
        self._cb = self._done  # one bound method: the completion callback of every task

    def add(self, name, start, stall_ms=60000):
        # Registers a task; started by run() (or at once when run() is already running).
        for w in self.watches:
            if w.name == name:
                raise ValueError("task %s is supervised already" % name)
        w = Watch(name, start, stall_ms)
        self.watches.append(w)
        if self.running:
            self._spawn(w)
        return w

    def watch(self, name):
        for w in self.watches:
            if w.name == name:
                return w
        return None

    def _spawn(self, w):
        # Starts (or restarts) a task.  No frame of ours lives with it: asyncio calls _done
        # when it ends (a task's completion callback, the hook asyncio's own gather() uses),
        # and check() starts it again once its backoff is over.
        w.t = w.started = _now()
        w.state = 0
        try:
            t = asyncio.create_task(w.start(w))
        except Exception as e:  # its start function raised (MemoryError included)
            self._failed(w, e)
            return
        t.state = self._cb
        w.task = t

    def _done(self, t, e):
        # A supervised task ended: e is StopIteration (it returned), CancelledError or what it
        # raised.  This runs inside asyncio's scheduler, where anything raised would end the
        # event loop: _failed contains whatever the report raises but a reboot.
        for w in self.watches:
            if w.task is t and w.state != 2:
                if isinstance(e, StopIteration):
                    self._failed(w, None)
                elif w.state == 1 or not isinstance(e, asyncio.CancelledError):
                    self._failed(w, e)  # stalled (the supervisor cancelled it), or it raised
                return  # (a task cancelled by run() stopping has no watch any more)

    def _failed(self, w, e):
        # One failure counted and reported; returns the backoff before the restart.  e: what
        # ended the run (None: it returned; state 1: the supervisor cancelled it, stalled).
        try:  # the reason is made (the stall's read from msgs.txt): none is left on a full heap
            if e is None:
                why = "ended"
            elif w.state == 1:
                why = "stalled: no progress in %d ms" % w.stall_ms
            else:
                why = "%s: %s" % (type(e).__name__, e)
        except MemoryError:
            why = "MemoryError"
        w.state = 2
        now = _now()
        if _diff(now, w.started) >= self.stable_ms:
            w.fails = 0  # it ran long enough: this is a new failure, not a loop
        w.fails += 1
        w.restarts += 1
        self.restarts += 1
        w.error = why
        k = w.fails - 1 if w.fails < 16 else 15
        wait = self.backoff_min_ms << k
        if wait > self.backoff_max_ms:
            wait = self.backoff_max_ms
        w.due = _add(now, wait)
        try:
            self.log("task %s failed (%d in a row): %s; restart in %d ms" % (w.name, w.fails, why, wait))
        except MemoryError:
            pass
        for cb in (self.on_fail, self.on_loop if w.fails >= self.loop_fails else None):
            if cb is not None:
                try:
                    cb(w, why)
                except Exception as x:  # a full flash must not stop the supervision
                    try:
                        self.log("task %s: failure not recorded: %r" % (w.name, x))
                    except MemoryError:
                        pass
        return wait

    def check(self):
        # One supervision pass: cancel what stalled (it restarts after its backoff), clear
        # the failure counts of tasks that ran stable_ms, feed the watchdog when every task
        # is healthy (progressing, or waiting out its backoff).  Returns True when it fed.
        now = _now()
        healthy = True
        for w in self.watches:
            if w.state == 2:
                if _diff(now, w.due) >= 0:
                    self._spawn(w)  # its backoff is over
                continue
            if w.task is None:
                continue
            if w.state:
                healthy = False  # stalled: cancelled, not yet unwound
                continue
            if w.stall_ms and _diff(now, w.t) > w.stall_ms:
                healthy = False
                w.state = 1
                w.stalls += 1
                w.task.cancel()
                continue
            if w.fails and _diff(now, w.started) >= self.stable_ms:
                w.fails = 0
        if healthy:
            self.feeds += 1
            if self.wdt is not None:
                self.wdt.feed()
        else:
            self.starved += 1
        return healthy

    async def run(self):
        self.running = True
        for w in self.watches:
            if w.task is None:
                self._spawn(w)
        if self.wdt is not None:
            self.wdt.feed()
        t = _now()  # up_s is counted in whole seconds from here (ticks: nothing grows)
        try:
            while True:
                # the next check: in check_ms, or sooner when a restart falls due before
                d = self.check_ms
                now = _now()
                for w in self.watches:
                    r = _diff(w.due, now)
                    if w.state == 2 and r < d:
                        d = r if r > 0 else 0
                await _sleep_ms(d)
                self.check()
                k = _diff(_now(), t) // 1000
                if k > 0:
                    t = _add(t, k * 1000)
                    self.up_s += k
                    if self.on_up is not None:
                        try:
                            self.on_up(self.up_s)
                        except Exception as e:  # (a planned reboot, SystemExit, passes)
                            try:
                                self.log("uptime bookkeeping failed: %r" % (e,))
                            except MemoryError:
                                pass
        finally:
            self.running = False
            for w in self.watches:
                t, w.task = w.task, None
                if t is not None:
                    t.cancel()

    def stats(self):
        return {
            "restarts": self.restarts,
            "feeds": self.feeds,
            "starved": self.starved,
            "tasks": {w.name: (w.restarts, w.stalls, w.error) for w in self.watches},
        }
