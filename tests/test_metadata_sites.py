"""--use_metadata's encoding versions: version 2 maps HAM10000's `localization` names onto ISIC's
anatom_site_general; version 1 (runs trained before it) stays as it was, and a run's readers
use the run's own version."""
import json

import numpy as np
import pytest

from trainer.core import metadata_features as mf

# HAM10000_metadata.csv's `localization` values -> the site feature version 2 sets
HAM_SITES = {
    "back": "site_posterior torso", "chest": "site_anterior torso",
    "abdomen": "site_anterior torso", "trunk": "site_torso", "face": "site_head/neck",
    "scalp": "site_head/neck", "neck": "site_head/neck", "ear": "site_head/neck",
    "genital": "site_oral/genital", "acral": "site_palms/soles",
    "foot": "site_lower extremity", "hand": "site_upper extremity",
    "lower extremity": "site_lower extremity", "upper extremity": "site_upper extremity",
    "unknown": "site_missing",
}
SITE_START = mf.FEATURE_NAMES.index(f"site_{mf.SITES[0]}")


def _site_features(sites, version):
    n = len(sites)
    out = mf.encode(np.full(n, 50.0, np.float32), np.array(["female"] * n), np.array(sites),
                    version).numpy()
    assert np.all(out[:, SITE_START:].sum(axis=1) == 1)  # one site feature each
    return [mf.FEATURE_NAMES[SITE_START + int(np.argmax(row[SITE_START:]))] for row in out]


def test_every_ham10000_site_name_is_covered(sample_dir):
    """Every `localization` of the shared HAM10000 download (beside isic-uda1 in
    ../shared/data, as CI has it) maps to a site feature."""
    import csv

    path = sample_dir.parent / "ham10000-5984" / "HAM10000_metadata.csv"
    with open(path, newline="", encoding="utf-8") as f:
        names = {row["localization"] for row in csv.DictReader(f)}
    assert names == set(HAM_SITES)


def test_version_2_maps_ham10000_sites_onto_isic_general_sites():
    sites = list(HAM_SITES)
    assert _site_features(sites, 2) == list(HAM_SITES.values())
    # the normalisation runs first: case, spaces and '_' as in ISIC's own names
    assert _site_features([" Back", "LOWER_EXTREMITY", "Unknown "], 2) == [
        "site_posterior torso", "site_lower extremity", "site_missing"]


def test_version_2_keeps_isic_names_and_unlisted_sites():
    isic = list(mf.SITES) + ["", "elbow"]
    expected = [f"site_{s}" for s in mf.SITES] + ["site_missing", "site_other"]
    assert _site_features(isic, 2) == _site_features(isic, 1) == expected


def test_version_1_is_the_encoding_before_version_2():
    """The same inputs as version 2's test: HAM's words are `other` (even "unknown"), only the
    extremities match, and age/sex features are identical across versions."""
    v1 = _site_features(list(HAM_SITES), 1)
    assert v1 == ["site_lower extremity" if s == "lower extremity" else
                  "site_upper extremity" if s == "upper extremity" else "site_other"
                  for s in HAM_SITES]
    age, sex = np.array([45.0, -1.0], np.float32), np.array(["male", ""])
    site = np.array(["back", "unknown"])
    one, two = mf.encode(age, sex, site, 1).numpy(), mf.encode(age, sex, site, 2).numpy()
    np.testing.assert_array_equal(one[:, :SITE_START], two[:, :SITE_START])
    assert not np.array_equal(one, two)


def test_version_1_output_is_pinned():
    """Version 1's vectors, written out: a model trained with it is evaluated and served with
    these exact floats."""
    out = mf.encode(np.array([45.0, -1.0, 130.0], np.float32), np.array(["female", "", "MALE"]),
                    np.array(["back", "unknown", "Head / Neck"]), 1).numpy()
    other, missing = mf.FEATURE_NAMES.index("site_other"), mf.FEATURE_NAMES.index("site_missing")
    expected = np.zeros((3, 16), np.float32)
    expected[0, [0, 2, other]] = [0.45, 1, 1]
    expected[1, [1, 4, other]] = 1
    expected[2, [0, 3, mf.FEATURE_NAMES.index("site_head/neck")]] = 1
    assert missing == 15
    np.testing.assert_array_equal(out, expected)


def test_encode_record_takes_the_version():
    record = {"age_approx": np.float32(30.0), "sex": np.array("male"),
              "anatom_site": np.array("face")}
    assert mf.FEATURE_NAMES[int(np.argmax(mf.encode_record(record, 1).numpy()[SITE_START:]))
                            + SITE_START] == "site_other"
    assert mf.FEATURE_NAMES[int(np.argmax(mf.encode_record(record).numpy()[SITE_START:]))
                            + SITE_START] == "site_head/neck"  # the default: ENCODING_VERSION


@pytest.mark.parametrize("bad", [0, 3, "2", None, True, 2.5])
def test_an_unknown_version_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=f"version {bad!r} is unknown"):
        mf.encode(np.float32(30.0), "male", "back", bad)
    with pytest.raises(ValueError, match=f"version {bad!r} is unknown"):
        mf.run_encoding({"use_metadata": True, "metadata_encoding": bad})


def test_a_run_config_without_the_key_reads_as_version_1():
    assert mf.ENCODING_VERSION == 2 and mf.ENCODING_VERSIONS == (1, 2)
    assert mf.run_encoding({"use_metadata": True}) == 1  # a run trained before version 2
    assert mf.run_encoding({"use_metadata": True, "metadata_encoding": 2}) == 2
    assert mf.run_encoding({"use_metadata": True, "metadata_encoding": 1}) == 1


def test_new_runs_record_the_current_version_and_a_resume_keeps_the_runs(tmp_path):
    from trainer.cnn import config as config_lib

    c = config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), use_metadata=True)
    assert c.metadata_encoding == mf.ENCODING_VERSION
    with pytest.raises(config_lib.ConfigError, match="--metadata_encoding=3: must be one of"):
        config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), metadata_encoding=3)
    # a run folder started before version 2: its train_config.json has no key
    (tmp_path / config_lib.TRAIN_CONFIG_NAME).write_text(json.dumps({"use_metadata": True}))
    with pytest.raises(config_lib.ConfigError,
                       match=r"--metadata_encoding=2 \(the run has 1\)"):
        config_lib.check_resume(c)
    config_lib.check_resume(config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path),
                                                   use_metadata=True, metadata_encoding=1))


def test_the_flag_sets_the_field():
    from absl import flags

    from trainer.cnn import cli, config as config_lib

    cli.define_flags()
    try:
        flags.FLAGS(["trainer.cnn", "--metadata_encoding=1"])
        assert config_lib.TrainConfig.from_flags().metadata_encoding == 1
    finally:
        flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="must be one of 1, 2"):
            flags.FLAGS(["trainer.cnn", "--metadata_encoding=7"])
    finally:
        flags.FLAGS.unparse_flags()


# ------------------------------------------------- the run's version reaches its readers

SIZE = 32
RECORD_SITES = ("back", "unknown", "face", "acral")


@pytest.fixture(scope="module")
def ham_sites_dataset(tmp_path_factory):
    from tests import shard_fixtures

    def items(n, seed):
        return [(img, label, {"diagnosis": "melanoma" if label == "malignant" else "nevus",
                              "age_approx": 40.0 + i, "sex": "female",
                              "anatom_site": RECORD_SITES[i % 4]})
                for i, (img, label) in enumerate(shard_fixtures.random_images(n, 40, seed=seed))]
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("ham_sites"), {"train": items(8, 0), "validation": items(4, 1),
                                               "test": items(4, 2)}, SIZE, num_shards=1)


def _features_by_site(features):
    return {mf.FEATURE_NAMES[SITE_START + int(np.argmax(row[SITE_START:]))]
            for row in np.asarray(features)}


@pytest.mark.parametrize("version, expected", [
    (1, {"site_other"}),
    (2, {"site_posterior torso", "site_missing", "site_head/neck", "site_palms/soles"})])
def test_the_pipelines_encode_with_the_version_given(ham_sites_dataset, version, expected):
    from trainer.core import input_pipeline

    (_, meta), _ = next(iter(input_pipeline.make_dataset(
        ham_sites_dataset, "validation", image_size=SIZE, batch_size=4, training=False,
        use_metadata=True, metadata_encoding=version)))
    assert _features_by_site(meta) == expected
    (_, meta), _, _ = next(iter(input_pipeline.make_eval_dataset_with_metadata(
        ham_sites_dataset, "validation", image_size=SIZE, batch_size=4, metadata_input=True,
        metadata_encoding=version)))
    assert _features_by_site(meta) == expected


class _Stop(Exception):
    pass


@pytest.mark.parametrize("config, version", [
    ({"use_metadata": True}, 1), ({"use_metadata": True, "metadata_encoding": 2}, 2)])
def test_evaluation_uses_the_runs_recorded_version(ham_sites_dataset, tmp_path, monkeypatch,
                                                   config, version):
    """Both tasks' evaluation of a run: its config's version (none recorded: 1) reaches the
    dataset."""
    from trainer.cnn import diagnosis, evaluation

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("metadata_encoding", args[8] if len(args) > 8 else None))
        raise _Stop

    monkeypatch.setattr(evaluation, "predict_split", spy)
    with pytest.raises(_Stop):
        evaluation.evaluate_and_report(None, ham_sites_dataset, str(tmp_path / "b"), SIZE,
                                       config, bootstrap=0)
    monkeypatch.setattr(diagnosis, "predict_split", spy)
    diagnosis.write_mapping(str(tmp_path / "d"), diagnosis.build_mapping(ham_sites_dataset,
                                                                         SIZE, 1))
    with pytest.raises(_Stop):
        diagnosis.evaluate_and_report(None, ham_sites_dataset, str(tmp_path / "d"), SIZE, config)
    assert seen == [version, version]


def _site_sensitive_model():
    """A metadata model whose probability moves with each metadata feature (and not the
    image), so a wrong site feature shows in what it serves."""
    import keras

    image = keras.Input((SIZE, SIZE, 3))
    metadata = keras.Input((mf.METADATA_DIM,), name="metadata")
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(image), metadata])
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    model = keras.Model([image, metadata], out)
    kernel = np.zeros((3 + mf.METADATA_DIM, 1), np.float32)
    kernel[3:, 0] = np.linspace(-2.0, 2.0, mf.METADATA_DIM)
    model.layers[-1].set_weights([kernel, np.zeros(1, np.float32)])
    return model


@pytest.mark.parametrize("run_config, version", [
    ({"use_metadata": True}, 1), ({"use_metadata": True, "metadata_encoding": 2}, 2)])
def test_the_export_serves_with_the_runs_version(tmp_path, run_config, version):
    import io

    import tensorflow as tf
    from PIL import Image

    from tests import shard_fixtures
    from trainer.cnn import evaluation, export

    model = _site_sensitive_model()
    paths = export.export_model(model, str(tmp_path), SIZE, threshold=0.5,
                                run_config=run_config)
    loaded, serving = export.load_exported(paths["export_dir"])
    assert serving["metadata"]["metadata_encoding"] == version
    assert evaluation.resolve_model(paths["export_dir"])["metadata_encoding"] == version
    pixels = [img for img, _ in shard_fixtures.random_images(3, SIZE, seed=3)]
    blobs = []
    for px in pixels:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    age, sex = np.array([45.0, -1.0, 60.0], np.float32), np.array(["female", "", "male"])
    site = np.array(["back", "unknown", "acral"])
    served = loaded.signatures[export.SIGNATURE_METADATA](
        image_bytes=tf.constant(blobs), age=tf.constant(age), sex=tf.constant(sex),
        site=tf.constant(site))["probability"].numpy()
    images = np.stack(pixels).astype(np.float32) / 255.0
    expected = {v: np.asarray(model([images, mf.encode(age, sex, site, v).numpy()]))[:, 0]
                for v in mf.ENCODING_VERSIONS}
    np.testing.assert_allclose(served, expected[version], atol=1e-6)
    assert np.abs(expected[1] - expected[2]).min() > 1e-2  # the versions are told apart
