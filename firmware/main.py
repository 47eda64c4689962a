# Board entry point: runs the node from the files in the board's root directory.
# A host tool taking over the REPL (Ctrl-C) stops the node and leaves the board at the REPL
# instead of soft-rebooting into main.py again; an unfinished `umeter provision` (the
# .provisioning marker is present in the root) keeps the node from starting on half-updated files.
import os


def _provisioning():
    try:
        os.stat(".provisioning")  # cwd is / on a board
        return True
    except OSError:
        return False


if _provisioning():
    print("umeter: provisioning incomplete; node not started (run `umeter provision` again)")
else:
    from meternode import node

    try:
        node.main()
    except SystemExit:
        pass
