# A firmware manifest too large for one message (a build of ~100 files: 14 KB of text, ~20 KB
# parsed), staged on flash as it streams in (ota.Slots.write) and read back from there entry
# by entry: a node holds one entry at a time, never the manifest's text nor all its entries,
# which a +fleet node in its budgeted heap (docs/memory.md) has no room for.
#
# bundle.py loads this for the last chunk of a streamed manifest; the transfer's Staged
# object (the manifest's "files", what Slots.write looks a chunk's file up in) keeps the code
# until the transfer ends, and a node that never streams a manifest never interns its names.
import json

from meternode.policy.ota import Rejected


class Staged:
    # The manifest text at `path` (JSON; the signer writes it compact).  .head: its members
    # but "files", parsed, with "files" this object.  get(name) -> the file's entry or None;
    # items() -> (name, entry) in the text's order.  Bad JSON: Rejected("malformed: ...").
    def __init__(self, path):
        self.path = path
        self.at = 0  # offset just inside the files object
        self.key = None  # the entry get() found last, and where its next scan starts
        self.fi = None
        self.end = 0
        self.head = {}
        for k, v in self._scan(0, 1):
            self.head[k] = v
        if self.at:
            self.head["files"] = self
        self.end = self.at

    def items(self):
        return self._scan(self.at, 2)

    def get(self, name):
        # A build's chunks come file after file in the manifest's order: the scan goes on
        # from the entry found last, then from the first.
        if name != self.key:
            self.fi = None
            for at in (self.end, self.at):
                g = self._scan(at, 2)
                for k, v in g:
                    if k == name:
                        self.key = k
                        self.fi = v
                        break
                g.close()  # its file
                if self.fi is not None:
                    break
        return self.fi

    def _scan(self, at, base):
        # -> (key, value) of each member of the object `base` deep, read from offset `at` of
        # the text (0: its start; else just inside that object), one member's text at a time.
        # The top object's "files" is skipped (its offset kept), not read whole; self.end is
        # the offset of the separator after each member yielded.  Whitespace outside strings
        # is dropped.
        buf = bytearray(128)
        tok = bytearray()
        depth = base if at else 0
        s = e = skip = top = 0  # in a string, after its backslash, in "files", the top object closed
        with open(self.path, "rb") as f:
            f.seek(at)
            n = f.readinto(buf)
            while n:
                for i in range(n):
                    c = buf[i]
                    if s:
                        if e:
                            e = 0
                        elif c == 92:
                            e = 1
                        elif c == 34:
                            s = 0
                    elif c in b" \t\r\n":
                        continue
                    elif depth == 0:
                        if c != 123 or top:
                            raise Rejected("malformed: manifest is not JSON")
                        depth = 1
                        continue
                    elif c == 34:
                        s = 1
                    elif c == 123 or c == 91:
                        depth += 1
                        if depth == 2 and base == 1 and tok == b'"files":' and c == 123:
                            skip = 1  # read entry by entry (items, get), not here
                            self.at = at + i + 1
                            tok.extend(b"{}")
                            continue
                    elif c == 125 or c == 93:
                        depth -= 1
                        if depth < base or skip and depth == 1:
                            if c != 125:
                                raise Rejected("malformed: manifest is not JSON")
                            if skip:
                                skip = 0
                                continue
                            c = 44  # the object's end ends its last member too
                    if c == 44 and depth <= base and not s:
                        if tok:  # a member ends: its text is a one-member object
                            try:
                                d = json.loads(b"{" + tok + b"}")
                            except ValueError:
                                raise Rejected("malformed: manifest is not JSON")
                            tok = bytearray()
                            self.end = at + i
                            for k in d:
                                yield k, d[k]
                        if depth < base:
                            if base == 2:
                                return
                            top = 1
                            depth = 0
                    elif not skip:
                        tok.append(c)
                at += n
                n = f.readinto(buf)
        if depth or not top and base == 1:
            raise Rejected("malformed: manifest is not JSON")
