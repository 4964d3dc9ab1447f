"""TestPipeline + assert_that tests of the data engine's steps, one DoFn at a time."""
import collections
import io

import apache_beam as beam
import pytest
from PIL import Image
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.config import PreprocessConfig
from beam_jobs.spool import SpoolRef, read_all
from beam_jobs.counters import NAMESPACE
from beam_jobs.transforms import (DUPLICATE, FILTERED, KEPT, REJECTED,
                                  FilterRecords, ImageKey, ProcessImage, pack_phash,
                                  plan_dataset, plan_shards, shard_count)
from beam_jobs.writing import kept_summary, read_spooled_record
from isicflow.metadata import LesionRecord
from tests import hostile_images as hi

CONFIG = PreprocessConfig(input="unused", output="unused", image_sizes=(32, 16))


def _record(image_id, path="/nonexistent", **kw):
    return LesionRecord(image_id=image_id, image_path=str(path), **kw)


def test_filter_records_routes_each_reason():
    records = [
        _record("keep", label="benign", image_type="dermoscopic"),
        _record("untyped", label="malignant"),
        _record("clinical", label="benign", image_type="clinical"),
        _record("sonic", label="benign", image_type="dermoscopic", source_collection="SONIC"),
        _record("unknown", label="unknown", image_type="dermoscopic"),
    ]
    with TestPipeline() as p:
        out = (p | beam.Create(records)
               | beam.ParDo(FilterRecords(CONFIG)).with_outputs(FILTERED, main="kept"))
        assert_that(out.kept | "KeptIds" >> beam.Map(lambda r: r.image_id),
                    equal_to(["keep", "untyped"]), label="kept")
        assert_that(out[FILTERED] | "Reasons" >> beam.Map(lambda r: (r.image_id, r.reason, r.kind)),
                    equal_to([("clinical", "filtered_image_type", "filtered"),
                              ("sonic", "filtered_collection", "filtered"),
                              ("unknown", "filtered_label", "filtered")]), label="filtered")


def test_process_image_decodes_and_rejects(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(hi.jpeg_bytes(hi.gradient(80, 60)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(hi.truncated_jpeg(hi.gradient(400, 300)))
    records = [_record("good", good, label="benign"), _record("bad", bad, label="benign"),
               _record("gone", tmp_path / "missing.jpg", label="benign")]
    import dataclasses
    config = dataclasses.replace(CONFIG, output=str(tmp_path / "out"))

    spool_dir = tmp_path / "out" / ".incomplete" / "spool"

    def spooled(image):
        items = [image.shard_item(i) for i in range(len(config.image_sizes))]
        refs = [SpoolRef(str(spool_dir / items[0][0]), items[0][1], items[0][2])]
        refs += [SpoolRef(str(spool_dir / name), offset, length)
                 for name, _, _, offset, length in items]
        data = read_all(refs)
        record, source = read_spooled_record(data[refs[0]])
        return (record.image_id, source["source_width"], source["source_height"], sorted(
            (size, Image.open(io.BytesIO(data[ref])).size)
            for size, ref in zip(config.image_sizes, refs[1:])))

    with TestPipeline() as p:
        out = (p | beam.Create(records)
               | beam.ParDo(ProcessImage(config)).with_outputs(REJECTED, FILTERED, main="images"))
        assert_that(out.images | beam.Map(lambda im: (im.image_id, len(im.lengths))),
                    equal_to([("good", 3)]), label="images")
        assert_that(out[REJECTED] | "Reasons" >> beam.Map(lambda r: (r.image_id, r.reason)),
                    equal_to([("bad", "corrupt_image"), ("gone", "unreadable_file")]),
                    label="rejected")
        # The record and pixels wait in the bundle's spool file, readable once the bundle is
        # done (the reshuffle ends the stage): each size's slice is a JPEG of that size.
        assert_that(out.images | beam.Reshuffle() | "ReadSpool" >> beam.Map(spooled),
                    equal_to([("good", 80, 60, [(16, (16, 16)), (32, (32, 32))])]),
                    label="spooled")
    assert len(list((tmp_path / "out" / ".incomplete" / "spool").glob("*.spool"))) == 1


def test_process_image_counts_decodes_and_reduced_scale_decodes(tmp_path):
    """The manifest reads these counters: a small JPEG is decoded at full scale, a large one at
    reduced scale, and an unreadable file is neither (it counts as its reject reason)."""
    import dataclasses
    from apache_beam.metrics.metric import MetricsFilter
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    small.write_bytes(hi.jpeg_bytes(hi.gradient(40, 30)))
    large.write_bytes(hi.jpeg_bytes(hi.gradient(400, 300)))
    records = [_record("small", small, label="benign"), _record("large", large, label="benign"),
               _record("gone", tmp_path / "missing.jpg", label="benign")]
    config = dataclasses.replace(CONFIG, output=str(tmp_path / "out"))
    p = TestPipeline()
    _ = (p | beam.Create(records)
         | beam.ParDo(ProcessImage(config)).with_outputs(REJECTED, FILTERED, main="images"))
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters == {"images_decoded": 2, "reduced_scale_decodes": 1, "unreadable_file": 1}


def _image(image_id, label, sha=None, group=None, diagnosis=""):
    """An ImageKey as DecodeResizeEncode emits it (a spooled record of 100 bytes, encodings of
    1000 and 300), in a spool file named after it so that shard items show whose they are."""
    record = _record(image_id, label=label, lesion_id=group or "", diagnosis=diagnosis)
    return ImageKey(image_id, record.image_path, record.group_key, label,
                    (sha or f"sha-{image_id}").encode(), kept_summary(record),
                    f"{image_id}.spool", 0, (100, 1000, 300))


def test_plan_keeps_smallest_id_of_duplicates_and_emits_whole_shards():
    images = [_image("b", "benign", sha="same"), _image("a", "benign", sha="same"),
              _image("c", "benign", sha="same"), _image("d", "malignant")]
    plan = plan_dataset(images, CONFIG)
    assert plan.duplicate_of == {"b": "a", "c": "a"}
    assert set(plan.split_of) == {"a", "d"}

    by_split: dict = {}
    for image_id in ("a", "d"):
        by_split.setdefault(plan.split_of[image_id], []).append(image_id)
    # One shard per (size, split) at this size, holding that split's kept images in id order.
    expected = [(size, split, 0, 1, ids) for size in (32, 16) for split, ids in by_split.items()]
    with TestPipeline() as p:
        out = (p | beam.Create([images])
               | beam.FlatMap(plan_shards, CONFIG).with_outputs(DUPLICATE, FILTERED, KEPT,
                                                                main="shards"))
        assert_that(out.shards | beam.Map(lambda kv: (*kv[0], [it[0][:-6] for it in kv[1]])),
                    equal_to(expected), label="shards")
        assert_that(out[DUPLICATE] | "Dups" >> beam.Map(lambda r: (r.image_id, r.detail[:15])),
                    equal_to([("b", "same bytes as a"), ("c", "same bytes as a")]), label="dups")
        assert_that(out[KEPT] | "Kept" >> beam.Map(lambda kept: sum(n for _, n in kept)),
                    equal_to([2]), label="kept")


def test_plan_dataset_balance_ranks_and_shard_counts():
    images = [_image(f"b{i:02d}", "benign") for i in range(30)]
    images += [_image(f"m{i:02d}", "malignant") for i in range(10)]
    import dataclasses
    plan = plan_dataset(images, dataclasses.replace(CONFIG, balance="undersample", num_shards=2))
    assert len(plan.balanced_out) == 20 and not any(i.startswith("m") for i in plan.balanced_out)
    kept = [im.image_id for im in images if im.image_id not in plan.balanced_out]
    assert plan.written == len(kept) == 20
    for split in ("train", "validation", "test"):
        ranks = sorted(plan.rank_of[i] for i in kept if plan.split_of[i] == split)
        assert ranks == list(range(len(ranks)))
        for size in (32, 16):
            assert plan.shard_counts[(size, split)] == min(2, len(ranks))


def test_train_fraction_cuts_after_balance_and_split_and_moves_nothing_else():
    import dataclasses
    images = [_image(f"b{i:03d}", "benign", group=f"L{i // 2}") for i in range(120)]
    images += [_image(f"m{i:03d}", "malignant", group=f"M{i // 2}") for i in range(40)]
    config = dataclasses.replace(CONFIG, balance="undersample")
    full = plan_dataset(images, config)
    half = plan_dataset(images, dataclasses.replace(config, train_fraction=0.5))
    assert half.balanced_out == full.balanced_out  # the balance is made before, unchanged
    assert half.train_fraction_out and not half.train_fraction_out & full.balanced_out
    assert half.train_fraction_out <= {i for i, s in full.split_of.items() if s == "train"}
    for image_id, split in full.split_of.items():  # validation and test exactly as before
        if split != "train":
            assert half.split_of[image_id] == split
    groups = {im.image_id: im.group for im in images}
    out_groups = {groups[i] for i in half.train_fraction_out}
    assert not out_groups & {groups[i] for i in half.split_of}  # a lesion goes whole
    assert half.written == full.written - len(half.train_fraction_out)
    kept_train = [i for i, s in half.split_of.items() if s == "train"]
    assert sorted(half.rank_of[i] for i in kept_train) == list(range(len(kept_train)))


def test_plan_keeps_lesions_together_and_sizes_shards_by_spooled_bytes():
    import dataclasses
    images = [_image(f"i{i:03d}", "benign", group=f"L{i // 4}") for i in range(200)]
    config = dataclasses.replace(CONFIG, target_shard_mb=0.05)  # 52,429 bytes a shard
    plan = plan_dataset(images, config)
    for lesion in {im.group for im in images}:
        assert len({plan.split_of[im.image_id] for im in images if im.group == lesion}) == 1
    for (size, split), count in plan.shard_counts.items():
        n = sum(1 for s in plan.split_of.values() if s == split)
        per_image = 1000 if size == 32 else 300
        assert count == max(1, min(n, -(-n * per_image // 52_429)))


def test_shard_count_never_empty():
    assert shard_count(0, 0, CONFIG) == 0
    assert shard_count(5, 10, CONFIG) == 1
    import dataclasses
    assert shard_count(3, 10, dataclasses.replace(CONFIG, num_shards=8)) == 3
    assert shard_count(10**4, 400 * 2**20, CONFIG) == 3  # 400 MB at 150 MB a shard


def test_spool_round_trip_and_short_read(tmp_path):
    from beam_jobs.spool import SpoolWriter

    writer = SpoolWriter(str(tmp_path / "spool"))
    refs = [writer.append(b"abc"), writer.append(b""), writer.append(b"defgh")]
    writer.close()
    assert [r.offset for r in refs] == [0, 3, 3] and len({r.path for r in refs}) == 1
    got = read_all(reversed(refs))
    assert [got[r] for r in refs] == [b"abc", b"", b"defgh"]
    with pytest.raises(IOError, match="short"):
        read_all([SpoolRef(refs[0].path, 6, 4)])
    second = SpoolWriter(str(tmp_path / "spool"))
    assert second.append(b"x").path != refs[0].path  # a retried bundle never overwrites
    second.close()


def test_tfrecord_framing_is_tensorflows(tmp_path):
    """dataset.tfrecord_frame writes what tf.io.TFRecordWriter writes, byte for byte."""
    import tensorflow as tf

    from isicflow.dataset import tfrecord_frame

    records = [b"", b"x", bytes(range(256)) * 40, "\u00e9".encode()]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    assert b"".join(tfrecord_frame(r) for r in records) == open(path, "rb").read()


def test_spool_read_all_reads_each_file_in_order(tmp_path):
    from beam_jobs.spool import SpoolWriter, read_all

    first, second = SpoolWriter(str(tmp_path)), SpoolWriter(str(tmp_path))
    refs = [first.append(b"aa"), second.append(b"bbb"), first.append(b"c"), second.append(b"")]
    first.close()
    second.close()
    got = read_all(list(reversed(refs)) + refs[:1])  # any order, repeats allowed
    assert [got[r] for r in refs] == [b"aa", b"bbb", b"c", b""]


def test_finalize_can_be_retried_after_moving_shards(tmp_path):
    """A runner retries a failed Finalize bundle: shards it already moved are not an error."""
    import json

    from beam_jobs import writing

    config = PreprocessConfig(input="unused", output=str(tmp_path), image_sizes=(32,))
    shard = {"size": 32, "split": "train", "path": "32/train/train-00000-of-00001.tfrecord",
             "records": 1, "bytes": 3, "sha256": "x"}
    source = tmp_path / ".incomplete" / shard["path"]
    source.parent.mkdir(parents=True)
    source.write_bytes(b"abc")
    kept = ((("train", kept_summary(_record("a", label="benign"))), 1),)
    args = (None, config, "legacy_json", 1, {}, [shard], [], kept)
    first = writing.finalize(*args)
    (tmp_path / "manifest.json").unlink()  # as if the first attempt died after moving shards
    assert writing.finalize(*args) == first
    assert (tmp_path / shard["path"]).read_bytes() == b"abc"
    assert json.loads((tmp_path / "manifest.json").read_text())["totals"]["written"] == 1


def _hashed(image_id, label, phash, group=None):
    import dataclasses
    return dataclasses.replace(_image(image_id, label, group=group),
                               phash=phash and pack_phash(phash))


def test_plan_groups_or_drops_near_duplicates():
    import dataclasses as dc
    import random
    from isicflow.image_checks import PerceptualHash as H
    far = H((1 << 64) - 1, (1 << 256) - 1)
    rng = random.Random(5)  # 60 unrelated images: random hashes, ~32 and ~128 bits apart
    images = [_hashed(f"n{i:03d}", "benign" if i % 3 else "malignant",
                      H(rng.getrandbits(64), rng.getrandbits(256))) for i in range(60)]
    images += [_hashed("a", "benign", H(0, 0), group="L1"), _hashed("b", "malignant", H(1, 1)),
               _hashed("c", "benign", far, group="L1"), _hashed("d", "benign", far, group="L2"),
               _hashed("e", "benign", None)]  # e: no hash (degenerate kept): never grouped
    plan = plan_dataset(images, CONFIG)  # group, the default
    assert plan.near_duplicate_groups == (("a", "b"), ("c", "d"))
    assert not plan.near_duplicate_of
    # a-b near-identical and a, c one lesion, c-d near-identical: all four in one split.
    assert len({plan.split_of[i] for i in "abcd"}) == 1
    assert len(set(plan.split_of.values())) == 3
    drop = plan_dataset(images, dc.replace(CONFIG, near_duplicates="drop"))
    assert drop.near_duplicate_of == {"b": "a", "d": "c"}
    assert "b" not in drop.split_of and drop.written == len(images) - 2
    off = plan_dataset(images, dc.replace(CONFIG, near_duplicates="off"))
    assert off.near_duplicate_groups == () and off.written == len(images)


def test_cross_validation_folds_test_every_image_once_with_lesions_whole():
    """--folds=4: over --fold=0..3 each image is in test once and in validation once, the
    test folds are disjoint and together all of the kept images, a lesion never straddles, and
    each diagnosis is spread like its label (60 single-image dermatofibromas among 240 benign
    images: 15 a fold, which spreading the labels alone does not give)."""
    import dataclasses
    images = [_image(f"b{i:03d}", "benign", group=f"L{i // 3}") for i in range(120)]
    images += [_image(f"m{i:03d}", "malignant", group=f"M{i // 3}") for i in range(48)]
    images += [_image(f"n{i:03d}", "benign", diagnosis="nevus") for i in range(60)]
    images += [_image(f"d{i:03d}", "benign", diagnosis="dermatofibroma") for i in range(60)]
    plans = [plan_dataset(images, dataclasses.replace(CONFIG, folds=4, fold=k))
             for k in range(4)]
    tests = [{i for i, s in plan.split_of.items() if s == "test"} for plan in plans]
    validations = [{i for i, s in plan.split_of.items() if s == "validation"} for plan in plans]
    every = {im.image_id for im in images}
    dermatofibromas = {i for i in every if i.startswith("d")}
    assert set().union(*tests) == every and sum(map(len, tests)) == len(every)
    assert set().union(*validations) == every and sum(map(len, validations)) == len(every)
    for k in range(4):
        assert validations[k] == tests[(k + 1) % 4]  # the next fold validates
        assert 51 <= len(tests[k] - dermatofibromas) <= 63  # 1/4 of 228, lesions of 3
        assert len(tests[k] & dermatofibromas) == 15
        groups = collections.defaultdict(set)
        for im in images:
            groups[im.group].add(plans[k].split_of[im.image_id])
        assert {len(s) for s in groups.values()} == {1}
