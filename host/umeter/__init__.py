"""umeter host toolchain: build, flash, provision, fleet, policy/OTA, monitor, sim."""

__version__ = "0.1.0"
