"""Modules that run *on MicroPython* during firmware tests (not imported by CPython)."""
