"""The engine's log: what `fwd run`'s control process says, through Python's logging.

Every line goes to one sink (stderr, or above a replay's progress bar), filtered by
level (`--log-level`, `[engine] log_level`). A daemon's lines carry the time; under
systemd, whose journal stamps each line itself, they carry sd-daemon(3)'s `<N>`
priority prefix instead, so `journalctl -p warning -u fwd@lab` filters by level.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from engine.config import LOG_NOTICE

LOGGER = "fwd"
logging.addLevelName(LOG_NOTICE, "NOTICE")
# sd-daemon(3): a line that starts with <N> is logged at syslog priority N
JOURNAL_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, LOG_NOTICE: 5, logging.WARNING: 4,
                    logging.ERROR: 3, logging.CRITICAL: 2}

Say = Callable[..., None]  # say(message, level=logging.INFO)


def under_journal(fd: int = 2) -> bool:
    """Whether `fd` is the stream systemd connected to its journal: JOURNAL_STREAM
    holds that stream's "device:inode" (systemd.exec(5)), and a redirect changes them."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(fd)
        return bool(stream) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


class _Sink(logging.Handler):
    def __init__(self, write: Callable[[str], None], stamp: bool, journal: bool):
        super().__init__()
        self.write = write
        self.stamp = stamp
        self.journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if self.journal:
                line = f"<{JOURNAL_PRIORITY.get(record.levelno, 6)}>{msg}"
            elif self.stamp:
                t = record.created
                when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
                line = f"{when}.{int(t * 1000) % 1000:03d} {record.levelname.lower()} {msg}"
            else:
                line = msg
            self.write(line)
        except Exception:  # a log line must never stop the engine
            self.handleError(record)


def setup(level: str, stamp: bool, write: Callable[[str], None] | None = None) -> Say:
    """The engine's `say` for `fwd run`: lines at `level` and above go to `write`
    (stderr by default), with the time when `stamp` (not under the journal)."""
    journal = under_journal()
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.addHandler(_Sink(write or (lambda line: print(line, file=sys.stderr, flush=True)),
                            stamp and not journal, journal))
    logger.propagate = False
    logger.setLevel(level.upper())  # a SIGHUP reload of [engine] log_level changes it

    def say(message: str, level: int = logging.INFO) -> None:
        if level == LOG_NOTICE:  # a run's result (the pool check): at every log level
            logger.handle(logger.makeRecord(LOGGER, level, "", 0, message, None, None))
        else:
            logger.log(level, message)

    return say
