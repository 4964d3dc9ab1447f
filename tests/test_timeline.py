"""The run's timeline (--profile_phases) and the launcher's start-up: no TensorFlow, all phases."""
import os
import subprocess
import sys
import textwrap
import time

import pytest

from beam_jobs import timeline
from tests.test_bench_preprocess import small_download

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_process_start_is_before_now_and_after_boot():
    start = timeline.process_start_time()
    assert start is not None and start <= time.time()
    assert time.time() - start < 24 * 3600  # this test process, not the machine


def test_marks_from_the_launcher_and_the_workers_make_one_ordered_table():
    phases = timeline.Timeline(process_start=100.0)
    phases.mark("imports_done", 101.0)
    phases.mark("layout_read", 101.2)
    phases.mark("pipeline_done", 110.0)
    phases.add_distributions({
        timeline.DECODE_START_MS: (101_500, 108_000, 0, 3),
        timeline.DECODE_END_MS: (101_520, 109_000, 0, 3),
        timeline.IMAGE_CPU_US: (5_000, 7_000, 18_000, 3),
        timeline.SHARD_WRITTEN_MS: (109_300, 109_600, 0, 2),
        timeline.MANIFEST_WRITTEN_MS: (109_800, 109_800, 109_800, 1)})
    phases.mark("process_exit", 110.2)
    keys = [k for k, _ in phases.ordered()]
    assert keys == ["process_start", "imports_done", "layout_read", "first_decode_started",
                    "first_image_decoded", "last_image_decoded", "shards_written",
                    "manifest_written", "pipeline_done", "process_exit"]
    s = phases.summary()
    assert s["before_first_decode_s"] == pytest.approx(1.5)
    assert s["decoding_s"] == pytest.approx(7.5)
    assert s["after_last_decode_s"] == pytest.approx(1.2)
    assert s["after_last_decode_until"] == "process_exit"
    assert (s["images"], s["image_cpu_ms"]) == (3, pytest.approx(6.0))
    text = phases.format()
    shards_line = next(line for line in text.splitlines() if line.startswith("shards written"))
    assert shards_line.split()[-2:] == ["9.600", "+0.600"]
    assert "fixed before the first decode 1.50 s" in text and "6.0 ms CPU each" in text
    assert phases.to_json()["marks_s"]["last_image_decoded"] == 9.0
    with pytest.raises(KeyError):
        phases.mark("no such phase")


def test_missing_worker_metrics_leave_the_phases_out():
    phases = timeline.Timeline(process_start=0.0)
    phases.add_distributions({timeline.DECODE_END_MS: (0, 0, 0, 0)})
    assert phases.summary()["before_first_decode_s"] is None
    assert "n/a" in phases.format()


def test_printed_json_line_is_parsed_back():
    phases = timeline.Timeline(process_start=5.0)
    phases.mark("imports_done", 6.0)
    printed = f"table\n{timeline.JSON_PREFIX}" + __import__("json").dumps(phases.to_json())
    assert timeline.parse_printed(printed)["marks_s"] == {"process_start": 0.0, "imports_done": 1.0}
    assert timeline.parse_printed("nothing") is None


def test_local_run_never_imports_tensorflow_and_prints_every_phase(tmp_path):
    """`python -m beam_jobs.preprocess` on local paths, as a user runs it: sys.modules at exit."""
    source = small_download(tmp_path / "src", count=3)
    code = textwrap.dedent("""
        import atexit, runpy, sys
        atexit.register(lambda: print("TENSORFLOW_IMPORTED",
                                      any(m.split(".")[0] == "tensorflow" for m in sys.modules)))
        runpy.run_module("beam_jobs.preprocess", run_name="__main__")
    """)
    done = subprocess.run(
        [sys.executable, "-c", code, f"--input={source}", f"--output={tmp_path / 'out'}",
         "--image_size=32", "--profile_phases", "--direct_num_workers=2",
         "--direct_running_mode=multi_threading"],
        capture_output=True, text=True, cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TENSORFLOW_IMPORTED False" in done.stdout, done.stdout[-2000:]
    marks = timeline.parse_printed(done.stdout)["marks_s"]
    assert list(marks) == ["process_start", "imports_done", "run_started", "layout_read",
                           "output_staged", "pipeline_started", "first_decode_started",
                           "first_image_decoded", "last_image_decoded", "shards_written",
                           "manifest_written", "pipeline_done", "run_done"]
    assert list(marks.values()) == sorted(marks.values())


def test_in_process_workers_sample_state_every_10_ms():
    """A DirectRunner run makes Beam's state sampler prompt, so a bundle's end does not wait up
    to 200 ms for its sleeping sampler thread."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.worker import statesampler

    from beam_jobs import preprocess

    preprocess.make_runner(PipelineOptions([]))
    assert statesampler.StateSampler("x", None).sampling_period_ms == preprocess.STATE_SAMPLING_MS
