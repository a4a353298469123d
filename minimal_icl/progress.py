"""A live status line for long work, drawn on a terminal only.

Used by the command line (``python -m minimal_icl train``) and the experiments; the
training loop itself draws nothing (it reports to a callback, see ``train.train``).
"""

from __future__ import annotations

import math
import os
import sys
import time


def progress_enabled(stream, quiet: bool = False) -> bool:
    """Whether to draw a live progress line: not quiet, ``stream`` a terminal (its
    ``isatty()``), and the environment variable CI unset or empty."""
    if quiet or os.environ.get("CI"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressLine:
    """One status line rewritten in place with a carriage return, at most once every
    ``interval`` seconds (0.1 by default) unless an update is forced; nothing is written
    when ``enabled`` is False."""

    def __init__(self, stream=None, enabled: bool = True, interval: float = 0.1):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.interval = interval
        self._last = -math.inf
        self._shown = False

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text``, unless the last update shown was less than ``interval`` seconds
        ago and ``force`` is False (``force=True`` shows it in any case, e.g. the last step)."""
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.interval):
            return
        self._last = now
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line, e.g. before printing a permanent message."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
