# Hardware abstraction.  Only modules in this package import machine, rp2, esp32 or network.
# make(board, config) returns the backend named by board["hal"]: an object with
#   .clock    ticks_ms(), time() (epoch seconds), async sleep_ms(ms)
#   .sampler  nch, rate, block_sets, bits, overruns, start(), stop(),
#             async next_block() -> array('H') of nch * block_sets interleaved samples
#             (set k = [ch0, ch1, ...]); valid until the following call.


def make(board, config):
    kind = board["hal"]
    if kind == "sim":
        from meternode.hal import sim

        return sim.SimHal(board, config.get("sim", {}))
    raise ValueError("board.hal %r has no backend in this build" % kind)
