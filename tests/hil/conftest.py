"""The HIL plugin's fixtures for this directory. Once `umeter_hil.plugin` is registered as a
pytest11 entry point, `--board`/`--rig` work on the command line; until then use the
environment (UMETER_HIL_BOARD=/dev/ttyUSB0 ...)."""

from umeter_hil.plugin import _hil_skips, board, hil_target, pytest_configure, rig  # noqa: F401
