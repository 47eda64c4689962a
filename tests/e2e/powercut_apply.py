# Runs on the MicroPython unix port for tests/e2e/test_policy_powercut.py:
#   micropython powercut_apply.py <dir> apply <record.json> <pause ms>   apply, printing each step
#   micropython powercut_apply.py <dir> load                             print what load() finds
import json
import sys
import time

from meternode.policy.apply import PolicyStore

d, mode = sys.argv[1], sys.argv[2]
if mode == "apply":
    with open(sys.argv[3]) as f:
        rec = json.load(f)
    delay = int(sys.argv[4])
    n = [0]

    def pause(step):
        n[0] += 1
        print("STEP %d %s" % (n[0], step))  # noqa: UP031  (runs on MicroPython)
        if delay:
            time.sleep_ms(delay)

    PolicyStore(d, pause).apply(rec["version"], rec["m"], rec["s"], rec["policy"])
    print("DONE")
else:
    st = PolicyStore(d)
    r = st.load()
    print(
        json.dumps(
            {"version": r["version"] if r else 0, "name": r["policy"]["n"] if r else None, "recovered": st.recovered}
        )
    )
