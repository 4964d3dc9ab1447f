"""beam_jobs.dask_runner on a real dask.distributed cluster (a scheduler and two worker
processes on loopback): one test per Beam primitive the engine needs, then the engine itself,
byte-identical to the DirectRunner. docs/dask-runner-bugs.py shows the stock runner failing the
same checks."""
import contextlib
import glob
import hashlib
import io
import json
import os
import pathlib
import uuid

import pytest

distributed = pytest.importorskip("distributed")

import apache_beam as beam  # noqa: E402
from apache_beam.metrics import Metrics  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.transforms.window import GlobalWindow  # noqa: E402
from apache_beam.utils.windowed_value import WindowedValue  # noqa: E402

from beam_jobs import config as engine_config  # noqa: E402
from beam_jobs import dask_runner, preprocess  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the module: starting one costs seconds."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=None) as local:
        yield local


def run_on_dask(cluster, build, *flags):
    """Builds a pipeline with build(p), runs it on the cluster; returns the finished result."""
    options = PipelineOptions([f"--dask_client_address={cluster.scheduler_address}", *flags])
    pipeline = beam.Pipeline(runner=dask_runner.DaskRunner(), options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


class Collect(beam.DoFn):
    """A file sink: each bundle writes its elements, as one JSON file, into a folder."""

    def __init__(self, folder):
        self.folder = str(folder)

    def start_bundle(self):
        self.elements = []

    def process(self, element):
        self.elements.append(element)

    def finish_bundle(self):
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"{uuid.uuid4().hex}.json"), "w") as f:
            json.dump(self.elements, f)


def collected(folder) -> list:
    """Every element the Collect bundles wrote into folder, sorted."""
    return sorted(e for path in glob.glob(os.path.join(folder, "*.json"))
                  for e in json.loads(pathlib.Path(path).read_text()))


def bundles(folder) -> list:
    return [json.loads(pathlib.Path(p).read_text()) for p in glob.glob(os.path.join(folder, "*.json"))]


def split_parity(x):
    if x % 2:
        yield beam.pvalue.TaggedOutput("odd", x)
    else:
        yield x


def test_tagged_outputs_each_get_their_own_bag(cluster, tmp_path):
    def build(p):
        parts = p | beam.Create(range(10)) | beam.FlatMap(split_parity).with_outputs(
            "odd", main="even")
        _ = parts.even | "Even" >> beam.ParDo(Collect(tmp_path / "even"))
        _ = parts.odd | "Odd" >> beam.ParDo(Collect(tmp_path / "odd"))

    run_on_dask(cluster, build)
    assert collected(tmp_path / "even") == [0, 2, 4, 6, 8]
    assert collected(tmp_path / "odd") == [1, 3, 5, 7, 9]


def test_every_leaf_branch_runs(cluster, tmp_path):
    def build(p):
        numbers = p | beam.Create(range(5))
        for name in ("a", "b", "c"):
            _ = numbers | f"Collect{name}" >> beam.ParDo(Collect(tmp_path / name))

    run_on_dask(cluster, build)
    assert [collected(tmp_path / n) for n in "abc"] == [list(range(5))] * 3


class Touch(beam.DoFn):
    """Leaves one file per element processed: how often the upstream of a side input ran."""

    def __init__(self, folder):
        self.folder = str(folder)

    def process(self, element):
        os.makedirs(self.folder, exist_ok=True)
        pathlib.Path(self.folder, uuid.uuid4().hex).touch()
        yield element


def test_side_input_is_computed_once_for_all_readers(cluster, tmp_path):
    def build(p):
        side = p | "Side" >> beam.Create(range(20)) | "Touch" >> beam.ParDo(Touch(tmp_path / "ran"))
        main = p | "Main" >> beam.Create(range(300))  # 3 bundles of 128 elements at most
        first = main | "First" >> beam.Map(lambda x, s: x + sum(s), beam.pvalue.AsList(side))
        second = first | "Second" >> beam.Map(lambda x, s: x - sum(1 for _ in s),
                                             beam.pvalue.AsIter(side))
        _ = second | beam.ParDo(Collect(tmp_path / "out"))

    run_on_dask(cluster, build)
    assert len(os.listdir(tmp_path / "ran")) == 20  # not 20 per bundle and per read
    assert collected(tmp_path / "out") == sorted(x + 190 - 20 for x in range(300))


def test_group_by_key_across_partitions(cluster, tmp_path):
    def build(p):
        _ = (p | beam.Create([(f"k{i % 7}", i) for i in range(300)])
             | beam.GroupByKey()
             | beam.MapTuple(lambda k, vs: [k, sorted(vs)])
             | beam.ParDo(Collect(tmp_path)))

    run_on_dask(cluster, build)
    assert collected(tmp_path) == [[f"k{k}", list(range(k, 300, 7))] for k in range(7)]


def test_reshuffle_spreads_one_bundle_over_many(cluster, tmp_path):
    def build(p):
        _ = (p | beam.Create([None])
             | beam.FlatMap(lambda _: range(100))  # one bundle, as the engine's records file
             | beam.Reshuffle()
             | beam.ParDo(Collect(tmp_path)))

    run_on_dask(cluster, build)
    sizes = sorted(len(b) for b in bundles(tmp_path))
    assert collected(tmp_path) == list(range(100))
    # 2 worker threads: max(8, 4 x 2) partitions, dealt round-robin
    assert len(sizes) == 8 and sizes[-1] - sizes[0] <= 1, sizes


class CountAtFinish(beam.DoFn):
    def start_bundle(self):
        self.n = 0

    def process(self, element):
        self.n += 1

    def finish_bundle(self):
        yield WindowedValue(self.n, 0, [GlobalWindow()])


def test_finish_bundle_outputs_reach_the_next_step(cluster, tmp_path):
    def build(p):
        _ = p | beam.Create(range(300)) | beam.ParDo(CountAtFinish()) | beam.ParDo(
            Collect(tmp_path))

    run_on_dask(cluster, build)
    assert collected(tmp_path) == [44, 128, 128]  # one count per Create bundle of 128


class Count(beam.DoFn):
    def process(self, x):
        Metrics.counter("test", "elements").inc()
        Metrics.distribution("test", "values").update(x)
        if x % 3 == 0:
            Metrics.counter("test", "threes").inc()
        yield x


def test_metrics_match_the_direct_runner(cluster):
    def build(p):
        _ = p | beam.Create(range(300)) | beam.ParDo(Count())

    def summary(result):
        q = result.metrics().query()
        return (sorted((c.key.step, c.key.metric.name, c.committed) for c in q["counters"]),
                sorted((d.key.metric.name, d.committed.sum, d.committed.count, d.committed.min,
                        d.committed.max) for d in q["distributions"]))

    direct = beam.Pipeline(runner=preprocess.make_runner(PipelineOptions([])))
    build(direct)
    expected = direct.run()
    expected.wait_until_finish()
    got = summary(run_on_dask(cluster, build))
    assert got == summary(expected)
    assert got[0] == [("ParDo(Count)", "elements", 300), ("ParDo(Count)", "threes", 100)]


def rename_all(_, written, folder):
    """The engine's Finalize pattern: files written by workers, moved into place from a side
    input listing them, then an index written last."""
    for path in written:
        os.rename(path, os.path.join(folder, os.path.basename(path)))
    pathlib.Path(folder, "index.json").write_text(json.dumps(sorted(map(os.path.basename, written))))


def write_one(x, folder):
    path = os.path.join(folder, ".incomplete", f"{x:03d}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pathlib.Path(path).write_text(str(x))
    return path


def test_file_sinks(cluster, tmp_path):
    """The engine's own sink (per-shard files, then a finalize step with them as a side input)
    and Beam's WriteToText: every file complete and in place, no temporary file left."""
    out = str(tmp_path / "own")

    def build(p):
        numbers = p | beam.Create(range(30))
        written = numbers | "Write" >> beam.Map(write_one, out)
        _ = (p | "Trigger" >> beam.Create([None])
             | "Finalize" >> beam.Map(rename_all, beam.pvalue.AsList(written), out))
        _ = (numbers | beam.Map(str)
             | beam.io.WriteToText(str(tmp_path / "text" / "part"), file_name_suffix=".txt"))

    run_on_dask(cluster, build)
    assert json.loads(pathlib.Path(out, "index.json").read_text()) == [
        f"{x:03d}.txt" for x in range(30)]
    assert sorted(os.listdir(pathlib.Path(out, ".incomplete"))) == []
    texts = sorted(glob.glob(str(tmp_path / "text" / "*")))
    assert texts and all(t.endswith(".txt") for t in texts), texts  # no temp folder left
    assert sorted(int(line) for t in texts for line in pathlib.Path(t).read_text().split()) == \
        list(range(30))


def test_refuses_other_releases(monkeypatch):
    monkeypatch.setitem(dask_runner.SUPPORTED, "dask", "1999.")
    with pytest.raises(RuntimeError, match=r"found \{'dask': '2026"):
        dask_runner.check_versions()


def digests(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def engine(argv) -> tuple[dict, list]:
    """preprocess.run's manifest and the counter lines it prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        manifest = preprocess.run(argv)
    return manifest, sorted(line for line in printed.getvalue().splitlines()
                            if "beam counter" in line)


def test_engine_output_is_byte_identical_to_direct_runner(cluster, sample_dir, tmp_path):
    flags = [f"--input={sample_dir}", "--image_size=32"]
    direct, direct_counters = engine(flags + [f"--output={tmp_path / 'direct'}",
                                              "--runner=DirectRunner"])
    dask, dask_counters = engine(flags + [f"--output={tmp_path / 'dask'}",
                                          "--runner=beam_jobs.dask_runner.DaskRunner",
                                          f"--dask_client_address={cluster.scheduler_address}"])
    files = digests(tmp_path / "direct")
    assert {"manifest.json", "rejects.jsonl"} <= set(files)
    assert any(name.endswith(".tfrecord") or "tfrecord" in name for name in files), files
    assert digests(tmp_path / "dask") == files
    assert dask == direct
    assert dask_counters == direct_counters
    assert "  beam counter images_decoded: 356" in dask_counters


def test_the_engine_takes_the_runner_and_beams_dask_options(tmp_path):
    beam_args = ["--runner=beam_jobs.dask_runner.DaskRunner",
                 "--dask_client_address=tcp://127.0.0.1:8786", "--dask_npartitions=16"]
    config, passed = engine_config.parse_config([f"--output={tmp_path}", *beam_args])
    assert passed == beam_args


def test_a_runner_path_that_does_not_import_is_one_line(tmp_path, capsys, sample_dir):
    assert preprocess.main([f"--input={sample_dir}", f"--output={tmp_path / 'out'}",
                            "--runner=no_such_module.Runner"]) == 2
    assert capsys.readouterr().err.strip() == (
        "preprocess: error: --runner=no_such_module.Runner: No module named 'no_such_module'")
    assert not (tmp_path / "out").exists()
