"""Progress on stderr for the commands that run past a few seconds, one look for all of them. Here, at the bottom of
the layers, because the profiler (profiles), training (agents) and the CLI (scripts) all show it."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, quiet: bool = False, **options: Any) -> tqdm:
    """A tqdm bar on stderr (stdout stays the command's result: a table or pure JSON), shown unless ``quiet``, on a
    terminal or not (a log gets a line every 30 s rather than a redraw every 0.1 s), once the work has taken a second
    (a command that fails at once on bad input says one line, not a bar). ``options``: tqdm's (desc, total, unit…)."""
    return tqdm(iterable, file=sys.stderr, disable=quiet, mininterval=0.1 if sys.stderr.isatty() else 30.0,
                delay=1.0, **options)


@contextmanager
def clock_bar(desc: str, seconds: float) -> Iterator[None]:
    """A bar over ``seconds`` of wall clock, ticked by a thread, for work that counts no steps of its own but whose
    length is known (a replay's duration) or bounded (a solve's time limit: the time left is then the worst case)."""
    done = threading.Event()
    with progress_bar(desc=desc, total=seconds, bar_format="{l_bar}{bar}| {elapsed}<{remaining}") as bar:
        start = time.monotonic()

        def tick() -> None:
            while not done.wait(0.5):
                bar.update(min(seconds, time.monotonic() - start) - bar.n)

        ticker = threading.Thread(target=tick, name="clock_bar", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
