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
    try:
        # firmware OTA: count this boot, roll back a trial build that was not confirmed, and
        # put the selected slot (and its lib/) first on sys.path
        from meternode.policy import ota

        ota.boot_path(".")
    except Exception as e:  # a broken OTA state must not keep the factory firmware from running
        print("umeter: OTA slot selection failed (%r); running the factory firmware" % (e,))
    from meternode import node

    try:
        node.main()
    except SystemExit:
        pass
