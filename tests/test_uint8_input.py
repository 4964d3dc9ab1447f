"""uint8 batches into the CNN: the same values as the float pipeline, scaled on the device."""
import numpy as np
import pytest

from tests import shard_fixtures
from trainer.cnn import models, train
from trainer.core import input_pipeline


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), label)
              for label in ["benign", "malignant"] * 4]
    return shard_fixtures.write_tiny_dataset(
        str(tmp_path_factory.mktemp("u8")), {"train": images, "validation": images[:4],
                                            "test": images[:4]}, 32)


def test_uint8_batches_equal_float_batches_times_255(data_dir):
    kwargs = dict(image_size=32, batch_size=4, training=False, deterministic=True)
    floats = list(input_pipeline.make_dataset(data_dir, "validation", **kwargs))
    bytes_ = list(input_pipeline.make_dataset(data_dir, "validation", as_uint8=True, **kwargs))
    for (xf, yf), (xu, yu) in zip(floats, bytes_):
        assert xu.dtype.name == "uint8"
        np.testing.assert_array_equal(xu.numpy().astype(np.float32) * np.float32(1 / 255), xf.numpy())
        np.testing.assert_array_equal(yu.numpy(), yf.numpy())


def test_uint8_needs_unaugmented_unit_range(data_dir):
    with pytest.raises(ValueError, match="as_uint8"):
        input_pipeline.make_dataset(data_dir, "train", image_size=32, batch_size=4,
                                    training=True, augment=True, as_uint8=True)
    with pytest.raises(ValueError, match="as_uint8"):
        input_pipeline.make_dataset(data_dir, "train", image_size=32, batch_size=4,
                                    training=False, value_range=(-1.0, 1.0), as_uint8=True)


def test_uint8_wrapper_predicts_exactly_what_the_float_model_does(data_dir):
    model = models.build_model("study", 32)
    wrapped = train.with_uint8_input(model, 32)
    x = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    floats = input_pipeline.preprocess_for_eval(x).numpy()
    np.testing.assert_array_equal(np.asarray(wrapped(x)), np.asarray(model(floats)))
    assert wrapped.count_params() == model.count_params()
