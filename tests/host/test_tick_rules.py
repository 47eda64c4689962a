"""The firmware keeps the tick rule (ARCHITECTURE.md: ticks only through ticks_diff / ticks_add),
checked by reading its code (tests/host/ticklint.py), so a `-` on two ticks in a module no
test runs across a wrap is found too. The faults below are the ones a board's wrap caused
before the rule (issue 9: a checkpoint never saved for 12.4 days, LoRa silent until reboot,
pulses dropped as bounce, publishing blocked after an outage), each in the shape it had, and
ticks kept in containers: an IRQ ring, a state list, tuples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ticklint import WAIVER, lint

from umeter import unixport

HERE = Path(__file__).parent


def test_the_firmware_does_no_arithmetic_on_ticks_but_through_ticks_diff_and_ticks_add():
    found = lint(unixport.firmware_root())
    assert not found, "tick arithmetic a wrap breaks:\n" + "\n".join(map(str, found))


def test_todays_checkpointer_with_its_old_subtraction_back_is_found(tmp_path):
    # the real package, one line changed: the call chain from the node's report to the
    # checkpoint's age is followed through today's modules
    import shutil

    root = tmp_path / "fw"
    shutil.copytree(unixport.firmware_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    cp = root / "meternode" / "store" / "checkpoint.py"
    text = cp.read_text()
    assert "age = diff(now_ms, self._last_ms)" in text
    cp.write_text(text.replace("age = diff(now_ms, self._last_ms)", "age = now_ms - self._last_ms"))
    line = text.splitlines().index("        age = diff(now_ms, self._last_ms)") + 1
    assert [(f.path, f.line) for f in lint(root)] == [("meternode/store/checkpoint.py", line)]


def test_todays_network_time_deadline_is_followed_through_its_state_list(tmp_path):
    # link/nettime.py's done() fills slot 2 of the state list with a tick deadline; the list is
    # LoRaLink.nettime (reached as `k.nettime` in nettime.py) and Wi-Fi's node.ntp (handed to
    # done() through meternode.run by name): a `+` on that slot in either caller is found
    import shutil

    root = tmp_path / "fw"
    shutil.copytree(unixport.firmware_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    want = set()
    for rel in ("meternode/link/loralink.py", "meternode/link/wifi.py"):
        f = root / rel
        text = f.read_text()
        assert text.count("_diff(_now(), t[2])") == 1, rel
        f.write_text(text.replace("_diff(_now(), t[2])", "_diff(_now(), t[2] + 5)"))
        want.add((rel, next(n for n, ln in enumerate(text.splitlines(), 1) if "_diff(_now(), t[2])" in ln)))
    assert {(f.path, f.line) for f in lint(root)} == want


def _lines(sources):
    return {(f.path, f.line) for f in lint(Path("."), sources)}


def test_a_checkpoint_age_by_subtraction_is_found_through_the_call_that_passes_the_tick():
    # store/checkpoint.py before the rule: now_ms came in as a parameter
    node = """
import time
class Node:
    def report(self):
        self.checkpoint.save(self.hal.clock.ticks_ms(), True)
"""
    checkpoint = """
class Checkpointer:
    def __init__(self):
        self._last_ms = 0
    def save(self, now_ms, force=False):
        age = now_ms - self._last_ms
        self._last_ms = now_ms
        return age
"""
    assert _lines({"node.py": node, "checkpoint.py": checkpoint}) == {("checkpoint.py", 6)}


def test_a_duty_cycle_deadline_by_addition_and_its_wait_by_subtraction_are_found():
    # link/airtime.py before the rule: ticks imported under another name, then passed on
    link = """
from meternode.aio import ticks_ms as _ticks
class LoRaLink:
    def send(self, n):
        w = self.gov.wait_ms(n, _ticks(), 0)
        self.gov.sent_now(n, _ticks())
"""
    airtime = """
class Governor:
    def wait_ms(self, payload, now_ms, now_s):
        if self.free_at is not None and self.free_at - now_ms > 0:
            return 1
        return 0
    def sent_now(self, payload, now_ms):
        self.free_at = now_ms + 100
"""
    assert _lines({"loralink.py": link, "airtime.py": airtime}) == {("airtime.py", 4), ("airtime.py", 8)}


def test_pulse_debounce_flow_and_leak_differences_of_stored_ticks_are_found():
    # pulses.py before the rule: a stored edge tick, compared and subtracted
    pulses = """
from meternode import ticks
class PulseMeter:
    def edge(self, t, level):
        if t - self._cand_t >= self.debounce:
            self.last_t = t
    def poll(self):
        now = ticks.ms()
        if now > self.last_t + 300000:
            return 0
        self._flow_since -= 1
        self.last_t += 5
class Input:
    def irq(self, pm):
        pm.edge(ticks.ms(), 1)
"""
    assert _lines({"pulses.py": pulses}) == {("pulses.py", n) for n in (5, 9, 12)}
    # self._flow_since is no tick: only what a tick was assigned to is followed


def test_an_edge_tick_through_the_pulse_inputs_irq_ring_is_found():
    # hal/pulsein.py + pulses.py before the rule: the IRQ stored a masked ticks_ms (a function
    # kept in an attribute) in a ring slot; the drain handed the slot to edge(), which subtracted
    pulsein = """
import array, time
_MASK = 0x3FFFFFFF
class PulseInput:
    def __init__(self, ring):
        self._t = array.array("i", bytes(4 * ring))
        self._ticks = time.ticks_ms
    def _irq(self, pin):
        k = self._w & (self._n - 1)
        self._t[k] = self._ticks() & _MASK
        self._w = self._w + 1
    def drain(self, pm):
        for k in range(self._n):
            pm.edge(self._t[k], 1)
"""
    pulses = """
class PulseMeter:
    def edge(self, t, level):
        if t - self._cand_t >= self.debounce:
            self._cand_t = t
"""
    assert _lines({"pulsein.py": pulsein, "pulses.py": pulses}) == {("pulses.py", 4)}


def test_ticks_are_followed_through_tuples_lists_and_slots_and_the_other_items_are_not():
    code = """
import time
from meternode import run
_T = 0
_N = 1
class Link:
    def __init__(self):
        self.last = (time.ticks_ms(), 0)
        self.q = []
        self.st = [0, 0]
    def sent(self, n):
        t, count = self.last
        a = t - 1
        b = count + 1
        c = self.last[0] > n
        d = self.last[1] + 1
        self.q.append((time.ticks_us(), n))
        for when, what in self.q:
            e = when + 5
            f = what + 5
        g = self.q.pop(0)[0] < 3
        self.st[_T] = time.ticks_ms()
        self.st[_N] += 1
        h = self.st[_T] - 1
        i = self.st[_N] - 1
        run("state", "fill", self.st)
        j = self.st[2] - 1
"""
    state = """
import time
def fill(st):
    st[2] = time.ticks_ms()
"""
    assert _lines({"link.py": code, "state.py": state}) == {("link.py", n) for n in (13, 15, 19, 21, 24, 27)}


def test_todays_rp2040_block_stamp_is_followed_through_what_reference_returns(tmp_path):
    # hal/rp2dma.py: the DMA IRQ keeps the last completion's ticks_us in a slot; reference()
    # copies it into a list and returns that; take() stamps the block from slot 1. With a `-`
    # in place of ticks_add the stamp breaks at every 17.9-min wrap of ticks_us
    import shutil

    root = tmp_path / "fw"
    shutil.copytree(unixport.firmware_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    f = root / "meternode" / "hal" / "rp2dma.py"
    text = f.read_text()
    good = "self.stamp_us = self._add(t, -((c - 1 - taken) & _MASK) * self.block_us)"
    assert text.count(good) == 1
    f.write_text(text.replace(good, "self.stamp_us = t - ((c - 1 - taken) & _MASK) * self.block_us"))
    line = next(n for n, ln in enumerate(text.splitlines(), 1) if good in ln)
    assert [(x.path, x.line) for x in lint(root)] == [("meternode/hal/rp2dma.py", line)]


def test_what_a_function_returns_is_followed_where_the_call_is_known_and_not_by_name_alone():
    clock = """
from meternode.ticks import add, ms
def deadline(s):
    return add(ms(), s * 1000)
def pair():
    return ms(), 5
def length(x):
    return len(x)
async def stamp():
    return ms()
class Sched:
    def __init__(self):
        self.due = ms()
    def next_due(self):
        return self.due
    def late(self, n):
        return self.next_due() < n
"""
    user = """
import clock as ck
from clock import deadline, length, pair
from meternode import run
class Other:
    def deadline(self, n):
        return n
def f(n, other):
    a = deadline(5) - 1
    t, k = pair()
    b = t + 1
    c = k + 1
    d = length("ab") + 1
    e = ck.deadline(2) > n
    g = run("clock", "deadline", 3) + 1
    h = other.deadline(3) + 1
async def w():
    x = await ck.stamp()
    return x - 1
"""
    assert _lines({"clock.py": clock, "user.py": user}) == {
        ("clock.py", 17),
        *(("user.py", n) for n in (9, 11, 14, 15, 19)),
    }


def test_a_token_bucket_behind_its_own_difference_function_is_found_in_that_function():
    # the outbox's token bucket before the rule: a difference function that did not wrap
    aio = """
def diff(a, b):
    return a - b
"""
    outbox = """
import time
from aio import diff as _diff
class Outbox:
    def take(self):
        now = time.ticks_us()
        self._tokens += _diff(now, self._t_tok) * self.rate
"""
    assert _lines({"aio.py": aio, "outbox.py": outbox}) == {("aio.py", 3)}


def test_what_keeps_the_rule_is_not_found():
    kept = f"""
import time
from meternode.ticks import add, diff, ms
class Link:
    def wait(self, n):
        t = ms()
        due = add(t, 1000)
        if diff(due, ms()) < 0:
            due = t
        self.due = time.ticks_add(time.ticks_ms(), 5)
        left = time.ticks_diff(self.due, time.ticks_ms()) - 10   # a difference is no tick
        n = n + 1
        self.reading(n, 2)
        return left < 0
    def other(self, m):
        return self.due >= m  {WAIVER}: a deadline compared to one of its own copies
def reading(m, r):
    return m + r  # another function called `reading`: two parameters, given one tick
def caller():
    reading(ms())
"""
    assert _lines({"link.py": kept}) == set()


def test_the_lint_runs_on_a_directory_from_the_command_line(tmp_path):
    pkg = tmp_path / "mine"
    pkg.mkdir()
    (pkg / "hal.py").write_text("import time\ndef late(t0):\n    return time.ticks_ms() - t0 > 1000\n")
    p = subprocess.run([sys.executable, str(HERE / "ticklint.py"), str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "mine/hal.py:3: time.ticks_ms() - t0" in p.stdout, p.stdout + p.stderr
    (pkg / "hal.py").write_text("import time\ndef late(t0):\n    return time.ticks_diff(time.ticks_ms(), t0) > 1000\n")
    p = subprocess.run([sys.executable, str(HERE / "ticklint.py"), str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "", p.stdout + p.stderr
