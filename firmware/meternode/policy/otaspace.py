# What a firmware build takes staged on the flash: Slots.begin (ota.py) loads this for the
# check it makes before staging one, and forgets it; `umeter provision` counts with it too,
# to tell whether a board has room for an update (docs/boards.md, "Flash").


def build_bytes(files, bs):
    # A build ({name: {"size": n}}) on a filesystem of `bs`-byte blocks: whole blocks per file
    # and one more, two per directory (a LittleFS metadata pair), and the manifest.
    need = 3 * bs
    dirs = {}
    for name, fi in files.items():
        need += (fi["size"] + bs - 1) // bs * bs + bs
        k = name.rfind("/")
        while k > 0:
            dirs[name[:k]] = 1
            k = name.rfind("/", 0, k)
    return need + 2 * bs * len(dirs)
