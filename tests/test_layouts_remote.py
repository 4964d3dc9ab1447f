"""Layouts read the same from a URL file system (TensorFlow's ram://, as gs:// and s3://)."""
import os

import pytest

from beam_jobs import layouts
from tests import layout_builders as lb


def _upload(local_root: str, url_root: str) -> None:
    import tensorflow as tf

    for dirpath, _, filenames in os.walk(local_root):
        rel = os.path.relpath(dirpath, local_root)
        target = url_root if rel == "." else f"{url_root}/{rel}"
        tf.io.gfile.makedirs(target)
        for name in filenames:
            tf.io.gfile.copy(os.path.join(dirpath, name), f"{target}/{name}", overwrite=True)


@pytest.mark.parametrize("layout", ["legacy_json", "isic_cli", "ham10000"])
def test_url_tree_reads_like_the_local_tree(layout, sample_dir, tmp_path):
    images = lb.sample_images(sample_dir, every=37)
    local = lb.BUILDERS[layout](tmp_path / layout, images)
    url = f"ram://isicflow-test/{layout}"
    _upload(str(local), url)
    here, there = layouts.read_layout(str(local)), layouts.read_layout(url)
    assert there.layout == here.layout == layout
    assert len(there.records) == len(images)
    assert all(r.image_path.startswith(url + "/") for r in there.records)

    def comparable(result):
        return [(r.image_id, r.label, r.age_approx, r.sex, r.diagnosis) for r in result.records]

    assert comparable(there) == comparable(here)
    assert there.rejections == here.rejections == []


def test_job_reads_an_archive_from_a_url(sample_dir, tmp_path):
    from beam_jobs import preprocess

    images = lb.sample_images(sample_dir, every=37)
    local = lb.build_legacy_json(tmp_path / "src", images)
    url = "ram://isicflow-test/job-input"
    _upload(str(local), url)
    manifest = preprocess.run([f"--input={url}", f"--output={tmp_path / 'out'}", "--image_size=32",
                               "--keep_degenerate"])
    assert manifest["totals"]["written"] == len(images)
    assert manifest["totals"]["rejected"] == 0
