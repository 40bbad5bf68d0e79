"""The forwarding workers' batch journals, in the engine segment (`engine.shm.memory`).

One row per forwarding worker: the batch it has in hand, and how far it got. The
worker writes its row (engine/workers/forwarder.py) before it touches anything else,
so that the control process can finish a killed worker's batch
(engine/control/recovery.py). Each state is published with one aligned 8-byte store
after the fields it covers (x86 TSO keeps the stores in order).
"""

from __future__ import annotations

import numpy as np

from engine.counters import NCOUNTERS
from engine.shm.layout import Field

JOURNAL_IDLE = 0  # no batch in hand
JOURNAL_TAKEN = 1  # indices recorded; nothing counted, nothing handed on
JOURNAL_COUNTING = 2  # final verdicts recorded, the counters row saved in `before`,
#                       the batch being added to the row (a kill can tear that add)
JOURNAL_COUNTED = 3  # counters include the batch; buffers being moved to their rings


def journal_fields(nworkers: int, ring_size: int) -> list[Field]:
    """`journal.*`: one row per forwarding worker; `journal.idx` holds a whole ring's worth."""
    u1, u4, u8 = np.dtype(np.uint8), np.dtype(np.uint32), np.dtype(np.uint64)
    w = max(1, nworkers)
    return [
        Field("journal.state", u8, (w,)),
        Field("journal.n", u8, (w,)),
        Field("journal.idx", u4, (w, ring_size)),
        Field("journal.code", u1, (w, ring_size)),
        Field("journal.before", u8, (w, NCOUNTERS)),
    ]


class Journal:
    """Views of the forwarding workers' batch journals (rows indexed by worker)."""

    __slots__ = ("state", "n", "idx", "code", "before")

    def __init__(self, v: dict[str, np.ndarray]) -> None:
        self.state = v["journal.state"]  # JOURNAL_*
        self.n = v["journal.n"]  # the batch's size
        self.idx = v["journal.idx"]  # its buffer indices
        self.code = v["journal.code"]  # their final verdict codes (from JOURNAL_COUNTING)
        self.before = v["journal.before"]  # the counters row before the batch was added
