# Board entry point: runs the node from the files in the board's root directory.
# A host tool taking over the REPL (Ctrl-C) stops the node and leaves the board at the REPL
# instead of soft-rebooting into main.py again. meternode/start.py holds the checks before the
# node starts (an unfinished provisioning, firmware OTA slot selection); this file stays
# compiled in the heap while the node runs, so it is kept this short (docs/memory.md).
from meternode import start

if start.ready():
    start = None
    from meternode import node

    try:
        node.main()
    except SystemExit:
        pass
