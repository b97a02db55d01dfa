"""What the training loop reports while it runs (metrics.jsonl, a rich progress bar, loss.png), and Ctrl-C.

A callback is any object with some of these methods (each optional, duck-typed):

    on_train_start(info)   info: {"total_steps", "step" (where a resumed run starts), "run_dir"}
    on_step(record)        after every optimizer step; `record` is the metrics.jsonl train line
    on_eval(record)        after every validation; the metrics.jsonl val line
    on_train_end(summary)  after summary.json is written
    on_close()             always, last, even when training raised

An exception raised by a callback stops training (no checkpoint is written for the step it
interrupts), which is how tests simulate a crash.

metrics.jsonl holds one JSON object per line: per optimizer step `{"type": "train", "step",
"epoch", "loss", "lr", "grad_norm", "tokens", "supervised_tokens", "tokens_per_s", "elapsed_s"}`
(tokens and supervised tokens of that step; epoch fractional), per validation `{"type": "val",
"step", "val_loss", "best"}`; the loss before any training is the val line with step 0.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from domaintune.files import write_text_atomic
from domaintune.methods.artifact import METRICS_FILE

log = logging.getLogger(__name__)

TRAIN_FIELDS = ("type", "step", "epoch", "loss", "lr", "grad_norm", "tokens", "supervised_tokens",
                "tokens_per_s", "elapsed_s")
VAL_FIELDS = ("type", "step", "val_loss", "best")


def notify(callbacks: Iterable[Any], event: str, *args: Any) -> None:
    """Call `event(*args)` on every callback that has it, in order."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*args)


class MetricsLog:
    """Appends train and val lines to `run_dir/metrics.jsonl`, flushed per line.

    On a resumed run, lines past the step the run resumes from are dropped first, so the file
    never holds a step twice.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        kept = [r for r in read_metrics(self.path) if r["step"] <= info["step"]] if info["step"] else []
        # The kept lines are written whole into place first (a crash here leaves the old file, not
        # a truncated one); then the file is opened for appending.
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", encoding="utf-8")

    def on_step(self, record: dict[str, Any]) -> None:
        self._write(record)

    def on_eval(self, record: dict[str, Any]) -> None:
        self._write(record)

    def on_close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file ([] when there is none); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a crash mid-write leaves at most one partial line
    return records


class ProgressBar:
    """A rich progress bar over optimizer steps with loss, LR, tokens/s and ETA.

    Args:
        enabled: show it at all; it is also off when stderr is not a terminal (logs, CI).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None

    def on_train_start(self, info: dict[str, Any]) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        if not (self.enabled and console.is_terminal):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[speed]} tok/s"),
            TimeRemainingColumn(), console=console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=info["total_steps"], completed=info["step"],
                                             loss="-", lr="-", speed="-")

    def on_step(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], total=record.get("total_steps"),
                                  loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                  speed=f"{record['tokens_per_s']:,.0f}")

    def on_close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class GracefulStop:
    """Ctrl-C or SIGTERM while training (Kubernetes, SLURM and torchrun stop jobs with SIGTERM): the
    first sets `requested` (the loop checkpoints and stops after the current micro-batch), a second
    raises KeyboardInterrupt at once. Installed only in the main thread, the only one Python delivers
    signals to; the previous handlers are put back on close.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def on_train_start(self, info: dict[str, Any]) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        log.warning("%s: saving a checkpoint after this micro-batch (Ctrl-C again to stop now)", what)

    def on_close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


def plot_losses(metrics_path: Path, out_png: Path) -> Path | None:
    """Draw train and val loss over steps, with the LR on a second axis, into a PNG.

    Args:
        metrics_path: a metrics.jsonl file.
        out_png: where to write the figure.

    Returns:
        `out_png`, or None when there is nothing to plot.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    records = read_metrics(metrics_path)
    train = [r for r in records if r["type"] == "train"]
    val = [r for r in records if r["type"] == "val"]
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", color="tab:blue")
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    lr_axis = ax.twinx()
    lr_axis.plot([r["step"] for r in train], [r["lr"] for r in train], "--", color="tab:gray", label="learning rate")
    lr_axis.set_ylabel("learning rate")
    handles = ax.get_legend_handles_labels()[0] + lr_axis.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right")
    fig.tight_layout()
    fig.savefig(out_png)
    return Path(out_png)
