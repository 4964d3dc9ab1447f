"""A seed ensemble exported as one model: served probability = the members' mean, threshold
chosen anew on their validation split, mismatched members refused, the card names them."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import near_copies, shard_fixtures
from trainer.cnn import ensemble, evaluation, export, predict
from trainer.cnn.constants import TRAIN_CONFIG_NAME
from trainer.core import input_pipeline, report as report_lib, run_folder

SIZE = 32
SEEDS = (1, 2, 3)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid",
                           bias_initializer=keras.initializers.RandomNormal(stddev=1.0)),
    ], name="study")


def tiny_run(folder, data_dir: str, seed: int, use_metadata: bool = False) -> str:
    """A run folder as training leaves it: model.keras, train_config.json and a report.json
    with what the ensemble reads (its threshold, policy, tta and dataset; written by hand, as
    in test_export_predict, since scoring and plotting each member would only cost time)."""
    os.makedirs(folder, exist_ok=True)
    # seed 1 predates metadata_encoding (no key): image-only members need not agree on it
    config = {"task": "binary", "image_size": SIZE, "use_metadata": use_metadata,
              **({"metadata_encoding": 2} if seed != 1 or use_metadata else {}),
              "color_constancy": "none", "center_crop": 1.0, "model": "study", "seed": seed,
              "epochs": 1, "data_dir": data_dir, "workdir": str(folder)}
    run_folder.write_json(os.path.join(folder, TRAIN_CONFIG_NAME), config)
    model = tiny_model(seed)
    if use_metadata:
        from trainer.core import metadata_features

        model = metadata_features.with_metadata_input(model)
    model.save(os.path.join(folder, "model.keras"))
    run_folder.write_json(os.path.join(folder, "report.json"), {
        "config": config, "tta": False, "data": {"data_dir": data_dir},
        "threshold": {"threshold": 0.1 * seed, "policy": "youden"}})
    return str(folder)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, sample_dir):
    return shard_fixtures.write_sample_dataset(
        tmp_path_factory.mktemp("data"), sample_dir, SIZE,
        {"train": 2, "validation": 10, "test": 6}, image_format="png")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("runs")
    return [tiny_run(root / f"seed{s}", data_dir, s) for s in SEEDS]


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """The user's command, as a program: python -m trainer.cnn.export --model=... --output=..."""
    out = str(tmp_path_factory.mktemp("ensemble") / "ens")
    proc = subprocess.run([sys.executable, "-m", "trainer.cnn.export", f"--model={','.join(runs)}",
                           f"--output={out}", "--bootstrap=20"], cwd=REPO_ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ensemble of 3 runs exported" in proc.stdout
    return out


@pytest.fixture(scope="module")
def image_files(sample_dir):
    """Real ISIC JPEGs predict accepts (none the data README lists as degenerate)."""
    degenerate = near_copies.degenerate_ids(sample_dir.parent)
    return [str(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))
            if p.stem not in degenerate][100:106]


def members_mean(runs, pixels: np.ndarray) -> np.ndarray:
    from trainer.cnn.models import load_keras_model

    scaled = input_pipeline.preprocess_for_eval(pixels)
    return np.mean([load_keras_model(os.path.join(r, "model.keras")).predict_on_batch(scaled)[:, 0]
                    for r in runs], axis=0)


def test_served_probability_is_the_members_mean_and_predict_serves_it(
        runs, exported, image_files):
    import tensorflow as tf

    loaded, config = export.load_exported(exported)  # the ensemble folder, as a run dir
    contents = tf.constant([open(p, "rb").read() for p in image_files])
    pixels = loaded.signatures["preprocess"](image_bytes=contents)["pixels"].numpy()
    served = loaded.signatures["serving_default"](image_bytes=contents)["probability"].numpy()
    expected = members_mean(runs, pixels)
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert np.ptp(expected) > 0  # not a constant model
    results = predict.predict_files(image_files, exported)
    assert all(r.error is None and r.rejected is None for r in results), results
    np.testing.assert_allclose([r.probability for r in results], expected, atol=1e-5)
    assert [r.label for r in results] == ["malignant" if p >= config["threshold"] else "benign"
                                          for p in served]


def test_threshold_is_chosen_on_the_ensembles_validation_probabilities(runs, exported, data_dir):
    from trainer.cnn.models import load_keras_model

    config = json.load(open(os.path.join(exported, "export", "serving_config.json")))
    per_member = [evaluation.predict_split(load_keras_model(os.path.join(r, "model.keras")),
                                           data_dir, "validation", SIZE) for r in runs]
    labels = per_member[0][0]
    mean = np.mean([p for _, p in per_member], axis=0)
    chosen = evaluation.choose_threshold(labels, mean, "youden", 0.8)  # the members' policy
    assert config["threshold"] == pytest.approx(chosen["threshold"])
    assert "youden" in config["threshold_source"] and exported in config["threshold_source"]
    own = [m["own_threshold"] for m in config["ensemble"]["members"]]
    assert own == [json.load(open(os.path.join(r, "report.json")))["threshold"]["threshold"]
                   for r in runs]
    assert [m["run"] for m in config["ensemble"]["members"]] == runs
    assert "members' own thresholds are not used" in config["ensemble"]["threshold"]
    report = json.load(open(os.path.join(exported, "report.json")))  # the ensemble's own
    assert report["config"]["seed"] == list(SEEDS) and report["config"]["image_size"] == SIZE
    assert report["splits"]["test"]["cases"] == 6


def test_model_card_names_the_members_and_claims_only_the_ensembles_numbers(runs, exported):
    card = open(os.path.join(exported, "export", "MODEL_CARD.md"), encoding="utf-8").read()
    assert "seed ensemble of 3 runs" in card and "**ensemble of 3 runs**" in card
    for run, seed in zip(runs, SEEDS):
        assert f"`{run}` (seed {seed}" in card
    assert "Measured on the ensemble itself" in card
    report = json.load(open(os.path.join(exported, "report.json")))
    auc = report["splits"]["test"]["auc"]
    assert f"| test | 6 | 3 | {report_lib.format_number(auc)}" in card  # the ensemble's measured test AUC
    assert "one training run (one seed)" not in card


def test_keras_file_reloads_to_the_averaging_model(runs, exported):
    from trainer.cnn.models import load_keras_model

    reloaded = load_keras_model(os.path.join(exported, "export", "model.keras"))
    batch = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    np.testing.assert_allclose(
        reloaded.predict_on_batch(input_pipeline.preprocess_for_eval(batch))[:, 0],
        members_mean(runs, batch), atol=1e-6)


@pytest.mark.parametrize("setting, value", [("image_size", 64), ("color_constancy",
                                                                 "shades_of_grey"),
                                            ("center_crop", 0.5), ("task", "diagnosis"),
                                            ("use_metadata", True)])
def test_members_that_disagree_are_refused_naming_run_and_setting(runs, tmp_path, setting,
                                                                  value):
    odd = str(tmp_path / "odd")
    shutil.copytree(runs[1], odd)
    path = os.path.join(odd, TRAIN_CONFIG_NAME)
    config = json.load(open(path))
    run_folder.write_json(path, {**config, setting: value})
    with pytest.raises(ensemble.EnsembleError, match=f"{odd} has {setting}="):
        ensemble.export_ensemble([runs[0], odd], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # refused before anything is written


def test_other_dataset_or_missing_data_is_refused_not_guessed(runs, tmp_path, data_dir):
    odd = str(tmp_path / "odd")
    shutil.copytree(runs[1], odd)
    report = json.load(open(os.path.join(odd, "report.json")))
    report["data"]["data_dir"] = str(tmp_path / "elsewhere")
    run_folder.write_json(os.path.join(odd, "report.json"), report)
    with pytest.raises(ensemble.EnsembleError, match="has data_dir="):
        ensemble.export_ensemble([runs[0], odd], str(tmp_path / "out"))
    with pytest.raises(ensemble.EnsembleError, match="dataset, which cannot be read"):
        ensemble.export_ensemble(runs[:2], str(tmp_path / "out"), data_dir=str(tmp_path / "gone"))
    with pytest.raises(ensemble.EnsembleError, match="two or more runs"):
        ensemble.export_ensemble(runs[:1], str(tmp_path / "out"))
    with pytest.raises(ensemble.EnsembleError, match="is a training run folder"):
        ensemble.export_ensemble(runs[:2], runs[2])


def test_members_with_different_threshold_policies_need_one_given(runs, tmp_path):
    odd = str(tmp_path / "odd")
    shutil.copytree(runs[1], odd)
    report = json.load(open(os.path.join(odd, "report.json")))
    report["threshold"]["policy"] = "fixed"
    run_folder.write_json(os.path.join(odd, "report.json"), report)
    with pytest.raises(ensemble.EnsembleError, match="pass --threshold_policy"):
        ensemble.export_ensemble([runs[0], odd], str(tmp_path / "out"))


def test_metadata_members_serve_the_mean_with_their_encoding(data_dir, tmp_path, image_files):
    import tensorflow as tf

    from trainer.cnn.models import load_keras_model
    from trainer.core import metadata_features

    runs = [tiny_run(tmp_path / f"meta{s}", data_dir, s, use_metadata=True) for s in (1, 2)]
    paths = ensemble.export_ensemble(runs, str(tmp_path / "ens"), bootstrap=0)
    loaded, config = export.load_exported(paths["export_dir"])
    assert config["metadata"]["metadata_encoding"] == 2 and len(config["ensemble"]["members"]) == 2
    contents = tf.constant([open(p, "rb").read() for p in image_files[:3]])
    age, sex, site = tf.constant([50.0, -1.0, 30.0]), tf.constant(["male", "", "female"]), \
        tf.constant(["back", "", "palms/soles"])
    served = loaded.signatures[export.SIGNATURE_METADATA](
        image_bytes=contents, age=age, sex=sex, site=site)["probability"].numpy()
    pixels = loaded.signatures["preprocess"](image_bytes=contents)["pixels"].numpy()
    features = metadata_features.encode(age, sex, site, 2)
    expected = np.mean([load_keras_model(os.path.join(r, "model.keras")).predict_on_batch(
        [input_pipeline.preprocess_for_eval(pixels), features])[:, 0] for r in runs], axis=0)
    np.testing.assert_allclose(served, expected, atol=1e-6)
