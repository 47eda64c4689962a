"""Accelerated soak: the real node for weeks of simulated time, with faults, against invariants.

A virtual node -- meternode.node.Node with its supervisor, record log, outbox, checkpoints --
runs on the MicroPython unix port with the sim board in fast mode (simulated time, no
sleeping; `benchmarks/endurance_node.py` is its entry point) against a real Mosquitto and the
host consumer (umeter.consumer, SQLite), through `--days` simulated days of a daily load
profile (import, PV export, reactive loads), with scripted faults:

- power cuts at random simulated instants (the brown-out input trips, the node checkpoints,
  the process is SIGKILLed a random few ms later) and random outages before power returns;
- broker outages (Mosquitto stopped for a few wall seconds: hours of simulated time);
- a nearly full flash (for a few hours only 200-1000 bytes are free: a write that does not fit
  fails with ENOSPC, deleting frees space; and the record log runs at its retention bound).

The node's files live on a real LittleFS (MicroPython's VfsLfs2, with the settings the board's
MicroPython mounts it with) on the board's NOR flash (`--flash pico_w`, the default; `esp32`,
`pico`; `host` for the host's file system), emulated by hil/umeter_hil/board_shim/norflash.py
in an image file: 4-KiB erase blocks, programs only onto erased bytes, every program and
erase written through, so a power cut lands wherever LittleFS is. The board's build is on it
(static data, as provisioning leaves it). Every erase is counted per block: `flash` in the
JSON gives the erases and bytes programmed a day, the files written a day by name, the
hottest block, and the flash's life at 100,000 cycles a block, levelled over the blocks not
holding static data (`years_levelled`, the invariant: at least 20 years, a meter's service
life) and at the hottest block's rate (`years_hottest`, no levelling at all). Coasting writes
fewer checkpoints than sampling set by set (they follow the energy moved, which a coasted
stretch registers at once): take the wear from a `--coast 0` run (docs/metrology.md, "Wear
budget"); `--profile-s` sets the load profile's period, the log's main writer.

The board is a soak variant of the sim board: one voltage and one current channel at 1 kS/s
(50 Hz: 20 sets a cycle), so that one uninterrupted stretch of 13 days takes the sample-set
counters past 2**30. The epoch starts `days/3` days before 2**31 s. Sampled set by set
(`--coast 0`), 30 days cost what their 130 million mains cycles cost the meter: 13-16 min of
CPU here. By default (`--coast 0.75`) the last 3/4 of every 5 simulated minutes at a steady
level is fast-forwarded by the sim HAL (SimSampler.coast: clocks, counters and phase run on,
the meter registers the stretch at its measured power) and the rest is sampled: about 3 min.

Invariants, printed as the last line (JSON) and checked (exit status 1 if one fails):
simulated_days >= days, energy_error_ppm <= 10 (the registers against the exact integral of
the samples the ADC delivered; `analytic_bias_ppm` says how far that integral is from the
continuous scenario's: the 12-bit quantisation of a noise-free sim), freq_error_mhz <= 1 (at
the end), records_lost = 0 (every seq reached the database once, and every load-profile
interval, midnight and first of a month the node was up for has its record),
records_duplicated = 0, freeze_mismatches = 0 (the profile record ending at a midnight and
that midnight's daily and monthly freezes hold the same registers), misplaced_freezes = 0
(every freeze at a local midnight of the billing time in force then), demand_errors = 0 (each
monthly freeze after a day of its month holds the evening peak's power, as the ADC delivered
it, within 0.2 %, over a whole demand period ending on the 15-minute grid inside its month:
the billing month's maximum demand), register_regressions = 0
(no record's registers below an earlier record's), memory_errors = 0, heap_growth_bytes <=
2048 (the longest boot, first against last day boundary), and that the run exercised what it
is for: sample-set counters past 2**30, an epoch past 2**31 s, ticks_ms wraps (>= 2 in 30
days) and ticks_us wraps (>= 100), where the sim clock has them. `freezes` counts the daily
and monthly freezes stored. With --utc-offset-min the node bills in that local time
(config.utc_offset_min): midnights, firsts of the month and billing months are checked there;
with --move HOURS:MIN its billing time moves to MIN after HOURS hours and each freeze is
checked in the time in force then: the soak's operator signs the demo policy in that time with
--move-billing-time and publishes it to the node from that hour of the run (again after a
refusal, a failure such as a full flash, or two hours without an answer), and the node's own
event says when its fleet agent applied it (`moved_at_s`; `billing_move` fails when it never
did). With `--node store` (metering and store-and-forward, no fleet agent) the script moves
the node's billing time itself, as the policy does, at that hour.

The node is the full one by default (`--node fleet`): authenticated commands, the demo policy
in the node's billing time (its tariff calendar switching four times a day, its limits and
demand response watching every measured second) and signed bundles, run from the sim board's
`.mpy` build.

    python benchmarks/endurance.py [--days 30] [--seed 1] [--heap 256k] [--utc-offset-min 330]
                                   [--flash pico_w|pico|esp32|host] [--node fleet|store]
                                   [--move HOURS:MIN] [--keep DIR] [-v]

UMETER_MICROPYTHON selects the unix port (e.g. a 32-bit, single-precision build).
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import queue
import random
import signal
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

from umeter import unixport
from umeter.broker import Mosquitto
from umeter.consumer import Consumer

HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "endurance_node.py"
SHIM = HERE.parent / "hil" / "umeter_hil" / "board_shim"  # norflash.py: a board's NOR flash
FLASH_BUILD = {"pico_w": "pico_w", "pico": "pico_w", "esp32": "esp32_devkitc"}  # whose build it holds
CMD_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"  # test-only
FLEET_NAME = "soak"
NOR_CYCLES = 100_000  # erase cycles a sector of the boards' serial NOR flash is rated for (minimum)
FLASH_YEARS = 20  # a meter's service life: its flash must outlast it at the soak's rate of wear
NODE_ID = "soak-1"
RATE = 1000
BLOCK = 1000
V_SCALE = Fraction(1, 5)  # 0.2 V a count
I_SCALE = Fraction(1, 20)  # 0.05 A a count
V_RMS = 230.0
TELEMETRY_S = 300
PROFILE_S = 900
DEMAND_S = 900  # metrology.demand_s's default
BOARD = {
    "name": "soak",
    "description": "Soak variant of the sim board: V1 and one CT at 1 kS/s (20 sets a mains cycle).",
    "mcu": "unix",
    "hal": "sim",
    "adc": {"bits": 12, "rate": RATE, "block": BLOCK, "vref": 3.3},
    "channels": [
        {"name": "V1", "kind": "voltage", "scale": float(V_SCALE), "nominal": V_RMS},
        {"name": "I1", "kind": "current", "scale": float(I_SCALE), "nominal": 10.0, "phase": 0.0, "role": "main"},
    ],
}
# The daily load profile: (second of day, level); levels are (rms A, current lag in degrees).
LEVELS = [
    (0.4, 0.0),  # night: standby loads
    (6.0, 25.0),  # morning: kettle, heat pump
    (8.0, 180.0),  # midday: PV exports
    (3.0, 10.0),  # afternoon
    (12.0, 35.0),  # evening peak, inductive
    (0.0, 0.0),  # everything off (no current: nothing may register)
]
SCHEDULE = [
    (0, 0),
    (6 * 3600 + 1234, 1),
    (10 * 3600 + 17, 2),
    (15 * 3600 + 1800, 3),
    (17 * 3600 + 733, 4),
    (22 * 3600 + 2, 0),
    (23 * 3600 + 1800, 5),
]


def fleet_key():
    """The soak fleet's signing key (fixed, test-only)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


class Soak:
    def __init__(
        self,
        days: float,
        seed: int,
        heap: str,
        work: Path,
        verbose: bool,
        coast: float = 0.0,
        utc_offset_min: int = 0,
        move: tuple[int, int] | None = None,
        flash: str | None = "pico_w",
        node: str = "fleet",
        profile_s: int = PROFILE_S,
    ) -> None:
        self.days = days
        self.profile_s = profile_s  # the load profile's interval: a record each (the log's main writer)
        self.telemetry_s = min(TELEMETRY_S, profile_s // 2)  # a snapshot in every interval (config check)
        self.node = node  # "fleet": commands, the demo policy, signed bundles; "store": metering and MQTT only
        self.move_at: int | None = None  # epoch second the billing time moved (the node's event, or the plan)
        self.move_state: str | None = None  # None: to send; "sent" (at run second move_sent); "done"
        self.move_sent = 0
        self.flash = flash  # the board whose flash and LittleFS the node's files live on (None: the host's)
        self.utc_offset_min = utc_offset_min
        self.off = utc_offset_min * 60  # the node's billing time: midnight and months local
        self.move = move  # (run second, minutes): the billing time moved there then (a signed policy)
        self.coast = coast
        self.total_s = int(days * 86400)
        self.rnd = random.Random(seed)
        self.heap = heap
        self.work = work
        self.root = work / "node"
        self.verbose = verbose
        self.epoch0 = 2**31 - int(days / 3 * 86400)
        self.levels: dict[int, tuple[int, int, int, int]] = {}  # level -> (n, sv, si, svi)
        self.delivered: dict[int, int] = {}  # level -> blocks delivered, all boots
        self.boots: list[dict] = []
        self.lines_mem_errors = 0
        self.log_tail: list[str] = []
        self.outages: list[tuple[float, float]] = []
        self.events: list[str] = []
        self.broker: Mosquitto | None = None
        self.consumer: Consumer | None = None
        self.t_broker_back: float | None = None
        self.flash_faults = 0
        self.exact = True  # False once a boot ended where the energy delivered is not known exactly

    # -- the script -----------------------------------------------------------------------------
    def plan(self) -> tuple[list[tuple[int, int | None, int]], list[float], list[list[int]]]:
        """Boots (start s, cut s or None, outage s after it), broker outage times (simulated s)
        and flash-full windows ([from, to) simulated s)."""
        T = self.total_s
        r = self.rnd
        if self.days >= 20:
            # cuts early and late, one uninterrupted stretch of >= 13.5 days in the middle
            early = [r.uniform(0.3, 3.5) for _ in range(3)]
            late = [r.uniform(T / 86400 - 6, T / 86400 - 0.5) for _ in range(2)]
            cuts = sorted(d * 86400 for d in early + late)
        else:  # a short run: two cuts early, then the longest stretch
            cuts = sorted(r.uniform(0.05, 0.12) * T + k * 0.12 * T for k in range(2))
        boots = []
        start = 0
        for c in cuts:
            c = int(c)
            if c - start < 3600:
                continue
            down = int(r.uniform(60, 3600))
            boots.append((start, c, down))
            start = c + down
        boots.append((start, None, 0))
        n_out = max(1, int(self.days / 7))
        outs = sorted(r.uniform(0.05, 0.95) * T for _ in range(n_out))
        n_full = max(1, int(self.days / 10))
        full = []
        while len(full) < n_full:
            a = int(r.uniform(0.1, 0.9) * T)
            b = a + int(r.uniform(2 * 3600, 6 * 3600))
            full.append([a, b, int(r.uniform(200, 1000))])  # bytes left free
        return boots, outs, full

    def off_at(self, ts: int) -> int:
        """The node's billing offset (s) at epoch second `ts`: the moved one from the move on."""
        if self.move_at is not None and ts >= self.move_at:
            return self.move[1] * 60
        return self.off

    # -- the operator ---------------------------------------------------------------------------
    def policy(self, tz_min: int) -> dict:
        """The demo policy (its compact form, as `umeter policy sign` makes it) in the node's
        billing time: its tariff calendar switches four times a day, its limits and demand
        response watch every measured second. (The soak's load never reaches its 7-kW limit: a
        coasted stretch has no measured seconds, which ends an excursion, so a limit the load
        held would fire again after every coasted stretch, as it would after a mains outage.)"""
        from umeter.policy import load_any

        p = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
        p["tz"] = tz_min
        return p

    def operator(self) -> None:
        """The operator's MQTT client, for a run that moves a fleet node's billing time: it
        publishes the signed policy and reads the node's answer. A refusal or a failure (a full
        flash), or no answer in two hours of the run (the broker went down before the node had
        it: its queue went with it), sends it again at the next hour of the run."""
        from umeter.mqttc import connect, make_client

        self.op = make_client("umeter-soak-operator")

        def on_connect(client, userdata, flags, rc, *_) -> None:  # (again after a broker outage)
            client.subscribe(f"umeter/{NODE_ID}/policy/result", qos=1)

        def on_message(client, userdata, msg) -> None:
            doc = json.loads(msg.payload)
            if doc.get("status") in ("accepted", None):
                return
            self.events.append(f"policy result: {doc.get('status')} {doc.get('why') or ''}".rstrip())
            if doc.get("ok") or (doc.get("why") or "").startswith("not newer"):  # (a resend after it applied)
                self.move_state = "done"
            else:
                self.move_state = None

        self.op.on_message = on_message
        self.op.on_connect = on_connect
        connect(self.op, self.broker.host, self.broker.port)
        self.op.loop_start()

    def operate(self, status: dict) -> None:
        """At each status line of a fleet node's run: the billing time's move, from its hour on
        until the node has answered it."""
        t = status["t"]
        if not self.move or self.node != "fleet" or t < self.move[0] or self.move_state == "done":
            return
        if (self.move_state is None or t - self.move_sent >= 7200) and self.send_move(status["epoch"]):
            self.move_state, self.move_sent = "sent", t

    def send_move(self, now: int) -> bool:
        """The billing time moved as an operator moves it: a policy in the new time, signed with
        --move-billing-time at the node's time `now` (epoch seconds), published to the node's
        bundle topic (it takes it when it is next connected: its session is kept). -> False
        while the broker is down (tried again at the next status)."""
        if self.t_broker_back is not None or not self.op.is_connected():
            return False
        from umeter.policy import policy_bundle
        from umeter.signing import make_target

        tz = self.move[1]
        bundle = policy_bundle(fleet_key(), FLEET_NAME, 2, self.policy(tz), make_target(all_nodes=True),
                               campaign="soak-move", billing_tz=tz, now=now)  # fmt: skip
        self.op.publish(f"umeter/{NODE_ID}/policy/bundle", bundle, qos=1)
        self.events.append(f"policy to move the billing time to {tz} min sent")
        return True

    # -- broker ---------------------------------------------------------------------------------
    def broker_down(self, wall_s: float) -> None:
        self.broker.stop()
        self.t_broker_back = time.monotonic() + wall_s
        self.events.append(f"broker down for {wall_s:.1f} s")

    def broker_tick(self) -> None:
        if self.t_broker_back is not None and time.monotonic() >= self.t_broker_back:
            self.broker.start()
            self.t_broker_back = None

    # -- one boot -------------------------------------------------------------------------------
    def write_files(self, t0: int, cut: int | None, end: int, full: list[list[int]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "board.json").write_text(json.dumps(BOARD))
        cfg = {
            "node_id": NODE_ID,
            "telemetry_s": float(self.telemetry_s),
            "profile_s": self.profile_s,
            "utc_offset_min": self.utc_offset_min,
            "mqtt": {
                "host": self.broker.host,
                "port": self.broker.port,
                "discovery": False,
                "backoff_min_ms": 200,
                "backoff_max_ms": 2000,
                "backlog_rate": 200.0,
            },
            # a small record log at its retention bound: the flash is nearly full all along
            "store": {"path": "store", "segment_bytes": 4096, "max_bytes": 16384},
            "checkpoint": {"dir": "ckpt"},
            "metrology": {"batch_cycles": 20},
            "sim": {
                "fast": True,
                "epoch": self.epoch0 + t0,
                "freq": 50.0,
                "voltage": {"rms": V_RMS},
                "currents": [{"rms": 0.0}],
            },
            "supervisor": {"watchdog_ms": 30000},
        }
        if self.flash:
            # the sim watchdog's thread polls its stop file: on the host's side, out of the
            # LittleFS the node's thread is using (a board's watchdog is no thread; the crash-loop
            # state beside it is written at a crash only)
            cfg["supervisor"]["state"] = str(self.root / "supervisor.json")
        if self.node == "fleet":
            from umeter.signing import fleet_identity

            cfg["cmd_key"] = CMD_KEY
            cfg["policy"] = self.policy(self.utc_offset_min)
            cfg["fleet"] = fleet_identity(fleet_key(), FLEET_NAME)
        (self.root / "config.json").write_text(json.dumps(cfg))
        soak = {
            "t0_s": t0,
            "cut_s": None if cut is None else cut - t0,
            "end_s": (cut if cut is not None else end) - t0,
            "levels": LEVELS,
            "schedule": SCHEDULE,
            "status_s": 3600,
            "heap_s": 21600,
            "coast": self.coast,
            "full": full,
            # without a fleet agent the node's billing time is moved by hand, as the policy would
            "move": list(self.move) if self.move and self.node != "fleet" else None,
        }
        if self.flash:
            soak["flash"] = {"board": self.flash, "shim": str(SHIM), "build": str(self.work / "build")}
        (self.root / "soak.json").write_text(json.dumps(soak))

    def run_boot(self, t0: int, cut: int | None, outs: list[float], full: list[list[int]]) -> dict:
        self.write_files(t0, cut, self.total_s, full)
        env = {"MICROPYPATH": f"{self.lib}:.frozen"}
        argv = unixport.command(NODE_SCRIPT, str(self.root), heap=self.heap)
        import subprocess

        p = subprocess.Popen(
            argv,
            cwd=str(self.root),
            env=dict(os.environ, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.proc = p
        q: queue.Queue[str | None] = queue.Queue()

        def reader() -> None:
            for ln in p.stdout:
                q.put(ln.rstrip("\n"))
            q.put(None)

        threading.Thread(target=reader, daemon=True).start()
        boot = {"t0": t0, "cut": cut, "status": [], "end": None, "how": None, "levels": {}}
        drained_deadline = None
        while True:
            self.broker_tick()
            try:
                ln = q.get(timeout=0.05)
            except queue.Empty:
                if drained_deadline is not None and time.monotonic() > drained_deadline:
                    boot["how"] = "drain timeout"
                    self._kill(p)
                    break
                continue
            if ln is None:
                p.wait()
                boot["how"] = boot["how"] or f"exited {p.returncode}"
                break
            self._line(ln)
            kind, _, rest = ln.partition(" ")
            if kind == "LEVEL":
                k, n, sv, si, svi = (int(x) for x in rest.split())
                self.levels[k] = (n, sv, si, svi)
            elif kind in ("STATUS", "BOOT", "END", "DRAINED", "REBOOT"):
                d = json.loads(rest)
                d["kind"] = kind
                boot["status"].append(d)
                if kind == "END":
                    boot["end"] = d
                    drained_deadline = time.monotonic() + 120
                if kind == "DRAINED":
                    boot["how"] = "end"
                    p.wait(10)
                    break
                if kind == "REBOOT":
                    boot["how"] = "reboot"
                    boot["reboot"] = d
                self.operate(d)
                while outs and d["t"] >= outs[0]:
                    outs.pop(0)
                    if self.t_broker_back is None:
                        self.broker_down(self.rnd.uniform(1.5, 4.0))
            elif kind == "POWERCUT":
                time.sleep(self.rnd.uniform(0.0, 0.03))  # the hold-up capacitor's last milliseconds
                self._kill(p)
                boot["how"] = "power cut"
                boot["cut_sets"] = int(rest.split()[0])
                break
        last = boot["status"][-1] if boot["status"] else None
        counts = (boot["end"] or boot.get("reboot") or last or {}).get("counts", {})
        if boot["how"] == "power cut":
            counts = self._counts_at_cut(boot)
        boot["counts"] = {int(k): v for k, v in counts.items()}
        return boot

    def _counts_at_cut(self, boot: dict) -> dict:
        # The blocks delivered before the cut, level by level, from the schedule (the node's
        # own counts are printed only at status times).
        t0, cut = boot["t0"], boot["cut"]
        out: dict[int, int] = {}
        t = t0
        bs = BLOCK // RATE
        while t < cut:
            k = _level(t)
            # run of seconds at this level until the next change or the cut
            nxt = _next_change(t)
            e = min(nxt, cut)
            out[k] = out.get(k, 0) + (e - t) // bs
            t = e
        return {str(k): v for k, v in out.items()}

    def _kill(self, p) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()

    def _line(self, ln: str) -> None:
        self.console.write(ln + "\n")
        if ln.startswith("FLASH"):  # the flash's rules broken (norflash.py)
            self.flash_faults += 1
            self.events.append(ln)
        if "MemoryError" in ln or "memory allocation failed" in ln:
            self.lines_mem_errors += 1
        if self.verbose and not ln.startswith(("STATUS", "LEVEL")):
            print("  node: " + ln[:200], file=sys.stderr)
        self.log_tail.append(ln)
        del self.log_tail[:-40]

    # -- the whole run --------------------------------------------------------------------------
    def run(self) -> dict:
        boots, outs, full = self.plan()
        t_wall = time.monotonic()
        self.console = (self.work / "node.log").open("w")
        self.proc = None
        try:
            return self._run(boots, outs, full, t_wall)
        finally:
            if self.proc is not None:
                self._kill(self.proc)

    def _run(self, boots, outs, full, t_wall) -> dict:
        from umeter import build

        # the node runs from the sim board's build, .mpy files for this port, as a board runs
        # its build (compiling the source at each import would need heap a board never needs)
        self.lib = build.build("sim", self.work / "run").out / "lib"
        if self.flash:  # what provisioning puts on the board's flash, before the node's data
            build.build(FLASH_BUILD[self.flash], self.work / "build")
        with Mosquitto() as broker:
            self.broker = broker
            with Consumer(self.work / "records.sqlite", broker.host, broker.port) as consumer:
                self.consumer = consumer
                self.op = None
                if self.move and self.node == "fleet":
                    self.operator()
                cuts = [(c, down) for _, c, down in boots if c is not None]
                t = 0
                while t < self.total_s:
                    if len(self.boots) >= 200:
                        self.events.append(f"unplanned: 200 boots, stopped at day {t / 86400:.2f}")
                        break
                    cut = cuts[0] if cuts else None
                    b = self.run_boot(t, cut[0] if cut else None, outs, full)
                    self.boots.append(b)
                    if self.verbose:
                        took = time.monotonic() - t_wall
                        print(f"boot at day {t / 86400:.2f}: {b['how']} ({took:.0f} s)", file=sys.stderr)
                    if b["how"] == "power cut":
                        t = cut[0] + cut[1]  # power returns after the outage
                        cuts.pop(0)
                    elif b["how"] == "end":
                        break
                    elif b["how"] == "reboot":  # the node rebooted itself: it starts again at once
                        t = b["status"][-1]["t"]
                    else:  # killed by its watchdog or crashed: where it was is known to the hour
                        self.events.append(f"unplanned end of the boot at day {t / 86400:.2f}: {b['how']}")
                        self.exact = False
                        t = b["status"][-1]["t"] if b["status"] else t + 3600
                if self.t_broker_back is not None:
                    self.t_broker_back = 0
                    self.broker_tick()
                last_seq = max((s.get("last_seq", 0) for b in self.boots for s in b["status"]), default=0)

                def arrived() -> bool:
                    got = consumer.seqs(NODE_ID)
                    return len(got) >= last_seq

                try:
                    consumer.wait_for(arrived, 60, "every record at the consumer")
                except Exception as e:
                    self.events.append(str(e))
                res = self.results(consumer, last_seq)
        if self.op is not None:
            self.op.loop_stop()
            self.op.disconnect()
        res["wall_s"] = round(time.monotonic() - t_wall, 1)
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the node's boots (and the broker)
        res["node_cpu_s"] = round(ru.ru_utime + ru.ru_stime, 1)
        res["load_avg"] = round(os.getloadavg()[0], 1)
        res["coast"] = self.coast
        return res

    def results(self, consumer: Consumer, last_seq: int) -> dict:
        # where the billing time moved: a fleet node says so in its event (the bundle applied)
        if self.move and self.node == "fleet":
            moved = [r["ts"] for r in consumer.records(NODE_ID, "event") if "billing time" in (r.get("text") or "")]
            self.move_at = moved[0] if moved else None
        elif self.move:
            self.move_at = self.epoch0 + self.move[0]
        # energy: the registers at the end against the samples the ADC delivered
        delivered: dict[int, int] = {}
        for b in self.boots:
            for k, v in b["counts"].items():
                delivered[k] = delivered.get(k, 0) + v
        imp = exp = Fraction(0)
        a_imp = a_exp = 0.0
        for k, blocks in delivered.items():
            n, sv, si, svi = self.levels[k]
            cov = Fraction(svi) - Fraction(sv * si, n)
            e = cov * V_SCALE * I_SCALE / RATE * blocks  # joules
            if e >= 0:
                imp += e
            else:
                exp -= e
            rms, ang = LEVELS[k]
            import math

            p = V_RMS * rms * math.cos(math.radians(ang))
            a = p * blocks * n / RATE
            if a >= 0:
                a_imp += a
            else:
                a_exp -= a
        end = self.boots[-1]["end"] if self.boots and self.boots[-1]["end"] else None
        res: dict = {}
        if end is not None:
            r = end["regs"]
            got_imp = Fraction(r[0] * 3600000 + r[1], 1000000)
            got_exp = Fraction(r[2] * 3600000 + r[3], 1000000)
            ref = imp + exp
            err = abs(got_imp - imp) + abs(got_exp - exp)
            res["energy_error_ppm"] = round(float(err / ref * 1000000), 3) if ref and self.exact else None
            res["energy_kwh"] = {
                "import": round(float(got_imp) / 3.6e6, 4),
                "export": round(float(got_exp) / 3.6e6, 4),
                "import_samples": round(float(imp) / 3.6e6, 4),
                "export_samples": round(float(exp) / 3.6e6, 4),
            }
            ana = a_imp + a_exp
            res["analytic_bias_ppm"] = round((float(imp + exp) - ana) / ana * 1e6, 1) if ana else None
            res["freq_error_mhz"] = round(abs(end["freq"] - 50.0) * 1000, 3)
        else:
            res["energy_error_ppm"] = None
            res["freq_error_mhz"] = None
        # clocks and counters, per boot
        ms_wraps = us_wraps = set_wraps = 0
        us_seen = False
        ck_after = 0
        max_sets = 0
        for b in self.boots:
            prev = None
            wrapped_at_ck = None
            for s in b["status"]:
                max_sets = max(max_sets, s["meter_sets"], s["sets"])
                if prev is not None and s["meter_sets"] < prev["meter_sets"]:
                    set_wraps += 1  # the meter's set counter wraps below 2**30 (an hour apart)
                if prev is not None and s["ticks_ms"] < prev["ticks_ms"]:
                    ms_wraps += 1
                    if wrapped_at_ck is None:
                        wrapped_at_ck = s["ckpt"]
                if s.get("ticks_us") is not None:
                    us_seen = True
                    if prev is not None:
                        # an hour of simulated time between two readings: several wraps
                        span_us = (s["t"] - prev["t"]) * 1000000
                        us_wraps += (prev["ticks_us"] + span_us) >> 30
                prev = s
            if wrapped_at_ck is not None and b["status"]:
                ck_after += b["status"][-1]["ckpt"] - wrapped_at_ck
        last_epoch = max((s["epoch"] for b in self.boots for s in b["status"]), default=0)
        simulated = max((s["t"] for b in self.boots for s in b["status"]), default=0)
        # records: every seq the node wrote reached the consumer's database, once
        c = consumer.counters()
        seqs = set(consumer.seqs(NODE_ID))
        missing = [s for s in range(1, last_seq + 1) if s not in seqs]
        dup = 0
        seen: dict[tuple[str, int], int] = {}
        regs: dict[tuple[str, int], tuple[int, int]] = {}
        demands: dict[int, tuple[int, int]] = {}  # monthly freeze ts -> (md_mw, md_at)
        for rec in consumer.records(NODE_ID):
            if rec.get("kind") in ("profile", "daily", "monthly"):
                key = (rec["kind"], rec["ts"])
                if key in seen:
                    dup += 1
                seen[key] = rec["seq"]
                regs[key] = (rec["e_imp_mwh"], rec["e_exp_mwh"])
                if rec["kind"] == "monthly":
                    demands[rec["ts"]] = (rec.get("md_mw", -1), rec.get("md_at", -1))
        # maximum demand: each month's is the evening peak's power as the ADC delivered it, over
        # a whole period on the demand grid inside that month (every day has hours of it)
        peak = float(max((Fraction(svi) - Fraction(sv * si, n)) / n for n, sv, si, svi in self.levels.values()))
        peak *= float(V_SCALE * I_SCALE)
        demand_errors = []
        for ts, (mw, at) in sorted(demands.items()):
            off = self.off_at(ts - 1)
            t = time.gmtime(ts - 1 + off)
            month0 = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) - off
            ran_a_day = ts - max(month0, self.epoch0) >= 86400
            ok = abs(mw / 1000 - peak) <= 0.002 * peak and at % DEMAND_S == 0 and month0 < at <= ts
            if ran_a_day and not ok:
                demand_errors.append({"ts": ts, "md_mw": mw, "md_at": at, "peak_mw": round(peak * 1000)})
        # billing: the interval ending at midnight and that midnight's daily and monthly freezes
        # are one reading of the registers; and no record's registers are below an earlier one's
        mismatched = 0
        for (kind, ts), r in regs.items():
            if kind != "profile" and regs.get(("profile", ts), r) != r:
                mismatched += 1
        # each freeze at a local midnight of the time in force then (a day frozen once, on its date)
        misplaced = sum(1 for kind, ts in regs if kind != "profile" and (ts + self.off_at(ts)) % 86400)
        regressions = 0
        top = (0, 0)
        for _, r in sorted(regs.items(), key=lambda kv: kv[0][1]):
            if r[0] < top[0] or r[1] < top[1]:
                regressions += 1
            top = (max(top[0], r[0]), max(top[1], r[1]))
        # and every load-profile interval and daily freeze the node was up for was recorded
        # (a record that could not be written is lost as surely as one never delivered)
        unrecorded = 0
        for b in self.boots:
            first = self.epoch0 + b["t0"] + self.telemetry_s  # the boot's first report
            end = self.epoch0 + (b["status"][-1]["t"] if b["status"] else b["t0"])
            last = first + (end - first) // self.telemetry_s * self.telemetry_s  # and its last
            for slot in range(first // self.profile_s, last // self.profile_s):
                if ("profile", (slot + 1) * self.profile_s) not in seen:
                    unrecorded += 1
            for off in {self.off, self.off_at(last)}:  # (two where the billing time moved)
                for day in range((first + off) // 86400, (last + off) // 86400):
                    m = (day + 1) * 86400 - off  # a local midnight, of the time in force then
                    if self.off_at(m) != off:
                        continue
                    if ("daily", m) not in seen:
                        unrecorded += 1
                    if time.gmtime(m + off).tm_mday == 1 and ("monthly", m) not in seen:
                        unrecorded += 1
        lost = len(missing) + c["lost"] + unrecorded
        # heap: the longest boot, held after a collection every 6 simulated hours; the lowest of
        # the last three readings against the lowest of the three after the first. A policy
        # applied in that boot keeps what it loaded (a node in service holds it): the readings
        # from a quarter day after it then, when there are four of them, else those before it
        longest = max(self.boots, key=lambda b: len(b["status"]))
        heaps = [s["heap"] for s in longest["status"] if s["kind"] == "STATUS" and "heap" in s]
        if self.move_at is not None and self.node == "fleet":
            moved = self.move_at - self.epoch0
            timed = [(s["t"], s["heap"]) for s in longest["status"] if s["kind"] == "STATUS" and "heap" in s]
            after = [h for t, h in timed if t >= moved + 21600]
            heaps = [h for t, h in timed if t < moved] if len(after) < 4 else [heaps[0], *after]
        growth = min(heaps[-3:]) - min(heaps[1:4]) if len(heaps) >= 4 else None
        res["heap_days"] = len(heaps)
        restarts = sum((b["status"][-1]["restarts"] if b["status"] else 0) for b in self.boots)
        res.update(
            {
                "simulated_days": round(simulated / 86400, 3),
                "utc_offset_min": self.utc_offset_min,
                "node": self.node,
                "moved_utc_offset_min": list(self.move) if self.move else None,
                "moved_at_s": None if self.move_at is None else self.move_at - self.epoch0,
                "ms_wraps": ms_wraps,
                "us_wraps": us_wraps if us_seen else None,
                "max_sample_sets": max_sets,
                "set_counter_wraps": set_wraps,
                "last_epoch": int(last_epoch),
                "checkpoints_after_wrap": ck_after,
                "records": len(seqs),
                "records_lost": lost,
                "lost_detail": {"seq_gaps": len(missing), "dropped_unsent": c["lost"], "never_recorded": unrecorded},
                "records_duplicated": dup,
                "freezes": {k: sum(1 for kind, _ in seen if kind == k) for k in ("daily", "monthly")},
                "freeze_mismatches": mismatched,
                "misplaced_freezes": misplaced,
                "demand_errors": len(demand_errors),
                "monthly_demand_w": [round(mw / 1000, 1) for mw, _ in (demands[ts] for ts in sorted(demands))],
                "register_regressions": regressions,
                "memory_errors": self.lines_mem_errors,
                "task_restarts": restarts,
                "heap_growth_bytes": growth,
                "boots": len(self.boots),
                "power_cuts": sum(1 for b in self.boots if b["how"] == "power cut"),
                "broker_outages": sum(1 for e in self.events if e.startswith("broker down")),
                "enospc_writes": max((s.get("nospc", 0) for b in self.boots for s in b["status"]), default=0),
                "log_dropped": max((s.get("dropped", 0) for b in self.boots for s in b["status"]), default=0),
                "consumer": c,
            }
        )
        if self.flash:
            res["flash"] = self.wear(simulated / 86400)
        if missing:
            res["missing_seqs"] = missing[:20]
        if demand_errors:
            res["demand_detail"] = demand_errors[:5]
        failed = []
        if res["simulated_days"] < self.days:
            failed.append("simulated_days")
        if res["energy_error_ppm"] is None or res["energy_error_ppm"] > 10:
            failed.append("energy_error_ppm")
        if res["freq_error_mhz"] is None or res["freq_error_mhz"] > 1:
            failed.append("freq_error_mhz")
        for k in (
            "records_lost",
            "records_duplicated",
            "memory_errors",
            "freeze_mismatches",
            "misplaced_freezes",
            "demand_errors",
            "register_regressions",
        ):
            if res[k] != 0:
                failed.append(k)
        if growth is None or growth > 2048:
            failed.append("heap_growth_bytes")
        if self.flash_faults:
            failed.append("flash_faults")
        if self.move and self.move_at is None:
            failed.append("billing_move")  # the signed policy never reached the node, or was refused
        if self.flash and (res["flash"]["years_levelled"] or 0) < FLASH_YEARS:
            failed.append("flash_years")  # the flash would wear out within a meter's service life
        # coverage: the run exercised what it is for
        if self.days >= 13.5 and max_sets < 2**30 and set_wraps < 1:
            failed.append("set_counter_wraps")  # the sample-set counters never got past 2**30
        if ms_wraps < (2 if self.days >= 30 else 1):  # the sim clock starts ticks_ms near a wrap
            failed.append("ms_wraps")
        if not us_seen or res["us_wraps"] < min(100, self.days * 80):  # 80 wraps a day
            failed.append("us_wraps")
        if last_epoch <= 2**31:
            failed.append("last_epoch")
        for e in self.events:
            if e.startswith("unplanned") or e.startswith("timed out"):
                failed.append("boots")
                break
        res["events"] = [e for e in self.events if not e.startswith("broker down")]
        res["failed"] = failed
        return res

    def wear(self, days: float) -> dict:
        """What the run wore on the board's flash (norflash.py's counts, from the first boot on)."""
        from umeter_hil.board_shim import norflash

        erases, programmed = norflash.wear((self.root / "flash.img.wear").read_bytes())
        n = len(erases)
        prog = sum(programmed)
        # blocks in use at the first boot: the build's files, the config and the node's new
        # files; LittleFS levels wear over the others (it never moves static data)
        fs = next((s["fs"] for b in self.boots for s in b["status"] if "fs" in s), [n, n])
        static = fs[0] - fs[1]
        pool = n - static
        per_day = sum(erases) / days if days else 0.0
        writes: dict[str, int] = {}  # files opened to write, each boot's to its last status
        for b in self.boots:
            last = next((s for s in reversed(b["status"]) if "writes" in s), None)
            for k, v in (last or {}).get("writes", {}).items():
                writes[k] = writes.get(k, 0) + v
        hottest = max(erases)
        return {
            "board": self.flash,
            "blocks": n,
            "static_blocks": static,
            "erases": sum(erases),
            "erases_per_day": round(per_day, 1),
            "programmed_kib_per_day": round(prog / 1024 / days, 1) if days else None,
            "blocks_erased": sum(1 for e in erases if e),
            "writes_per_day": {k: round(v / days, 1) for k, v in sorted(writes.items())} if days else None,
            "hottest_block_erases": hottest,
            # the pool's life at this rate, levelled over it as LittleFS does
            "years_levelled": round(NOR_CYCLES * pool / per_day / 365.25, 1) if per_day else None,
            # the hottest block's, were it to keep its rate (no levelling at all)
            "years_hottest": round(NOR_CYCLES * days / hottest / 365.25, 1) if hottest else None,
        }


def _level(t: int) -> int:
    d = t % 86400
    k = SCHEDULE[0][1]
    for at, lv in SCHEDULE:
        if at <= d:
            k = lv
        else:
            break
    return k


def _next_change(t: int) -> int:
    d = t % 86400
    for at, _ in SCHEDULE:
        if at > d:
            return t - d + at
    return t - d + 86400


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heap", default="288k")
    ap.add_argument(
        "--coast",
        type=float,
        default=0.75,
        help="fraction of every 5 simulated minutes the sim HAL fast-forwards (SimSampler.coast) "
        "instead of sampling set by set; 0 samples every set",
    )
    ap.add_argument(
        "--utc-offset-min",
        type=int,
        default=0,
        help="the node's config.utc_offset_min: its freezes at local midnight, checked so",
    )
    ap.add_argument(
        "--move",
        metavar="HOURS:MIN",
        help="move the node's billing time to MIN minutes east of UTC after HOURS (whole) hours of the run, "
        "as a policy signed with --move-billing-time does; the freezes are checked in each time",
    )
    ap.add_argument(
        "--flash",
        default="pico_w",
        choices=[*FLASH_BUILD, "host"],
        help="the board whose NOR flash and LittleFS the node's files live on, its build on it "
        "(wear counted: the JSON's `flash`); host: the host's file system, nothing counted",
    )
    ap.add_argument(
        "--node",
        default="fleet",
        choices=["fleet", "store"],
        help="fleet: the full node (authenticated commands, the demo policy, signed bundles; --move "
        "sends it a signed policy); store: metering and store-and-forward only",
    )
    ap.add_argument(
        "--profile-s",
        type=int,
        default=PROFILE_S,
        choices=[60, 300, 900, 1800, 3600],
        help="the node's config.profile_s: a load-profile record every so many seconds, each an append "
        "to the record log (what wears the flash most); telemetry every 300 s, or half of it",
    )
    ap.add_argument("--keep", type=Path, help="keep the node's files and the database here")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    # a terminated run still stops its broker and its node (the with-blocks unwind)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    with tempfile.TemporaryDirectory(prefix="umeter-soak-") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not 0.0 <= a.coast <= 0.95:
            ap.error("--coast must be 0 .. 0.95")
        move = None
        if a.move:
            try:
                h, m = (int(x) for x in a.move.split(":"))
            except ValueError:
                ap.error(f"--move {a.move!r}: HOURS:MIN, e.g. 36:390")
            move = (h * 3600, m)
        flash = None if a.flash == "host" else a.flash
        s = Soak(a.days, a.seed, a.heap, work, a.verbose, a.coast, a.utc_offset_min, move, flash, a.node, a.profile_s)
        res = s.run()
    res["micropython"] = os.path.basename(unixport.micropython_path())
    if res["failed"]:
        print("soak failed: " + ", ".join(res["failed"]), file=sys.stderr)
        print("\n".join(s.log_tail[-15:]), file=sys.stderr)
    print(json.dumps(res))
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
