# The resynchronising frame scanner of the "68 ... CS 16" family (DL/T 645, CJ/T 188), and
# the packed-BCD helpers both codecs use.
#
# Bytes from the bus are fed in as they arrive (any split); next() returns the length of
# the next whole frame (at buf[start:]) or 0 when none is complete yet.  It skips FE
# wake-up bytes and noise, checks the second 68 (DL/T 645), the byte sum CS and the end
# byte 16, and after a bad checksum resumes one byte after the false start, so a good frame
# that follows garbage is still found.  Nothing is allocated after __init__.
from micropython import const

_END = const(0x16)
_START = const(0x68)
_WAKE = const(0xFE)


class Scanner:
    def __init__(self, lpos, second68=-1, size=512):
        # lpos: offset of the length byte L from the first 68 (DL/T 645: 9, CJ/T 188: 10);
        # second68: offset of the second 68 (DL/T 645: 7), -1 when the protocol has none.
        # A frame is lpos + 1 + L + 2 bytes; `size` must hold the longest.
        if size < lpos + 258:
            raise ValueError("scanner buffer of %d bytes cannot hold a %d-byte frame" % (size, lpos + 258))
        self.buf = bytearray(size)
        self.lpos = lpos
        self.s68 = second68
        self.head = 0  # first byte not yet scanned
        self.n = 0  # bytes held: buf[head:n]
        self.start = 0  # the frame next() found
        self.length = 0
        # counters (wrap far beyond a node's life at bus speeds)
        self.frames = 0
        self.bad = 0  # checksum or end byte wrong
        self.noise = 0  # bytes skipped that were neither FE nor part of a frame
        self.overflow = 0  # bytes dropped because nobody read them

    def reset(self):
        # Forget what is held (before a new request: a late answer is not this one's).
        self.head = self.n = self.start = self.length = 0

    def pending(self):
        # Bytes held that are not yet a frame (a truncated frame at a timeout).
        return self.n - self.head

    def feed(self, src, k=-1):
        # Copies k bytes (all of src when k < 0) in; the oldest are dropped when full.
        if k < 0:
            k = len(src)
        b = self.buf
        size = len(b)
        if self.n + k > size:
            self._compact()
            if self.n + k > size:
                drop = self.n + k - size
                if drop > self.n:
                    drop = self.n
                self.head = drop
                self.overflow += drop
                self._compact()
                if k > size:
                    self.overflow += k - size
                    k = size
        n = self.n
        for i in range(k):
            b[n + i] = src[i]
        self.n = n + k

    def _compact(self):
        h = self.head
        if not h:
            return
        b = self.buf
        m = self.n - h
        for i in range(m):
            b[i] = b[h + i]
        self.head = 0
        self.n = m

    def next(self):
        b = self.buf
        i = self.head
        n = self.n
        lp = self.lpos
        s68 = self.s68
        while i < n:
            c = b[i]
            if c != _START:
                if c != _WAKE:
                    self.noise += 1
                i += 1
                continue
            if n - i <= lp:
                break  # header not complete yet
            if s68 >= 0 and b[i + s68] != _START:
                self.noise += 1
                i += 1
                continue
            total = lp + b[i + lp] + 3
            if n - i < total:
                break  # wait for the rest
            end = i + total - 2
            cs = 0
            for k in range(i, end):
                cs += b[k]
            if (cs & 0xFF) != b[end] or b[end + 1] != _END:
                self.bad += 1
                i += 1
                continue
            self.start = i
            self.length = total
            self.head = i + total
            self.frames += 1
            return total
        self.head = i
        if i == n:
            self.head = self.n = 0
        return 0


def checksum(buf, start, end):
    # Byte sum mod 256 of buf[start:end].
    cs = 0
    for i in range(start, end):
        cs += buf[i]
    return cs & 0xFF


def bcd(buf, off, n, sub=0, signed=False):
    # Little-endian packed BCD of n bytes at buf[off] (each byte minus `sub`, 0x33 on
    # DL/T 645) -> int; with `signed`, bit 7 of the most significant byte is the sign.
    # Returns None when a nibble is not a decimal digit (meters fill unknown fields with FF).
    v = 0
    i = off + n - 1
    neg = False
    while i >= off:
        x = (buf[i] - sub) & 0xFF
        if signed and i == off + n - 1:
            neg = x & 0x80
            x &= 0x7F
        hi = x >> 4
        lo = x & 0x0F
        if hi > 9 or lo > 9:
            return None
        v = v * 100 + hi * 10 + lo
        i -= 1
    return -v if neg else v


def put_bcd(buf, off, n, value, add=0, signed=False):
    # Writes value as n bytes of little-endian packed BCD (+ `add` per byte); with
    # `signed`, a negative value sets bit 7 of the top byte.  Raises ValueError if it
    # does not fit.
    neg = value < 0
    if neg and not signed:
        raise ValueError("negative value %d for an unsigned field" % value)
    v = -value if neg else value
    for i in range(n):
        d = v % 100
        v //= 100
        x = ((d // 10) << 4) | (d % 10)
        if i == n - 1 and neg:
            if x & 0x80:
                raise ValueError("value %d does not fit %d signed BCD bytes" % (value, n))
            x |= 0x80
        buf[off + i] = (x + add) & 0xFF
    if v:
        raise ValueError("value %d does not fit %d BCD bytes" % (value, n))


def bcd_byte(x):
    # One packed BCD byte -> 0..99, or -1 when it is not BCD.
    hi = x >> 4
    lo = x & 0x0F
    if hi > 9 or lo > 9:
        return -1
    return hi * 10 + lo


def address_text(buf, off, n):
    # An n-byte BCD address sent lowest byte first -> its digits, most significant first.
    s = ""
    for i in range(off + n - 1, off - 1, -1):
        s += "%02x" % buf[i]
    return s


def address_bytes(text, n, out=None, off=0):
    # "000000123456" -> n bytes, lowest two digits first (A0 first on the wire).
    # "aa..." wildcards and hex digits pass through, so broadcast addresses work.
    t = text.strip().lower()
    if len(t) > 2 * n or len(t) % 2:
        raise ValueError("address %r must be %d digits" % (text, 2 * n))
    t = "0" * (2 * n - len(t)) + t
    if out is None:
        out = bytearray(n)
    for i in range(n):
        j = 2 * (n - 1 - i)
        out[off + i] = int(t[j : j + 2], 16)
    return out
