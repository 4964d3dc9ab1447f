"""trainer.core.input_pipeline on tiny datasets written in the data engine's layout."""
import re

import numpy as np
import pytest
import tensorflow as tf

from isicflow import imaging
from tests import shard_fixtures
from trainer.core import input_pipeline as ip

SIZE = 32


@pytest.fixture(scope="module")
def labelled_images():
    """6 benign/malignant + 2 unknown train images, 4 validation; random pixels."""
    train = shard_fixtures.random_images(6, 40, seed=1)
    train += shard_fixtures.random_images(2, 40, seed=2, labels=("unknown",))
    return {"train": train, "validation": shard_fixtures.random_images(4, 40, seed=3)}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, labelled_images):
    return shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("ds"), labelled_images,
                                             SIZE, compression="GZIP", num_shards=3)


def _all(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _stored_pixels(labelled_images, split):
    """What the records hold: the shared resize, then (lossy) JPEG, then decode."""
    out = []
    for px, label in labelled_images[split]:
        resized = np.asarray(imaging.resize_image(px, SIZE))
        jpeg = imaging.encode_image(resized, "jpeg")
        out.append(tf.io.decode_image(jpeg, channels=3).numpy())
    return np.stack(out)


def test_shapes_dtypes_and_value_ranges(dataset_dir):
    streams = {}
    for value_range in [(0.0, 1.0), (-1.0, 1.0)]:
        x, y = _all(ip.make_dataset(dataset_dir, "validation", image_size=SIZE, batch_size=3,
                                    training=False, value_range=value_range, deterministic=True))
        assert x.shape == (4, SIZE, SIZE, 3) and x.dtype == np.float32
        assert y.dtype == np.float32 and y.shape == (4,)
        assert x.min() >= value_range[0] and x.max() <= value_range[1]
        streams[value_range] = x
    np.testing.assert_allclose(streams[(-1.0, 1.0)], 2 * streams[(0.0, 1.0)] - 1, atol=1e-6)


def test_eval_stream_is_exactly_the_stored_pixels_in_manifest_order(dataset_dir,
                                                                    labelled_images):
    x, y = _all(ip.make_dataset(dataset_dir, "validation", image_size=SIZE, batch_size=4,
                                training=False, augment=True,  # ignored off-training
                                deterministic=True))
    stored = _stored_pixels(labelled_images, "validation")
    # 3 shards dealt round-robin, interleaved with block 1 -> original order comes back.
    np.testing.assert_allclose(x, stored / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_label_filtering_and_dataset_size(dataset_dir):
    _, binary = _all(ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=4,
                                     training=True, seed=3))
    _, every = _all(ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=4,
                                    training=True, labels="all", seed=3))
    assert sorted(binary.tolist()) == [0, 0, 0, 1, 1, 1]
    assert sorted(every.tolist()) == [-1, -1, 0, 0, 0, 1, 1, 1]
    assert ip.dataset_size(dataset_dir, "train", SIZE) == 6
    assert ip.dataset_size(dataset_dir, "train", SIZE, labels="all") == 8
    assert ip.class_counts(dataset_dir, "train", SIZE)["unknown"] == 2


def test_deterministic_runs_repeat_exactly_and_seeds_matter(dataset_dir):
    def run(seed):
        return _all(ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=4,
                                    training=True, augment=True, deterministic=True, seed=seed,
                                    labels="all"))
    first, second, other = run(5), run(5), run(6)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_augmentation_changes_training_images_only(dataset_dir, labelled_images):
    stored = _stored_pixels(labelled_images, "validation") / 255.0
    plain, _ = _all(ip.make_dataset(dataset_dir, "validation", image_size=SIZE, batch_size=4,
                                    training=False, deterministic=True))
    np.testing.assert_allclose(plain, stored, atol=1e-6)
    image = tf.constant(_stored_pixels(labelled_images, "validation")[0])
    augmented = [ip.preprocess_for_train(image, augment=True, seed=[7, i]).numpy()
                 for i in range(4)]
    assert all(a.shape == (SIZE, SIZE, 3) and 0 <= a.min() and a.max() <= 1 for a in augmented)
    assert not any(np.allclose(a, stored[0], atol=1e-3) for a in augmented)
    np.testing.assert_array_equal(  # same seed, same augmentation
        augmented[1], ip.preprocess_for_train(image, augment=True, seed=[7, 1]).numpy())
    unaugmented = ip.preprocess_for_train(image, augment=False, seed=[7, 1]).numpy()
    np.testing.assert_allclose(unaugmented, stored[0], atol=1e-6)


def test_cache_memory_and_file_give_the_same_records(dataset_dir, tmp_path):
    def labels(cache):
        ds = ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=8,
                             training=True, cache=cache, labels="all", seed=1)
        return sorted(_all(ds)[1].tolist()) + sorted(_all(ds)[1].tolist())  # 2 epochs
    assert labels("memory") == labels(str(tmp_path / "cache")) == labels("")
    assert list(tmp_path.glob("cache-32-train*")), "file cache written"


def test_repeat_and_balanced_sampling(dataset_dir):
    ds = ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=10, training=True,
                         balance_classes=True, seed=0)
    labels = np.concatenate([y.numpy() for _, y in ds.take(20)])
    assert labels.size == 200 and 0.4 < labels.mean() < 0.6
    repeated = ip.make_dataset(dataset_dir, "validation", image_size=SIZE, batch_size=4,
                               training=False, repeat=True)
    assert len(list(repeated.take(3))) == 3  # 3 batches from a 4-record split


@pytest.mark.parametrize("image_format", ["png", "raw"])
def test_lossless_formats_roundtrip_exactly(tmp_path, image_format):
    images = shard_fixtures.random_images(3, SIZE, seed=9)
    root = shard_fixtures.write_tiny_dataset(tmp_path, {"test": images}, SIZE, image_format)
    x, _ = _all(ip.make_dataset(root, "test", image_size=SIZE, batch_size=3, training=False,
                                deterministic=True))
    np.testing.assert_array_equal(np.round(x * 255).astype(np.uint8),
                                  np.stack([px for px, _ in images]))


def test_schema_version_mismatch_is_a_clear_error(tmp_path):
    root = shard_fixtures.write_tiny_dataset(tmp_path, {"test": shard_fixtures.random_images(
        2, SIZE)}, SIZE, schema_version=999)
    with pytest.raises(ValueError, match="schema version 999"):
        ip.make_dataset(root, "test", image_size=SIZE, batch_size=2, training=False)


def test_bad_requests_name_the_offending_value(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="image size 48"):
        ip.make_dataset(dataset_dir, "train", image_size=48, batch_size=2, training=True)
    with pytest.raises(ValueError, match="'training'"):
        ip.make_dataset(dataset_dir, "training", image_size=SIZE, batch_size=2, training=True)
    with pytest.raises(ValueError, match="'test'"):
        ip.make_dataset(dataset_dir, "test", image_size=SIZE, batch_size=2, training=False)
    with pytest.raises(ValueError, match="labels 'multi'"):
        ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=2, training=True,
                        labels="multi")
    one_class = shard_fixtures.write_tiny_dataset(
        tmp_path / "one_class", {"train": shard_fixtures.random_images(2, SIZE, labels=(
            "benign",))}, SIZE)
    with pytest.raises(ValueError, match="needs both classes in 'train'"):
        ip.make_dataset(one_class, "train", image_size=SIZE, batch_size=2, training=True,
                        balance_classes=True)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        ip.make_dataset(str(tmp_path), "train", image_size=SIZE, batch_size=2, training=True)


def test_source_balanced_sampling_draws_each_source_equally(tmp_path):
    """Sources of 6, 2 and 1 train images (flat grey levels 0, 128, 255, so the pixels tell the
    source): balanced sampling draws each about a third of the time."""
    def flat(n, level, source, labels=("benign", "malignant")):
        return [(np.full((SIZE, SIZE, 3), level, np.uint8), labels[i % len(labels)],
                 {"source_collection": source}) for i in range(n)]
    root = shard_fixtures.write_tiny_dataset(
        tmp_path, {"train": flat(6, 0, "big") + flat(2, 128, "small") + flat(1, 255, "one",
                                                                            ("benign",))},
        SIZE, num_shards=2)
    assert ip.train_sources(ip.dataset_lib.read_manifest(root), "train") == ["big", "one",
                                                                             "small"]
    ds = ip.make_dataset(root, "train", image_size=SIZE, batch_size=30, training=True,
                         balance_sources=True, seed=3)
    images = np.concatenate([x.numpy() for x, _ in ds.take(20)])
    levels = np.round(images.mean(axis=(1, 2, 3)) * 2).astype(int)  # 0, 1 (128/255), 2
    shares = np.bincount(levels, minlength=3) / levels.size
    assert levels.size == 600 and np.all(np.abs(shares - 1 / 3) < 0.06), shares
    plain = ip.make_dataset(root, "train", image_size=SIZE, batch_size=9, training=True, seed=3)
    plain_levels = np.round(_all(plain)[0].mean(axis=(1, 2, 3)) * 2).astype(int)
    assert np.bincount(plain_levels, minlength=3).tolist() == [6, 2, 1]  # without: as stored


def test_one_source_batches_hold_one_source_each_at_its_share(tmp_path):
    """Sources of 6 and 2 train images (flat grey 0 and 255): every batch is one level, and
    batches come at the sources' 3:1 shares, or 1:1 with balance_sources."""
    def flat(n, level, source):
        return [(np.full((SIZE, SIZE, 3), level, np.uint8), ("benign", "malignant")[i % 2],
                 {"source_collection": source}) for i in range(n)]
    root = shard_fixtures.write_tiny_dataset(
        tmp_path, {"train": flat(6, 0, "big") + flat(2, 255, "small")}, SIZE, num_shards=2)
    for balance, share in ((False, 0.75), (True, 0.5)):
        ds = ip.make_dataset(root, "train", image_size=SIZE, batch_size=4, training=True,
                             one_source_batches=True, balance_sources=balance, seed=3)
        means = [x.numpy().mean(axis=(1, 2, 3)) for x, _ in ds.take(1000)]  # 0.07 >= 5 sd
        assert all(m.shape == (4,) and np.ptp(m) == 0 for m in means)  # full, one source
        big = np.mean([m[0] < 0.5 for m in means])
        assert abs(big - share) < 0.07, (balance, big)
    with pytest.raises(ValueError, match="one_source_batches needs training=True"):
        ip.make_dataset(root, "train", image_size=SIZE, batch_size=2, training=False,
                        one_source_batches=True)


def test_source_balanced_sampling_refuses_what_it_cannot_balance(dataset_dir):
    with pytest.raises(ValueError, match="needs >= 2 sources"):
        ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=2, training=True,
                        balance_sources=True)
    with pytest.raises(ValueError, match="one_source_batches needs >= 2 sources"):
        ip.make_dataset(dataset_dir, "train", image_size=SIZE, batch_size=2, training=True,
                        one_source_batches=True)
    with pytest.raises(ValueError, match="balance_sources needs training=True"):
        ip.make_dataset(dataset_dir, "validation", image_size=SIZE, batch_size=2,
                        training=False, balance_sources=True)


def test_sample_streams_draws_at_the_shares_and_refuses_shares_that_cannot_be_drawn():
    """Shares are normalised (3:1 gives 0.75 of the draws); a negative share, none above zero,
    or a share count unlike the stream count is a ValueError with the shares in it."""
    ones = tf.data.Dataset.from_tensors(1).repeat()
    zeros = tf.data.Dataset.from_tensors(0).repeat()
    drawn = np.array(list(ip.sample_streams([ones, zeros], [3, 1], seed=0)
                          .take(4000).as_numpy_iterator()))
    assert abs(drawn.mean() - 0.75) < 0.04  # sd 0.007
    for shares in ([1.0, -1.0], [0.0, 0.0], [1.0]):
        with pytest.raises(ValueError, match=re.escape(str(shares))):
            ip.sample_streams([ones, zeros], shares, seed=0)
