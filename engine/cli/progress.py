"""A long pcap replay's progress on a terminal: frames and bytes done, rate, time left.

`fwd run` shows it when stdout is a terminal and --json is not given, from the moment
a replay has run for SHOW_AFTER_S seconds (a short one shows nothing). It is drawn on
stderr with rich and vanishes when the replay ends; lines the engine says meanwhile
are printed above it.
"""

from __future__ import annotations

import sys
import time

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

SHOW_AFTER_S = 2.0


class ReplayProgress:
    """The bar of one replay: `update` as the engine reports, `say` for its messages,
    `close` at the end."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.t0 = time.monotonic()
        self.bar: Progress | None = None
        self.task = 0

    def update(self, frames: int, done: int, total: int) -> None:
        now = time.monotonic()
        if self.bar is None:
            if now - self.t0 < SHOW_AFTER_S:
                return
            self.bar = Progress(
                TextColumn("replay"), BarColumn(bar_width=16), TaskProgressColumn(),
                TextColumn("{task.fields[frames]:,} frames {task.fields[rate]}"),
                DownloadColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("replay", total=max(total, 1), frames=0, rate="")
        rate = frames / max(now - self.t0, 1e-9)
        self.bar.update(self.task, completed=min(done, total), frames=frames,
                        rate=f"{rate / 1e6:.2f} Mpps" if rate >= 1e5 else f"{rate:,.0f} pps")

    def say(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.console.print(msg, markup=False, highlight=False, soft_wrap=True)
        else:
            click.echo(msg, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
