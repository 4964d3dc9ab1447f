"""The engine's progress line: images done of the total, rate and ETA (issue 21, item 4)."""
import logging
import re
import time

from beam_jobs import preprocess, timeline
from beam_jobs.timeline import ProgressCounter, ProgressReporter, format_progress, read_progress
from tests import layout_builders as lb

LINE = re.compile(r"progress: ([\d,]+) of ([\d,]+) images")


def test_format_progress_gives_share_rate_and_eta():
    assert format_progress(1_500, 6_000, 10.0) == (
        "progress: 1,500 of 6,000 images (25.0%) in 0:10, 150.0 images/s, ETA 0:30")
    assert format_progress(6_000, 6_000, 3725.0) == (
        "progress: 6,000 of 6,000 images (100.0%) in 1:02:05, 1.6 images/s, ETA 0:00")
    assert format_progress(0, 10, 4.0) == "progress: 0 of 10 images (0.0%) in 0:04, ETA unknown"
    assert format_progress(0, 0, 0.0) == "progress: 0 of 0 images in 0:00, ETA unknown"


def test_counters_sum_over_instances_and_skip_half_written_files(tmp_path):
    a, b = ProgressCounter(str(tmp_path)), ProgressCounter(str(tmp_path))
    for _ in range(3):
        a.add()
    b.add(5)
    a.flush(), b.flush()
    (tmp_path / "x.tmp").write_text("999")  # a rename not yet done
    assert read_progress(str(tmp_path)) == 8
    assert read_progress(str(tmp_path / "missing")) == 0
    ProgressCounter(None).add()  # a runner whose workers are elsewhere: counts nothing, quietly


def test_reporter_logs_while_the_count_changes_and_once_at_stop(tmp_path):
    lines = []
    counter = ProgressCounter(str(tmp_path))
    reporter = ProgressReporter(str(tmp_path), 10, lines.append, every=0.05).start()
    counter.add(4), counter.flush()
    time.sleep(0.3)  # several periods: one line for 4, none repeated while nothing changes
    counter.add(6), counter.flush()
    reporter.stop()
    done = [LINE.match(line).group(1) for line in lines]
    assert done[-1] == "10" and done.count("4") <= 1 and len(done) == len(set(done))


def test_a_real_run_logs_progress_with_the_layout_total(sample_dir, tmp_path, caplog):
    images = lb.sample_images(sample_dir, every=8)
    source = lb.build_legacy_json(tmp_path / "src", images)
    caplog.set_level(logging.INFO)
    preprocess.run([f"--input={source}", f"--output={tmp_path / 'out'}", "--image_size=32",
                    "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    found = [LINE.search(r.getMessage()) for r in caplog.records]
    found = [(int(m.group(1).replace(",", "")), int(m.group(2).replace(",", "")))
             for m in found if m]
    assert found, "no progress line"
    assert {total for _, total in found} == {len(images)}
    assert found[-1][0] == len(images)  # every record done: kept, rejected or filtered
    assert len(found) <= 2 + len(images) // 50  # a line every few seconds, never one per image
    assert not list((tmp_path / "out").rglob("progress*"))  # nothing of it in the output
    assert timeline.PROGRESS_EVERY_S >= 1
