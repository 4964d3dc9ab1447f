"""Defects of Apache Beam 2.77's DaskRunner (apache_beam/runners/dask/), one small pipeline each.

Needs only `pip install 'apache-beam[dask]==2.77.0'`; starts a dask.distributed LocalCluster
(a scheduler and two worker processes on 127.0.0.1) and prints, for each defect, what the
pipeline should produce and what the runner produced:

    python docs/dask-runner-bugs.py                  # Beam's stock DaskRunner
    python docs/dask-runner-bugs.py beam_jobs.dask_runner.DaskRunner   # any runner class path

Outputs are observed through files the DoFns write (the stock runner returns no data and no
metrics to the client). Found while running isicflow's data engine (a Beam batch job) on Dask.
"""
import glob
import importlib
import json
import os
import re
import sys
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.windowed_value import WindowedValue
from apache_beam.transforms.window import GlobalWindow


class Collect(beam.DoFn):
    """Each bundle writes its elements as one JSON file into `folder`."""

    def __init__(self, folder):
        self.folder = folder

    def start_bundle(self):
        self.elements = []

    def process(self, element):
        self.elements.append(element)

    def finish_bundle(self):
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, uuid.uuid4().hex + ".json"), "w") as f:
            json.dump(self.elements, f)


def collected(folder):
    return sorted(e for p in glob.glob(os.path.join(folder, "*.json")) for e in json.load(open(p)))


def bundle_sizes(folder):
    return sorted(len(json.load(open(p))) for p in glob.glob(os.path.join(folder, "*.json")))


class Touch(beam.DoFn):
    """One file per element processed: counts how often this step ran."""

    def __init__(self, folder):
        self.folder = folder

    def process(self, element):
        os.makedirs(self.folder, exist_ok=True)
        open(os.path.join(self.folder, uuid.uuid4().hex), "w").close()
        yield element


class Count(beam.DoFn):
    def process(self, element):
        Metrics.counter("repro", "elements").inc()
        yield element


class EmitAtFinish(beam.DoFn):
    def process(self, element):
        self.n = getattr(self, "n", 0) + 1

    def finish_bundle(self):
        yield WindowedValue(getattr(self, "n", 0), 0, [GlobalWindow()])


def same(got, expected):
    return got, expected, got == expected


def files_holding(folder, pattern, expected):
    """(the files under folder, expected, whether all match pattern and hold exactly 0..4)."""
    files = sorted(os.path.relpath(f, folder) for f in glob.glob(folder + "/**", recursive=True)
                   if os.path.isfile(f))
    lines = sorted(line for f in files for line in open(os.path.join(folder, f)).read().split())
    ok = bool(files) and all(re.fullmatch(pattern, f) for f in files) and lines == list("01234")
    return files, expected, ok


def split_parity(x):
    yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x


def tagged_outputs(p, d):
    parts = p | beam.Create(range(10)) | beam.FlatMap(split_parity).with_outputs("odd", main="even")
    _ = parts.odd | beam.ParDo(Collect(d))
    return lambda: same(collected(d), [1, 3, 5, 7, 9])


def several_leaves(p, d):
    numbers = p | beam.Create(range(3))
    _ = numbers | "First" >> beam.ParDo(Collect(d + "/first"))
    _ = numbers | "Second" >> beam.ParDo(Collect(d + "/second"))
    return lambda: same({"first": collected(d + "/first"), "second": collected(d + "/second")},
                        {"first": [0, 1, 2], "second": [0, 1, 2]})


def failing_assert_not_last(p, d):
    numbers = p | beam.Create([1, 2])
    assert_that(numbers, equal_to([99]))  # wrong on purpose: the run must fail
    _ = numbers | beam.ParDo(Collect(d))
    return lambda: ("the run succeeded", "the run raises BeamAssertException", False)


def side_input_once(p, d):
    side = p | "Side" >> beam.Create(range(20)) | "Upstream" >> beam.ParDo(Touch(d + "/ran"))
    main = p | "Main" >> beam.Create(range(300))  # 3 bundles
    first = main | "First" >> beam.Map(lambda x, s: x + len(s), beam.pvalue.AsList(side))
    second = first | "Second" >> beam.Map(lambda x, s: x, beam.pvalue.AsList(side))
    _ = second | beam.ParDo(Collect(d + "/out"))
    ran = lambda: len(os.listdir(d + "/ran"))  # noqa: E731
    return lambda: (f"its upstream ran {ran()} times", "its upstream ran 20 times (once per "
                    "element)", ran() == 20)


def reshuffle(p, d):
    _ = (p | beam.Create([None]) | beam.FlatMap(lambda _: range(100)) | beam.Reshuffle()
         | beam.ParDo(Collect(d)))
    return lambda: (f"bundle sizes after Reshuffle {bundle_sizes(d)}",
                    "several bundles (the elements redistributed)", len(bundle_sizes(d)) > 1)


def finish_bundle_outputs(p, d):
    _ = p | beam.Create(range(5)) | beam.ParDo(EmitAtFinish()) | beam.ParDo(Collect(d))
    return lambda: same(collected(d), [5])


def write_to_text(p, d):
    _ = p | beam.Create([str(i) for i in range(5)]) | beam.io.WriteToText(d + "/out/part")
    return lambda: files_holding(d, r"out/part-\d{5}-of-\d{5}",
                                 "out/part-NNNNN-of-NNNNN files holding 0..4, no temporary file")


def write_to_files(p, d):
    _ = (p | beam.Create([str(i) for i in range(5)])
         | fileio.WriteToFiles(path=d + "/out", sink=lambda _: fileio.TextSink()))
    return lambda: files_holding(d, r"out/output-\d{5}-of-\d{5}",
                                 "out/output-NNNNN-of-NNNNN files holding 0..4")


def metrics(p, d):
    _ = p | beam.Create(range(10)) | beam.ParDo(Count())
    return None  # checked on the result below


CHECKS = [
    ("1 tagged outputs: an output tag's PCollection holds only its own elements", tagged_outputs),
    ("2 several leaves: every leaf branch runs (not only the last one visited)", several_leaves),
    ("2b consequence: an assert_that that is not the last leaf never runs",
     failing_assert_not_last),
    ("3 side inputs: the side input's upstream runs once, not once per bundle and read",
     side_input_once),
    ("4 Reshuffle redistributes one bundle's elements", reshuffle),
    ("5 outputs of finish_bundle reach the next step", finish_bundle_outputs),
    ("6 result.metrics() returns the counters", metrics),
    ("7 WriteToText leaves finished files", write_to_text),
    ("8 fileio.WriteToFiles writes its files", write_to_files),
]


def make_runner(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


def main(runner_path):
    import distributed

    print(f"apache-beam {beam.__version__}, dask {distributed.__version__}, runner {runner_path}")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        options = PipelineOptions([f"--dask_client_address={cluster.scheduler_address}"])
        bugs = 0
        for title, build in CHECKS:
            folder = tempfile.mkdtemp(prefix="dask-repro-")
            pipeline = beam.Pipeline(runner=make_runner(runner_path), options=options)
            observe = build(pipeline, folder)
            started = time.time()
            try:
                result = pipeline.run()
                result.wait_until_finish()
                error = None
            except Exception as e:  # noqa: BLE001 - the report says what was raised
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
            if build is metrics:
                expected = "counter repro/elements = 10"
                try:
                    counters = result.metrics().query()["counters"] if error is None else []
                    got = ", ".join(f"counter {c.key.metric.namespace}/{c.key.metric.name} = "
                                    f"{c.committed}" for c in counters) or "no counter"
                except Exception as e:  # noqa: BLE001
                    got = f"{type(e).__name__}: {e}"
                ok = got == expected
            else:
                got, expected, ok = observe()
                if error:
                    got = f"the run raised {error}"
                    ok = build is failing_assert_not_last and "BeamAssertException" in error
            bugs += not ok
            print(f"\n[{'ok ' if ok else 'BUG'}] {title}  ({time.time() - started:.1f} s)")
            print(f"  expected: {expected}")
            print(f"  got:      {got}")
    print(f"\n{bugs} of {len(CHECKS)} checks fail on {runner_path}")
    return bugs


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1] if len(sys.argv) > 1
                       else "apache_beam.runners.dask.dask_runner.DaskRunner") else 0)
