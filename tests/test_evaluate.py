"""evaluate_and_report on a tiny dataset of real ISIC images: files, numbers, threshold rule."""
import json
import math
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from isicflow import imaging
from tests import shard_fixtures
from trainer.cnn import evaluation
from trainer.core import metrics, run_folder

SIZE = 32


def tiny_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid", bias_initializer="ones"),
    ])


@pytest.fixture(scope="module")
def images(sample_dir):
    pool = shard_fixtures.load_sample_images(sample_dir, 20)
    return {"train": pool[:4], "validation": pool[4:12], "test": pool[12:20]}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, images):
    # PNG records keep the resized pixels exact, so the expected predictions below can be
    # computed from the images alone, independently of the input pipeline.
    data_dir = shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("data"), images, SIZE,
                                                 image_format="png", num_shards=3)
    workdir = str(tmp_path_factory.mktemp("run"))
    # As history.json is written (trainer.core.run_folder): an "epoch" column, and null where a value was not finite.
    history = {"epoch": [1, 2, 3], "loss": [0.7, 0.6, 0.5], "val_loss": [0.72, None, 0.64],
               "accuracy": [0.5, 0.6, 0.7], "val_accuracy": [0.5, 0.55, 0.6]}
    with open(os.path.join(workdir, "history.json"), "w") as f:
        json.dump(history, f)
    model = tiny_model()
    result = evaluation.evaluate_and_report(model, data_dir, workdir, SIZE, {"batch_size": 3, "run": "t"},
                                          bootstrap=200, seed=1)
    return model, workdir, result


def expected_predictions(model, items):
    pixels = np.stack([np.asarray(imaging.resize_image(px, SIZE)) for px, _ in items])
    probs = model.predict_on_batch(pixels.astype(np.float32) / 255.0)[:, 0].astype(np.float64)
    labels = np.array([1 if label == "malignant" else 0 for _, label in items])
    return labels, probs


def test_predictions_follow_their_labels(evaluated, images):
    model, _, result = evaluated
    for split in ("validation", "test"):
        labels, probs = expected_predictions(model, images[split])
        pairs = sorted(zip(labels.tolist(), probs.tolist()))
        # The report's ROC thresholds are exactly the distinct predicted probabilities.
        got = result["splits"][split]
        assert got["cases"] == len(images[split]) and got["malignant"] == labels.sum()
        np.testing.assert_allclose(sorted(got["roc"]["thresholds"][1:]), sorted(set(probs)), rtol=1e-6)
        assert got["auc"] == pytest.approx(skm.roc_auc_score(*zip(*pairs)), abs=1e-6)


def test_threshold_chosen_on_validation_applied_to_test(evaluated, images):
    model, _, result = evaluated
    val_labels, val_probs = expected_predictions(model, images["validation"])
    chosen = metrics.select_threshold(val_labels, val_probs, min_sensitivity=0.8)
    assert result["threshold"]["threshold"] == pytest.approx(chosen["threshold"], rel=1e-6)
    assert result["threshold"]["policy"] == "max_specificity_at_sensitivity"
    assert result["splits"]["validation"]["sensitivity"] >= 0.8
    test_labels, test_probs = expected_predictions(model, images["test"])
    expected = metrics.classification_metrics(test_labels, test_probs, result["threshold"]["threshold"])
    got = result["splits"]["test"]
    assert got["confusion"] == expected["confusion"]
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    at_study = metrics.classification_metrics(test_labels, test_probs, 0.5)
    assert got["at_study_threshold"]["confusion"] == at_study["confusion"]


def test_report_files_hold_finite_numbers_or_explained_nulls(evaluated):
    _, workdir, result = evaluated
    with open(os.path.join(workdir, "report.json")) as f:
        saved = json.load(f, parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    assert saved["config"] == {"batch_size": 3, "run": "t"}
    assert saved["data"]["splits"]["test"]["records"] == 8
    for split in ("validation", "test"):
        values = saved["splits"][split]
        for name in ("auc", "accuracy", "error_rate", "sensitivity", "specificity"):
            assert isinstance(values[name], float) and 0.0 <= values[name] <= 1.0, (split, name)
        for name in ("precision", "f1"):
            assert values[name] is not None or name in values["undefined"]
        boot = values["bootstrap"]
        assert boot["kept"] + boot["skipped_single_class"] == 200
        auc = boot["intervals"]["auc"]
        assert auc["low"] <= values["auc"] <= auc["high"]
    assert set(saved["plots"]) == {"training_accuracy", "training_loss", "roc", "pr", "confusion"}
    for rel in saved["plots"].values():
        with open(os.path.join(workdir, rel), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = open(os.path.join(workdir, "report.md")).read()
    assert f"{result['threshold']['threshold']:.4f}" in markdown
    assert "![roc](plots/roc.png)" in markdown and "| auc |" in markdown
    assert "| accuracy at the study's 0.5 |" in markdown


def test_read_threshold_from_report(evaluated, tmp_path):
    _, workdir, result = evaluated
    value, source = evaluation.read_threshold(workdir)
    assert value == pytest.approx(result["threshold"]["threshold"]) and "report.json" in source
    assert evaluation.read_threshold(str(tmp_path)) == (0.5, f"default 0.5 (no report.json in {tmp_path})")
    (tmp_path / "report.json").write_text(json.dumps({"threshold": {"threshold": 7}}))
    with pytest.raises(ValueError, match="got 7"):
        evaluation.read_threshold(str(tmp_path))


def test_single_class_validation_falls_back_with_reason(tmp_path, images):
    benign_only = [item for item in images["validation"] if item[1] == "benign"]
    data_dir = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": images["train"], "validation": benign_only,
                            "test": images["test"]}, SIZE, image_format="png", num_shards=1)
    result = evaluation.evaluate_and_report(tiny_model(), data_dir, str(tmp_path / "run"), SIZE, {},
                                          bootstrap=20)
    assert result["threshold"]["policy"] == "fixed" and result["threshold"]["threshold"] == 0.5
    assert "one class only" in result["threshold"]["reason"]
    validation = result["splits"]["validation"]
    assert math.isnan(validation["auc"]) and "one class" in validation["undefined"]["auc"]
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["splits"]["validation"]["auc"] is None
    assert saved["splits"]["test"]["auc"] is not None


def test_history_must_be_lists_of_numbers(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps({"loss": "high"}))
    with pytest.raises(ValueError, match=r"history\['loss'\] must be a list of numbers"):
        run_folder.read_history(str(path))


def test_bad_policy_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="threshold policy 'best'"):
        evaluation.evaluate_and_report(None, str(tmp_path), str(tmp_path), SIZE, {}, threshold_policy="best")
