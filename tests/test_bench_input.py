"""benchmarks.bench_input on a tiny real subset: every loader runs, the report files hold the table."""
import csv
import json
import math

import numpy as np
import pytest

from benchmarks import bench_input
from benchmarks import common as bench_common

TINY = ["--max_images=24", "--max_original_side=600", "--steps=3", "--batch_sizes=8",
        "--warmup=1", "--repeats=2"]


@pytest.fixture(scope="module")
def tiny_run(sample_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("bench-input")
    return bench_input.main([f"--input={sample_dir}", f"--workdir={workdir}", *TINY]), workdir


def test_report_files_hold_one_row_per_loader_with_consistent_ratios(tiny_run):
    result, workdir = tiny_run
    for ext in ("csv", "md", "json", "png"):
        path = workdir / f"bench_input.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (workdir / "bench_input.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(workdir / "bench_input.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["loader"] for r in rows] == list(bench_input.LOADERS)
    reference = float(rows[0]["images_per_s"])
    roof = float(rows[-1]["images_per_s"])
    for row in rows:
        rate = float(row["images_per_s"])
        assert math.isfinite(rate) and rate > 0, row
        assert float(row["cpu_ms_per_image"]) > 0, row
        assert int(row["batch_size"]) == 8 and int(row["batches"]) == 3
        assert int(row["images"]) == 24, row  # 3 full batches of 8, repeated data included
        assert float(row["images_per_s"]) == pytest.approx(
            int(row["images"]) / float(row["seconds"]), rel=1e-2)
        assert float(row["ratio_to_keras_generator"]) == pytest.approx(rate / reference)
        assert float(row["share_of_roofline"]) == pytest.approx(rate / roof)
    markdown = (workdir / "bench_input.md").read_text()
    for label in bench_input.LOADERS.values():
        assert label in markdown
    assert len(result["goals"]) == 3 and all("batch 8" in g for g in result["goals"])
    assert json.loads((workdir / "bench_input.json").read_text())["images"] == 24


def test_inputs_are_originals_at_recorded_size_and_shards_of_the_same_images(tiny_run,
                                                                               sample_dir):
    from PIL import Image

    _, workdir = tiny_run
    items = bench_input.read_legacy_sample(str(sample_dir), max_images=24)
    assert {i["label"] for i in items} == {"benign", "malignant"}
    for item in items:
        path = workdir / "originals" / item["label"] / f"{item['id']}.jpg"
        with Image.open(path) as img:
            assert img.size == bench_input.original_size(item["width"], item["height"], 600)
            assert max(img.size) == min(600, max(item["width"], item["height"]))
    manifest = json.loads((workdir / "shards" / "manifest.json").read_text())
    assert manifest["datasets"]["256"]["train"]["records"] == 24


def test_second_run_reuses_the_cached_inputs(tiny_run, sample_dir):
    _, workdir = tiny_run
    original = next((workdir / "originals" / "benign").iterdir())
    shard_manifest = workdir / "shards" / "manifest.json"
    stamps = original.stat().st_mtime_ns, shard_manifest.stat().st_mtime_ns
    bench_input.main([f"--input={sample_dir}", f"--workdir={workdir}", *TINY,
                      "--loaders=keras_generator,roofline"])
    assert (original.stat().st_mtime_ns, shard_manifest.stat().st_mtime_ns) == stamps


def test_original_size_keeps_aspect_and_caps_the_long_side():
    assert bench_input.original_size(3072, 2304, 0) == (3072, 2304)
    assert bench_input.original_size(3072, 2304, 600) == (600, 450)
    assert bench_input.original_size(576, 768, 600) == (450, 600)
    assert bench_input.original_size(500, 400, 600) == (500, 400)
    with pytest.raises(ValueError, match="0x10"):
        bench_input.original_size(0, 10, 600)


def test_time_batches_counts_images_and_refuses_a_loader_that_runs_dry():
    ticks, cpu_ticks = iter([10.0, 12.0]), iter([1.0, 1.8])
    batches = iter([[[0] * 4], [[0] * 8], [[0] * 8], [[0] * 2]])
    timing = bench_common.time_batches(batches, steps=2, warmup=1, count=lambda b: len(b[0]),
                                       clock=lambda: next(ticks), cpu_clock=lambda: next(cpu_ticks))
    assert (timing.images, timing.seconds, timing.images_per_s) == (16, 2.0, 8.0)
    assert timing.cpu_ms_per_image == pytest.approx(50.0)
    with pytest.raises(RuntimeError, match="ran dry after 1 of 3"):
        bench_common.time_batches(iter([[[0]]]), steps=3, count=lambda b: 1)


def test_median_timing_picks_the_middle_rate():
    runs = [bench_common.Timing(1, 100, s) for s in (1.0, 4.0, 2.0)]
    assert bench_common.median_timing(runs).seconds == 2.0
    assert bench_common.median_timing(runs[:2]).seconds == 4.0  # lower middle of two


def test_bad_flags_fail_with_the_value():
    with pytest.raises(SystemExit):
        bench_input.parse_args(["--workdir=x", "--loaders=roofline"])  # no reference loader
    with pytest.raises(SystemExit):
        bench_input.parse_args(["--workdir=x", "--steps=0"])


@pytest.mark.slow
def test_full_sample_at_original_size_reports_every_loader(sample_dir, tmp_path):
    """The real benchmark (440 images at their recorded sizes, 100 steps, batch 32 and 64);
    several minutes on 2 CPUs. Goals are reported, not asserted: they depend on the machine."""
    result = bench_input.main([f"--input={sample_dir}", f"--workdir={tmp_path}"])
    assert result["images"] == 440
    assert len(result["rows"]) == 2 * len(bench_input.LOADERS)
    assert all(r["images_per_s"] > 0 and r["batches"] == 100 for r in result["rows"])
    assert len(result["goals"]) == 6


def test_profile_traces_each_loader_as_its_own_run_with_step_markers(tiny_run, sample_dir):
    """#14: --profile writes one profile run per loader (WORKDIR/profile/<loader>/) whose
    steps the Profile tab counts, and names the slowest tf.data stage of the stream."""
    from trainer.core import profiling

    _, workdir = tiny_run
    loaders = ["keras_generator", "keras_dataset", "tfrecord_stream"]
    result = bench_input.main([f"--input={sample_dir}", f"--workdir={workdir}", *TINY,
                               f"--loaders={','.join(loaders)}", "--profile",
                               "--profile_steps=4"])
    assert sorted(p.name for p in (workdir / "profile").iterdir()) == sorted(loaders)
    rows = {row["loader"]: row for row in result["profile"]}
    assert list(rows) == loaders
    for name in loaders:
        [session] = profiling.sessions(str(workdir / "profile" / name))
        assert [s for _, s, _ in profiling.step_markers(session)] == [1, 2, 3, 4], name
        assert rows[name]["steps"] >= 2 and rows[name]["step_time_ms"] > 0, rows[name]
    assert rows["tfrecord_stream"]["slowest_tf_data_stage"].startswith("Iterator::")
    assert rows["tfrecord_stream"]["input_share"] > 0
    assert rows["keras_generator"]["slowest_tf_data_stage"] == "(no tf.data stages)"
    assert "(3) TFRecord stream" in (workdir / "bench_input_profile.md").read_text()


def test_timed_batches_run_inside_the_step_marker():
    entered = []

    class Marker:
        def __init__(self, step):
            self.step = step

        def __enter__(self):
            entered.append(self.step)

        def __exit__(self, *exc):
            return False

    timing = bench_common.time_batches(iter([(np.zeros((2, 1)), np.zeros(2))] * 5), steps=3, warmup=1,
                                       step_marker=Marker)
    assert entered == [1, 2, 3] and timing.images == 6
