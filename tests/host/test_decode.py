"""`umeter decode` and `umeter monitor` on the command line."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt

from meternode.link import loracodec
from meternode.store import records
from umeter.cli import main
from umeter.consumer import Consumer


def test_decode_lora_prints_fields_and_json(capsys):
    f = loracodec.encode_record(records.EVENT, 42, 1700000000, records.event(records.EV_LEAK, 3, "cellar")).hex()
    assert main(["decode", "lora", f]) == 0
    assert capsys.readouterr().out == "event seq=42 ts=1700000000 code=6 arg=3 event=leak text=cellar\n"
    assert main(["decode", "lora", "--json", f]) == 0
    assert json.loads(capsys.readouterr().out)["event"] == "leak"


def test_decode_bad_frame_is_a_one_line_error(capsys):
    assert main(["decode", "lora", "21"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("umeter: error: cannot decode LoRa frame: frame of 1 bytes is shorter") and "—" in err


def test_decode_mqtt_and_js(capsys):
    assert main(["decode", "mqtt", "umeter/n1/state", "online"]) == 0
    assert json.loads(capsys.readouterr().out) == {"node": "n1", "leaf": "state", "state": "online"}
    assert main(["decode", "js"]) == 0
    assert "function decodeUplink(input)" in capsys.readouterr().out


def test_monitor_stores_records_once_and_prints_them(tmp_path, mosquitto, capfd):
    db = tmp_path / "m.sqlite"

    def publish():
        time.sleep(1.0)
        p = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        p.connect(mosquitto.host, mosquitto.port)
        p.loop_start()
        for s in (1, 2, 2):
            doc = {"node": "m1", "seq": s, "ts": s, "kind": "event", "code": 7, "event": "relay", "arg": 1, "text": "x"}
            p.publish("umeter/m1/event", json.dumps(doc), qos=1).wait_for_publish(5)
        p.loop_stop()
        p.disconnect()

    t = threading.Thread(target=publish)
    t.start()
    rc = main(["monitor", "--broker", f"{mosquitto.host}:{mosquitto.port}", "--db", str(db), "--seconds", "2.5"])
    t.join()
    assert rc == 0
    out, _ = capfd.readouterr()
    assert out.splitlines() == ["m1 #1 event ts=1 relay arg=1 x", "m1 #2 event ts=2 relay arg=1 x"]
    c = Consumer(db)  # the file keeps what was stored, duplicates counted
    assert c.seqs("m1") == [1, 2] and c.counters()["duplicates"] == 1


def test_monitor_bad_broker_address(capsys):
    assert main(["monitor", "--broker", "http://x", "--seconds", "0.1"]) == 1
    assert "bad broker address" in capsys.readouterr().err


def test_decode_lora_telemetry_prints_physical_units_and_json_keeps_the_integers(capsys):
    t = {"v": 231.05, "f": 50.0, "p": -2127.3, "e_imp_wh": 1234.5, "e_exp_wh": 7.1}
    f = loracodec.encode_telemetry(42, 1796473354, t).hex()
    assert main(["decode", "lora", f]) == 0
    assert capsys.readouterr().out == (
        "telemetry seq=42 ts=1796473354 v=231.0 V f=50.00 Hz p=-2127.3 W e_imp=1234 Wh e_exp=7 Wh\n"
    )
    assert main(["decode", "lora", "--json", f]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["v_dv"], d["f_chz"], d["p_dw"]) == (2310, 5000, -21273)


def test_decode_lora_names_an_odd_length_and_a_bad_digit(capsys):
    assert main(["decode", "lora", "202"]) == 1
    assert "has an odd number of hex digits (3)" in capsys.readouterr().err
    assert main(["decode", "lora", "20zz"]) == 1
    assert "is not hex (character 'z')" in capsys.readouterr().err
