# One reading model for every meter the gateway reads (docs/gateway.md):
#   meter id    "<protocol>-<address>": dlt645-000000123456, dlt645v97-..., cjt188-10-00..01234,
#               mbus-12345678 (the meter's identification number), modbus-7
#   quantity    an index into the quantity table (_Q): an OBIS-style code (1-0:1.8.0 active import energy,
#               8-0:1.0.0 water volume, ...) and a name
#   value       an integer with a decimal exponent (123456, -2 = 1234.56): totals stay exact
#               integers on a 32-bit board, no float ever touches them
#   unit        an index into UNITS, canonical per quantity where the conversion is decimal
#               (Wh -> kWh, L -> m³, W -> kW)
#   meter_ts    the meter's own clock (epoch seconds) when it sent one, else 0
#   status      bits: STALE, METER_ERROR, VALVE_CLOSED, BATTERY_LOW, FROZEN_DAY/MONTH, ...
# A poll's values go into the record log as one READING record (store/records.py kind 5),
# whose payload is `pack()`ed here; `fields()` turns it back into the JSON the outbox sends.
import struct
from array import array

from micropython import const

VERSION = const(1)
MAX_VALUES = const(24)  # values one record carries
ID_MAX = const(32)

# status bits
STALE = const(1)  # the meter did not answer: this is its last good reading, repeated
METER_ERROR = const(2)  # the meter reported an error/abnormal state
VALVE_CLOSED = const(4)
BATTERY_LOW = const(8)
FROZEN_DAY = const(16)  # a daily freeze (local midnight, ticks.floor) of the meter's last reading
FROZEN_MONTH = const(32)
VALVE_FAULT = const(64)
TRUNCATED = const(128)  # LoRa form only: more values than fit one frame
STATUS_NAMES = (
    "stale", "meter_error", "valve_closed", "battery_low", "frozen_day", "frozen_month", "valve_fault", "truncated"
)

# unit indices
U_NONE = const(0)
U_KWH = const(1)
U_WH = const(2)
U_MWH = const(3)
U_GJ = const(4)
U_MJ = const(5)
U_J = const(6)
U_M3 = const(7)
U_L = const(8)
U_KW = const(9)
U_W = const(10)
U_MW = const(11)
U_KVAR = const(12)
U_KVA = const(13)
U_V = const(14)
U_A = const(15)
U_HZ = const(16)
U_C = const(17)
U_K = const(18)
U_M3H = const(19)
U_LH = const(20)
U_H = const(21)
U_S = const(22)
U_KJ = const(23)
UNITS = ("", "kWh", "Wh", "MWh", "GJ", "MJ", "J", "m³", "L", "kW", "W", "MW", "kvar", "kVA", "V", "A", "Hz",
         "°C", "K", "m³/h", "L/h", "h", "s", "kJ")
# unit -> (canonical unit, exponent added): only exact decimal conversions
_CANON = {U_WH: (U_KWH, -3), U_MWH: (U_KWH, 3), U_L: (U_M3, -3), U_LH: (U_M3H, -3), U_W: (U_KW, -3),
          U_MW: (U_KW, 3), U_KJ: (U_MJ, -3), U_J: (U_MJ, -6)}

# quantity indices (stable: they are stored in records and LoRa frames)
Q_E_IMP = const(0)
Q_E_EXP = const(1)
Q_E_IMP_T1 = const(2)  # .. T4 = 5
Q_E_EXP_T1 = const(6)  # .. T4 = 9
Q_E_COMB = const(10)
Q_P = const(11)
Q_P_L1 = const(12)  # L2 13, L3 14
Q_V_L1 = const(15)  # L2 16, L3 17
Q_I_L1 = const(18)  # L2 19, L3 20
Q_PF = const(21)
Q_F = const(22)
Q_Q = const(23)
Q_S = const(24)
Q_WATER = const(25)
Q_WATER_SET = const(26)
Q_GAS = const(27)
Q_GAS_SET = const(28)
Q_HEAT = const(29)
Q_HEAT_SET = const(30)
Q_HEAT_VOL = const(31)
Q_HEAT_P = const(32)
Q_HEAT_FLOW = const(33)
Q_T_SUPPLY = const(34)
Q_T_RETURN = const(35)
Q_T_DIFF = const(36)
Q_HOURS = const(37)
Q_WATER_FLOW = const(38)

# The quantities: "OBIS-style code, name, Home Assistant device_class, state_class" each, in
# index order, as one string (a tuple of 4-tuples of strings held ~7 KB more heap on the
# 64-bit port, ~4 KB on a 32-bit one); qinfo(i) / qname(i) take one apart when needed.
_Q = (
    "1-0:1.8.0 energy_import energy total_increasing;"
    "1-0:2.8.0 energy_export energy total_increasing;"
    "1-0:1.8.1 energy_import_t1 energy total_increasing;"
    "1-0:1.8.2 energy_import_t2 energy total_increasing;"
    "1-0:1.8.3 energy_import_t3 energy total_increasing;"
    "1-0:1.8.4 energy_import_t4 energy total_increasing;"
    "1-0:2.8.1 energy_export_t1 energy total_increasing;"
    "1-0:2.8.2 energy_export_t2 energy total_increasing;"
    "1-0:2.8.3 energy_export_t3 energy total_increasing;"
    "1-0:2.8.4 energy_export_t4 energy total_increasing;"
    "1-0:15.8.0 energy_combined energy total_increasing;"
    "1-0:16.7.0 power power measurement;"
    "1-0:21.7.0 power_l1 power measurement;"
    "1-0:41.7.0 power_l2 power measurement;"
    "1-0:61.7.0 power_l3 power measurement;"
    "1-0:32.7.0 voltage_l1 voltage measurement;"
    "1-0:52.7.0 voltage_l2 voltage measurement;"
    "1-0:72.7.0 voltage_l3 voltage measurement;"
    "1-0:31.7.0 current_l1 current measurement;"
    "1-0:51.7.0 current_l2 current measurement;"
    "1-0:71.7.0 current_l3 current measurement;"
    "1-0:13.7.0 power_factor power_factor measurement;"
    "1-0:14.7.0 frequency frequency measurement;"
    "1-0:3.7.0 reactive_power reactive_power measurement;"
    "1-0:9.7.0 apparent_power apparent_power measurement;"
    "8-0:1.0.0 water_volume water total_increasing;"
    "8-0:1.0.0*01 water_volume_settlement water total;"
    "7-0:3.0.0 gas_volume gas total_increasing;"
    "7-0:3.0.0*01 gas_volume_settlement gas total;"
    "6-0:1.0.0 heat_energy energy total_increasing;"
    "6-0:1.0.0*01 heat_energy_settlement energy total;"
    "6-0:2.0.0 heat_volume water total_increasing;"
    "6-0:8.0.0 heat_power power measurement;"
    "6-0:9.0.0 heat_flow volume_flow_rate measurement;"
    "6-0:10.0.0 supply_temperature temperature measurement;"
    "6-0:11.0.0 return_temperature temperature measurement;"
    "6-0:12.0.0 temperature_difference temperature measurement;"
    "0-0:96.8.0 operating_time duration total_increasing;"
    "8-0:2.0.0 water_flow volume_flow_rate measurement"
)
N_QUANTITIES = const(39)


def _qfield(i, f):
    # Field f (0 code, 1 name, 2 device class, 3 state class) of quantity i.
    if not 0 <= i < N_QUANTITIES:
        raise ValueError("unknown quantity %d" % i)
    k = 0
    for _ in range(i):
        k = _Q.find(";", k) + 1
    for _ in range(f):
        k = _Q.find(" ", k) + 1
    e = _Q.find(" ", k)
    s = _Q.find(";", k)
    if e < 0 or 0 <= s < e:
        e = s
    return _Q[k:] if e < 0 else _Q[k:e]


def qname(i):
    return _qfield(i, 1)


def qcode(i):
    return _qfield(i, 0)


def qinfo(i):
    # -> (code, name, device class, state class)
    return (_qfield(i, 0), _qfield(i, 1), _qfield(i, 2), _qfield(i, 3))


def quantities():
    # Every quantity's (code, name, device class, state class), in index order (host tools).
    return [qinfo(i) for i in range(N_QUANTITIES)]

PROTOCOLS = ("dlt645", "dlt645v97", "cjt188", "mbus", "modbus")


def quantity(code_or_name):
    # "1-0:1.8.0" or "energy_import" -> index; ValueError naming it when unknown.
    for i in range(N_QUANTITIES):
        if qcode(i) == code_or_name or qname(i) == code_or_name:
            return i
    raise ValueError("unknown quantity %r (docs/gateway.md lists them)" % (code_or_name,))


def unit_index(text):
    for i, u in enumerate(UNITS):
        if u == text:
            return i
    if text == "m3":
        return U_M3
    if text == "m3/h":
        return U_M3H
    raise ValueError("unknown unit %r" % (text,))


def decimal(v, e):
    # The exact decimal text of v * 10**e: (123456, -2) -> "1234.56"; no float involved.
    if e >= 0:
        return str(v * 10**e) if v else "0"
    neg = v < 0
    s = str(-v if neg else v)
    k = -e
    if len(s) <= k:
        s = "0" * (k - len(s) + 1) + s
    s = s[:-k] + "." + s[-k:]
    return "-" + s if neg else s


class Readings:
    # The values of one poll, collected without allocating per value: quantity, unit,
    # exponent, value in parallel preallocated arrays.  add() converts the unit to the
    # canonical one where that is exact.
    def __init__(self, size=MAX_VALUES):
        self.q = bytearray(size)
        self.u = bytearray(size)
        self.e = array("b", bytes(size))  # exponents -128..127
        self.v = [0] * size
        self.n = 0
        self.status = 0
        self.meter_ts = 0
        self.dropped = 0  # values beyond `size`

    def clear(self):
        self.n = 0
        self.status = 0
        self.meter_ts = 0

    def add(self, q, v, e, u):
        c = _CANON.get(u)
        if c is not None:
            u = c[0]
            e += c[1]
        n = self.n
        for i in range(n):  # a quantity twice (a block and a single DI): the newest wins
            if self.q[i] == q:
                n = i
                break
        if n >= len(self.q):
            self.dropped += 1
            return
        self.q[n] = q
        self.u[n] = u
        self.e[n] = e
        self.v[n] = v
        if n == self.n:
            self.n += 1

    def get(self, q):
        # (value, exponent, unit) of quantity q, or None.
        for i in range(self.n):
            if self.q[i] == q:
                return self.v[i], self.e[i], self.u[i]
        return None

    def copy_from(self, other):
        # Keeps what fits this one's size (a meter's kept reading is sized to its driver).
        n = other.n if other.n <= len(self.q) else len(self.q)
        for i in range(n):
            self.q[i] = other.q[i]
            self.u[i] = other.u[i]
            self.e[i] = other.e[i]
            self.v[i] = other.v[i]
        self.n = n
        self.status = other.status
        self.meter_ts = other.meter_ts


# READING payload: version u8, status u8, meter_ts u32, id length u8 + ASCII id, count u8,
# then count x (quantity u8, unit u8, exponent i8, value i64).
_HEAD = "<BBIB"
_VAL = "<BBbq"
_VAL_SIZE = const(11)


def pack(meter_id, r, status_extra=0):
    mid = meter_id.encode() if isinstance(meter_id, str) else bytes(meter_id)
    if len(mid) > ID_MAX:
        raise ValueError("meter id %r is longer than %d" % (meter_id, ID_MAX))
    out = bytearray(7 + len(mid) + 1 + _VAL_SIZE * r.n)
    struct.pack_into(_HEAD, out, 0, VERSION, (r.status | status_extra) & 0x7F, r.meter_ts & 0xFFFFFFFF, len(mid))
    out[7 : 7 + len(mid)] = mid
    k = 7 + len(mid)
    out[k] = r.n
    k += 1
    for i in range(r.n):
        struct.pack_into(_VAL, out, k, r.q[i], r.u[i], r.e[i], r.v[i])
        k += _VAL_SIZE
    return bytes(out)


def unpack(payload):
    # -> (meter id, status, meter_ts, [(q, unit, exp, value)]); ValueError naming the flaw.
    p = bytes(payload)
    if len(p) < 8:
        raise ValueError("reading payload is %d bytes, shorter than its 8-byte head" % len(p))
    ver, status, mts, idn = struct.unpack_from(_HEAD, p, 0)
    if ver != VERSION:
        raise ValueError("reading payload version %d, this decoder reads %d" % (ver, VERSION))
    if len(p) < 8 + idn:
        raise ValueError("reading payload is cut inside its meter id")
    mid = p[7 : 7 + idn].decode()
    n = p[7 + idn]
    k = 8 + idn
    if len(p) != k + n * _VAL_SIZE:
        raise ValueError("reading payload is %d bytes, %d values need %d" % (len(p), n, k + n * _VAL_SIZE))
    vals = []
    for _ in range(n):
        q, u, e, v = struct.unpack_from(_VAL, p, k)
        if q >= N_QUANTITIES or u >= len(UNITS):
            raise ValueError("reading payload has unknown quantity %d / unit %d" % (q, u))
        vals.append((q, u, e, v))
        k += _VAL_SIZE
    return mid, status, mts, vals


def status_names(status):
    return [STATUS_NAMES[b] for b in range(8) if status & (1 << b)]


def fields(payload):
    # READING payload -> the dict the outbox publishes (records.fields): every value as
    # integer + exponent (exact) and as decimal text, with its code, name and unit.
    mid, status, mts, vals = unpack(payload)
    out = []
    for q, u, e, v in vals:
        out.append({"code": qcode(q), "quantity": qname(q), "v": v, "e": e, "value": decimal(v, e), "unit": UNITS[u]})
    return {"meter": mid, "status": status_names(status), "meter_ts": mts or None, "readings": out}


def state_json(meter_id, r, ts, stale=False):
    # The retained state on umeter/<node>/meter/<meter-id> (Home Assistant reads it): each
    # quantity by name with its exact decimal, built as text so no float rounds it.
    parts = ['{"meter":"%s","ts":%d,"stale":%s' % (meter_id, int(ts), "true" if stale else "false")]
    if r.meter_ts:
        parts.append(',"meter_ts":%d' % r.meter_ts)
    parts.append(',"status":%d' % r.status)
    for i in range(r.n):
        parts.append(',"%s":%s' % (qname(r.q[i]), decimal(r.v[i], r.e[i])))
    parts.append("}")
    return "".join(parts)


def epoch(y, mo, d, hh=0, mi=0, ss=0):
    # UTC civil time -> seconds since 1970, in integers (the same on every port, whatever
    # its own time epoch).  Days from civil: H. Hinnant's algorithm.
    y -= mo <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (mo + (-3 if mo > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hh * 3600 + mi * 60 + ss


def civil(t):
    # seconds since 1970 -> (year, month, day, hour, minute, second), UTC.
    days, s = divmod(int(t), 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    mo = mp + (3 if mp < 10 else -9)
    return (y + (mo <= 2), mo, d, s // 3600, s // 60 % 60, s % 60)


def f32_decimal(bits):
    # An IEEE-754 single (as its 32-bit pattern) -> (value, exponent) with at most 7
    # significant digits (what a single holds), computed in integers (exact on a
    # single-precision board too).
    # None for infinity / NaN.
    neg = bits >> 31
    x = (bits >> 23) & 0xFF
    m = bits & 0x7FFFFF
    if x == 0xFF:
        return None
    if x == 0:
        x = 1
    else:
        m |= 0x800000
    x -= 150  # value = m * 2**x
    if not m:
        return 0, 0
    if x >= 0:
        v = m << x
        e = 0
    else:
        v = m * 5 ** (-x)  # m * 2**x = m * 5**-x / 10**-x
        e = x
    d = len(str(v)) - 7
    if d > 0:
        p = 10**d
        v = (v + p // 2) // p
        e += d
    while e < 0 and v and v % 10 == 0:
        v //= 10
        e += 1
    return (-v if neg else v), e
