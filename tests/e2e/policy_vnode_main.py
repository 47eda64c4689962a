# main.py of a virtual node in the policy end-to-end tests: what firmware/main.py does, with
# the OTA slot selection first (the change proposed for firmware/main.py in docs/policy.md).
from meternode.policy import ota

ota.boot_path(".")

from meternode import node  # noqa: E402  (after boot_path: from the selected slot)

node.main()
