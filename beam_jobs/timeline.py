"""One run's timeline: wall-clock marks from process start to the manifest (`--profile_phases`).

The launcher marks what it does itself (imports done, layout read, output staged, pipeline
started and done). What happens inside the pipeline comes from the workers as Beam
distribution metrics of epoch milliseconds, queried after the run: their min and max are the
first and last image decoded, the last shard written and the manifest written. Nothing of this
goes into the manifest or any output file, so two runs still write byte-identical datasets.
The distributions work on every runner that reports metrics (FnApiRunner, Dataflow).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

NAMESPACE = "isicflow.timeline"
DECODE_START_MS = "decode_start_ms"     # each image, when ProcessImage starts on it
DECODE_END_MS = "decode_end_ms"         # each image, when its encodings are spooled
IMAGE_CPU_US = "image_cpu_us"           # each image, CPU time of its thread for the above
SHARD_WRITTEN_MS = "shard_written_ms"   # each shard, when WriteShard closed it
MANIFEST_WRITTEN_MS = "manifest_written_ms"  # Finalize, when manifest.json was written
WORKER_METRICS = (DECODE_START_MS, DECODE_END_MS, IMAGE_CPU_US, SHARD_WRITTEN_MS,
                  MANIFEST_WRITTEN_MS)

# The phases in the order they happen, as (key, label). Worker phases come from metrics.
PHASES = (("process_start", "process start"),
          ("imports_done", "imports done"),
          ("run_started", "run() called, flags parsed"),
          ("layout_read", "layout read"),
          ("output_staged", "output prepared, records staged"),
          ("pipeline_started", "pipeline built, run started"),
          ("first_decode_started", "first image decode started"),
          ("first_image_decoded", "first image decoded"),
          ("last_image_decoded", "last image decoded"),
          ("shards_written", "shards written"),
          ("manifest_written", "manifest written"),
          ("pipeline_done", "pipeline done"),
          ("run_done", "run() returned"),
          ("process_exit", "process exit"))
_LABELS = dict(PHASES)


def now_ms() -> int:
    return int(time.time() * 1000)


def process_start_time(pid: str = "self") -> Optional[float]:
    """Epoch seconds at which a process started (Linux /proc, ~10 ms), else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ImageClock:
    """Per-image wall and CPU times, recorded by ProcessImage (one per DoFn instance)."""

    def __init__(self):
        from apache_beam.metrics import Metrics

        self._start = Metrics.distribution(NAMESPACE, DECODE_START_MS)
        self._end = Metrics.distribution(NAMESPACE, DECODE_END_MS)
        self._cpu = Metrics.distribution(NAMESPACE, IMAGE_CPU_US)

    def begin(self) -> tuple[int, float]:
        return now_ms(), time.thread_time()

    def end(self, token: tuple[int, float]) -> None:
        started_ms, started_cpu = token
        self._start.update(started_ms)
        self._end.update(now_ms())
        self._cpu.update(int(1e6 * (time.thread_time() - started_cpu)))


def record_now(name: str) -> None:
    """One epoch-ms value into the distribution `name` (shard written, manifest written)."""
    from apache_beam.metrics import Metrics

    Metrics.distribution(NAMESPACE, name).update(now_ms())


class Timeline:
    """Marks (epoch seconds) of one run; `format` prints them relative to process start."""

    def __init__(self, process_start: Optional[float] = None):
        self.marks: dict[str, float] = {}
        self.images = 0
        self.image_cpu_ms = float("nan")
        start = process_start if process_start is not None else process_start_time()
        if start is not None:
            self.marks["process_start"] = start

    def mark(self, key: str, when: Optional[float] = None) -> None:
        if key not in _LABELS:
            raise KeyError(f"unknown phase {key!r}")
        self.marks[key] = time.time() if when is None else when

    def add_distributions(self, distributions: dict) -> None:
        """{metric name: (min, max, sum, count)} of the worker metrics (see from_beam_result)."""
        def at(name, which):
            value = distributions.get(name)
            return None if not value or not value[3] else value[which] / 1000.0

        for key, name, which in (("first_decode_started", DECODE_START_MS, 0),
                                 ("first_image_decoded", DECODE_END_MS, 0),
                                 ("last_image_decoded", DECODE_END_MS, 1),
                                 ("shards_written", SHARD_WRITTEN_MS, 1),
                                 ("manifest_written", MANIFEST_WRITTEN_MS, 1)):
            when = at(name, which)
            if when is not None:
                self.marks[key] = when
        cpu = distributions.get(IMAGE_CPU_US)
        if cpu and cpu[3]:
            self.images, self.image_cpu_ms = cpu[3], cpu[2] / cpu[3] / 1000.0

    def add_beam_result(self, result) -> None:
        """Reads the worker distributions from a finished Beam PipelineResult."""
        from apache_beam.metrics.metric import MetricsFilter

        found = {}
        query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
        for d in query["distributions"]:
            value = d.committed if d.committed is not None else d.attempted
            if value is not None and value.count:
                found[d.key.metric.name] = (value.min, value.max, value.sum, value.count)
        self.add_distributions(found)

    def seconds(self, key: str) -> Optional[float]:
        """Seconds from process start to a mark (None when either is missing)."""
        if key not in self.marks or "process_start" not in self.marks:
            return None
        return self.marks[key] - self.marks["process_start"]

    def summary(self) -> dict:
        """The fixed costs the goals are stated in, in seconds (None when not measured)."""
        def span(a, b):
            return (self.marks[b] - self.marks[a]) if a in self.marks and b in self.marks else None

        end = "process_exit" if "process_exit" in self.marks else (
            "run_done" if "run_done" in self.marks else "pipeline_done")
        return {"before_first_decode_s": span("process_start", "first_decode_started"),
                "decoding_s": span("first_decode_started", "last_image_decoded"),
                "after_last_decode_s": span("last_image_decoded", end),
                "after_last_decode_until": end,
                "images": self.images, "image_cpu_ms": self.image_cpu_ms}

    def to_json(self) -> dict:
        origin = self.marks.get("process_start")
        return {"process_start_epoch": origin,
                "marks_s": {k: round(v - origin, 4) if origin is not None else v
                            for k, v in self.ordered()},
                "summary": self.summary()}

    def ordered(self) -> list[tuple[str, float]]:
        order = {k: i for i, (k, _) in enumerate(PHASES)}
        return sorted(self.marks.items(), key=lambda kv: order[kv[0]])

    def format(self) -> str:
        origin = self.marks.get("process_start")
        lines = [f"{'phase':<34} {'t (s)':>8} {'+ (s)':>8}"]
        previous = None
        for key, when in self.ordered():
            t = when - origin if origin is not None else float("nan")
            step = "" if previous is None else f"{when - previous:>+8.3f}"
            lines.append(f"{_LABELS[key]:<34} {t:>8.3f} {step}")
            previous = when
        s = self.summary()

        def sec(v):
            return "n/a" if v is None else f"{v:.2f} s"

        lines.append(f"fixed before the first decode {sec(s['before_first_decode_s'])}; decoding "
                     f"{sec(s['decoding_s'])} ({s['images']} images, {s['image_cpu_ms']:.1f} ms "
                     f"CPU each); after the last decode {sec(s['after_last_decode_s'])} "
                     f"(until {_LABELS[s['after_last_decode_until']]})")
        return "\n".join(lines)


def parse_printed(text: str) -> Optional[dict]:
    """The timeline JSON line `--profile_phases` prints (`timeline_json {...}`), if any."""
    found = None
    for line in text.splitlines():
        if line.startswith(JSON_PREFIX):
            found = json.loads(line[len(JSON_PREFIX):])
    return found


JSON_PREFIX = "timeline_json "


# ---- progress: images done of the total, rate and ETA, one line every few seconds ----

PROGRESS_WRITE_S = 1.0         # how often a DoFn rewrites its file
PROGRESS_EVERY_S = 5.0         # how often the launcher prints a line


def format_duration(seconds: float) -> str:
    """0:07, 12:34, 3:02:01."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def format_progress(done: int, total: int, elapsed: float) -> str:
    """One progress line: images done of the total, rate since the run started, and ETA."""
    share = f" ({100 * done / total:.1f}%)" if total else ""
    line = f"progress: {done:,} of {total:,} images{share} in {format_duration(elapsed)}"
    if done <= 0 or elapsed <= 0:
        return line + ", ETA unknown"
    rate = done / elapsed
    eta = format_duration(max(total - done, 0) / rate)
    return line + f", {rate:.1f} images/s, ETA {eta}"


class ProgressCounter:
    """Images finished by one DoFn instance, in a file of its own under `directory` (a local
    folder the launcher made; rewritten at most every PROGRESS_WRITE_S, and on flush), so the
    launcher can sum them whether its workers are threads or processes on this machine.
    `directory` None (a runner whose workers are elsewhere) counts nothing."""

    def __init__(self, directory: Optional[str]):
        self.path = os.path.join(directory, f"{os.getpid()}-{id(self):x}") if directory else None
        self.count, self._written_at = 0, 0.0

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.path and time.monotonic() - self._written_at >= PROGRESS_WRITE_S:
            self.flush()

    def flush(self) -> None:
        if not self.path:
            return
        self._written_at = time.monotonic()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            temp = f"{self.path}.tmp"
            with open(temp, "w") as f:
                f.write(str(self.count))
            os.replace(temp, self.path)  # the reader never sees half a number
        except OSError:
            pass  # progress is a courtesy: never fail a bundle for it (e.g. after Finalize)


def read_progress(directory: str) -> int:
    """The sum of the ProgressCounter files in `directory` (0 when there is none yet)."""
    total = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                total += int(f.read() or 0)
        except (OSError, ValueError):
            continue
    return total


class ProgressReporter:
    """A thread in the launcher that logs format_progress every `every` seconds while the count
    changes, and once more at stop() if the last line did not show the final count."""

    def __init__(self, directory: str, total: int, log, every: float = PROGRESS_EVERY_S):
        import threading

        self.directory, self.total, self.log, self.every = directory, total, log, every
        self._started = time.monotonic()
        self._shown = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="isicflow-progress", daemon=True)

    def start(self) -> "ProgressReporter":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _show(self) -> None:
        done = read_progress(self.directory)
        if done != self._shown:
            self._shown = done
            self.log(format_progress(done, self.total, time.monotonic() - self._started))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._show()

    def stop(self) -> None:
        """Ends the thread, then shows the final count if the last line did not."""
        self._stop.set()
        self._thread.join()
        self._show()
