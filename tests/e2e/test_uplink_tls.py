"""MQTT over TLS from the unix port to Mosquitto, with a CA the test generates: the right CA
connects and records flow; a wrong CA is refused with a clear reason."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from umeter import unixport
from umeter.broker import Mosquitto, mosquitto_path
from umeter.consumer import Consumer

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)"),
    # the pip port has it, as the boards do; a local build of the unix port may leave it out
    pytest.mark.skipif(not unixport.has_module("ssl"), reason="this unix port was built without ssl"),
]


def _cert(subject: str, key, issuer_cert=None, issuer_key=None, ca: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture
def pki():
    # World-readable: Mosquitto started as root drops to its own user before reading these.
    d = Path(tempfile.mkdtemp(prefix="umeter-pki-"))
    d.chmod(0o755)
    yield _make_pki(d)
    shutil.rmtree(d, ignore_errors=True)


def _make_pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("umeter test CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("localhost", srv_key, ca, ca_key)
    wrong_key = ec.generate_private_key(ec.SECP256R1())
    wrong = _cert("some other CA", wrong_key, ca=True)
    pem = serialization.Encoding.PEM
    out = {
        "ca": tmp_path / "ca.pem",
        "wrong": tmp_path / "wrong.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
    }
    out["ca"].write_bytes(ca.public_bytes(pem))
    out["wrong"].write_bytes(wrong.public_bytes(pem))
    out["cert"].write_bytes(srv.public_bytes(pem))
    out["key"].write_bytes(
        srv_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    )
    for f in out.values():
        f.chmod(0o644)
    return out


SCRIPT = r"""
import asyncio, json, sys
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.log import Cursor
from meternode.store.log import RecordLog

cfg = json.loads(sys.argv[1])
log = RecordLog(cfg["dir"] + "/log", 4096, 65536)
cur = Cursor(cfg["dir"] + "/cursor")
for i in range(5):
    log.append(records.EVENT, 1700000000 + i, records.event(records.EV_RELAY, i, "tls"))
ob = Outbox(log, cur, "tls1", rate=100.0)
link = MqttLink("tls1", cfg["mqtt"], outbox=ob, log=lambda s: None)

async def main():
    t = asyncio.create_task(link.run())
    for _ in range(150):
        if cur.acked == 5 or link.last_error:
            break
        await asyncio.sleep_ms(20)
    print("RESULT " + json.dumps({"acked": cur.acked, "ups": link.ups, "error": str(link.last_error or "")}))

asyncio.run(main())
"""


def _run_node(tmp_path: Path, mqtt: dict) -> dict:
    argv = unixport.command(tmp_path / "tls.py", json.dumps({"dir": str(tmp_path), "mqtt": mqtt}), heap="256k")
    (tmp_path / "tls.py").write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, p.stdout + p.stderr
    return json.loads(lines[-1][7:])


def _tls_conf(pki: dict[str, Path]) -> str:
    return f"cafile {pki['ca']}\ncertfile {pki['cert']}\nkeyfile {pki['key']}\n"


def test_node_publishes_over_tls_with_the_provisioned_ca(tmp_path, pki):
    with Mosquitto(extra_conf=_tls_conf(pki)) as b, Consumer(host=b.host, port=b.port, tls_ca=pki["ca"]) as c:
        mqtt = {"host": "localhost", "port": b.port, "tls": {"ca": str(pki["ca"])}}
        r = _run_node(tmp_path, mqtt)
        assert r == {"acked": 5, "ups": 1, "error": ""}
        c.wait_for(lambda: c.count("tls1") == 5, 10, "5 records over TLS")
        assert c.seqs("tls1") == [1, 2, 3, 4, 5]


def test_wrong_ca_is_refused_with_a_clear_error(tmp_path, pki):
    with Mosquitto(extra_conf=_tls_conf(pki)) as b:
        mqtt = {"host": "localhost", "port": b.port, "tls": {"ca": str(pki["wrong"])}}
        r = _run_node(tmp_path, mqtt)
    assert r["acked"] == 0 and r["ups"] == 0
    assert r["error"].startswith(f"TLS handshake with localhost:{b.port} failed: ")
    assert "not correctly signed by the trusted CA" in r["error"]
    assert "provisioned CA" in r["error"]
