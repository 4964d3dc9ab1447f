"""Unsupervised adaptation to a new clinic (trainer.cnn.adapt_batchnorm, evaluate
--adapt_batchnorm): the statistics, the folds, the cross-fit, and both tasks end to end."""
import csv
import json
import os

import numpy as np
import pytest

from isicflow.diagnosis import normalise_diagnosis
from tests import shard_fixtures
from trainer.cnn import adapt_batchnorm as adapt

SIZE = 32


def _bn_chain(dropout: float = 0.0):
    """image -> [dropout] -> BN1 -> x*3+1 -> BN2 -> mean -> sigmoid: BN2's input depends on BN1's
    statistics, so it shows whether later layers see the adapted earlier ones."""
    import keras

    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Dropout(dropout)(inputs) if dropout else inputs
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Rescaling(3.0, offset=1.0)(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def _images(n: int, mean: float, sd: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.normal(mean, sd, (n, 4, 4, 3)).astype("float32"))


def test_fold_of_is_fixed_by_the_id_in_range_and_balanced():
    ids = [f"ISIC_{i:07d}" for i in range(2000)]
    folds = adapt.fold_of(ids, 3)
    assert folds.min() == 0 and folds.max() == 2
    np.testing.assert_array_equal(folds[::-1], adapt.fold_of(ids[::-1], 3))  # not by order
    assert np.all(np.abs(np.bincount(folds) - 2000 / 3) < 100)
    with pytest.raises(adapt.AdaptationError, match=">= 2 folds"):
        adapt.fold_of(ids, 1)


def test_recalibrate_sets_each_layers_statistics_from_the_adapted_layers_before_it():
    model = _bn_chain()  # fresh: moving mean 0, variance 1
    seen = adapt.recalibrate(model, _images(600, 5.0, 2.0), batch_size=128)
    assert seen == 600
    bn1, bn2 = model.get_layer("bn1"), model.get_layer("bn2")
    np.testing.assert_allclose(np.asarray(bn1.moving_mean), 5.0, atol=0.1)
    np.testing.assert_allclose(np.asarray(bn1.moving_variance), 4.0, rtol=0.05)
    # BN2 sees 3 * (BN1's output, normalised by its batch) + 1: mean 1, variance 9; with BN1's
    # old statistics it would have seen a mean of 16
    np.testing.assert_allclose(np.asarray(bn2.moving_mean), 1.0, atol=0.05)
    np.testing.assert_allclose(np.asarray(bn2.moving_variance), 9.0, rtol=0.05)


def test_dropout_is_off_while_the_statistics_are_estimated():
    model = _bn_chain(dropout=0.5)  # dropout would double the variance BN1 sees
    adapt.recalibrate(model, _images(512, 5.0, 2.0))
    np.testing.assert_allclose(np.asarray(model.get_layer("bn1").moving_variance), 4.0, rtol=0.05)


def test_refusals_name_what_is_missing():
    import keras

    plain = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(1)])
    with pytest.raises(adapt.AdaptationError, match="no batch-norm layer"):
        adapt.recalibrate(plain, _images(8, 0.0, 1.0))
    with pytest.raises(adapt.AdaptationError, match="no images"):
        adapt.recalibrate(_bn_chain(), [])
    batches = lambda: [(np.stack(_images(10, 0.0, 1.0)), [f"id{i}" for i in range(10)])]  # noqa: E731
    with pytest.raises(adapt.AdaptationError, match=r"fold 0 would estimate its statistics from "
                                                    r"\d+ images .* needs >= 16"):
        adapt.adapted_copies(_bn_chain, batches, 2)


def test_sample_by_fold_keeps_only_the_other_folds_and_at_most_the_limit():
    ids = [f"img{i}" for i in range(300)]
    images = np.arange(300, dtype="float32").reshape(300, 1)
    batches = [(images[i:i + 64], ids[i:i + 64]) for i in range(0, 300, 64)]
    folds = adapt.fold_of(ids, 3)
    samples, eligible = adapt.sample_by_fold(batches, 3)
    for k in range(3):
        assert eligible[k] == int(np.sum(folds != k))
        assert sorted(int(r[0]) for r in samples[k]) == np.flatnonzero(folds != k).tolist()
    few, eligible = adapt.sample_by_fold(batches, 3, limit=20)
    for k in range(3):
        assert len(few[k]) == 20 and eligible[k] == int(np.sum(folds != k))
        assert all(folds[int(r[0])] != k for r in few[k])
        assert len({int(r[0]) for r in few[k]}) == 20
        assert all(r.base is None for r in few[k])  # copies: no decoded batch kept alive
    again, _ = adapt.sample_by_fold(batches, 3, limit=20)
    assert [[int(r[0]) for r in s] for s in again] == [[int(r[0]) for r in s] for s in few]


def test_crossfit_takes_each_row_from_the_copy_of_its_fold():
    ids = [f"ISIC_{i}" for i in range(50)]
    fold = adapt.fold_of(ids, 2)
    copies = [{"image_id": list(ids), "probability": np.full(50, float(k)),
               "probabilities": np.full((50, 3), float(k)), "label": np.arange(50)}
              for k in range(2)]
    out = adapt.crossfit(copies, 2)
    assert out["image_id"] == ids
    np.testing.assert_array_equal(out["probability"], fold.astype(float))
    np.testing.assert_array_equal(out["probabilities"][:, 0], fold.astype(float))
    np.testing.assert_array_equal(out["label"], np.arange(50))
    copies[1]["image_id"] = ids[::-1]
    with pytest.raises(adapt.AdaptationError, match="copy 1 scored other images"):
        adapt.crossfit(copies, 2)


def _bn_model():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(4, 3, strides=2),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


@pytest.fixture(scope="module")
def real_dataset(sample_dir, tmp_path_factory):
    """40 real ISIC images (test split), 4 validation."""
    return shard_fixtures.write_sample_dataset(tmp_path_factory.mktemp("adapt"), sample_dir,
                                               SIZE, {"validation": 4, "test": 40})


def _pipeline_images(data_dir: str, split: str) -> tuple[np.ndarray, list[str]]:
    from trainer.core import input_pipeline

    xs, ids = [], []
    for x, _, meta in input_pipeline.make_eval_dataset_with_metadata(
            data_dir, split, image_size=SIZE, batch_size=16):
        xs.append(np.asarray(x))
        ids += [v.decode("utf-8") for v in meta["image_id"].numpy()]
    return np.concatenate(xs), ids


def test_evaluate_scores_each_image_with_the_copy_adapted_on_the_other_fold(real_dataset,
                                                                            tmp_path):
    from trainer.cnn import evaluation

    model = _bn_model()
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "model.keras"))
    (run / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
    result = evaluation.evaluate_external(str(run), real_dataset, splits="test", bootstrap=0,
                                          out=str(tmp_path / "adapted"), adapt_batchnorm=2)
    images, ids = _pipeline_images(real_dataset, "test")
    fold = adapt.fold_of(ids, 2)
    assert result["adapt_batchnorm"]["folds"] == 2
    assert result["adapt_batchnorm"]["images_per_copy"] == [int(np.sum(fold != k))
                                                           for k in range(2)]
    assert "Adapted without labels" in (tmp_path / "adapted" / "report.md").read_text()
    with open(tmp_path / "adapted" / "predictions.csv", newline="") as f:
        scored = {r["image_id"]: float(r["probability"]) for r in csv.DictReader(f)}
    assert sorted(scored) == sorted(ids)
    for k in range(2):  # by hand: a fresh copy adapted on the other fold (one batch: any order)
        copy = evaluation_model(run)
        adapt.recalibrate(copy, list(images[fold != k]))
        expected = np.asarray(copy.predict_on_batch(images[fold == k]))[:, 0]
        np.testing.assert_allclose([scored[i] for i, f in zip(ids, fold) if f == k], expected,
                                   rtol=1e-5, atol=1e-6)
    plain = evaluation.evaluate_external(str(run), real_dataset, splits="test", bootstrap=0,
                                         out=str(tmp_path / "plain"))
    assert "adapt_batchnorm" not in plain
    with open(tmp_path / "plain" / "predictions.csv", newline="") as f:
        unadapted = {r["image_id"]: float(r["probability"]) for r in csv.DictReader(f)}
    assert not np.allclose([scored[i] for i in ids], [unadapted[i] for i in ids], atol=1e-4)


def evaluation_model(run):
    from trainer.cnn.models import load_keras_model

    return load_keras_model(os.path.join(str(run), "model.keras"))


def test_evaluate_refuses_adaptation_it_cannot_do(real_dataset, tmp_path):
    import keras

    from trainer.cnn import evaluation

    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                      keras.layers.Dense(1, activation="sigmoid")]).save(
        str(tmp_path / "model.keras"))
    (tmp_path / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
    with pytest.raises(evaluation.EvaluationError, match="no batch-norm layer"):
        evaluation.evaluate_external(str(tmp_path), real_dataset, adapt_batchnorm=2, bootstrap=0)
    with pytest.raises(evaluation.EvaluationError, match="0 .off. or >= 2 folds"):
        evaluation.evaluate_external(str(tmp_path), real_dataset, adapt_batchnorm=1, bootstrap=0)


def test_a_diagnosis_run_is_adapted_and_cross_fitted_too(tmp_path):
    """A diagnosis run folder (model.keras + classes.json, as training leaves them): the same
    cross-fit through diagnosis_scoring, recorded in its report."""
    import keras

    from trainer.cnn import diagnosis, evaluation

    texts = ["nevus", "melanoma", "seborrheic keratosis"]
    items = lambda n, seed: [(img, "benign", {"diagnosis": texts[i % 3]})  # noqa: E731
                             for i, (img, _) in enumerate(
                                 shard_fixtures.random_images(n, 40, seed=seed))]
    data = shard_fixtures.write_tiny_dataset(tmp_path / "dx", {
        "train": items(6, 0), "test": items(36, 2)}, SIZE)
    run = tmp_path / "run"
    run.mkdir()
    mapping = diagnosis.class_mapping({normalise_diagnosis(t): 2 for t in texts}, 1)
    (run / "classes.json").write_text(json.dumps(mapping))
    keras.utils.set_random_seed(4)
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, strides=2),
                      keras.layers.BatchNormalization(), keras.layers.ReLU(),
                      keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(len(mapping["classes"]), activation="softmax")]
                     ).save(str(run / "model.keras"))
    adapted = evaluation.evaluate_external(str(run), data, splits="test",
                                           out=str(tmp_path / "a"), adapt_batchnorm=2)
    plain = evaluation.evaluate_external(str(run), data, splits="test", out=str(tmp_path / "p"))
    assert adapted["task"] == "diagnosis" and adapted["config"]["adapt_batchnorm"] == 2
    assert sum(adapted["adapt_batchnorm"]["images_per_copy"]) == 36  # each image in one fold
    assert adapted["splits"]["test"]["n"] == plain["splits"]["test"]["n"] == 36
    read = lambda out: {r["image_id"]: r for r in csv.DictReader(open(out / "predictions.csv"))}  # noqa: E731
    a, p = read(tmp_path / "a"), read(tmp_path / "p")
    assert sorted(a) == sorted(p)
    column = f"p_{mapping['classes'][0]}"
    assert not np.allclose([float(a[i][column]) for i in a], [float(p[i][column]) for i in a],
                           atol=1e-4)
    assert "Adapted without labels" in (tmp_path / "a" / "report.md").read_text()


def test_the_sample_shrinks_with_the_image_size_and_folds_to_stay_under_a_gibibyte():
    assert adapt.max_images_for(64) == adapt.MAX_IMAGES == adapt.max_images_for(64, 2)
    for size in (224, 256, 512, 4096):
        for folds in (1, 2, 5):
            n = adapt.max_images_for(size, folds)
            assert adapt.MIN_IMAGES <= n < adapt.MAX_IMAGES
            assert n * folds * size * size * 3 * 4 <= adapt.MAX_BYTES or n == adapt.MIN_IMAGES
    assert adapt.max_images_for(256) == 1365
    assert adapt.max_images_for(224, 2) == 891


def test_score_cross_fitted_caps_every_copy_by_the_folds_together(monkeypatch):
    """With room for 60 images of 4x4 in all, two folds keep 30 each (not 60 each)."""
    monkeypatch.setattr(adapt, "MAX_BYTES", 60 * 4 * 4 * 3 * 4)
    monkeypatch.setattr(adapt, "MIN_IMAGES", 4)
    ids = [f"img{i}" for i in range(200)]
    images = np.stack(_images(200, 0.0, 1.0))

    def batches():
        return [(images[i:i + 50], ids[i:i + 50]) for i in range(0, 200, 50)]

    def score(model):
        return {"test": {"image_id": ids, "probability": np.asarray(model(images))[:, 0]}}

    _, summary = adapt.score_cross_fitted(_bn_chain, batches, score, 2, 0, 4)
    assert summary["images_per_copy"] == [30, 30] == [adapt.max_images_for(4, 2)] * 2
