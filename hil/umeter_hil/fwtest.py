"""pytest plugin: collect `tests/firmware/test_*.py` and run each test function on MicroPython.

Each `def test_*` / `async def test_*` in a firmware test file becomes one pytest item. The
item starts the unix port (`micropython -X heapsize=…`) with `mprun.py`, which imports the
test module on MicroPython and calls the one function. The last line of its output says
pass, fail or skip; on failure the MicroPython traceback is the failure report.

Decorators from `mptest` are read here from the source, before the run:

    @heap("256k")               heap for this test (default 128k, about an ESP32's free RAM)
    @timeout(120)               wall-clock limit in seconds (default 60)
    @needs("viper", "ssl")      capabilities probed on the device; missing -> skipped with reason
    @needs("host:mosquitto")    a Mosquitto broker on loopback; its port reaches the test as
                                mptest.host_value("mosquitto_port")
    @needs("host:ntp")          NTP servers on loopback, one per behaviour (ntpsim.py: good,
                                ahead, spoof, kod, unsync, silent), as
                                mptest.host_value("ntp_ports"): "good:PORT,ahead:PORT,..."

Which directories hold firmware tests is the ini option `firmware_testpaths`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

_TAG = "@@MPTEST-RESULT "
MP_DIR = Path(__file__).resolve().parent / "mp"
_DEFAULT_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("firmware_testpaths", "directories whose test_*.py run on MicroPython", type="paths")
    parser.addoption("--mp-heap", default=None, help="heap size for every firmware test (overrides the default 128k)")


def _is_firmware_path(config: pytest.Config, path: Path) -> bool:
    roots = config.getini("firmware_testpaths") or []
    return any(path.resolve().is_relative_to(Path(r).resolve()) for r in roots)


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector):
    if _is_firmware_path(parent.config, module_path):
        return FirmwareFile.from_parent(parent, path=module_path)
    return None


class FirmwareTestError(Exception):
    """A firmware test failed on MicroPython; carries the device output."""


def _const_args(call: ast.Call, what: str, path: Path) -> list:
    try:
        return [ast.literal_eval(a) for a in call.args]
    except ValueError:
        raise pytest.UsageError(f"{path}: @{what}(...) takes literal arguments only") from None


def _decorators(fn: ast.FunctionDef | ast.AsyncFunctionDef, path: Path) -> dict:
    meta: dict = {"needs": [], "heap": None, "timeout": None}
    for d in fn.decorator_list:
        if not isinstance(d, ast.Call):
            continue
        f = d.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        if name == "needs":
            meta["needs"] += [str(a) for a in _const_args(d, name, path)]
        elif name == "heap":
            meta["heap"] = _const_args(d, name, path)[0]
        elif name == "timeout":
            meta["timeout"] = float(_const_args(d, name, path)[0])
    return meta


class FirmwareFile(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_text(), filename=str(self.path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                meta = _decorators(node, self.path)
                yield FirmwareItem.from_parent(
                    self, name=node.name, is_async=isinstance(node, ast.AsyncFunctionDef), **meta
                )


class FirmwareItem(pytest.Item):
    def __init__(self, *, is_async: bool, needs: list, heap, timeout, **kw) -> None:
        super().__init__(**kw)
        self.is_async = is_async
        self.needs = needs
        self.heap = heap
        self.timeout = timeout or _DEFAULT_TIMEOUT
        self.add_marker(pytest.mark.firmware)
        self.output = ""

    def _host_env(self, env: dict[str, str]) -> None:
        for cap in self.needs:
            if not cap.startswith("host:"):
                continue
            what = cap[5:]
            if what == "mosquitto":
                broker = _mosquitto(self.config)
                env["MPTEST_MOSQUITTO_PORT"] = str(broker.port)
                env["MPTEST_MOSQUITTO_HOST"] = broker.host
            elif what == "ntp":
                env["MPTEST_NTP_PORTS"] = _ntp_servers(self.config).env()
            else:
                raise pytest.UsageError(f"{self.path}: unknown host capability {cap!r}")

    def runtest(self) -> None:
        from umeter import unixport

        if "host:mosquitto" in self.needs:
            from umeter.broker import mosquitto_path

            if mosquitto_path() is None:
                pytest.skip("needs a Mosquitto broker: mosquitto is not installed (apt-get install mosquitto)")
        heap = self.config.getoption("--mp-heap") or self.heap or unixport.DEFAULT_HEAP
        runner = MP_DIR / "mprun.py"
        with tempfile.TemporaryDirectory(prefix="umeter-fw-") as scratch:
            env = dict(os.environ)
            env["MICROPYPATH"] = unixport.micropypath(MP_DIR)
            env["MPTEST_SCRATCH"] = scratch
            self._host_env(env)
            argv = unixport.command(
                runner,
                str(self.path.parent),
                self.path.stem,
                self.name,
                "1" if self.is_async else "0",
                ",".join(self.needs),
                heap=heap,
            )
            try:
                proc = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                    env=env,
                    cwd=scratch,
                    errors="replace",
                )
            except subprocess.TimeoutExpired as e:
                out = (e.stdout or b"").decode("utf-8", "replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                self.output = out
                raise FirmwareTestError(f"timed out after {self.timeout:g} s on MicroPython\n{out}") from None
        out = proc.stdout + proc.stderr
        self.output = out
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_TAG)]
        if not lines:
            raise FirmwareTestError(f"MicroPython exited with code {proc.returncode} before reporting a result\n{out}")
        verdict = lines[-1][len(_TAG) :]
        body = "\n".join(ln for ln in out.splitlines() if not ln.startswith(_TAG))
        if verdict == "pass":
            if body.strip():
                print(body)
            return
        if verdict.startswith("skip "):
            pytest.skip(verdict[5:])
        raise FirmwareTestError(body)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, FirmwareTestError):
            return f"firmware test {self.name} failed on MicroPython (unix port):\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.name} [micropython]"


_MOSQ_KEY = pytest.StashKey[object]()
_NTP_KEY = pytest.StashKey[object]()


def _shared(config: pytest.Config, key, make):
    """One `make()` context per pytest process (each xdist worker has its own), entered on
    first use and left when the session ends."""
    obj = config.stash.get(key, None)
    if obj is None:
        obj = make().__enter__()
        config.stash[key] = obj
        config.add_cleanup(lambda: obj.__exit__(None, None, None))
    return obj


def _mosquitto(config: pytest.Config):
    from umeter.broker import Mosquitto

    return _shared(config, _MOSQ_KEY, Mosquitto)


def _ntp_servers(config: pytest.Config):
    from .ntpsim import NtpServers

    return _shared(config, _NTP_KEY, NtpServers)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "firmware: a test that runs on MicroPython (the unix port)")
