"""The preprocessing benchmark's building blocks (the full run is `make bench-preprocess`)."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import bench_preprocess as bench


def test_originals_have_recorded_sizes_and_copies_differ_only_in_bytes(sample_dir, tmp_path):
    x1 = bench.build_originals(str(sample_dir), str(tmp_path), repeat=1, limit=2)
    x2 = bench.build_originals(str(sample_dir), str(tmp_path), repeat=2, limit=2)
    for name in sorted(f for f in os.listdir(x1) if f.endswith(".json")):
        acq = json.load(open(os.path.join(x1, name)))["meta"]["acquisition"]
        assert Image.open(os.path.join(x1, name[:-5] + ".jpg")).size == (acq["pixelsX"], acq["pixelsY"])
        first = open(os.path.join(x2, name[:-5] + ".jpg"), "rb").read()
        copy = open(os.path.join(x2, name[:-5] + "_copy1.jpg"), "rb").read()
        assert hashlib.sha256(first).digest() != hashlib.sha256(copy).digest()
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(x2, name[:-5] + ".jpg"))),
                                      np.asarray(Image.open(os.path.join(x2, name[:-5] + "_copy1.jpg"))))
    assert len([f for f in os.listdir(x2) if f.endswith(".jpg")]) == 4


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert bench.psnr(a, a) == float("inf")
    assert bench.psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)


def test_tree_rss_counts_this_process():
    assert bench.tree_rss_bytes(os.getpid()) > 10 * 2**20


@pytest.mark.slow
def test_full_benchmark_runs(sample_dir, tmp_path):
    assert bench.main([f"--data={sample_dir}", f"--workdir={tmp_path}", "--limit=20",
                       "--repeat=2", "--runs=1"]) == 0
    summary = json.load(open(tmp_path / "bench_preprocess.json"))["summary"]
    assert all(np.isfinite(v) and v > 0 for v in summary.values())


def test_stage_rate_sums_each_workers_last_line():
    log = "\n".join([
        "INFO:root:ProcessImage[pid 7 instance a1]: 200 images in this worker, 100.0 images/s",
        "INFO:root:ProcessImage[pid 8 instance b2]: 200 images in this worker, 90.0 images/s",
        "INFO:root:ProcessImage[pid 7 instance a1]: 400 images in this worker, 120.5 images/s",
        "INFO:root:ProcessImage[pid 7 instance c3]: 300 images in this worker, 80.0 images/s",
        "other line"])
    assert bench.stage_rate(log) == pytest.approx(290.5)
    assert bench.stage_rate("nothing here") is None


def test_median_run_keeps_the_middle_rate_and_the_highest_peak():
    runs = [{"images_per_s": 30.0, "peak_rss_mb": 100}, {"images_per_s": 10.0, "peak_rss_mb": 300},
            {"images_per_s": 20.0, "peak_rss_mb": 200}]
    chosen = bench.median_run(runs)
    assert chosen["images_per_s"] == 20.0 and chosen["peak_rss_mb"] == 300
    assert chosen["runs_images_per_s"] == [30.0, 10.0, 20.0]
    assert bench.median_run(runs[:2])["images_per_s"] == 10.0
