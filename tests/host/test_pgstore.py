"""What PostgreSQL adds to the store: month partitions by the record's ts (native range
partitioning), a versioned schema migrated once by a group started at once, the server the
tests start (umeter.pgserver) and how it runs when started by root."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import threading
from pathlib import Path

import pytest

from umeter.backlog import record_payload
from umeter.store import SCHEMA_VERSION, open_store
from umeter.validate import classify


def _rec(node: str, seq: int, ts: int):
    return classify("umeter", *record_payload(node, seq, ts=ts))


def _epoch(y: int, m: int, d: int = 1) -> int:
    return int(dt.datetime(y, m, d, tzinfo=dt.UTC).timestamp())


def test_records_land_in_the_partition_of_their_month(pg_url):
    s = open_store(pg_url)
    try:
        batch = [_rec("p1", 1, _epoch(2025, 1, 31) + 86399), _rec("p1", 2, _epoch(2025, 2, 1)), _rec("p1", 3, 0)]
        s.ingest(batch)
        assert {"records_202501", "records_202502", "records_197001"} <= set(s.partitions("records"))
        rows = s.q("SELECT seq, tableoid::regclass::text FROM records ORDER BY seq")
        assert rows == [(1, "records_202501"), (2, "records_202502"), (3, "records_197001")]
        assert s.q("SELECT relkind FROM pg_class WHERE relname = 'records'") == [("p",)], "a partitioned table"
        assert s.seqs("p1") == [1, 2, 3] and s.count("p1") == 3, "queries see every partition"
        ts_max = classify("umeter", *record_payload("p1", 4, ts=2**32 - 1))
        s.ingest([ts_max])
        assert "records_210602" in s.partitions("records"), "the record format's last second (u32) has its month"
    finally:
        s.close()


def test_a_group_starting_at_once_migrates_once(pg_url):
    errors, stores = [], []

    def open_one():
        try:
            stores.append(open_store(pg_url, consumer=f"m{len(stores)}"))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert stores[0].q("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    finally:
        for s in stores:
            s.close()


def test_an_unreachable_database_is_a_one_line_transport_error():
    from umeter.broker import free_port
    from umeter.errors import TransportError

    pytest.importorskip("psycopg")
    with pytest.raises(TransportError, match=r"cannot open postgresql://u:\*\*\*@127.0.0.1:\d+/x: PostgreSQL: "):
        open_store(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")


def test_the_test_server_keeps_its_data_across_a_stop(postgres_server):
    url = postgres_server.create_database("keep")
    s = open_store(url)
    s.ingest([_rec("k1", 1, 1_780_000_000)])
    s.close()
    postgres_server.stop()
    assert not postgres_server.running()
    postgres_server.start()
    s = open_store(url)
    assert s.seqs("k1") == [1]
    s.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only started by root does the server switch users")
def test_started_by_root_the_server_runs_as_an_unprivileged_user(postgres_server):
    pm = int((postgres_server.data / "postmaster.pid").read_text().split()[0])
    status = Path(f"/proc/{pm}/status").read_text().splitlines()
    uid = int(next(ln for ln in status if ln.startswith("Uid:")).split()[1])
    want = os.environ.get("UMETER_PG_USER") or "postgres"
    assert uid != 0 and pwd.getpwuid(uid).pw_name == want


def test_every_db_option_says_what_a_postgresql_url_is_for(tmp_path, monkeypatch, capsys):
    # `policy`/`ota` keep campaign state in SQLite: a URL there is a one-line error, not a
    # directory named "postgresql:" made in the working directory.
    from umeter.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UMETER_HOME", str(tmp_path / "home"))
    assert main(["policy", "status", "--db", "postgresql://u@127.0.0.1/x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("umeter: error: --db postgresql:") and "campaign state is kept in an SQLite file" in err
    assert "umeter monitor" in err and not (tmp_path / "postgresql:").exists()
