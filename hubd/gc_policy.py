"""How hubd sets Python's cyclic garbage collector once it serves.

With the default thresholds (700, 10, 10) the collector ran a full collection every few
hundred connections during a connection storm, walking every object of every open
connection (about 190 tracked objects each) and finding nothing to free: 27 % of the
server's CPU in the `connect` benchmark (docs/performance.md). hubd's per-connection
objects are freed by reference counting when the connection ends; what cycles it makes
(exceptions and their tracebacks, mostly) die young, in the first generation.

So, once started: `gc.freeze()` moves everything built at start-up (modules, settings,
the app) out of the collector's sight, and the first threshold is raised so that young
collections come every 20,000 net allocations instead of 700; the older generations keep
running, rarely, so that long-lived cycles are still freed. Pure policy; no I/O.
"""

from __future__ import annotations

import gc

# (young, middle, old): a young collection every 20,000 net allocations of tracked
# objects, a middle one every 50 young ones, a full one every 100 middle ones (and, as
# always, only once the objects waiting for it are a quarter of those already there).
THRESHOLDS = (20_000, 50, 100)


def apply() -> tuple[int, int, int]:
    """Freeze what start-up built and set `THRESHOLDS`; returns the previous thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return previous
