"""Stand-in modules and the boot script that make the MicroPython unix port behave as a board.

These files run on MicroPython inside a virtual board (see umeter_hil.vboard); they are data
for the host package, never imported by CPython.
"""
