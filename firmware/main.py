# Board entry point: runs the node from the files in the board's root directory.
# A host tool taking over the REPL (Ctrl-C) stops the node and leaves the board at the REPL
# instead of soft-rebooting into main.py again; an unfinished `umeter provision` (the
# .provisioning marker is present in the root) keeps the node from starting on half-updated
# files. meternode/start.py selects the firmware OTA slot. This file stays compiled in the
# heap while the node runs, so it is kept short (docs/memory.md).
import os

try:
    os.stat(".provisioning")  # cwd is / on a board
    print("umeter: provisioning incomplete; node not started (run `umeter provision` again)")
except OSError:
    from meternode import start

    start.ota()
    start = None
    from meternode import node

    try:
        node.main()
    except SystemExit:
        pass
