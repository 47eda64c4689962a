# LoRa codec and airtime on MicroPython (the host runs the same code on CPython).
from meternode.link import loracodec, loradecode
from meternode.link.airtime import Governor, time_on_air_us
from meternode.store import records
from mptest import eq, raises


def test_frames_round_trip_on_micropython_within_51_bytes():
    p = records.profile(900, 123456789, 5500, (2300, 2290, 2310), (1500, 10, 3000), (3450, -20, 6900))
    f = loracodec.encode_record(records.PROFILE, 7, 1700000000, p)
    eq(len(f), 42, "profile frame size")
    d = loradecode.decode(f)
    eq((d["seq"], d["e_imp_wh"], d["p_min_dw"], d["i_max_cA"]), (7, 123456, -20, 300), "fields")
    e = loracodec.encode_record(records.EVENT, 8, 1, records.event(records.EV_TAMPER, 1, "t" * 40))
    eq(len(e), 51, "event text cut to fit 51 bytes")
    eq(loradecode.decode(e)["event"], "tamper", "event name")
    raises(loracodec.CodecError, loradecode.decode, b"\x21" + bytes(5))
    raises(loracodec.CodecError, loracodec.encode_record, records.READING, 1, 1, b"{}")  # not a reading payload


def test_airtime_and_duty_cycle_on_micropython():
    eq((time_on_air_us(20, 12) + 500) // 1000, 1810, "20 B at SF12")
    g = Governor("EU868", 0, 30000)
    eq(g.wait_ms(20, 0, 1700006400), 0, "first uplink goes")
    t = g.sent_now(20, 0)
    eq(g.wait_ms(20, 10, 1700006400), t * 100 - 10, "band rests 99x the airtime")


def test_modem_keeps_only_the_newest_downlinks_and_hands_each_to_the_callback():
    # A node runs for years: the diagnostic list of downlinks must not grow without bound.
    from meternode.link.lorawan import LoRaModem

    _KEEP_DOWNLINKS = 8  # lorawan.py's (a const: not a name of the module)

    m = LoRaModem(None, None)
    got = []
    m.on_downlink = lambda port, data: got.append((port, data))
    for k in range(3 * _KEEP_DOWNLINKS):
        m._event("RX_1:-80:7:UNICAST:%d:%02X" % (k + 1, k))
    eq(len(got), 3 * _KEEP_DOWNLINKS, "callbacks")
    eq(len(m.downlinks), _KEEP_DOWNLINKS, "kept downlinks")
    eq(m.downlinks[-1][:2], (3 * _KEEP_DOWNLINKS, bytes([3 * _KEEP_DOWNLINKS - 1])), "newest kept")


def test_modem_reader_survives_noise_and_overlong_lines_and_keeps_a_bounded_event_list():
    # Issue 10 row 4 / 14 item 5: one \xff from the UART ended the reader (raw.decode()).
    from meternode.link.lorawan import LoRaModem

    _KEEP_EVENTS = 8  # lorawan.py's

    m = LoRaModem(None, None)
    got = []
    m.on_downlink = lambda port, data: got.append((port, data))
    m.feed(b"\xff\r\n\x00\xc3(+EVT:RX_1:-80:7:UNICAST:5:0A0B\r\n")
    eq((m.noise, got), (3, [(5, b"\x0a\x0b")]), "noise dropped, the event after the garbage kept")
    m.feed(b"+EVT:RX_1:-80:7:UNICAST:" + b"9" * 2000 + b"\r\n")
    eq((len(got), m.errors), (1, 0), "an over-long line is dropped whole")
    m.feed(b"+EVT:RX_1:x:y:UNICAST:5:0A\r\n")
    eq(m.errors, 1, "a malformed event is counted")
    for k in range(3 * _KEEP_EVENTS):
        m.feed(b"+EVT:LINKCHECK:0:%d\r\n" % k)
    eq((len(m._events), m.dropped), (_KEEP_EVENTS, 2 * _KEEP_EVENTS), "unclaimed events are bounded")
    m.joined = True
    m.feed(b"\x00\xfeRAK3172-E Version:RUI_4.2.3\r\nCurrent Work Mode: LoRaWAN.\r\n")
    eq((m.reboots, m.joined), (1, False), "a module banner: the session is gone")
    m.feed(b"+EVT:JOINED\r\n")
    eq(m.joined, True, "JOINED counts whenever it comes")
    m.feed(b"Restricted_Wait_1500_ms\r\n")
    eq(1000 < m.wait_ms() <= 1500, True, "the duty-cycle wait is kept: %d" % m.wait_ms())


def test_the_modem_and_a_meter_bus_on_one_uart_are_refused_together():
    # checked where the gateway starts (nodegw.py), after LoRa has the UART: the gateway is refused
    from meternode.config import ConfigError
    from meternode.nodegw import uart_free

    board = {"name": "pico_w", "lora": {"uart": 0, "tx": 12, "rx": 13},
             "buses": {"rs485": {"uart": 1}, "mbus": {"uart": 0}}}  # fmt: skip
    lora = {"deveui": "0" * 16}
    uart_free(board, {"lora": lora, "gateway": {"meters": [{"bus": "rs485"}]}})  # UART1 for the bus, 0 for LoRa
    e = raises(ConfigError, uart_free, board, {"lora": lora, "gateway": {"meters": [{"bus": "mbus"}]}})
    eq("config.lora and config.gateway bus 'mbus' both need UART0 of board pico_w" in str(e), True, str(e))
    uart_free(board, {"gateway": {"meters": [{"bus": "mbus"}]}})  # no LoRa: the bus has UART0
    uart_free({"name": "sim", "buses": {"mbus": {}}}, {"lora": lora, "gateway": {"meters": [{"bus": "mbus"}]}})
