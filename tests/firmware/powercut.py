# A power cut for the firmware tests that run on the unix port: a child MicroPython runs a
# writer script that prints "acked N" once N is durable; it is killed with SIGKILL `delay`
# seconds after its first acknowledgement (a process killed at any instant leaves its files
# as a power cut leaves them). -> the last N it acknowledged in whole.
import os
import sys


def cut(script, out, delay):
    cmd = "%s %s > %s 2>&1 & P=$!; n=0; until grep -q acked %s || [ $n -ge 500 ]; do sleep 0.01; n=$((n+1)); done; "
    cmd += "sleep %s; kill -9 $P; wait $P 2>/dev/null"
    os.system(cmd % (sys.executable, script, out, out, delay))
    acked = 0
    with open(out) as f:
        for line in f:
            # a whole line only: print() writes "acked", " ", the number and the newline one by
            # one, and the kill may land between them
            if line.startswith("acked ") and line.endswith("\n"):
                acked = int(line[6:])
    return acked
