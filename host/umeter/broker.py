"""MQTT brokers the toolchain starts: amqtt embedded (the demo), Mosquitto as a subprocess (tests).

Both bind a free loopback port and are stopped when the context exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def mosquitto_path() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:<free port>. `extra_conf` is appended to its config."""

    def __init__(self, port: int | None = None, extra_conf: str = "", allow_anonymous: bool = True) -> None:
        exe = mosquitto_path()
        if exe is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="umeter-mosq-")
        self.conf = Path(self._dir.name) / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            "persistence false\n"
            f"log_dest file {self._dir.name}/mosquitto.log\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        p = Path(self._dir.name) / "mosquitto.log"
        return p.read_text() if p.exists() else ""

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()


def amqtt_config(host: str, port: int) -> dict:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """amqtt running on its own event loop in a daemon thread (for sync callers and tests)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.errors: list[str] = []  # errors amqtt raised while serving a client (see _loop_error)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_error)

        pending: set[asyncio.Future] = set()

        class _Broker(Broker):  # type: ignore[misc]
            async def _publish_retained_messages_for_subscription(self, subscription, session):  # type: ignore[no-untyped-def]
                # amqtt 0.12 awaits this inside its loop over every subscription after a
                # CONNACK; a SUBSCRIBE from another client meanwhile changes that dict, the loop
                # raises "dictionary changed size during iteration" and the connecting client
                # is dropped (18 of 177 connections, 6 clients connecting and subscribing at
                # once: tests/host/test_broker.py). Scheduled, not awaited, the loop does not
                # yield; the retained messages still go out, right after.
                parent = super()._publish_retained_messages_for_subscription
                t = asyncio.ensure_future(parent(subscription, session))
                pending.add(t)  # a task nothing holds may be collected before it runs
                t.add_done_callback(pending.discard)

        async def boot() -> None:
            self._broker = _Broker(amqtt_config(self.host, self.port))
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        with contextlib.suppress(Exception):
            loop.run_until_complete(self._broker.shutdown())
        loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """An error inside amqtt's handling of one client (amqtt 0.12 raised "dictionary
        changed size during iteration" when clients subscribed while another connected, until
        _Broker above): that client's connection is dropped and it reconnects. Kept as one line in `errors` (and on
        stderr with -v), not a traceback in the middle of the demo's output."""
        exc = context.get("exception")
        line = f"embedded broker: {context.get('message', 'error')}" + (f": {exc!r}" if exc else "")
        self.errors = [*self.errors[-19:], line]
        from .ui import debug

        debug(line)

    def start(self) -> EmbeddedBroker:
        quiet_amqtt_logging()
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        self._ready.wait(15)
        if self._error:
            raise OSError(f"embedded broker could not start on {self.host}:{self.port}: {self._error}")
        wait_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def quiet_amqtt_logging() -> None:
    import logging

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
