"""--use_metadata's encoding of age, sex and anatomic site: missing values explicit."""
import numpy as np

from trainer.core import metadata_features as mf


def _row(vec, prefix):
    return {n: v for n, v in zip(mf.FEATURE_NAMES, vec) if n.startswith(prefix)}


def test_encoding_of_known_and_missing_values():
    out = mf.encode(np.array([45.0, -1.0, 130.0, np.nan], np.float32),
                    np.array(["female", "", "MALE ", "unknown"]),
                    np.array(["Head / Neck", "", "lower_extremity", "elbow"])).numpy()
    assert out.shape == (4, mf.METADATA_DIM) == (4, 16)
    np.testing.assert_allclose(out[:, 0], [0.45, 0.0, 1.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], [0, 1, 0, 1])  # age missing
    assert _row(out[0], "sex_") == {"sex_female": 1, "sex_male": 0, "sex_missing": 0}
    assert _row(out[1], "sex_") == {"sex_female": 0, "sex_male": 0, "sex_missing": 1}
    assert _row(out[2], "sex_")["sex_male"] == 1
    assert _row(out[3], "sex_")["sex_missing"] == 1
    sites = [{k for k, v in _row(r, "site_").items() if v} for r in out]
    assert sites == [{"site_head/neck"}, {"site_missing"}, {"site_lower extremity"},
                     {"site_other"}]
    assert np.all(out[:, 2:5].sum(axis=1) == 1) and np.all(out[:, 5:].sum(axis=1) == 1)


# ---------------------------------------------------------------- training and serving

import io  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from tests import shard_fixtures  # noqa: E402

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

SIZE = 32
META = [{"age_approx": 45.0, "sex": "female", "anatom_site": "head/neck"},
        {"age_approx": -1.0, "sex": "", "anatom_site": ""},
        {"age_approx": 70.0, "sex": "male", "anatom_site": "Lower Extremity"},
        {"age_approx": 30.0, "sex": "male", "anatom_site": "torso",
         "diagnosis": "melanoma"}]


@pytest.fixture(scope="module")
def metadata_dataset(tmp_path_factory):
    def items(n, seed):
        return [(img, label, {"diagnosis": "melanoma" if label == "malignant" else "nevus",
                              **{k: v for k, v in META[i % 4].items() if k != "diagnosis"}})
                for i, (img, label) in enumerate(shard_fixtures.random_images(n, 48, seed=seed))]
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("meta"), {"train": items(8, 0), "validation": items(4, 1),
                                          "test": items(4, 2)}, SIZE)


def test_the_pipeline_yields_images_and_metadata(metadata_dataset):
    from trainer.core import input_pipeline

    (images, meta), labels = next(iter(input_pipeline.make_dataset(
        metadata_dataset, "validation", image_size=SIZE, batch_size=4, training=False,
        use_metadata=True)))
    assert images.shape == (4, SIZE, SIZE, 3) and meta.shape == (4, mf.METADATA_DIM)
    assert sorted(meta.numpy()[:, 1].tolist()) == [0, 0, 0, 1]  # one record with age unknown


@pytest.mark.parametrize("task", ["binary", "diagnosis"])
def test_one_step_with_metadata_and_the_export_serves_with_and_without_it(
        metadata_dataset, tmp_path, task):
    import keras
    import tensorflow as tf

    from trainer.cnn import cli, export, train

    workdir = tmp_path / "run"
    config = train.TrainConfig(data_dir=metadata_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=4, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact",
                               use_metadata=True, task=task, min_class_records=1)
    try:
        result = train.train_cnn(config)
        done = cli.evaluate_and_export(result.model, config, bootstrap=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert len(result.model.inputs) == 2
    report = json.loads((workdir / "report.json").read_text())
    assert "test" in report["splits"]
    loaded, serving_config = export.load_exported(done["export"]["export_dir"])
    assert serving_config["metadata"]["signature"] == export.SIGNATURE_METADATA
    pixels = [img for img, _ in shard_fixtures.random_images(2, SIZE, seed=5)]
    blobs = []
    for px in pixels:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    images = np.stack(pixels).astype(np.float32) / 255.0
    age, sex, site = np.array([45.0, -1.0], np.float32), np.array(["female", ""]), \
        np.array(["head/neck", ""])
    key = "probability" if task == "binary" else "probabilities"
    with_meta = loaded.signatures[export.SIGNATURE_METADATA](
        image_bytes=tf.constant(blobs), age=tf.constant(age), sex=tf.constant(sex),
        site=tf.constant(site))[key].numpy()
    encoded = mf.encode(age, sex, site).numpy()
    expected = np.asarray(result.model([images, encoded], training=False))
    without = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs))[key].numpy()
    missing = mf.encode(np.full(2, -1.0, np.float32), np.array(["", ""]),
                        np.array(["", ""])).numpy()
    expected_missing = np.asarray(result.model([images, missing], training=False))
    if task == "binary":
        expected, expected_missing = expected[:, 0], expected_missing[:, 0]
    np.testing.assert_allclose(with_meta, expected, atol=1e-5)
    np.testing.assert_allclose(without, expected_missing, atol=1e-5)
    np.testing.assert_allclose(with_meta[1], without[1], atol=1e-6)  # all missing == default
