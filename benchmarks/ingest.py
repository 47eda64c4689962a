"""Fleet ingestion, measured: 10,000 simulated nodes send record backlogs through a real
Mosquitto; consumer groups of 1, 2 and 4 `umeter monitor` processes store them in a real
PostgreSQL, one stores them in SQLite; then a run where one member is SIGKILLed halfway (and
restarted with the same client id, as a service manager would) and one where PostgreSQL is
stopped for 10 s while the members drain.

Each run: a fresh broker (no queue limit, in-flight window 1000) and database; the members'
persistent sessions are created first, the backlog is published while they are away (the
broker queues each member its share, as after a fleet-wide outage), then the members start and
drain it. The rate is records stored per second between the first and the last record stored
(the database's own `received` times), so it measures broker -> consumer -> database, not the
publisher or Python start-up. CPU seconds per component during the drain (broker, consumers,
PostgreSQL server processes) say where the time goes; the whole machine's busy share says how
much other tenants took.

    python benchmarks/ingest.py [--nodes 10000] [--records 10] [--only pg1,sqlite1,...]

For every run: records_per_s, stored, duplicates_dropped, lost (expected keys not stored:
must be 0), duplicates_stored (rows for an already stored key: must be 0), resend_requests.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "host"))
sys.path.insert(0, str(ROOT / "firmware"))

from umeter.broker import Mosquitto  # noqa: E402
from umeter.mqttc import connect, make_client  # noqa: E402
from umeter.pgserver import PostgresServer  # noqa: E402
from umeter.validate import LEAVES  # noqa: E402

BROKER_CONF = "max_queued_messages 0\nmax_inflight_messages 1000\n"
GROUP = "bench"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def children(ppid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == ppid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def machine_busy() -> tuple[float, float]:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f) - idle) / TICK, sum(f) / TICK


class Cpu:
    """CPU seconds used per component between start() and stop()."""

    def __init__(self, groups: dict[str, callable]) -> None:
        self.groups = groups  # name -> function returning the pids now
        self.acc = dict.fromkeys(groups, 0.0)
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                now = cpu_s(pid)
                self.acc[name] += max(0.0, now - self.seen.get(pid, now))
                self.seen[pid] = now

    def start(self) -> None:
        self.sample()
        self.m0 = machine_busy()

    def stop(self, wall: float) -> dict:
        self.sample()
        m1 = machine_busy()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        d = {f"{k}_cpu_s": round(v, 2) for k, v in self.acc.items()}
        d["machine_busy_pct"] = round(100 * busy / total, 1) if total else None
        d["ours_cpu_s"] = round(sum(self.acc.values()), 2)
        d["cores"] = os.cpu_count()
        return d


def precreate_sessions(host: str, port: int, ids: list[str], shared: bool) -> None:
    """Each member's persistent session with its (shared) subscriptions, then away."""
    share = f"$share/{GROUP}/" if shared else ""
    for cid in ids:
        c = make_client("bench", client_id=cid, clean_session=False)
        c.on_connect = lambda cl, *a: cl.subscribe([(f"{share}umeter/+/{leaf}", 1) for leaf in LEAVES])
        done: list[int] = []
        c.on_subscribe = lambda *a, done=done: done.append(1)
        connect(c, host, port)
        c.loop_start()
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            time.sleep(0.02)
        c.disconnect()
        c.loop_stop()


def postgres_pids(pg: PostgresServer) -> list[int]:
    """The postmaster and its children (backends, WAL writer, checkpointer, …)."""
    try:
        pm = int(pg.data.joinpath("postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [pm, *children(pm)] if Path(f"/proc/{pm}").exists() else []


def member(db: str, broker: Mosquitto, cid: str, health: Path, group: bool) -> subprocess.Popen:
    """One `umeter monitor` process; its stderr goes to <health>.log."""
    argv = [sys.executable, "-m", "umeter", "monitor", "--broker", f"{broker.host}:{broker.port}", "--db", db]
    argv += ["--client-id", cid, "--no-records", "--health-every", "0", "--health-file", str(health)]
    if group:
        argv += ["--group", GROUP]
    env = dict(os.environ, NO_COLOR="1", PYTHONPATH=f"{ROOT / 'host'}:{ROOT / 'firmware'}")
    with open(health.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)


def health(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


class DB:
    """Counting what a run stored, in either store."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.pg = db.startswith("postgresql://")
        self.conn = None

    def q(self, sql: str) -> list[tuple]:
        for _ in range(2):
            try:
                if self.conn is None:
                    if self.pg:
                        import psycopg

                        self.conn = psycopg.connect(self.db, autocommit=True, connect_timeout=2)
                    else:
                        self.conn = sqlite3.connect(self.db, timeout=10)
                return self.conn.execute(sql).fetchall()
            except Exception:
                if self.conn is not None:
                    try:
                        self.conn.close()
                    except Exception:
                        pass
                self.conn = None
        return []

    def keys(self) -> int | None:
        r = self.q("SELECT COUNT(*) FROM record_keys")
        return r[0][0] if r else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def run(name: str, args, pg: PostgresServer | None, tmp: Path, members: int, fault: str | None = None) -> dict:
    expected = args.nodes * args.records
    with Mosquitto(extra_conf=BROKER_CONF) as broker:
        db = pg.create_database(name.replace("-", "_")) if pg is not None else str(tmp / f"{name}.sqlite")
        ids = [f"{name}-c{i}" for i in range(members)]
        precreate_sessions(broker.host, broker.port, ids, shared=pg is not None)
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'host'}:{ROOT / 'firmware'}")
        pub = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "umeter.backlog",
                broker.host,
                str(broker.port),
                "--nodes",
                str(args.nodes),
                "--records",
                str(args.records),
                "--connections",
                "4",
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        first = json.loads(pub.stdout.readline())  # {"sent_all": true, ...} once everything is published
        publish = {"publish_per_s": first["publish_per_s"], "published": first["published"]}
        time.sleep(0.5)  # the broker has every message; now the members come back and drain
        hfiles = [tmp / f"{cid}.json" for cid in ids]
        procs = [member(db, broker, cid, h, pg is not None) for cid, h in zip(ids, hfiles, strict=True)]
        groups = {
            "broker": lambda: [broker.proc.pid],
            "consumers": lambda: [p.pid for p in procs if p.poll() is None],
            "publisher": lambda: [pub.pid],
        }
        if pg is not None:
            groups["postgres"] = lambda: postgres_pids(pg)
        cpu = Cpu(groups)
        cpu.start()
        counter = DB(db)
        t0 = time.monotonic()
        note: dict = {}
        last, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.25)
            cpu.sample()
            n = counter.keys()
            if n is not None and n != last:
                last, last_change = n, time.monotonic()
            if n == expected:
                break
            ready = all(health(h).get("connection") == "connected" for h in hfiles)  # faults hit running members
            if fault == "sigkill" and ready and "killed_at" not in note and n is not None and n >= expected // 2:
                h = health(hfiles[1])
                procs[1].send_signal(signal.SIGKILL)
                procs[1].wait()
                note.update(killed_at=n, killed_member=ids[1], killed_member_pending=h.get("pending"))
                time.sleep(1.0)  # a service manager's restart delay
                procs[1] = member(db, broker, ids[1], hfiles[1], True)
            if fault == "outage" and ready and "outage_at" not in note and n is not None and n >= expected // 3:
                acked0 = [health(h).get("acked", 0) for h in hfiles]
                pg.stop()
                t_stop = time.monotonic()
                time.sleep(2.0)
                acked1 = [health(h).get("acked", 0) for h in hfiles]
                states = [health(h).get("db_state", "") for h in hfiles]
                time.sleep(max(0.0, 10.0 - (time.monotonic() - t_stop)))
                acked2 = [health(h).get("acked", 0) for h in hfiles]
                pg.start()
                note.update(
                    outage_at=n,
                    outage_s=round(time.monotonic() - t_stop, 1),
                    acked_during_outage=sum(acked2) - sum(acked1),
                    acked_before=sum(acked0),
                    db_state_during=states,
                )
                last_change = time.monotonic()
            if time.monotonic() - last_change > args.stall_s:
                note["stalled"] = f"no progress for {args.stall_s} s"
                break
        wall = time.monotonic() - t0
        time.sleep(2.5)  # the members' last health beat and counters
        usage = cpu.stop(wall)
        q = counter.q
        stored = q("SELECT COUNT(*) FROM records")[0][0]
        distinct = q("SELECT COUNT(*) FROM (SELECT DISTINCT node, stream, seq FROM records) d")[0][0]
        keys = counter.keys() or 0
        span = q("SELECT MIN(received), MAX(received) FROM records")[0]
        counters = dict(q("SELECT name, SUM(n) FROM counters GROUP BY name"))
        per_member = dict(q("SELECT consumer, n FROM counters WHERE name = 'records'"))
        drain_s = (span[1] - span[0]) if span[0] is not None else None
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        pub.send_signal(signal.SIGTERM)
        tail = pub.communicate(timeout=20)[0].strip().splitlines()
        publisher = json.loads(tail[-1]) if tail else {}
        counter.close()
        out = {
            "members": members,
            "store": "postgresql" if pg is not None else "sqlite",
            "records_per_s": round(stored / drain_s, 1) if drain_s else None,
            "drain_s": round(drain_s, 2) if drain_s else None,
            "stored": stored,
            "duplicates_dropped": int(counters.get("duplicates", 0)),
            "lost": expected - keys,
            "duplicates_stored": stored - distinct,
            "resend_requests": int(counters.get("resend_requests", 0)),
            "early": int(counters.get("early", 0)),
            "rejects": int(counters.get("rejects", 0)),
            "per_member": {k.rsplit("-", 1)[1]: int(v) for k, v in per_member.items()},
            "wall_s": round(wall, 1),
            **publish,
            "resent_by_nodes": publisher.get("resent"),
            **usage,
            **note,
        }
        if drain_s and stored:
            for k in ("broker", "consumers", "postgres"):
                if out.get(f"{k}_cpu_s"):
                    # records each component handles per second of one core: its capacity when not starved
                    out[f"{k}_records_per_cpu_s"] = round(stored / out[f"{k}_cpu_s"])
            out["cores_we_got"] = round(out["ours_cpu_s"] / wall, 2)
        return out


RUNS = {
    "pg1": ("postgresql", 1, None),
    "pg2": ("postgresql", 2, None),
    "pg4": ("postgresql", 4, None),
    "sqlite1": ("sqlite", 1, None),
    "pg2-sigkill": ("postgresql", 2, "sigkill"),
    "pg2-outage": ("postgresql", 2, "outage"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--records", type=int, default=10, help="backlog per node")
    ap.add_argument("--only", default=",".join(RUNS), help="comma-separated runs: " + ",".join(RUNS))
    ap.add_argument("--keep", metavar="DIR", help="keep the members' logs and health files in DIR")
    ap.add_argument("--stall-s", type=float, default=60.0, help="give up a run after this long without progress")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    results: dict[str, dict] = {}
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="umeter-ingest-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with PostgresServer() as pg:
            for name in names:
                store, members, fault = RUNS[name]
                r = run(name, args, pg if store == "postgresql" else None, tmp, members, fault)
                results[name] = r
                print(
                    f"{name:12s} {r['records_per_s'] or 0:8.0f} records/s  stored {r['stored']}  "
                    f"dup dropped {r['duplicates_dropped']}  lost {r['lost']}  dup stored {r['duplicates_stored']}  "
                    f"resend {r['resend_requests']}  cpu: broker {r.get('broker_cpu_s')} s, consumers "
                    f"{r.get('consumers_cpu_s')} s, postgres {r.get('postgres_cpu_s', '-')} s over {r['drain_s']} s; "
                    f"machine busy {r['machine_busy_pct']} %, ours {r.get('cores_we_got')} cores",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        "nodes": args.nodes,
        "records_per_node": args.records,
        "runs": results,
        "lost_total": sum(r["lost"] for r in results.values()),
        "duplicates_stored_total": sum(r["duplicates_stored"] for r in results.values()),
    }
    if "pg1" in results and "pg4" in results and results["pg1"]["records_per_s"]:
        summary["pg4_vs_pg1"] = round(results["pg4"]["records_per_s"] / results["pg1"]["records_per_s"], 2)
    if "pg1" in results and "sqlite1" in results and results["sqlite1"]["records_per_s"]:
        summary["pg1_vs_sqlite1"] = round(results["pg1"]["records_per_s"] / results["sqlite1"]["records_per_s"], 2)
    print(json.dumps(summary))
    return 0 if summary["lost_total"] == 0 and summary["duplicates_stored_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
