"""--metadata_fields: a --use_metadata run may use a subset of age, sex and site; the fields
left out are encoded as missing (same 16-float layout), the run records its fields, and its
evaluation, export and ensembles encode with them."""
import io
import json

import numpy as np
import pytest

from trainer.core import metadata_features as mf

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

AGE = slice(0, 2)  # age_scaled, age_missing
SEX = slice(2, 5)
SITE = slice(5, mf.METADATA_DIM)
AGES = np.array([45.0, -1.0, 130.0, 20.0], np.float32)
SEXES = np.array(["female", "", "MALE", "male"])
SITES = np.array(["head/neck", "", "back", "elbow"])


def test_fields_left_out_are_encoded_as_missing_and_the_others_unchanged():
    full = mf.encode(AGES, SEXES, SITES).numpy()
    no_age = mf.encode(AGES, SEXES, SITES, fields=("sex", "site")).numpy()
    assert no_age.shape == full.shape == (4, mf.METADATA_DIM)
    np.testing.assert_array_equal(no_age[:, 0], 0.0)  # age_scaled, whatever the age
    np.testing.assert_array_equal(no_age[:, 1], 1.0)  # age_missing
    np.testing.assert_array_equal(no_age[:, 2:], full[:, 2:])
    assert not np.array_equal(full[:, AGE], no_age[:, AGE])
    # another age gives the same vector
    other = mf.encode(AGES[::-1].copy(), SEXES, SITES, fields=("sex", "site")).numpy()
    np.testing.assert_array_equal(other, no_age)

    site_only = mf.encode(AGES, SEXES, SITES, 2, "site").numpy()
    np.testing.assert_array_equal(site_only[:, AGE], [[0.0, 1.0]] * 4)
    np.testing.assert_array_equal(site_only[:, SEX], [[0.0, 0.0, 1.0]] * 4)  # sex_missing
    np.testing.assert_array_equal(site_only[:, SITE], full[:, SITE])
    age_sex = mf.encode(AGES, SEXES, SITES, fields=["age", "sex"]).numpy()
    np.testing.assert_array_equal(age_sex[:, :5], full[:, :5])
    missing_site = np.zeros(SITE.stop - SITE.start, np.float32)
    missing_site[-1] = 1.0
    np.testing.assert_array_equal(age_sex[:, SITE], [missing_site] * 4)
    record = {"age_approx": AGES, "sex": SEXES, "anatom_site": SITES}
    np.testing.assert_array_equal(mf.encode_record(record, 2, ("sex", "site")).numpy(), no_age)
    np.testing.assert_array_equal(mf.encode_record(record, 2).numpy(), full)


def test_check_fields_gives_the_canonical_order_and_names_bad_entries():
    assert mf.check_fields("site, sex") == ("sex", "site")
    assert mf.check_fields(["age", "sex", "site"]) == mf.FIELDS == ("age", "sex", "site")
    with pytest.raises(ValueError, match=r"unknown or empty \['weight'\]"):
        mf.check_fields("age,weight")
    with pytest.raises(ValueError, match="name at least one of age, sex, site"):
        mf.check_fields("")
    with pytest.raises(ValueError, match=r"unknown or empty \[''\]"):
        mf.check_fields("age,,sex")
    with pytest.raises(ValueError, match=r"\['sex'\] given more than once"):
        mf.check_fields("sex,site,sex")
    with pytest.raises(ValueError, match="unknown"):
        mf.encode(AGES, SEXES, SITES, fields=("age", "height"))


def test_run_fields_of_old_and_new_configs():
    assert mf.run_fields({"use_metadata": True}) == mf.FIELDS  # before --metadata_fields
    assert mf.run_fields({"metadata_fields": "site,sex"}) == ("sex", "site")
    assert mf.run_fields({"metadata_fields": ["sex", "site"]}) == ("sex", "site")
    with pytest.raises(ValueError, match="weight"):
        mf.run_fields({"metadata_fields": "weight"})


# ------------------------------------------------------------------------ the run's config

def test_config_validates_the_fields_and_needs_use_metadata(tmp_path):
    from trainer.cnn import config as config_lib

    c = config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), use_metadata=True,
                               metadata_fields="sex,site")
    assert c.metadata_fields == "sex,site"
    from trainer.cnn import tasks  # what both tasks' training datasets are built with
    assert tasks._common(c, False, {})["metadata_fields"] == "sex,site"
    assert config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path)).metadata_fields == \
        "age,sex,site"
    with pytest.raises(config_lib.ConfigError, match="--metadata_fields=age,weight: must be"):
        config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), use_metadata=True,
                               metadata_fields="age,weight")
    with pytest.raises(config_lib.ConfigError,
                       match="--use_metadata=False, --metadata_fields=sex: --metadata_fields "
                             "chooses"):
        config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), metadata_fields="sex")
    # all three, in any order, is the default's meaning: allowed without --use_metadata
    config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), metadata_fields="site,age,sex")


def test_a_resume_keeps_the_runs_fields(tmp_path):
    from trainer.cnn import config as config_lib

    def config(**kw):
        return config_lib.TrainConfig(data_dir="d", workdir=str(tmp_path), use_metadata=True,
                                      **kw)

    # a run folder started before --metadata_fields: all three
    (tmp_path / config_lib.TRAIN_CONFIG_NAME).write_text(json.dumps(
        {"use_metadata": True, "metadata_encoding": 2}))
    with pytest.raises(config_lib.ConfigError,
                       match=r"--metadata_fields=sex,site \(the run has age,sex,site\)"):
        config_lib.check_resume(config(metadata_fields="sex,site"))
    config_lib.check_resume(config())
    (tmp_path / config_lib.TRAIN_CONFIG_NAME).write_text(json.dumps(
        {"use_metadata": True, "metadata_encoding": 2, "metadata_fields": "sex,site"}))
    config_lib.check_resume(config(metadata_fields="site,sex"))  # the same fields
    with pytest.raises(config_lib.ConfigError, match=r"\(the run has sex,site\)"):
        config_lib.check_resume(config())


def test_the_flag_sets_the_field_and_is_validated():
    from absl import flags

    from trainer.cnn import cli, config as config_lib

    cli.define_flags()
    try:
        flags.FLAGS(["trainer.cnn", "--use_metadata", "--metadata_fields=sex,site"])
        assert config_lib.TrainConfig.from_flags().metadata_fields == "sex,site"
    finally:
        flags.FLAGS.unparse_flags()
    for argv, message in ((["--use_metadata", "--metadata_fields=age,weight"], "must be a comma"),
                          (["--metadata_fields=site"], "without --use_metadata")):
        try:
            with pytest.raises(flags.IllegalFlagValueError, match=message):
                flags.FLAGS(["trainer.cnn"] + argv)
        finally:
            flags.FLAGS.unparse_flags()


def test_ensemble_members_must_agree_on_the_fields(tmp_path):
    from trainer.cnn import ensemble
    from trainer.cnn.constants import TRAIN_CONFIG_NAME

    def run(name, **extra):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"")  # read_member checks it exists only
        (folder / TRAIN_CONFIG_NAME).write_text(json.dumps(
            {"task": "binary", "image_size": 32, "use_metadata": True, "metadata_encoding": 2,
             "data_dir": "d", **extra}))
        return ensemble.read_member(str(folder))

    old, same, fewer = run("old"), run("all", metadata_fields="age,sex,site"), \
        run("fewer", metadata_fields="sex,site")
    ensemble.check_agreement([old, same])  # no key: all three
    with pytest.raises(ensemble.EnsembleError,
                       match=r"fewer has metadata_fields=\['sex', 'site'\] but .*old has "
                             r"\['age', 'sex', 'site'\]"):
        ensemble.check_agreement([old, fewer])
    assert ensemble.ensemble_config([fewer, fewer], "d")["metadata_fields"] == ["sex", "site"]


# ------------------------------------------------------ a trained run and what reads it

# The tiny metadata dataset (its four patients, ages 45 / unknown / 70 / 30, three of known
# sex) of the metadata tests, shared rather than written twice.
from tests.test_metadata_features import SIZE, metadata_dataset  # noqa: E402,F401


def test_the_pipelines_encode_with_the_fields_given(metadata_dataset):
    from trainer.core import input_pipeline

    (_, meta), _ = next(iter(input_pipeline.make_dataset(
        metadata_dataset, "validation", image_size=SIZE, batch_size=4, training=False,
        use_metadata=True, metadata_fields=("sex", "site"))))
    np.testing.assert_array_equal(meta.numpy()[:, AGE], [[0.0, 1.0]] * 4)
    assert meta.numpy()[:, 2:4].sum() == 3  # three records of known sex
    (_, meta), _, _ = next(iter(input_pipeline.make_eval_dataset_with_metadata(
        metadata_dataset, "validation", image_size=SIZE, batch_size=4, metadata_input=True,
        metadata_fields="site")))
    np.testing.assert_array_equal(meta.numpy()[:, AGE.start:SEX.stop],
                                  [[0.0, 1.0, 0.0, 0.0, 1.0]] * 4)


def test_a_run_trained_without_age_records_it_and_its_readers_use_it(metadata_dataset,
                                                                      tmp_path):
    import keras
    import tensorflow as tf
    from PIL import Image

    from tests import shard_fixtures
    from trainer.cnn import cli, evaluation, export, train

    workdir = tmp_path / "run"
    config = train.TrainConfig(data_dir=metadata_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=4, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact",
                               use_metadata=True, metadata_fields="sex,site")
    try:
        result = train.train_cnn(config)
        done = cli.evaluate_and_export(result.model, config, bootstrap=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.model.inputs[1].shape[-1] == mf.METADATA_DIM  # the shape is unchanged
    assert json.loads((workdir / "train_config.json").read_text())["metadata_fields"] == \
        "sex,site"
    report = json.loads((workdir / "report.json").read_text())
    assert report["config"]["metadata_fields"] == "sex,site"
    assert evaluation.resolve_model(str(workdir))["metadata_fields"] == ["sex", "site"]
    export_dir = done["export"]["export_dir"]
    loaded, serving = export.load_exported(export_dir)
    assert serving["metadata"]["metadata_fields"] == ["sex", "site"]
    assert serving["metadata"]["metadata_encoding"] == mf.ENCODING_VERSION
    assert evaluation.resolve_model(export_dir)["metadata_fields"] == ["sex", "site"]

    pixels = [img for img, _ in shard_fixtures.random_images(3, SIZE, seed=5)]
    blobs = []
    for px in pixels:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    sex, site = np.array(["female", "", "male"]), np.array(["head/neck", "", "torso"])

    def serve(age):
        return loaded.signatures[export.SIGNATURE_METADATA](
            image_bytes=tf.constant(blobs), age=tf.constant(np.array(age, np.float32)),
            sex=tf.constant(sex), site=tf.constant(site))["probability"].numpy()

    young, old = serve([20.0, 30.0, 40.0]), serve([90.0, -1.0, 75.0])
    np.testing.assert_array_equal(young, old)  # age is not used
    images = np.stack(pixels).astype(np.float32) / 255.0
    no_age = mf.encode(np.array([20.0, 30.0, 40.0], np.float32), sex, site,
                       fields=("sex", "site")).numpy()
    expected = np.asarray(result.model([images, no_age], training=False))[:, 0]
    np.testing.assert_allclose(young, expected, atol=1e-5)
    # the model itself does react to the age features, so the equality above is the export's
    with_age = mf.encode(np.array([20.0, 30.0, 40.0], np.float32), sex, site).numpy()
    assert not np.allclose(np.asarray(result.model([images, with_age], training=False))[:, 0],
                           expected, atol=1e-7)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("config, fields", [
    ({"use_metadata": True}, mf.FIELDS),
    ({"use_metadata": True, "metadata_fields": "site,sex"}, ("sex", "site"))])
def test_evaluation_uses_the_runs_recorded_fields(metadata_dataset, tmp_path, monkeypatch,
                                                  config, fields):
    """Both tasks' evaluation of a run: its config's fields (none recorded: all) reach the
    prediction."""
    from trainer.cnn import diagnosis, evaluation

    seen = []

    def spy(*args, **kwargs):
        seen.append(tuple(kwargs["metadata_fields"] if "metadata_fields" in kwargs
                          else args[9]))
        raise _Stop

    monkeypatch.setattr(evaluation, "predict_split", spy)
    with pytest.raises(_Stop):
        evaluation.evaluate_and_report(None, metadata_dataset, str(tmp_path / "b"), SIZE,
                                       config, bootstrap=0)
    monkeypatch.setattr(diagnosis, "predict_split", spy)
    diagnosis.write_mapping(str(tmp_path / "d"), diagnosis.build_mapping(metadata_dataset,
                                                                         SIZE, 1))
    with pytest.raises(_Stop):
        diagnosis.evaluate_and_report(None, metadata_dataset, str(tmp_path / "d"), SIZE, config)
    assert seen == [fields, fields]


def test_a_run_without_report_is_read_with_its_train_config(tmp_path):
    """A run trained with --evaluate=false has no report.json: its evaluation must still encode
    with the fields and version it trained with (train_config.json), not all fields, version 1."""
    from trainer.cnn import evaluation

    (tmp_path / "model.keras").write_bytes(b"not loaded by resolve_model")
    (tmp_path / "train_config.json").write_text(json.dumps(
        {"use_metadata": True, "metadata_fields": "sex,site", "metadata_encoding": 2}))
    model = evaluation.resolve_model(str(tmp_path), threshold_override=0.5)
    assert model["metadata_fields"] == ["sex", "site"]
    assert model["metadata_encoding"] == 2
