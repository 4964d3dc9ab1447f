"""TestPipeline + assert_that tests of the data engine's steps, one DoFn at a time."""
import io

import apache_beam as beam
import pytest
from PIL import Image
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.config import PreprocessConfig
from beam_jobs.spool import SpoolReader, SpoolRef
from beam_jobs.transforms import (DUPLICATE, FILTERED, REJECTED, FilterRecords, PlannedImage,
                                  ProcessedImage, ProcessImage, plan_dataset, route_by_plan,
                                  shard_count)
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

    def spooled_sizes(image):
        with SpoolReader() as spool:
            return image.record.image_id, sorted(
                (size, Image.open(io.BytesIO(spool.read(ref))).size)
                for size, ref in image.encoded.items())

    with TestPipeline() as p:
        out = (p | beam.Create(records)
               | beam.ParDo(ProcessImage(config)).with_outputs(REJECTED, FILTERED, main="images"))
        assert_that(out.images | beam.Map(lambda im: (im.record.image_id, sorted(im.encoded),
                                                      im.source_width, im.source_height)),
                    equal_to([("good", [16, 32], 80, 60)]), label="images")
        assert_that(out[REJECTED] | "Reasons" >> beam.Map(lambda r: (r.image_id, r.reason)),
                    equal_to([("bad", "corrupt_image"), ("gone", "unreadable_file")]),
                    label="rejected")
        # The pixels wait in the bundle's spool file, readable once the bundle is done (the
        # reshuffle ends the stage): each size's slice is a JPEG of that size.
        assert_that(out.images | beam.Reshuffle() | "ReadSpool" >> beam.Map(spooled_sizes),
                    equal_to([("good", [(16, (16, 16)), (32, (32, 32))])]), label="spooled")
    assert len(list((tmp_path / "out" / ".incomplete" / "spool").glob("*.spool"))) == 1


def _planned(image_id, label, sha=None, group=None):
    return PlannedImage(image_id, group or f"image:{image_id}", label, sha or f"sha-{image_id}",
                        ((32, 1000), (16, 300)))


def test_plan_keeps_smallest_id_of_duplicates_and_routes_the_rest():
    items = [_planned("b", "benign", sha="same"), _planned("a", "benign", sha="same"),
             _planned("c", "benign", sha="same"), _planned("d", "malignant")]
    plan = plan_dataset(items, CONFIG)
    assert plan.duplicate_of == {"b": "a", "c": "a"}
    assert set(plan.split_of) == {"a", "d"}

    def image(image_id):
        return ProcessedImage(_record(image_id, label="benign"), "ab" * 32, 10, 10,
                              {32: SpoolRef("s", 0, 1), 16: SpoolRef("s", 1, 1)})

    with TestPipeline() as p:
        plan_pc = p | "Plan" >> beam.Create([plan])
        out = (p | beam.Create([image("a"), image("b"), image("c")])
               | beam.FlatMap(route_by_plan, beam.pvalue.AsSingleton(plan_pc), CONFIG)
               .with_outputs(DUPLICATE, FILTERED, main="keyed"))
        assert_that(out.keyed | beam.Map(lambda kv: (kv[0][0], kv[1][0], kv[1][1].encoded[kv[0][0]])),
                    equal_to([(32, "a", SpoolRef("s", 0, 1)), (16, "a", SpoolRef("s", 1, 1))]),
                    label="keyed")
        assert_that(out[DUPLICATE] | "Dups" >> beam.Map(lambda r: (r.image_id, r.detail[:15])),
                    equal_to([("b", "same bytes as a"), ("c", "same bytes as a")]), label="dups")


def test_plan_dataset_balance_ranks_and_shard_counts():
    items = [_planned(f"b{i:02d}", "benign") for i in range(30)]
    items += [_planned(f"m{i:02d}", "malignant") for i in range(10)]
    import dataclasses
    plan = plan_dataset(items, dataclasses.replace(CONFIG, balance="undersample", num_shards=2))
    assert len(plan.balanced_out) == 20 and not any(i.startswith("m") for i in plan.balanced_out)
    kept = [i.image_id for i in items if i.image_id not in plan.balanced_out]
    assert len(plan.kept) == len(kept) == 20
    for split in ("train", "validation", "test"):
        ranks = sorted(plan.rank_of[i] for i in kept if plan.split_of[i] == split)
        assert ranks == list(range(len(ranks)))
        for size in (32, 16):
            assert plan.shard_counts[(size, split)] == min(2, len(ranks))


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
    with SpoolReader() as reader:
        assert [reader.read(r) for r in reversed(refs)] == [b"defgh", b"", b"abc"]
        with pytest.raises(IOError, match="short"):
            reader.read(SpoolRef(refs[0].path, 6, 4))
    second = SpoolWriter(str(tmp_path / "spool"))
    assert second.append(b"x").path != refs[0].path  # a retried bundle never overwrites
    second.close()
