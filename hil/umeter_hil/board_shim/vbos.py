# `os` stand-in for a virtual board: the unix port's os with rename() fixed.  With VfsPosix
# mounted at / the unix port's os.rename("/a.tmp", "/a") fails with ENOENT (relative paths
# work); on a board's LittleFS absolute renames work, and safe writes depend on them.
import os as _os

for _n in dir(_os):
    if not _n.startswith("__"):
        globals()[_n] = getattr(_os, _n)

_MOUNTS = ("/remote",)  # other filesystems a host may mount (mpremote mount)


def _on_root(p):
    for m in _MOUNTS:
        if p == m or p.startswith(m + "/"):
            return False
    return True


def _abs(p):
    if p.startswith("/"):
        return p
    cwd = _os.getcwd()
    return (cwd if cwd.endswith("/") else cwd + "/") + p


def rename(old, new):
    a = _abs(old)
    b = _abs(new)
    if not (_on_root(a) and _on_root(b)):
        return _os.rename(old, new)
    cwd = _os.getcwd()
    _os.chdir("/")
    try:
        _os.rename(a[1:], b[1:])
    finally:
        _os.chdir(cwd)
