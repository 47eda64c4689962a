"""Stand-in modules and the boot script that make the MicroPython unix port behave as a board.

Most files run on MicroPython inside a virtual board (see umeter_hil.vboard); they are data
for the host package.  The hardware stand-ins the board-backend tests drive -- rp2hw (the
RP2040's ADC, DMA and PIO at register level, an MCP3208 on the PIO's pins) and softirq
(timer IRQs and MicroPython's 8-deep scheduler queue) -- run on MicroPython (firmware
tests) and CPython (host tests of the PIO program) alike, and so does norflash's table of the boards' file-system
geometry (GEOMETRY), which the host's on-board checks hold a board to.
"""
