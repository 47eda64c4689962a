# Runs at every reset, before main.py (and before the raw REPL a host tool asks for).
# Keep it tiny: a broken boot.py locks the host out of the board.  It only frees the RAM the
# boot left behind; the node itself starts from main.py.
import gc

gc.collect()
