"""Board definitions (JSON), read by the firmware on the node and by the host toolchain."""
