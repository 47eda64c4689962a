# What main.py does before the node runs, kept out of main.py: main.py stays compiled in the
# heap for as long as the node runs, this module is forgotten once it has answered.
#   ready() -> False while an unfinished `umeter provision` left its /.provisioning marker
#   (the node must not start on half-updated files); else selects the firmware OTA slot, only
#   when fw/boot.json names one to boot or to try (the OTA code holds ~37 KB of heap with what
#   it imports, docs/memory.md), and returns True.
import os
import sys


def ready():
    try:
        os.stat(".provisioning")  # cwd is / on a board
        print("umeter: provisioning incomplete; node not started (run `umeter provision` again)")
        return False
    except OSError:
        pass
    try:
        with open("fw/boot.json") as f:
            import json

            st = json.load(f)
        slot = st.get("active") or st.get("pending")
    except (OSError, ValueError, AttributeError):
        slot = None  # no OTA state: the factory firmware
    if slot:
        try:
            # count this boot, roll back a trial build that was not confirmed, put the selected
            # slot (and its lib/) first on sys.path
            from meternode.policy import ota

            ota.boot_path(".")
        except Exception as e:  # a broken OTA state must not keep the factory firmware from running
            print("umeter: OTA slot selection failed (%r); running the factory firmware" % (e,))
    # forget the factory package as loaded so far (this module, the OTA code): the node loads
    # what it needs, from the slot if one was selected
    for name in list(sys.modules):
        if name == "meternode" or name.startswith("meternode."):
            del sys.modules[name]
    return True
