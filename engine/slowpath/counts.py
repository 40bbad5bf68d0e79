"""The slow-path worker's counters: increments kept in a dict through a burst, added
to the worker's shared counters row at the end of it (`Counts.flush`)."""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from engine.counters import SECTIONS, Drop, Misc, SlowDrop, Unsent, index

# counters.index of every counter, by identity (members are singletons; two IntEnum
# members of different sections with one value are equal, and so one dict key)
COLUMNS = {id(m): index(m) for section in SECTIONS for m in section}


class Counts:
    """Counts for the shared row `row`: a Python dict is cheaper than a shared numpy
    scalar per increment, and the row moves once per burst, before `rx_frames` says
    the burst is done."""

    def __init__(self, row: np.ndarray) -> None:
        self.row = row
        self._pending: dict[int, int] = {}  # a column: its increment since the flush

    def count(self, counter: IntEnum, n: int = 1) -> None:
        col = COLUMNS[id(counter)]
        self._pending[col] = self._pending.get(col, 0) + n

    def drop(self, reason: Drop | SlowDrop) -> None:
        self.count(reason)
        self.count(Misc.dropped)

    def unsent(self, reason: Unsent) -> None:
        self.count(reason)

    def flush(self) -> None:
        """Add the counts kept since the last flush to the shared counters row (at the
        end of every burst and pass)."""
        if self._pending:
            row = self.row
            for col, n in self._pending.items():
                row[col] += n
            self._pending.clear()
