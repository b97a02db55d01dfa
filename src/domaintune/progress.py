"""Progress bars with ETA for the long steps of every command (rich, on stderr).

One helper, so prepare, eval and export show the same bar: a label, the bar, done/total, elapsed
time and the estimated time left. Off (or with nothing to count) it hands back a no-op.

    with bar("generate", total=len(prompts)) as advance:
        for batch in batches:
            ...
            advance(len(batch))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], None]


def _nothing(_n: int) -> None:
    return None


@contextmanager
def bar(label: str, total: int | None, enabled: bool = True) -> Iterator[Advance]:
    """A transient rich bar over `total` items; yields `advance(n)`.

    Args:
        label: shown before the bar ("generate", "perplexity").
        total: the number of items; None or 0 shows no bar.
        enabled: False yields a no-op (library callers, tests).
    """
    if not enabled or not total:
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), transient=True, console=Console(stderr=True))
    task = progress.add_task(label, total=total)
    with progress:
        yield lambda n: progress.advance(task, n)
