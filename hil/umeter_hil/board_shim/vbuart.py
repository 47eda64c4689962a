# UART stand-in for a virtual board (machine.UART, see vbmachine.py), and the wires from the
# board's UARTs to host devices: state/uart.json {"<id>": "<host device>"}, written by
# VirtualBoard(uarts=...) -- e.g. a simulated meter bus of umeter_hil.bussim.  vbstate.init()
# calls wire() at boot, before the board's flash is mounted at / (host paths are out of reach
# after that).  A device that cannot be opened leaves its UART unwired, as a loose cable would.
import json

uarts = {}  # UART id -> the host device, open


def wire(path):
    try:
        with open(path) as f:
            wires = json.load(f)
    except (OSError, ValueError):
        return
    for k, dev in wires.items():
        try:
            uarts[int(k)] = open(dev, "r+b")
        except OSError as e:
            print("vboard: UART(%s) -> %s not wired: %s" % (k, dev, e))


class UART:
    # A board UART whose wires the host chose (VirtualBoard(uarts={id: device})): the device
    # was opened at boot, before the flash was mounted at /.  Reads take only what is there
    # (timeout 0 as the firmware asks); a UART without wires writes into nothing and reads
    # nothing.  Line settings are accepted and kept; a pty has no baud rate or parity.
    def __init__(self, id, baudrate=9600, bits=8, parity=None, stop=1, **kw):
        self.id = id
        self._f = uarts.get(id)
        self._p = None
        if self._f is not None:
            import select

            self._p = select.poll()
            self._p.register(self._f, select.POLLIN)
        self._one = bytearray(1)
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=9600, bits=8, parity=None, stop=1, **kw):
        self.baudrate, self.bits, self.parity, self.stop = baudrate, bits, parity, stop

    def deinit(self):
        pass  # the wire stays open: it cannot be reopened once the flash is mounted at /

    def any(self):
        if self._p is None:
            return 0
        for _ in self._p.ipoll(0):
            return 1
        return 0

    def readinto(self, buf, nbytes=-1):
        n = 0
        end = len(buf) if nbytes < 0 else nbytes
        while n < end and self.any():
            if not self._f.readinto(self._one):
                break
            buf[n] = self._one[0]
            n += 1
        return n or None

    def read(self, nbytes=-1):
        b = bytearray(256 if nbytes < 0 else nbytes)
        n = self.readinto(b)
        return bytes(b[:n]) if n else None

    def write(self, buf):
        if self._f is None:
            return len(buf)
        return self._f.write(buf)

    def txdone(self):
        return True

    def flush(self):
        pass
