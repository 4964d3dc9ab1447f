"""External evaluation (trainer.cnn.evaluate), calibration, breakdown, and test-time augmentation:
a tiny model scored on a dataset of real ISIC images written through the engine's contract."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from isicflow import dataset as dataset_lib, imaging
from isicflow.diagnosis import normalise_diagnosis
from isicflow.metadata import LesionRecord
from trainer.cnn import evaluation, export, predict, tta
from trainer.core import metrics

SIZE = 32
THRESHOLD = 0.43
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITES = ("torso", "", "lower extremity")
COLLECTIONS = ("collection A", "collection B")


def tiny_model(seed: int = 5):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),  # not rotation-invariant, so the 8 views differ
        keras.layers.Dense(1, activation="sigmoid"),
    ])


def engine_pixels(path: str) -> np.ndarray:
    """The data engine's decode + resize (what serving rebuilds in-graph, bit for bit)."""
    decoded = imaging.decode_image(open(path, "rb").read(), target=SIZE, mode="squash")
    return np.asarray(imaging.resize_pil(decoded.image, SIZE, "squash"))


@pytest.fixture(scope="module")
def sample(sample_dir):
    """12 real JPEGs (6 benign, 6 malignant) with their sidecar diagnosis; none of the
    degenerate ones the data README lists (the engine never writes them, predict refuses them)."""
    from tests import near_copies

    picked = {"benign": [], "malignant": []}
    degenerate = near_copies.degenerate_ids(sample_dir.parent)
    for sidecar in sorted(sample_dir.glob("ISIC_*.json")):
        if sidecar.stem in degenerate:
            continue
        clinical = json.loads(sidecar.read_text())["meta"]["clinical"]
        label = clinical.get("benign_malignant")
        if label in picked and len(picked[label]) < 6:
            picked[label].append((str(sidecar.with_suffix(".jpg")), label,
                                  clinical.get("diagnosis") or ""))
    return [item for pair in zip(picked["benign"], picked["malignant"]) for item in pair]


@pytest.fixture(scope="module")
def data_dir(sample, tmp_path_factory):
    """Written by isicflow.dataset.write_dataset (the engine's contract), PNG records holding
    exactly the engine's pixels; 4 validation + 8 test images, varied metadata."""
    images = []
    for i, (path, label, diagnosis) in enumerate(sample):
        record = LesionRecord(image_id=os.path.basename(path)[:-4], image_path=path, label=label,
                              diagnosis=diagnosis, anatom_site=SITES[i % 3],
                              source_collection=COLLECTIONS[i % 2],
                              extra_metadata=(("diagnosis_confirm_type", "histopathology"),)
                              if i % 4 < 2 else ())
        images.append(dataset_lib.DatasetImage(
            record, imaging.encode_image(engine_pixels(path), "png"),
            split="validation" if i < 4 else "test"))
    root = str(tmp_path_factory.mktemp("other") / "other-dataset")
    dataset_lib.write_dataset(root, images, image_size=SIZE, image_format="png", layout="test",
                              records_per_shard=3)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as training leaves it: model.keras + report.json's validation threshold."""
    workdir = tmp_path_factory.mktemp("run")
    tiny_model().save(str(workdir / "model.keras"))
    (workdir / "report.json").write_text(json.dumps({"threshold": {
        "threshold": THRESHOLD, "policy": "youden", "reason": "maximizes J on validation"}}))
    return str(workdir)


@pytest.fixture(scope="module")
def external(run_dir, data_dir):
    return evaluation.evaluate_external(run_dir, data_dir, bootstrap=50, batch_size=5)


def test_report_files_keys_and_recorded_threshold(external, run_dir, data_dir):
    out = os.path.join(run_dir, "external", "other-dataset")
    assert external["out"] == out
    saved = json.load(open(os.path.join(out, "report.json")),
                      parse_constant=lambda name: pytest.fail(f"{name} in report.json"))
    for key in ("format", "model", "threshold", "tta", "data", "splits", "calibration",
                "breakdown", "predictions_csv", "plots", "config"):
        assert key in saved, key
    assert saved["threshold"]["threshold"] == THRESHOLD  # never re-chosen on this data
    assert saved["threshold"]["policy"] == "youden" and "report.json" in saved["threshold"]["source"]
    assert saved["config"]["splits"] == ["validation", "test"] and saved["tta"] is False
    assert set(saved["splits"]) == {"validation", "test", "all"}
    for split in ("validation", "test", "all"):
        values = saved["splits"][split]
        assert values["threshold"] == THRESHOLD
        assert 0.0 <= values["auc"] <= 1.0 and "intervals" in values["bootstrap"]
        assert sum(values["confusion"].values()) == values["cases"]
    assert saved["splits"]["all"]["cases"] == 12
    assert set(saved["plots"]) == {"roc", "pr", "confusion", "reliability"}
    for rel in saved["plots"].values():
        assert open(os.path.join(out, rel), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    markdown = open(os.path.join(out, "report.md")).read()
    assert "External evaluation report" in markdown and "## Calibration" in markdown
    assert "not re-tuned" in markdown and "### anatom_site" in markdown


def test_predictions_csv_one_row_per_record(external, run_dir, sample):
    rows = list(csv.DictReader(open(os.path.join(external["out"], "predictions.csv"))))
    assert list(rows[0]) == ["split", "image_id", "label", "probability", "predicted"]
    assert len(rows) == len(sample)
    assert sorted(r["image_id"] for r in rows) == sorted(os.path.basename(p)[:-4] for p, _, _ in sample)
    labels = {os.path.basename(p)[:-4]: int(label == "malignant") for p, label, _ in sample}
    for row in rows:
        assert int(row["label"]) == labels[row["image_id"]]
        assert int(row["predicted"]) == int(float(row["probability"]) >= THRESHOLD)
    # the CSV's numbers are the report's: recompute the test split's confusion from it
    test = [r for r in rows if r["split"] == "test"]
    tp = sum(int(r["label"]) == 1 and int(r["predicted"]) == 1 for r in test)
    assert tp == external["splits"]["test"]["confusion"]["tp"]


def test_predictions_equal_the_model_on_engine_pixels(external, run_dir, sample):
    import keras

    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    rows = {r["image_id"]: float(r["probability"]) for r in
            csv.DictReader(open(os.path.join(external["out"], "predictions.csv")))}
    pixels = np.stack([engine_pixels(p) for p, _, _ in sample]).astype(np.float32) / 255.0
    expected = model.predict_on_batch(pixels)[:, 0]
    for (path, _, _), p in zip(sample, expected):
        assert rows[os.path.basename(path)[:-4]] == pytest.approx(float(p), abs=1e-6)


def test_breakdown_groups_sum_to_totals(external, sample):
    fields = external["breakdown"]["fields"]
    assert set(fields) == {"source_collection", "diagnosis", "anatom_site",
                           "diagnosis_confirmation"}
    for field, info in fields.items():
        groups = info["groups"]
        assert sum(g["cases"] for g in groups.values()) == 12, field
        assert sum(g["malignant"] for g in groups.values()) == 6, field
    assert set(fields["source_collection"]["groups"]) == set(COLLECTIONS)
    assert "(missing)" in fields["anatom_site"]["groups"]
    confirmed = fields["diagnosis_confirmation"]["groups"]  # read from the records' extras
    assert {n: (g["cases"], g["malignant"]) for n, g in confirmed.items()} == {
        "histopathology": (6, 3), "(missing)": (6, 3)}
    assert set(fields["diagnosis"]["groups"]) == {normalise_diagnosis(d) for _, _, d in sample}
    melanoma = fields["diagnosis"]["groups"].get("melanoma")
    if melanoma:  # one class only: AUC and specificity undefined, with reasons
        assert np.isnan(melanoma["auc"]) and "one class" in melanoma["undefined"]["auc"]
        assert "specificity" in melanoma["undefined"]


def test_calibration_in_report_matches_the_csv(external):
    rows = list(csv.DictReader(open(os.path.join(external["out"], "predictions.csv"))))
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    ece = external["calibration"]["all"]["ece"]
    assert 0.0 <= ece <= 1.0
    assert ece == pytest.approx(metrics.expected_calibration_error(y, p)["ece"], abs=1e-6)


def test_ece_by_hand_and_against_sklearn_bins():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.05, 0.1, 0.15, 0.55, 0.6, 0.65, 0.95, 1.0])
    # bins (10 equal-width, right-closed as sklearn): (0,.1] {0.05, 0.1}: mean .075, frac 0;
    # (.1,.2] {.15}: .15 vs 1; (.5,.6] {.55,.6}: .575 vs 1; (.6,.7] {.65}: .65 vs 0;
    # (.9,1] {.95, 1.0}: .975 vs .5
    expected = (2 * 0.075 + 1 * 0.85 + 2 * 0.425 + 1 * 0.65 + 2 * 0.475) / 8
    result = metrics.expected_calibration_error(y, p)
    assert result["ece"] == pytest.approx(expected)
    assert sum(b["cases"] for b in result["per_bin"]) == 8
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    kept = [b for b in result["per_bin"] if b["cases"]]
    np.testing.assert_allclose([b["fraction_malignant"] for b in kept], prob_true)
    np.testing.assert_allclose([b["mean_probability"] for b in kept], prob_pred)
    assert metrics.expected_calibration_error([0, 1], [0.0, 1.0])["ece"] == 0.0
    assert metrics.expected_calibration_error([1, 0], [0.0, 1.0])["ece"] == 1.0
    with pytest.raises(ValueError, match="probabilities"):
        metrics.expected_calibration_error([0, 1], [0.2, 1.5])


def test_tta_is_the_mean_of_the_8_dihedral_views():
    import tensorflow as tf

    model = tiny_model()
    images = np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype(np.float32)
    views = [np.rot90(im, k, axes=(1, 2)) for im in (images, images[:, :, ::-1]) for k in range(4)]
    by_hand = np.mean([model.predict_on_batch(v)[:, 0] for v in views], axis=0)
    assert len({float(np.round(model.predict_on_batch(v)[0, 0], 6)) for v in views}) > 1
    np.testing.assert_allclose(tta.predict_on_batch(model, images, True), by_hand, atol=1e-6)
    served = tta.class_probabilities(model, tf.constant(images), True).numpy()[:, 0]
    np.testing.assert_allclose(served, by_hand, atol=1e-6)
    np.testing.assert_allclose(tta.predict_on_batch(model, images, False),
                               model.predict_on_batch(images)[:, 0], atol=1e-7)


def test_served_equals_evaluated_with_tta(run_dir, data_dir, sample, tmp_path):
    """Export with --tta, serve the original JPEG bytes, and score the dataset with --tta: the
    same probabilities per image (and predict's --tta/--notta pick the matching signature)."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "report.json").write_text(json.dumps({"threshold": {"threshold": THRESHOLD,
                                                                   "policy": "youden"}}))
    paths = export.export_model(model, str(workdir), SIZE, "squash", tta=True)
    config = json.load(open(paths["serving_config"]))
    assert config["tta"] is True
    loaded, _ = export.load_exported(str(workdir))
    files = [p for p, _, _ in sample]
    served = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in files]))["probability"].numpy()
    # the export folder as --model: its threshold and its tta come with it
    result = evaluation.evaluate_external(paths["export_dir"], data_dir, bootstrap=0,
                                        out=str(tmp_path / "scored"))
    assert result["tta"] is True and result["threshold"]["threshold"] == THRESHOLD
    rows = {r["image_id"]: float(r["probability"]) for r in
            csv.DictReader(open(tmp_path / "scored" / "predictions.csv"))}
    evaluated = np.array([rows[os.path.basename(p)[:-4]] for p in files])
    np.testing.assert_allclose(served, evaluated, atol=1e-5)
    plain_rows = {r["image_id"]: float(r["probability"]) for r in csv.DictReader(
        open(os.path.join(run_dir, "external", "other-dataset", "predictions.csv")))}
    plain = np.array([plain_rows[os.path.basename(p)[:-4]] for p in files])
    assert not np.allclose(plain, evaluated, atol=1e-4)  # TTA changed them
    by_predict = predict.predict_files(files[:3], str(workdir), tta=True)
    np.testing.assert_allclose([r.probability for r in by_predict], served[:3], atol=1e-6)
    by_predict = predict.predict_files(files[:3], str(workdir), tta=False)
    np.testing.assert_allclose([r.probability for r in by_predict], plain[:3], atol=1e-5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer.cnn.evaluate", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_cli_one_line_errors(run_dir, data_dir, tmp_path):
    cases = [
        (["--model", str(tmp_path / "nope"), "--data_dir", data_dir], "no such folder"),
        (["--model", run_dir, "--data_dir", str(tmp_path)], "no manifest.json"),
        (["--model", run_dir, "--data_dir", data_dir, "--splits", "train"], "hold no benign/malignant"),
    ]
    for args, message in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("trainer.cnn.evaluate: ") and message in last, proc.stderr


def test_missing_image_size_names_the_sizes(data_dir, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.save(str(tmp_path / "model.keras"))
    (tmp_path / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
    with pytest.raises(evaluation.EvaluationError, match=r"no 16px images .* has sizes \[32\]"):
        evaluation.evaluate_external(str(tmp_path), data_dir, bootstrap=0)


def test_run_without_recorded_threshold_is_refused(data_dir, tmp_path):
    tiny_model().save(str(tmp_path / "model.keras"))
    with pytest.raises(evaluation.EvaluationError, match="no threshold recorded"):
        evaluation.evaluate_external(str(tmp_path), data_dir)
    result = evaluation.evaluate_external(str(tmp_path), data_dir, threshold=0.3, bootstrap=0,
                                        splits="test")
    assert result["threshold"]["source"] == "--threshold" and list(result["splits"]) == ["test"]


def test_diagnosis_model_is_refused_with_a_reason(data_dir, tmp_path):
    import keras

    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                      keras.layers.Dense(3, activation="softmax")]).save(str(tmp_path / "model.keras"))
    with pytest.raises(evaluation.EvaluationError, match="diagnosis head"):
        evaluation.evaluate_external(str(tmp_path), data_dir, threshold=0.5)


def test_training_evaluation_with_tta_carries_over_to_external(data_dir, tmp_path):
    """A run evaluated with --tta chose its threshold on TTA probabilities; scoring that run
    elsewhere uses TTA by default, so the validation split scores as training scored it."""
    model = tiny_model()
    workdir = str(tmp_path / "run")
    trained = evaluation.evaluate_and_report(model, data_dir, workdir, SIZE, {}, bootstrap=0, tta=True)
    model.save(os.path.join(workdir, "model.keras"))
    assert trained["tta"] is True and json.load(open(os.path.join(workdir, "report.json")))["tta"]
    result = evaluation.evaluate_external(workdir, data_dir, bootstrap=0, splits="validation")
    assert result["tta"] is True
    assert result["threshold"]["threshold"] == trained["threshold"]["threshold"]
    assert result["splits"]["validation"]["auc"] == pytest.approx(trained["splits"]["validation"]["auc"])
    assert result["splits"]["validation"]["confusion"] == trained["splits"]["validation"]["confusion"]


def test_a_metadata_model_is_scored_with_each_records_own_metadata(data_dir, sample, tmp_path):
    """A --use_metadata run scored on another dataset (a held-out clinic): each record's age,
    sex and site reach the model's second input, encoded as in training; TTA is refused."""
    from trainer.core import metadata_features

    model = metadata_features.with_metadata_input(tiny_model())
    model.save(str(tmp_path / "model.keras"))
    (tmp_path / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
    result = evaluation.evaluate_external(str(tmp_path), data_dir, bootstrap=0, splits="test")
    with open(os.path.join(result["out"], "predictions.csv"), newline="") as f:
        scored = {r["image_id"]: float(r["probability"]) for r in csv.DictReader(f)}
    ids = [os.path.basename(path)[:-4] for path, _, _ in sample][4:]  # the test split
    sites = [SITES[i % 3] for i in range(4, len(sample))]
    images = np.stack([engine_pixels(path) for path, _, _ in sample][4:]).astype("float32") / 255
    features = metadata_features.encode(np.full(len(ids), -1.0, np.float32),
                                        np.array([""] * len(ids)), np.array(sites))
    expected = np.asarray(model.predict_on_batch([images, np.asarray(features)]))[:, 0]
    np.testing.assert_allclose([scored[i] for i in ids], expected, rtol=1e-5, atol=1e-6)
    blank = np.asarray(model.predict_on_batch([images, np.zeros_like(features)]))[:, 0]
    assert not np.allclose(expected, blank, atol=1e-6)  # the metadata input does matter
    with pytest.raises(evaluation.EvaluationError, match="test-time augmentation is not supported for a --use_metadata model"):
        evaluation.evaluate_external(str(tmp_path), data_dir, bootstrap=0, tta=True)
