"""umeter hardware-in-the-loop support: firmware tests on the unix port, virtual boards, rigs."""
