# The sim board's stand-in for machine.WDT: a thread that resets the node when nobody fed it
# for `timeout` ms of wall time, whatever the main thread is doing (spinning, blocked in a
# call), as a hardware watchdog does.  "Reset" on the unix port: the mark file is written
# (the next boot reads its reset cause from it: hal.reset_cause), a line is printed and the
# process is killed at once (SIGKILL: no cleanup, like a real reset); whoever runs the node
# starts it again.  Unlike a board's, this one can be stopped (tests, a node.run() that ends),
# and stops when a Ctrl-C stops the node (a Ctrl-C it catches goes to the main thread).
import time

from micropython import const

_STEP_MS = const(100)


class SimWatchdog:
    def __init__(self, timeout, mark=None, stop=None):
        import _thread

        self.timeout = timeout
        self.mark = mark
        self.stop_path = stop  # a file the host writes to stop the node (`umeter sim`)
        self.fed = time.ticks_ms()
        self.feeds = 0
        self.on = True
        self.fired = False
        self.interrupted = False  # a Ctrl-C this thread caught, for the main thread
        self.kill = True  # tests set False: only `fired` and the mark, no reset
        _thread.start_new_thread(self._watch, ())

    def feed(self):
        if self.interrupted:
            self.interrupted = False
            raise KeyboardInterrupt  # the Ctrl-C the watchdog's thread caught (interrupt())
        self.fed = time.ticks_ms()
        self.feeds += 1

    def stop(self):
        self.on = False

    def _watch(self):
        import os

        try:
            while self.on:
                time.sleep_ms(_STEP_MS)
                if self.stop_path is not None:
                    # The host's stop request: a file, not a SIGINT. The unix port raises a
                    # SIGINT as a KeyboardInterrupt wherever the thread it lands in is, inside
                    # the collector too, whose lock it then leaves held: the node hung until
                    # the host killed it, its registers unsaved (test_sim_db under load). This
                    # one arrives between bytecodes, at a feed.
                    try:
                        os.remove(self.stop_path)
                        self.interrupt()  # as a Ctrl-C: the node saves its registers and exits
                        return
                    except OSError:
                        pass
                if self.on and time.ticks_diff(time.ticks_ms(), self.fed) > self.timeout:
                    self._reset()
                    return
        except KeyboardInterrupt:
            self.interrupt()

    def interrupt(self):
        # The unix port raises a Ctrl-C (SIGINT) in whichever thread the kernel hands it to:
        # it is the node's, not ours.  Stop watching and hand it to the main thread at its next
        # feed(), so the node stops and saves its registers.  (Sending the process a second
        # SIGINT could land in this thread again, uncaught: the node then ran on until the host
        # killed it, its registers unsaved -- seen under load, test_sim_db.)
        self.on = False
        self.interrupted = True

    def _reset(self):
        self.fired = True
        if self.mark:
            try:
                with open(self.mark, "w") as f:
                    f.write("watchdog")
            except OSError:
                pass
        print("[%d] watchdog: not fed for %d ms, resetting" % (time.ticks_ms(), self.timeout))
        if self.kill:
            import os

            os.system("kill -KILL $PPID")  # the shell's parent is this process
