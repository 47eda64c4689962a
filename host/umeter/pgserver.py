"""A throw-away PostgreSQL server for tests and benchmarks: `initdb` into a temp directory,
`pg_ctl start` on a free loopback port, trust authentication for the role `umeter`.

    with PostgresServer() as pg:
        url = pg.create_database("meter")     # postgresql://umeter@127.0.0.1:<port>/meter
        ...
        pg.stop(); time.sleep(10); pg.start() # an outage, same data directory

The binaries come from the Debian `postgresql` package (`/usr/lib/postgresql/<ver>/bin`, the
newest version wins), `$UMETER_PG_BIN`, or `pg_ctl` on PATH.

`initdb` refuses to run as root. Started by root, the server runs as an unprivileged user
instead — `$UMETER_PG_USER`, else `postgres` (the Debian package creates it), else `nobody` —
and its temp directory is handed to that user. Clients connect over TCP, so nothing else needs
that user's rights.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .broker import free_port, wait_port
from .errors import ConfigError

ROLE = "umeter"


def pg_bindir() -> Path | None:
    """Directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    env = os.environ.get("UMETER_PG_BIN")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None

    def version(p: Path) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in p.parent.name.split("."))
        except ValueError:
            return (0,)

    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for d in found:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl and (Path(pg_ctl).parent / "initdb").exists():
        return Path(pg_ctl).parent
    return None


def _run_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("UMETER_PG_USER"), "postgres", "nobody"):
        if not name:
            continue
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ConfigError("running as root and no unprivileged user to run PostgreSQL as", hint="set UMETER_PG_USER")


class PostgresServer:
    """PostgreSQL on 127.0.0.1:<free port> with its data in a temp dir removed on exit."""

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.settings = settings or {}
        self.user = _run_user()
        self.dir = Path(tempfile.mkdtemp(prefix="umeter-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        self._initialised = False

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kw: dict = {}
        if self.user is not None:
            kw = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        r = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]], capture_output=True, text=True, cwd=self.dir, timeout=60, **kw
        )
        if check and r.returncode != 0:
            raise OSError(f"{argv[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        if not self._initialised:
            if self.user is not None:
                os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
            self._run(
                "initdb", "-D", str(self.data), "-U", ROLE, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
            )
            self._initialised = True
        opts = [f"-h {self.host}", f"-p {self.port}", f"-k {self.dir}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "30", "-o", " ".join(opts), "start"
        )
        wait_port(self.host, self.port)
        return self

    def running(self) -> bool:
        return self._initialised and self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stops the server (`fast`: connections are cut, as in an outage); the data stays."""
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
