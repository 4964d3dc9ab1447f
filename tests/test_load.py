"""An engine output from a notebook: isicflow.load (the reader the trainers share) and
TensorFlow Datasets' builder_from_directory, each on a small real engine run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import isicflow
from beam_jobs import preprocess
from isicflow import dataset as dataset_lib
from tests import layout_builders as lb
from tests.conftest import REPO_ROOT
from trainer.core import input_pipeline

SIZES = (32, 24)


@pytest.fixture(scope="module", params=["jpeg", "png", "raw"])
def engine_output(request, tmp_path_factory, sample_dir):
    """(dataset folder, manifest) of the engine on ~40 real images, at two sizes."""
    root = tmp_path_factory.mktemp(f"load-{request.param}")
    lb.build_legacy_json(root / "src", lb.sample_images(sample_dir, every=11))
    out = root / "out"
    manifest = preprocess.run([f"--input={root / 'src'}", f"--output={out}",
                               f"--image_size={','.join(map(str, SIZES))}",
                               f"--image_format={request.param}", "--keep_degenerate",
                               "--label_policy=all"])
    return str(out), manifest


def uint8_images(ds) -> np.ndarray:
    return np.stack([element["image"].numpy() for element in ds])


def test_load_yields_the_records_as_the_trainers_read_them(engine_output):
    out, manifest = engine_output
    info = manifest["datasets"]["32"]["train"]
    ds = isicflow.load(out, "train", image_size=32)
    assert len(ds) == info["records"]
    spec = ds.element_spec
    assert spec["image"].shape == (32, 32, 3) and spec["image"].dtype == tf.float32
    assert spec["label"].dtype == tf.int64 and spec["image_id"].dtype == tf.string
    assert {"diagnosis", "patient_id", "age_approx", "label_name"} <= set(spec)
    elements = list(ds)
    ids = [e["image_id"].numpy().decode() for e in elements]
    assert ids == sorted(ids)  # one shard, in id order
    images = np.stack([e["image"].numpy() for e in elements])
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.05
    # the same pixels as the trainers' pipeline (one reader): uint8 as stored, float = /255
    raw = uint8_images(isicflow.load(out, "train", image_size=32, as_uint8=True))
    trainer = np.concatenate([b.numpy() for b, _ in input_pipeline.make_dataset(
        out, "train", image_size=32, batch_size=8, training=False, labels="all",
        as_uint8=True, deterministic=True)])
    np.testing.assert_array_equal(raw, trainer)
    np.testing.assert_allclose(images, raw / 255.0, atol=1e-6)
    binary = isicflow.load(out, "train", image_size=32, labels="binary")
    assert len(binary) == info["counts"].get("benign", 0) + info["counts"].get("malignant", 0)
    image, label = next(iter(isicflow.load(out, "validation", 24, as_supervised=True)))
    assert image.shape == (24, 24, 3) and label.dtype == tf.int64
    assert input_pipeline._decode_record is input_pipeline.decode_record  # kept for diagnosis.py


def test_load_errors_name_what_to_change(engine_output, tmp_path):
    out, _ = engine_output
    with pytest.raises(ValueError, match=r"split 'tain' is not one of \('train', "):
        isicflow.load(out, "tain", image_size=32)
    with pytest.raises(ValueError, match=r"image_size=64, but .* holds sizes \[32, 24\]"):
        isicflow.load(out, "train", image_size=64)
    with pytest.raises(ValueError, match=r"no image_size given, but .* holds sizes \[32, 24\]"):
        isicflow.load(out, "train")
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        isicflow.load(str(tmp_path), "train", image_size=32)
    with pytest.raises(ValueError, match="not record fields"):
        isicflow.load(out, "train", image_size=32, fields=["image_encoded"])


def test_importing_isicflow_imports_no_tensorflow():
    code = ("import sys, isicflow, isicflow.dataset; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_tfds_opens_each_size_folder_as_it_is(engine_output):
    out, manifest = engine_output
    for size in SIZES:
        builder = tfds.builder_from_directory(f"{out}/{size}")
        splits = manifest["datasets"][str(size)]
        assert {name: s.num_examples for name, s in builder.info.splits.items()} == {
            name: s["records"] for name, s in splits.items() if s["records"]}
        tfds_ds = builder.as_dataset(split="train", shuffle_files=False)
        ours = isicflow.load(out, "train", size, as_uint8=True)
        got = list(tfds_ds)
        assert len(got) == splits["train"]["records"]
        for theirs, mine in zip(got, ours):
            assert theirs["image_id"].numpy() == mine["image_id"].numpy()
            assert theirs["label"].numpy() == mine["label"].numpy()
            np.testing.assert_array_equal(
                np.asarray(theirs["image_encoded"]).reshape(size, size, 3), mine["image"].numpy())
        image, label = next(iter(builder.as_dataset(split="validation", as_supervised=True)))
        assert tuple(image.shape) in ((size, size, 3), ()) and label.dtype == tf.int64


def test_tfds_metadata_is_derived_from_the_manifest(engine_output):
    out, manifest = engine_output
    info = json.loads(open(f"{out}/32/{dataset_lib.TFDS_INFO_NAME}").read())
    assert info == dataset_lib.tfds_dataset_info(manifest, 32)
    assert [s["filepathTemplate"] for s in info["splits"]] == [
        f"{split}/{{SPLIT}}-{{SHARD_X_OF_Y}}.{{FILEFORMAT}}" for split in dataset_lib.SPLITS]
    gzip = dict(manifest, compression="GZIP")
    assert dataset_lib.write_tfds_metadata(out, gzip) == []  # tfds reads no GZIP shard
