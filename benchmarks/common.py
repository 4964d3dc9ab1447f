"""Timing and reporting for the benchmarks: one loop that times batches, one table writer.

Kept apart from what is measured so the arithmetic (rates, ratios, shares) is a pure function
a test can check, and every benchmark reports in the same CSV / Markdown / PNG shape.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Timing:
    """One timed run of `batches` batches that delivered `images` images in `seconds` of wall
    time and `cpu_seconds` of this process's CPU time (all threads). CPU time per image is the
    figure that other load on a shared machine disturbs least."""

    batches: int
    images: int
    seconds: float
    cpu_seconds: float = float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_seconds / self.images if self.images > 0 else float("nan")


def median_timing(timings: Sequence[Timing]) -> Timing:
    """The run with the median images/s (the lower middle one for an even count)."""
    if not timings:
        raise ValueError("no timings")
    ranked = sorted(timings, key=lambda t: t.images_per_s)
    return ranked[(len(ranked) - 1) // 2]


def batch_size_of(batch: Any) -> int:
    """Images in one (images, labels) batch, numpy or tensor alike."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(images.shape[0])


def time_batches(iterator: Iterator, steps: int, warmup: int = 0,
                 count: Callable[[Any], int] = batch_size_of,
                 clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time,
                 step_marker: Callable[[int], ContextManager] | None = None) -> Timing:
    """Pulls `warmup` batches untimed, then times `steps` batches, counting the images they hold.

    A loader that runs dry before `steps` is an error, never a silently shorter measurement:
    callers must repeat their data when the steps exceed one pass. `step_marker(n)` (n from 1),
    when given, wraps the fetch of each timed batch: trainer.core.runtime.step_marker makes
    each batch a step of TensorBoard's Profile tab.
    """
    if steps <= 0 or warmup < 0:
        raise ValueError(f"need steps > 0 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for done in range(warmup):
        if next(iterator, None) is None:
            raise RuntimeError(f"loader ran dry during warm-up after {done} of {warmup} batches")
    images = 0
    cpu_start, start = cpu_clock(), clock()
    marker = step_marker or (lambda step: contextlib.nullcontext())
    for done in range(steps):
        with marker(done + 1):
            batch = next(iterator, None)
        if batch is None:
            raise RuntimeError(f"loader ran dry after {done} of {steps} timed batches; "
                               "repeat the data")
        images += count(batch)
    seconds = clock() - start
    return Timing(batches=steps, images=images, seconds=seconds,
                  cpu_seconds=cpu_clock() - cpu_start)


def profile_batches(iterator: Iterator, steps: int, logdir: str, warmup: int = 0,
                    count: Callable[[Any], int] = batch_size_of) -> Timing:
    """time_batches under the TensorFlow profiler, one step marker per batch: a profile run
    in `logdir` (logdir/plugins/profile/<timestamp>/) that TensorBoard's Profile tab lists
    under the logdir's name. A step is: fetch the batch, hand its images to TensorFlow (one
    tf.identity; a numpy batch becomes a tensor, as fit would make it). The warm-up batches
    stay outside the trace."""
    import tensorflow as tf

    from trainer.core import runtime

    for done in range(warmup):
        if next(iterator, None) is None:
            raise RuntimeError(f"loader ran dry during warm-up after {done} of {warmup} batches")

    def handed_to_tensorflow():  # as a trainer would; XProf counts no step without a TF op
        for batch in iterator:
            if isinstance(batch, (tuple, list)):
                yield (tf.identity(batch[0]), *batch[1:])
            else:
                yield tf.identity(batch)

    tf.profiler.experimental.start(logdir)
    try:
        return time_batches(handed_to_tensorflow(), steps, count=count,
                            step_marker=lambda step: runtime.step_marker("train", step))
    finally:
        tf.profiler.experimental.stop()


def ratio(value: float, reference: float) -> float:
    """value / reference, NaN when the reference is missing, zero or not finite."""
    if reference is None or not math.isfinite(reference) or reference <= 0:
        return float("nan")
    return value / reference


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def grouped_bar_chart(path: str, groups: Sequence[str], series: dict[str, Sequence[float]],
                      ylabel: str, title: str, log_scale: bool = True) -> None:
    """One cluster of bars per group (e.g. batch size), one bar per series (e.g. loader)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[_cell(float(v)) for v in values], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json_and_table(workdir: str, stem: str, payload: dict[str, Any], table: str) -> None:
    """WORKDIR/STEM.json (the figures) and WORKDIR/STEM.md (the table), and the table printed."""
    from trainer.core import run_folder

    run_folder.write_json(os.path.join(workdir, f"{stem}.json"), payload)
    with open(os.path.join(workdir, f"{stem}.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)


def read_table(path: str, columns: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a download's metadata CSV; ValueError naming the columns it lacks."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    wanted = set(columns)
    if not rows or not wanted <= set(rows[0]):
        raise ValueError(f"{path} needs the columns {sorted(wanted)}; it has "
                         f"{list(rows[0]) if rows else 'no rows'}")
    return rows


def engine_note(result: Mapping[str, Any]) -> str:
    """"engine `FLAGS` (training data also: `FLAGS`), " for a table's first line; "" when the
    engine ran with no flags."""
    every, training = result.get("engine_flags", []), result.get("train_engine_flags", [])
    if not every and not training:
        return ""
    return (f"engine `{' '.join(every) or 'defaults'}`"
            + (f" (training data also: `{' '.join(training)}`)" if training else "") + ", ")
