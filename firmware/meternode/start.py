# What main.py does before the node runs, kept out of main.py: main.py stays compiled in the
# heap for as long as the node runs, this module is forgotten once it has done its work.
import sys


def ota():
    # Firmware OTA slot selection, only when fw/boot.json names a slot to boot or to try: the
    # OTA code holds ~37 KB of heap with what it imports (docs/memory.md).  Counts this boot,
    # rolls back a trial build that was not confirmed and puts the selected slot (and its lib/)
    # first on sys.path.  Then forgets the package as loaded so far (this module, the OTA code):
    # the node loads what it needs, from the slot if one was selected.
    try:
        with open("fw/boot.json") as f:
            import json

            st = json.load(f)
        slot = st.get("active") or st.get("pending")
    except (OSError, ValueError, AttributeError):
        slot = None  # no OTA state: the factory firmware
    if slot:
        try:
            from meternode.policy import ota

            ota.boot_path(".")
        except Exception as e:  # a broken OTA state must not keep the factory firmware from running
            print("umeter: OTA slot selection failed (%r); running the factory firmware" % (e,))
    for name in list(sys.modules):
        if name == "meternode" or name.startswith("meternode."):
            del sys.modules[name]
