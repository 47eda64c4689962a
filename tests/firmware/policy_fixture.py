# Shared by the firmware policy tests: a source policy, a relay stand-in and a tariff recorder.
from meternode.policy.compile import compile_policy

MON_2026_11_23 = 1795388400  # 2026-11-23 00:00 at UTC+1 (a Monday)


def source():
    return {
        "name": "tou-test",
        "utc_offset_min": 60,
        "tariffs": ["offpeak", "day", "peak"],
        "holidays": ["12-25", "2026-11-26"],
        "seasons": [
            {
                "name": "winter",
                "start": "10-01",
                "weekday": [
                    ["00:00", "offpeak"],
                    ["07:00", "day"],
                    ["17:00", "peak"],
                    ["20:00", "day"],
                    ["23:00", "offpeak"],
                ],
                "weekend": [["00:00", "offpeak"], ["09:00", "day"], ["21:00", "offpeak"]],
            },
            {
                "name": "summer",
                "start": "04-01",
                "weekday": [["00:00", "offpeak"], ["08:00", "day"], ["22:00", "offpeak"]],
            },
        ],
        "prices": {"currency": "EUR", "per_kwh": {"offpeak": 0.1, "day": 0.2, "peak": 0.4}, "realtime_max_s": 600},
        "limits": [
            {"kind": "max_power", "level": 7000, "hold_s": 10, "action": "shed", "shed_s": 60, "retries": 2},
            {"kind": "over_voltage", "level": 253, "hold_s": 0, "action": "event"},
        ],
        "dr": [
            {"trigger": "freq_below", "level": 49.8, "for_s": 2, "shed_s": 30, "restore_random_s": 120},
            {"trigger": "event", "shed_s": 60, "restore_random_s": 0},
            {"trigger": "price_above", "level": 0.5, "shed_s": 10, "restore_random_s": 0},
            {"trigger": "voltage_outside", "low": 200, "high": 260, "for_s": 5, "shed_s": 20, "restore_random_s": 0},
        ],
    }


def compact(**changes):
    s = source()
    for k in changes:
        s[k] = changes[k]
    return compile_policy(s)


class Relay:
    def __init__(self):
        self.on = True
        self.calls = 0

    def set(self, on):
        self.on = on
        self.calls += 1


class Tariffs:
    def __init__(self):
        self.now = -1
        self.calls = 0

    def set(self, i):
        self.now = i
        self.calls += 1
