"""The dataset contract's own writer (the GAN sampler's route) writes what the engine writes."""
import hashlib

import numpy as np
import pytest

from isicflow import dataset, imaging, schema
from isicflow.metadata import LesionRecord, Rejection


def _images(n_per_split, size=8):
    out = []
    for split, n in n_per_split.items():
        for i in range(n):
            png = imaging.encode_image(np.full((size, size, 3), 10 * i, np.uint8), "png")
            label = ("benign", "malignant")[i % 2]
            record = LesionRecord(image_id=f"{split}_{i:03d}", image_path="", label=label,
                                  image_type="synthetic", source_collection="isicflow-test")
            out.append(dataset.DatasetImage(record, png, split))
    return out


def _structure(value):
    """The manifest's shape: nested keys, values replaced by their type."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items() if not k.isdigit()}
    return type(value).__name__


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_written_dataset_reads_back(tmp_path, compression):
    import tensorflow as tf

    images = _images({"train": 5, "validation": 2})
    manifest = dataset.write_dataset(str(tmp_path), reversed(images), image_size=8,
                                     image_format="png", layout="isicflow-test", synthetic=True,
                                     compression=compression, records_per_shard=2,
                                     run_config={"seed": 3})
    assert dataset.read_manifest(str(tmp_path)) == manifest
    assert (tmp_path / dataset.REJECTS_NAME).read_bytes() == b""
    train = dataset.split_info(manifest, 8, "train")
    assert train["records"] == 5 and train["counts"] == {"benign": 3, "malignant": 2}
    assert [s["path"] for s in train["shards"]] == [
        dataset.shard_path(8, "train", i, 3, compression) for i in range(3)]
    assert dataset.split_info(manifest, 8, "test") == {"records": 0, "counts": {}, "shards": []}
    paths = dataset.shard_paths(manifest, str(tmp_path), 8, "train")
    for shard, path in zip(train["shards"], paths):
        data = open(path, "rb").read()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (shard["bytes"], shard["sha256"])
    records = tf.data.TFRecordDataset(paths, dataset.compression_type(manifest))
    parsed = [tf.io.parse_single_example(r, schema.feature_spec()) for r in records]
    ids = sorted(p["image_id"].numpy().decode() for p in parsed)
    assert ids == [f"train_{i:03d}" for i in range(5)]
    first = schema.decode_example_py(next(iter(tf.data.TFRecordDataset(
        paths[:1], dataset.compression_type(manifest)))).numpy())
    assert first["split"] == "train" and first["height"] == 8 and first["label"] == 0
    assert first["content_sha256"] == hashlib.sha256(first["image_encoded"]).hexdigest()
    assert first["image_type"] == "synthetic"
    # the GAN sampler's datasets open in TensorFlow Datasets too (uncompressed ones: tfds reads
    # no GZIP shard); train in 3 shards of 2, 2, 1 records, validation in 1, no test split
    has_tfds = (tmp_path / "8" / dataset.TFDS_INFO_NAME).exists()
    assert has_tfds == (compression == "")
    if has_tfds:
        import tensorflow_datasets as tfds

        builder = tfds.builder_from_directory(str(tmp_path / "8"))
        assert {n: s.shard_lengths for n, s in builder.info.splits.items()} == {
            "train": [2, 2, 1], "validation": [2]}
        assert sorted(e["image_id"].numpy().decode() for e in builder.as_dataset(
            split="train")) == ids


def test_manifest_has_the_engines_structure(tmp_path):
    from beam_jobs import writing
    from beam_jobs.config import PreprocessConfig

    ours = dataset.write_dataset(str(tmp_path), _images({"train": 2}), image_size=8,
                                 image_format="png", layout="isicflow-test")
    config = PreprocessConfig(input="x", output="y", image_sizes=(8,))
    shard = {"size": 8, "split": "train", "path": dataset.shard_path(8, "train", 0, 1),
             "records": 2, "bytes": 3, "sha256": "x"}
    kept = [dataset.kept_entry(LesionRecord(image_id=i, image_path="", label=label), "train")
            for i, label in (("a", "benign"), ("c", "malignant"))]
    engines = writing.build_manifest(
        config, "legacy_json", [shard], [Rejection("b.jpg", "b", "undecodable")], kept, 3,
        {"sidecars": 1})
    for manifest in (ours, engines):  # free-form contents: the run's flags, layout counters
        manifest["config"] = manifest["layout_counters"] = {}
        manifest["reasons"] = {}
    # Only the engine runs the near-duplicate check, so only its manifest reports one.
    assert set(engines) - set(ours) == {"near_duplicate_groups", "near_duplicates"}
    del engines["near_duplicate_groups"], engines["near_duplicates"]
    assert _structure(ours) == _structure(engines)


def test_writer_rejects_duplicates_and_unknown_splits(tmp_path):
    twice = _images({"train": 1}) * 2
    with pytest.raises(ValueError, match="given twice"):
        dataset.write_dataset(str(tmp_path), twice, image_size=8, image_format="png", layout="x")
    image = _images({"train": 1})[0]
    odd = dataset.DatasetImage(image.record, image.encoded, "holdout")
    with pytest.raises(ValueError, match="holdout"):
        dataset.write_dataset(str(tmp_path), [odd], image_size=8, image_format="png", layout="x")
    assert not (tmp_path / dataset.MANIFEST_NAME).exists()
