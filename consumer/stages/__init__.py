"""Pure stages of the pipeline (parse, map, merge, batch, report): values in, values out.

No I/O, no clock of their own (a clock is injected where time matters); unit-tested with
plain values.
"""
