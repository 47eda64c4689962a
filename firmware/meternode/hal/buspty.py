# The sim board's meter bus: a pty (umeter_hil.bussim puts virtual meters behind it), apart
# from hal/bus.py so that a board, whose buses are UARTs, never loads it.
from meternode.config import ConfigError
from meternode.ticks import sleep_ms as _sleep_ms


class PtyPort:
    # The sim board's bus: a pty (or any tty device) opened as a file; select.poll says when
    # it has bytes.  The frame's line time is waited after each write.
    def __init__(self, path):
        import select

        try:
            self.f = open(path, "r+b", buffering=0)
        except TypeError:  # MicroPython's open() has no buffering argument (and does not buffer)
            self.f = open(path, "r+b")
        except OSError as e:
            raise ConfigError("bus port %s cannot be opened (%s)" % (path, e))
        self.p = select.poll()
        self.p.register(self.f, select.POLLIN)
        self._ipoll = hasattr(self.p, "ipoll")
        self._one = bytearray(1)

    def any(self):
        if self._ipoll:
            for _ in self.p.ipoll(0):
                return 1
            return 0
        return 1 if self.p.poll(0) else 0

    def readinto(self, buf):
        # A file's readinto waits until the whole buffer is full: take only what is there,
        # a byte at a time while poll says so (at meter-bus speeds that is a few hundred
        # bytes a second).
        n = 0
        one = self._one
        while n < len(buf) and self.any():
            if not self.f.readinto(one):
                break
            buf[n] = one[0]
            n += 1
        return n

    async def write(self, buf, n, char_us):
        self.f.write(memoryview(buf)[:n])
        await _sleep_ms((n * char_us) // 1000)

    def close(self):
        self.f.close()
