"""The preprocessing benchmark's building blocks (the full run is `make bench-preprocess`)."""
import csv
import hashlib
import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from beam_jobs import layouts
from benchmarks import bench_preprocess as bench
from tests import layout_builders as lb

FULLRES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-fullres-30"


def small_download(root: pathlib.Path, count: int = 4) -> pathlib.Path:
    """An isic-cli download of the `count` smallest real archive JPEGs of isic-fullres-30, with
    their rows of its metadata.csv (the files linked, not copied)."""
    if not FULLRES.is_dir():
        pytest.fail(f"real data missing at {FULLRES}")
    chosen = sorted(FULLRES.glob("ISIC_*.jpg"), key=lambda p: (p.stat().st_size, p.name))[:count]
    ids = {p.stem for p in chosen}
    root.mkdir(parents=True)
    with open(FULLRES / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([rows[0]] + [r for r in rows[1:] if r[0] in ids])
    for path in chosen:
        os.symlink(path, root / path.name)
    (root / "attribution.txt").write_text("CC-0, see isic-fullres-30\n")
    return root


def test_repeated_download_reads_as_n_times_the_records_with_other_bytes(tmp_path):
    source = small_download(tmp_path / "src")
    root = pathlib.Path(bench.repeat_dataset(str(source), str(tmp_path / "x3"), 3))
    assert sorted(p.name for p in root.iterdir()) == ["COMPLETE", "r000", "r001", "r002"]
    one, many = layouts.read_layout(str(source)), layouts.read_layout(str(root))
    assert many.layout == layouts.DOWNLOADS and not many.rejections
    assert len(many.records) == 3 * len(one.records) == 12
    assert {r.image_id for r in many.records} == {f"{r.image_id}{s}" for r in one.records
                                                  for s in ("", "_r1", "_r2")}
    for record in one.records:
        original = (source / f"{record.image_id}.jpg").read_bytes()
        copy = (root / "r002" / f"{record.image_id}_r2.jpg").read_bytes()
        assert hashlib.sha256(original).digest() != hashlib.sha256(copy).digest()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(original))),
                                      np.asarray(Image.open(io.BytesIO(copy))))
    labels = {r.image_id: r.label for r in many.records}
    assert all(labels[f"{r.image_id}_r1"] == r.label for r in one.records)
    # Built once: a second call with the same arguments keeps the files.
    stamp = (root / "r001").stat().st_mtime_ns
    bench.repeat_dataset(str(source), str(root), 3)
    assert (root / "r001").stat().st_mtime_ns == stamp


def test_repeated_legacy_sidecars_keep_their_labels(sample_dir, tmp_path):
    images = lb.sample_images(sample_dir, every=110)
    source = lb.build_legacy_json(tmp_path / "src", images)
    root = bench.repeat_dataset(str(source), str(tmp_path / "x2"), 2)
    many = layouts.read_layout(root)
    assert many.layout == "legacy_json" and len(many.records) == 2 * len(images)
    by_id = {r.image_id: r for r in many.records}
    assert all(by_id[f"{im.image_id}_r1"].label == im.label for im in images)


def test_a_layout_that_cannot_be_repeated_fails_loudly(sample_dir, tmp_path):
    source = lb.build_class_folders(tmp_path / "src", lb.sample_images(sample_dir, every=110))
    with pytest.raises(ValueError, match="cannot be repeated"):
        bench.repeat_dataset(str(source), str(tmp_path / "x2"), 2)


def test_jpeg_comment_goes_after_the_app_segments_and_keeps_the_pixels():
    buf = io.BytesIO()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 24, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    data = buf.getvalue()
    marked = bench.with_jpeg_comment(data, b"copy 3")
    assert marked[2:4] == b"\xff\xe0" or marked[2:4] == b"\xff\xe1"  # JFIF/EXIF still first
    assert b"\xff\xfe\x00\x08copy 3" in marked
    reread = Image.open(io.BytesIO(marked))
    assert reread.getexif().get(0x0112) == 6
    np.testing.assert_array_equal(np.asarray(reread), np.asarray(Image.open(io.BytesIO(data))))
    with pytest.raises(ValueError):
        bench.with_jpeg_comment(b"\x89PNG....", b"x")


def test_ids_are_renamed_as_whole_tokens_only():
    pattern = bench.id_pattern(["ISIC_1", "ISIC_0000001"])
    text = "ISIC_1,ISIC_10,ISIC_0000001_downsampled.jpg,xISIC_1,ISIC_0000001"
    assert bench.renamed(text, pattern, 4) == \
        "ISIC_1_r4,ISIC_10,ISIC_0000001_r4_downsampled.jpg,xISIC_1,ISIC_0000001_r4"


def test_upsampled_sample_has_the_recorded_sizes(sample_dir, tmp_path):
    out = bench.upsampled_sample(str(sample_dir), str(tmp_path / "up"), limit=2)
    for name in sorted(f for f in os.listdir(out) if f.endswith(".json")):
        acq = json.load(open(os.path.join(out, name)))["meta"]["acquisition"]
        assert Image.open(os.path.join(out, name[:-5] + ".jpg")).size == (acq["pixelsX"], acq["pixelsY"])


def test_psnr():
    a = np.zeros((4, 4, 3), np.uint8)
    assert bench.psnr(a, a) == float("inf")
    assert bench.psnr(a, a + 1) == pytest.approx(48.13, abs=0.01)


def test_tree_rss_counts_this_process():
    assert bench.tree_rss_bytes(os.getpid()) > 10 * 2**20


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


def test_goal_check_says_by_how_much():
    assert bench.goal_check(9.0, (">=", 8.0)) == "met"
    assert bench.goal_check(6.0, (">=", 8.0)) == "MISSED by 2.00 (25%)"
    assert bench.goal_check(2.5, ("<=", 2.0)) == "MISSED by 0.50 (25%)"
    assert bench.goal_check(None, ("<=", 2.0)) == "not measured"


def test_summary_ratios_and_goals():
    def variant(images_per_s, peak, timeline=None):
        return {"images": 100, "seconds": 100 / images_per_s, "images_per_s": images_per_s,
                "cores_busy": 1.0, "peak_rss_mb": peak, "timeline": timeline}

    timeline = {"marks_s": {"process_start": 0.0, "first_decode_started": 1.5,
                            "last_image_decoded": 3.0, "process_exit": 3.5},
                "summary": {"before_first_decode_s": 1.5, "after_last_decode_s": 0.5,
                            "image_cpu_ms": 10.0}}
    results = {"pillow": variant(10.0, 200), "beam1": variant(50.0, 150),
               "beam2": variant(90.0, 160, timeline), "beam2p": variant(80.0, 400),
               "decode": [{"source": "3072x2304", "at_least_8x": True, "psnr_256_db_min": 42.0,
                           "psnr_128_of_256_db_min": 45.0, "psnr_128_alone_db_min": 41.0}]}
    summary, lines = bench.summarize(results, "test")
    assert summary["beam2_over_a"] == pytest.approx(9.0)
    assert summary["beam2_over_b"] == pytest.approx(1.8)
    assert summary["beam2_peak_over_a"] == pytest.approx(0.8)
    assert summary["psnr_db_min"] == 41.0
    assert summary["beam2_over_a_bound"] == pytest.approx(10.0 / (100 * 0.010 / 2))
    report = "\n".join(lines)
    assert "beam2_over_a = 9.00 (goal >= 8.0): met" in report
    assert "| first_decode_started | 1.5 |" in report


@pytest.mark.slow
def test_full_benchmark_runs(tmp_path):
    source = small_download(tmp_path / "src", count=3)
    assert bench.main([f"--input={source}", f"--workdir={tmp_path / 'work'}", "--repeat=2",
                       "--runs=1"]) == 0
    results = json.load(open(tmp_path / "work" / "bench_preprocess_src_x2.json"))
    summary = results["summary"]
    assert results["beam2"]["images"] == 6
    assert summary["beam2_over_a"] > 0 and summary["before_first_decode_s"] > 0
    assert results["beam2"]["timeline"]["marks_s"]["process_exit"] > \
        results["beam2"]["timeline"]["marks_s"]["last_image_decoded"]
