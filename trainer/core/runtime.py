"""Runtime plumbing both trainers share: precision policy, device strategy, step timing, NaN stop.

Nothing here knows about models or data; each function is small enough to test on a CPU.
"""
from __future__ import annotations

import json
import math
import re
import time
from typing import Any, Iterator

MIXED_PRECISION_MODES = ("auto", "off", "float32", "mixed_float16", "mixed_bfloat16")


def _gpu_compute_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu) or {}
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return capabilities


def resolve_precision_policy(mode: str, gpu_capabilities: list[tuple[int, int]]) -> str:
    """Pure rule behind configure_mixed_precision: which Keras policy name a mode means here.

    'auto' picks mixed_float16 only where it pays: every visible GPU has tensor cores
    (compute capability >= 7.0). On a CPU float16 is slower, so auto means float32 there.
    """
    if mode not in MIXED_PRECISION_MODES:
        raise ValueError(f"mixed precision mode {mode!r} not in {MIXED_PRECISION_MODES}")
    if mode == "auto":
        fast = bool(gpu_capabilities) and all(c >= (7, 0) for c in gpu_capabilities)
        return "mixed_float16" if fast else "float32"
    return "float32" if mode in ("off", "float32") else mode


def configure_mixed_precision(mode: str) -> str:
    """Sets the Keras global dtype policy for `mode`; returns the policy name applied.

    Call before building the model. Under mixed_float16, Keras' compile() wraps the optimizer
    in a LossScaleOptimizer, so loss scaling needs nothing more from the caller.
    """
    import keras

    policy = resolve_precision_policy(mode, _gpu_compute_capabilities() if mode == "auto" else [])
    keras.mixed_precision.set_global_policy(policy)
    return policy


def cluster_config(workers: str, worker_index: int, tf_config: str | None) -> dict | None:
    """Pure rule behind --workers/--worker_index and TF_CONFIG: the cluster this process joins,
    as a TF_CONFIG dict ({"cluster": {"worker": [...]}, "task": {...}}), or None for one process.

    The cluster is given once: flags or TF_CONFIG, never both (two sources could disagree on
    who is the chief). A one-worker cluster is one process (None). ValueError names the values.
    """
    workers, tf_config = (workers or "").strip(), (tf_config or "").strip()
    if worker_index and not workers:
        raise ValueError(f"--worker_index={worker_index} needs --workers (with TF_CONFIG, "
                         "its task index says which worker this is)")
    if workers and tf_config:
        raise ValueError(f"--workers={workers} and TF_CONFIG={tf_config} both give the cluster; "
                         "give it once (unset TF_CONFIG, or drop --workers/--worker_index)")
    if workers:
        hosts = [h.strip() for h in workers.split(",")]
        bad = [h for h in hosts if not re.fullmatch(r"[^:\s]+:\d{1,5}", h)]
        if bad:
            raise ValueError(f"--workers={workers}: each worker must be host:port, got {bad}")
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"--workers={workers}: a host:port is listed twice")
        if not 0 <= worker_index < len(hosts):
            raise ValueError(f"--worker_index={worker_index}: must be in 0..{len(hosts) - 1} "
                             f"for the {len(hosts)} --workers")
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": worker_index}}
    elif tf_config:
        try:
            config = json.loads(tf_config)
            task, cluster = config["task"], config["cluster"]
            if task["type"] not in cluster or not 0 <= int(task["index"]) < len(
                    cluster[task["type"]]):
                raise KeyError(task["type"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG={tf_config}: not a cluster this process is part of "
                             f"({type(e).__name__}: {e}); it needs \"cluster\" and a \"task\" "
                             "(type, index) listed in it") from None
    else:
        return None
    tasks = sum(len(v) for k, v in config["cluster"].items() if k in ("chief", "worker"))
    return config if tasks > 1 else None


def make_strategy(cluster: dict | None = None):
    """The device strategy of a run. cluster (cluster_config's dict): MultiWorkerMirroredStrategy
    over that cluster, each worker using its own GPUs (it must be made before TensorFlow runs
    anything in the process). No cluster: MirroredStrategy over all GPUs when there are
    several, else over several logical CPUs (tests configure two), else the default strategy
    (one device, no overhead)."""
    import tensorflow as tf

    if cluster is not None:
        task = cluster["task"]
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster["cluster"]), task_type=task["type"],
            task_id=int(task["index"]), rpc_layer="grpc")
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy(
            [d.name for d in cpus],
            cross_device_ops=tf.distribute.ReductionToOneDevice(reduce_to_device=cpus[0].name))
    return tf.distribute.get_strategy()


def worker_position(cluster: dict | None) -> tuple[int, int]:
    """(this process's worker index, number of workers) of a cluster_config dict; (0, 1) for
    None. The index is the one tf.data's auto-sharding gives the worker (a "chief" task, if the
    cluster has one, first)."""
    # tensorflow.python: multi_worker_util is where the strategy itself takes these numbers
    from tensorflow.python.distribute import multi_worker_util

    if cluster is None:
        return 0, 1
    spec, task = cluster["cluster"], cluster["task"]
    return (multi_worker_util.id_in_cluster(spec, task["type"], int(task["index"])),
            multi_worker_util.worker_count(spec, task["type"]))


def parse_profile_steps(text: str) -> tuple[int, int] | None:
    """'START,END' (1-based, inclusive, START <= END) -> (START, END); '' -> None."""
    if text is None or not str(text).strip():
        return None
    parts = str(text).split(",")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"profile steps must be 'START,END' integers, got {text!r}") from None
    if start < 1 or end < start:
        raise ValueError(f"profile steps need 1 <= START <= END, got {text!r}")
    return start, end


def step_marker(name: str, step: int):
    """A profiler step marker around one training step: TraceMe `name` with step_num=step, as
    a root event (_r=1). XProf's Overview, Input Pipeline Analyzer and trace viewer count a
    step only from such markers; Keras 3's TensorFlow trainer emits none of them. Costs next
    to nothing while no profiler runs, so wrap every step and let the profiler pick its range.
    Name "train" for training steps (the name XProf's step detection and tf.keras used)."""
    import tensorflow as tf

    return tf.profiler.experimental.Trace(name, step_num=int(step), _r=1)


def raise_if_not_finite(value: Any, what: str, step: int) -> None:
    """Stops a run on NaN/inf, saying what diverged and where (a NaN never heals)."""
    number = float(value)
    if not math.isfinite(number):
        raise FloatingPointError(
            f"{what} is {number} at step {step}; stopping. Lower the learning rate, check the "
            "input range, or try --mixed_precision=off")


class StepTimeMeter:
    """Per-step wall time and the part of it spent waiting for the next input batch.

    Usage in a loop:  meter.begin_step(); batch = meter.next(iterator); ...train...;
    meter.end_step(batch_size). The first `warmup_steps` steps (tracing, graph building)
    are left out of the summary when there are more steps than that.
    """

    def __init__(self, warmup_steps: int = 1, clock=time.perf_counter):
        self.warmup_steps = warmup_steps
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self._steps: list[tuple[float, float, int]] = []  # (step seconds, wait seconds, images)
        self._begin: float | None = None
        self._wait = 0.0

    def begin_step(self) -> None:
        self._begin = self._clock()
        self._wait = 0.0

    def next(self, iterator: Iterator) -> Any:
        """next(iterator), timed as input wait; StopIteration passes through (no step counted)."""
        if self._begin is None:
            self.begin_step()
        start = self._clock()
        try:
            return next(iterator)
        except BaseException:
            self._begin = None
            raise
        finally:
            self._wait += self._clock() - start

    def end_step(self, images: int = 0) -> None:
        if self._begin is None:
            raise RuntimeError("end_step() without begin_step()/next()")
        self._steps.append((self._clock() - self._begin, self._wait, int(images)))
        self._begin = None

    @property
    def steps(self) -> int:
        return len(self._steps)

    def summary(self) -> dict[str, float]:
        """Mean step time, input-wait share of it, and images/s over the measured steps."""
        steps = self._steps[self.warmup_steps:] if len(self._steps) > self.warmup_steps \
            else self._steps
        total = sum(s for s, _, _ in steps)
        wait = sum(w for _, w, _ in steps)
        images = sum(n for _, _, n in steps)
        return {
            "steps": len(steps),
            "step_time_s": total / len(steps) if steps else float("nan"),
            "input_wait_share": wait / total if total > 0 else float("nan"),
            "images_per_s": images / total if total > 0 else float("nan"),
        }


class TrainingClock:
    """Wall and process-CPU seconds a run has trained, continued across resumes.

    CPU seconds (all threads of this process) measure a budget fairly on a shared machine,
    where wall time also counts other programs; on an idle 2-core CPU, cpu ~= 2 x wall.
    A run resumed from a history that never recorded them has no true totals: they stay None
    rather than restarting at zero. Clocks are injectable for tests.
    """

    def __init__(self, wall_s: float | None = 0.0, cpu_s: float | None = 0.0,
                 wall_clock=time.perf_counter, cpu_clock=time.process_time):
        self._base_wall, self._base_cpu = wall_s, cpu_s
        self._wall_clock, self._cpu_clock = wall_clock, cpu_clock
        self._wall0, self._cpu0 = wall_clock(), cpu_clock()

    @classmethod
    def resume(cls, last_entry: dict | None, **clocks) -> "TrainingClock":
        """Continues from a history entry's train_wall_s/train_cpu_s (no entry: from zero)."""
        if last_entry is None:
            return cls(**clocks)
        return cls(last_entry.get("train_wall_s"), last_entry.get("train_cpu_s"), **clocks)

    def totals(self) -> dict[str, float | None]:
        def total(base, clock, start):
            return None if base is None else round(base + clock() - start, 3)
        return {"train_wall_s": total(self._base_wall, self._wall_clock, self._wall0),
                "train_cpu_s": total(self._base_cpu, self._cpu_clock, self._cpu0)}


def budget_exhausted(started: float, now: float, minutes: float) -> bool:
    """Pure rule behind --max_train_minutes: has `minutes` of wall time passed since `started`
    (seconds on one clock)? 0 minutes means no budget."""
    if not minutes >= 0:
        raise ValueError(f"a time budget must be >= 0 minutes, got {minutes}")
    return bool(minutes) and now - started >= minutes * 60.0


class TrainingBudget:
    """A wall-time budget started at construction; the clock is injectable for tests."""

    def __init__(self, minutes: float, clock=time.perf_counter):
        budget_exhausted(0.0, 0.0, minutes)  # validates minutes
        self.minutes, self._clock = minutes, clock
        self.started = clock()

    def elapsed_s(self) -> float:
        return self._clock() - self.started

    def exhausted(self) -> bool:
        return budget_exhausted(self.started, self._clock(), self.minutes)
