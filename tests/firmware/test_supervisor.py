# The supervisor (supervisor.py) on MicroPython: a task that raises, ends or stops making
# progress is contained, recorded and restarted with bounded backoff while the others go on;
# the watchdog is fed only while every task progresses; a task that keeps dying is a crash
# loop; the sim board's watchdog stand-in resets whatever the event loop is doing.
import asyncio
import os
import time

from meternode import ticks
from meternode.supervisor import Supervisor
from mptest import eq, heap, scratch_dir, timeout


class _Wdt:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


def _quiet(msg):
    pass


async def _healthy(w):
    while True:
        w.beat()
        w.n = getattr(w, "n", 0) + 1
        await asyncio.sleep_ms(5)


async def _until(cond, ms=10000):
    t0 = time.ticks_ms()
    while not cond() and time.ticks_diff(time.ticks_ms(), t0) < ms:
        await asyncio.sleep_ms(2)


async def _raises(w):
    await asyncio.sleep_ms(2)
    raise ValueError("bad reading")


async def test_a_task_that_raises_is_restarted_with_bounded_backoff_and_the_others_go_on():
    fails = []
    loops = []
    runs = []  # the good task's rounds at each failure of the bad one

    def on_fail(w, why):
        # the backoff the supervisor set, read when it reports the failure
        fails.append((w.name, w.fails, why, ticks.diff(w.due, ticks.ms())))
        runs.append(getattr(good, "n", 0))

    s = Supervisor(
        _quiet,
        on_fail=on_fail,
        on_loop=lambda w, why: loops.append(w.fails),
        check_ms=5,
        backoff_min_ms=10,
        backoff_max_ms=40,
        loop_fails=4,
    )
    good = s.add("good", _healthy, 60000)
    bad = s.add("bad", _raises, 60000)
    t = asyncio.create_task(s.run())
    t0 = time.ticks_ms()
    while len(fails) < 6 and time.ticks_diff(time.ticks_ms(), t0) < 10000:
        await asyncio.sleep_ms(5)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(len(fails) >= 6, True, "six failures seen: %r" % fails)
    eq(fails[0][:3], ("bad", 1, "ValueError: bad reading"), "the failure and why")
    eq([f[1] for f in fails[:6]], [1, 2, 3, 4, 5, 6], "failures in a row counted")
    # 10, 20, 40, 40, ... ms: doubling, bounded by backoff_max_ms
    for k, base in enumerate((10, 20, 40, 40, 40, 40)):
        eq(base - 1 <= fails[k][3] <= base, True, "restart %d after %d ms (backoff %d)" % (k, fails[k][3], base))
    eq(loops[:2], [4, 5], "a crash loop from the 4th failure in a row on")
    eq(good.restarts, 0, "the healthy task was not touched")
    eq(runs[-1] > runs[0], True, "and kept running through the other's failures (%r)" % runs)
    eq(s.restarts, bad.restarts, "restarts counted")


@heap("96k")
async def test_memory_error_in_one_task_is_contained_to_it():
    fails = []
    s = Supervisor(_quiet, on_fail=lambda w, why: fails.append(why), check_ms=5, backoff_min_ms=5, backoff_max_ms=5)

    async def greedy(w):
        w.beat()
        await asyncio.sleep_ms(1)
        big = bytearray(200 * 1024)  # more than the heap: MemoryError
        return big

    good = s.add("good", _healthy, 60000)
    s.add("greedy", greedy, 60000)
    t = asyncio.create_task(s.run())
    await _until(lambda: len(fails) >= 3)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(len(fails) >= 3, True, "failed and restarted: %r" % fails)
    eq(fails[0].startswith("MemoryError"), True, fails[0])
    eq(good.restarts, 0, "the other task untouched")
    eq(good.n > 0, True, "and running")


async def test_a_failure_that_cannot_be_recorded_is_logged_and_the_task_still_restarts():
    # The node records each failure in the record log and a crash loop on flash: with the
    # flash full both raise.  The supervision goes on: the task restarts, the crash loop is
    # still seen, and the log says what was not recorded.
    logged = []
    loops = []

    def on_fail(w, why):
        raise OSError(28)  # ENOSPC

    def on_loop(w, why):
        loops.append(w.fails)
        raise OSError(28)

    s = Supervisor(
        logged.append, on_fail=on_fail, on_loop=on_loop, check_ms=5, backoff_min_ms=5, backoff_max_ms=5, loop_fails=2
    )
    w = s.add("bad", _raises, 60000)
    good = s.add("good", _healthy, 60000)
    t = asyncio.create_task(s.run())
    await _until(lambda: w.restarts >= 3)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(w.restarts >= 3, True, "restarted %d times" % w.restarts)
    eq(loops[:2], [2, 3], "each crash loop still reported")
    lost = [m for m in logged if m.startswith("task bad: failure not recorded")]
    eq(len(lost), w.restarts + len(loops), "each refusal logged, of both: %r" % logged[-3:])
    eq(good.restarts, 0, "the other task untouched")


async def test_a_task_that_ends_is_restarted():
    runs = []

    async def once(w):
        runs.append(1)

    s = Supervisor(_quiet, check_ms=5, backoff_min_ms=5, backoff_max_ms=5, loop_fails=1000)
    w = s.add("once", once, 60000)
    t = asyncio.create_task(s.run())
    await _until(lambda: len(runs) >= 4)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(len(runs) >= 4, True, "started again after ending (%d runs)" % len(runs))
    eq(w.error, "ended", "why")


async def test_watchdog_is_fed_only_while_every_task_progresses_and_a_stalled_task_is_restarted():
    wdt = _Wdt()
    s = Supervisor(_quiet, wdt, check_ms=10, backoff_min_ms=30, backoff_max_ms=30)
    hang = asyncio.Event()  # never set

    async def stuck(w):
        w.beat()
        if w.restarts == 0:
            await hang.wait()  # a wait with no timeout: no progress from here on
        while True:
            w.beat()
            await asyncio.sleep_ms(5)

    s.add("good", _healthy, 1000)
    w = s.add("stuck", stuck, 50)
    eq(s.check(), True, "healthy at start")
    fed = wdt.feeds
    # the stuck task: fed while it is within its 50 ms, then not
    t = asyncio.create_task(s.run())
    await asyncio.sleep_ms(30)
    eq(wdt.feeds > fed, True, "fed while every task is within its stall limit")
    t0 = time.ticks_ms()
    while w.stalls == 0 and time.ticks_diff(time.ticks_ms(), t0) < 1000:
        await asyncio.sleep_ms(2)
    eq(w.stalls, 1, "stall detected")
    eq(s.starved >= 1, True, "a check without feeding")
    await asyncio.sleep_ms(5)
    eq(w.error, "stalled: no progress in 50 ms", "cancelled and recorded")
    await asyncio.sleep_ms(80)
    eq(w.restarts, 1, "restarted after its backoff")
    fed = wdt.feeds
    await asyncio.sleep_ms(60)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(wdt.feeds > fed, True, "fed again once the restarted task progresses")


async def test_an_input_driven_task_waits_for_ever_without_stalling_and_is_restarted_when_it_dies():
    # stall_ms = 0 (the LoRa modem's reader): a silent input is no stall, the watchdog is fed;
    # ending or raising still restarts it.
    wdt = _Wdt()
    s = Supervisor(_quiet, wdt, check_ms=5, backoff_min_ms=5, backoff_max_ms=5)
    line = asyncio.Event()  # bytes from outside: none for a long while

    async def reader(w):
        while True:
            await line.wait()  # no timeout: the input decides
            line.clear()
            w.beat()
            w.got = getattr(w, "got", 0) + 1
            if w.got == 2:
                raise ValueError("bad byte")

    s.add("good", _healthy, 1000)
    w = s.add("reader", reader, 0)
    t = asyncio.create_task(s.run())
    await asyncio.sleep_ms(120)  # 24 checks with the reader silent
    eq((w.stalls, w.restarts, s.starved), (0, 0, 0), "silent input: no stall, nothing starved")
    fed = wdt.feeds
    eq(fed >= 20, True, "the watchdog fed all along (%d)" % fed)
    line.set()
    await _until(lambda: getattr(w, "got", 0) == 1, 1000)
    line.set()
    await _until(lambda: w.restarts == 1, 1000)
    await asyncio.sleep_ms(20)
    line.set()
    await _until(lambda: w.got == 3, 1000)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq((w.restarts, w.error, w.got), (1, "ValueError: bad byte", 3), "restarted when it raised, reading again")
    eq(wdt.feeds > fed, True, "fed on")


@timeout(20)
async def test_on_up_counts_whole_seconds_and_its_failure_does_not_stop_the_supervision():
    got = []
    logged = []

    def on_up(s):
        got.append(s)
        if len(got) == 1:
            raise ValueError("flash gone")

    wdt = _Wdt()
    s = Supervisor(logged.append, wdt, check_ms=5, on_up=on_up)
    s.add("good", _healthy, 1000)
    t = asyncio.create_task(s.run())
    await _until(lambda: len(got) >= 2, 5000)
    feeds = wdt.feeds
    await asyncio.sleep_ms(50)
    t.cancel()
    eq(got[:2], [1, 2], "once a second, the seconds run() has run")
    eq(s.up_s, got[-1], "up_s")
    eq(len([m for m in logged if "uptime bookkeeping failed" in m and "flash gone" in m]), 1, "logged: %r" % logged)
    eq(wdt.feeds > feeds, True, "the watchdog is still fed after it failed")


def _sim_watchdog():
    # The sim board's stand-in, imported by the tests that use it: compiling hal/sim.py and
    # hal/halinit.py from source in each test's 128-KB heap left the MemoryError test, whose
    # task must fail to allocate while this module's imports did not, too little room.
    from meternode.hal.halinit import reset_cause
    from meternode.hal.sim import SimWatchdog

    return SimWatchdog, reset_cause


async def test_sim_watchdog_resets_when_the_event_loop_is_stuck():
    SimWatchdog, reset_cause = _sim_watchdog()
    d = scratch_dir()
    mark = d + "/sup.json.wdt"
    wdt = SimWatchdog(300, mark)
    wdt.kill = False  # record the reset instead of killing the test process
    s = Supervisor(_quiet, wdt, check_ms=20)
    s.add("good", _healthy, 1000)
    t = asyncio.create_task(s.run())
    await asyncio.sleep_ms(500)
    eq(wdt.fired, False, "fed by a healthy supervisor")
    eq(wdt.feeds > 10, True, "feeds %d" % wdt.feeds)
    time.sleep_ms(700)  # the whole event loop blocked: nothing can feed
    eq(wdt.fired, True, "the stand-in's own thread reset the node")
    t.cancel()
    wdt.stop()
    eq(reset_cause(mark), "watchdog", "the next boot knows why")
    eq(reset_cause(mark), "start", "once")


def test_a_ctrl_c_the_sim_watchdog_thread_catches_stops_the_node_through_the_supervisor():
    # The unix port raises a SIGINT in whichever thread the kernel picks; when that is the
    # stand-in's, the Ctrl-C must still end the node's event loop as a KeyboardInterrupt out
    # of asyncio.run (node.main() then saves the registers), and only once.
    SimWatchdog = _sim_watchdog()[0]
    wdt = SimWatchdog(5000, None)
    wdt.interrupt()  # what its thread does on a KeyboardInterrupt
    eq(wdt.on, False, "it stops watching")
    eq(_run_until_interrupted(wdt), "KeyboardInterrupt", "the supervisor's next feed raises it in the main thread")
    wdt.feed()  # once: a later feed is a feed
    eq(wdt.interrupted, False, "handed on once")


def test_the_hosts_stop_file_stops_the_node_as_a_ctrl_c_between_bytecodes():
    # `umeter sim` asks a node to stop with a file, not a SIGINT (which the unix port raises
    # wherever it lands, inside the collector too): the stand-in's thread takes the file and
    # the supervisor's next feed raises the KeyboardInterrupt node.main() saves on.
    SimWatchdog = _sim_watchdog()[0]
    d = scratch_dir()
    stop = d + "/sup.json.stop"
    wdt = SimWatchdog(5000, None, stop)
    with open(stop, "w") as f:
        f.write("stop\n")
    eq(_run_until_interrupted(wdt), "KeyboardInterrupt", "stopped through the supervisor's feed")
    try:
        os.stat(stop)
        gone = False
    except OSError:
        gone = True
    eq((gone, wdt.on), (True, False), "the request is taken once and the watch ends")


def _run_until_interrupted(wdt):
    # a supervisor with one healthy task, run as node.main() runs it, for at most 3 s:
    # how it ended
    s = Supervisor(_quiet, wdt, check_ms=20)
    s.add("good", _healthy, 1000)
    try:
        asyncio.run(asyncio.wait_for_ms(s.run(), 3000))
        return "returned"
    except KeyboardInterrupt:
        return "KeyboardInterrupt"
    except asyncio.TimeoutError:
        return "still running"
