"""The diagnosis task (--task=diagnosis): class mapping, one training step with its report,
export -> predict serving K probabilities."""
import dataclasses
import io
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests import shard_fixtures
from trainer.cnn import cli, diagnosis, export, predict, train

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

cli.define_flags()  # the CNN trainer's flags, as its program defines them

SIZE = 32
# train: 8 nevus, 6 melanoma, 2 seborrheic keratosis + 1 dermatofibroma (-> other at N=3),
# 3 unknown/empty (excluded)
TRAIN = (["nevus"] * 8 + ["Melanoma invasive"] * 6 + ["seborrheic keratosis"] * 2
         + ["df"] + ["", "unknown", "Indeterminate"])
EVAL = ["nevus", "nevus", "mel", "melanoma", "lentigo NOS", ""]  # lentigo unseen -> other


def test_class_mapping_groups_rare_diagnoses_and_excludes_unknown():
    m = diagnosis.class_mapping({"nevus": 50, "melanoma": 30, "dermatofibroma": 3,
                                 "lentigo": 2, "unknown": 7}, min_records=20)
    assert m["classes"] == ["nevus", "melanoma", "other"]
    assert m["grouped_as_other"] == ["dermatofibroma", "lentigo"]
    assert m["excluded_unknown"] == 7
    assert m["train_counts"] == {"nevus": 50, "melanoma": 30, "other": 5}
    assert diagnosis.class_of(m, "mel") == 1
    assert diagnosis.class_of(m, "Dermatofibroma") == 2
    assert diagnosis.class_of(m, "vascular lesion") == 2  # unseen named diagnosis
    assert diagnosis.class_of(m, "") == diagnosis.class_of(m, "Indeterminate") == -1
    no_other = diagnosis.class_mapping({"nevus": 50, "melanoma": 30}, min_records=20)
    assert no_other["classes"] == ["nevus", "melanoma"]
    assert diagnosis.class_of(no_other, "lentigo") == -1
    # both excluded, for different reasons, counted apart
    assert diagnosis.exclusion_of(no_other, "lentigo") == "unseen"
    assert diagnosis.exclusion_of(no_other, "") == "unknown"
    assert diagnosis.exclusion_of(m, "lentigo") is None and diagnosis.exclusion_of(m, "") == \
        "unknown"
    with pytest.raises(ValueError, match="at least 2 classes"):
        diagnosis.class_mapping({"nevus": 50, "unknown": 3}, min_records=20)


def test_train_counts_from_the_manifest_rows():
    manifest = {"counts": {"per_split_label_diagnosis_source": [
        ["train", "benign", "nevus", "a", 4], ["train", "malignant", "melanoma", "b", 2],
        ["validation", "benign", "nevus", "a", 9], ["train", "unknown", "unknown", "a", 1]]}}
    assert diagnosis.train_counts_from_manifest(manifest) == {"nevus": 4, "melanoma": 2,
                                                              "unknown": 1}
    assert diagnosis.train_counts_from_manifest({}) is None


@pytest.fixture(scope="module")
def diagnosis_dataset(tmp_path_factory):
    def items(texts, seed):
        images = shard_fixtures.random_images(len(texts), 48, seed=seed)
        return [(img, "malignant" if "mel" in t.lower() else "benign", {"diagnosis": t})
                for (img, _), t in zip(images, texts)]
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("dx"), {"train": items(TRAIN, 0), "validation": items(EVAL, 1),
                                        "test": items(EVAL, 2)}, SIZE)


def test_the_dataset_streams_class_indices_and_drops_unknown(diagnosis_dataset):
    m = diagnosis.build_mapping(diagnosis_dataset, SIZE, min_records=3)
    assert m["classes"] == ["nevus", "melanoma", "other"]
    assert m["excluded_unknown"] == 3
    ds = diagnosis.make_dataset(diagnosis_dataset, "validation", m, image_size=SIZE,
                                batch_size=4, training=False)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2]
    assert diagnosis.split_records(diagnosis_dataset, "validation", SIZE, m) == (5, 1)
    # validation: 2 nevus, 2 melanoma, a lentigo (unseen without `other`), one empty
    no_other = {"classes": ["nevus", "melanoma"], "index": {"nevus": 0, "melanoma": 1}}
    assert diagnosis.split_exclusions(diagnosis_dataset, "validation", SIZE, no_other) == {
        "kept": 4, "unknown": 1, "unseen": 1}
    assert diagnosis.split_records(diagnosis_dataset, "validation", SIZE, no_other) == (4, 2)


def test_the_external_scoring_counts_unknown_and_unseen_diagnoses_apart(diagnosis_dataset):
    from isicflow import dataset as dataset_lib
    from trainer.cnn import diagnosis_scoring

    manifest = dataset_lib.manifest_or_read(diagnosis_dataset, None)
    no_other = {"classes": ["nevus", "melanoma"], "index": {"nevus": 0, "melanoma": 1}}
    chosen, excluded = diagnosis_scoring.select_splits(diagnosis_dataset, SIZE, ["test"],
                                                       no_other, manifest)
    assert chosen == ["test"]
    assert excluded == {"excluded_unknown": {"test": 1}, "excluded_unseen": {"test": 1}}
    _, every = diagnosis_scoring.select_splits(diagnosis_dataset, SIZE, ["all"], no_other,
                                               manifest)
    # train: 3 unknown/empty; seborrheic keratosis and df are outside these classes
    assert every["excluded_unknown"] == {"train": 3, "validation": 1, "test": 1}
    assert every["excluded_unseen"] == {"train": 3, "validation": 1, "test": 1}


def test_one_step_reports_and_the_export_serves_k_probabilities(diagnosis_dataset, tmp_path,
                                                                 capsys):
    workdir = tmp_path / "run"
    config = train.TrainConfig(data_dir=diagnosis_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=8, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact",
                               task="diagnosis", min_class_records=3,
                               class_balance="class_weights")
    result = train.train_cnn(config)
    assert json.loads((workdir / "classes.json").read_text())["classes"] == \
        ["nevus", "melanoma", "other"]
    assert result.model.outputs[0].shape[1:] == (3,)
    done = cli.evaluate_and_export(result.model, config, bootstrap=0)
    report = json.loads((workdir / "report.json").read_text())
    assert report["task"] == "diagnosis" and report["classes"] == ["nevus", "melanoma", "other"]
    test = report["splits"]["test"]
    assert 0.0 <= test["balanced_accuracy"] <= 1.0
    assert set(test["per_class_recall"]) == {"nevus", "melanoma", "other"}
    assert np.array(test["confusion_matrix"]).shape == (3, 3)
    assert np.array(test["confusion_matrix"]).sum() == 5
    assert report["excluded_unknown"] == {"train": 3, "validation": 1, "test": 1}
    assert report["excluded_unseen"] == {"validation": 0, "test": 0}  # lentigo -> other
    assert (workdir / "plots" / "confusion.png").is_file()
    assert "Balanced accuracy" in (workdir / "report.md").read_text()

    # export -> predict: K probabilities summing to 1, equal to the evaluated model's
    pixels = [img for img, _ in shard_fixtures.random_images(2, SIZE, seed=5)]
    paths = []
    for i, px in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(px, np.uint8)).save(buf, format="PNG")
        (tmp_path / f"{i}.png").write_bytes(buf.getvalue())
        paths.append(str(tmp_path / f"{i}.png"))
    loaded, serving_config = export.load_exported(done["export"]["export_dir"])
    assert serving_config["task"] == "diagnosis"
    assert serving_config["classes"] == ["nevus", "melanoma", "other"]
    import tensorflow as tf
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    probs = out["probabilities"].numpy()
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    expected = result.model(np.stack(pixels).astype(np.float32) / 255.0, training=False)
    np.testing.assert_allclose(probs, np.asarray(expected), atol=1e-5)
    results = predict.predict_files(paths, str(workdir))
    assert [r.error for r in results] == [None, None]
    for r, p in zip(results, probs):
        assert len(r.top) == 3 and r.top[0][0] == ["nevus", "melanoma", "other"][int(p.argmax())]
        assert r.line().startswith(r.path + "\t") and r.line().count(":") == 3


@pytest.mark.parametrize("argv, shown", [
    (["--task=diagnosis", "--monitor=val_auc"], "val_accuracy"),
    (["--task=diagnosis", "--monitor=val_accuracy", "--class_balance=sampling"], "binary only"),
    (["--task=diagnosis", "--monitor=val_accuracy", "--min_class_records=0"], "min_class_records"),
    (["--use_metadata", "--tta"], "--tta"),
])
def test_impossible_task_flags_fail_at_parse(argv, shown):
    from absl import flags

    try:
        with pytest.raises(flags.IllegalFlagValueError, match=shown):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w", *argv])
    finally:
        flags.FLAGS.unparse_flags()


def test_the_recipe_levers_the_diagnosis_task_takes_train_one_step(diagnosis_dataset, tmp_path):
    """Residual net, AdamW + cosine warmup, dermoscopy augmentation and EMA compose with the
    softmax head; label smoothing and mixup are binary only and refused."""
    common = dict(data_dir=diagnosis_dataset, workdir=str(tmp_path / "run"), image_size=SIZE,
                  batch_size=8, epochs=2, steps_per_epoch=1, seed=0, mixed_precision="off",
                  verbose=0, task="diagnosis", min_class_records=3)
    result = train.train_cnn(train.TrainConfig(
        **common, model="residual", width_multiplier=0.25, optimizer="adamw",
        lr_schedule="cosine", warmup_epochs=1, augment=True, augmentation="dermoscopy",
        ema_decay=0.9))
    assert len(result.history) == 2 and result.model.output.shape[-1] == 3
    for bad, match in ((dict(label_smoothing=0.1), "binary only"),
                       (dict(mixup_alpha=0.2), "mixup_alpha=0.2")):
        with pytest.raises(ValueError, match=match):
            train.train_cnn(train.TrainConfig(**common, **bad))


def test_balanced_accuracy_metric_equals_sklearn_over_batches():
    """Accumulated over two batches (one class missing from the labels, as in a small
    validation split) it equals sklearn's balanced_accuracy_score; reset starts over."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 3], size=40, p=[0.7, 0.2, 0.1])
    probs = rng.dirichlet(np.ones(4), size=40).astype(np.float32)
    metric = diagnosis.balanced_accuracy_metric(4)
    metric.update_state(labels[:25], probs[:25])
    metric.update_state(labels[25:], probs[25:], sample_weight=np.full(15, 9.0))
    assert float(metric.result()) == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(axis=1)), abs=1e-6)
    metric.reset_state()
    metric.update_state(np.array([2, 2]), np.eye(4, dtype=np.float32)[[2, 1]])
    assert float(metric.result()) == pytest.approx(0.5)


@pytest.mark.graph  # the softmax head and BalancedAccuracy (bincount) as a real run traces them
def test_monitor_val_balanced_accuracy_trains_and_keeps_its_best(diagnosis_dataset, tmp_path):
    result = train.train_cnn(train.TrainConfig(
        data_dir=diagnosis_dataset, workdir=str(tmp_path / "run"), image_size=SIZE,
        batch_size=8, epochs=2, steps_per_epoch=1, seed=0, mixed_precision="off", verbose=0,
        task="diagnosis", min_class_records=3, monitor="val_balanced_accuracy"))
    assert all(0.0 <= e["val_balanced_accuracy"] <= 1.0 for e in result.history)


def test_evaluate_scores_a_diagnosis_run_and_its_export_on_another_dataset(diagnosis_dataset,
                                                                          tmp_path):
    """trainer.cnn.evaluate's diagnosis branch: the run's own classes and preprocessing, so
    its figures on the run's data equal the run's own report; the export scores the same."""
    from trainer.cnn import evaluation

    workdir = tmp_path / "run"
    config = train.TrainConfig(data_dir=diagnosis_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=8, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact",
                               task="diagnosis", min_class_records=3)
    done = cli.evaluate_and_export(train.train_cnn(config).model, config, bootstrap=0)
    own = json.loads((workdir / "report.json").read_text())["splits"]
    out = tmp_path / "scores"
    result = evaluation.evaluate_external(str(workdir), diagnosis_dataset, splits="all",
                                          out=str(out))
    assert result["task"] == "diagnosis" and result["classes"] == ["nevus", "melanoma", "other"]
    assert list(result["splits"]) == ["train", "validation", "test", "all"]
    assert result["excluded_unknown"] == {"train": 3, "validation": 1, "test": 1}
    assert result["excluded_unseen"] == {"train": 0, "validation": 0, "test": 0}
    for split in ("validation", "test"):
        assert result["splits"][split]["balanced_accuracy"] == pytest.approx(
            own[split]["balanced_accuracy"])
        for key in ("n", "per_class_recall", "support", "confusion_matrix"):
            assert result["splits"][split][key] == own[split][key]
    assert result["splits"]["all"]["n"] == 17 + 5 + 5  # train: 20 records, 3 unknown
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0] == "split,image_id,label,predicted,p_nevus,p_melanoma,p_other"
    assert len(rows) == 1 + 27 and len({r.split(",")[1] for r in rows[1:]}) == 27
    first = rows[1].split(",")
    assert first[2] in result["classes"] and sum(map(float, first[4:])) == pytest.approx(1.0)
    assert first[3] == result["classes"][int(np.argmax([float(v) for v in first[4:]]))]
    assert json.loads((out / "report.json").read_text())["classes"] == result["classes"]
    assert "Balanced accuracy" in (out / "report.md").read_text()
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["confusion.png"]  # only

    export_dir = done["export"]["export_dir"]
    exported = evaluation.evaluate_external(export_dir, diagnosis_dataset, splits="test",
                                            out=str(tmp_path / "export_scores"))
    assert list(exported["splits"]) == ["test"] and exported["model"]["kind"] == "export"
    assert exported["splits"]["test"]["confusion_matrix"] == own["test"]["confusion_matrix"]

    for kwargs, shown in [({"threshold": 0.5}, "only benign/malignant models take --threshold"),
                          ({"tta": False, "threshold": 0.2}, "take --threshold$"),
                          ({"splits": "train,tset"}, "--splits")]:
        with pytest.raises(evaluation.EvaluationError, match=shown):
            evaluation.evaluate_external(str(workdir), diagnosis_dataset, out=str(tmp_path / "x"),
                                         **kwargs)
    with pytest.raises(evaluation.EvaluationError, match="take --threshold"):  # before the data
        evaluation.evaluate_external(str(workdir), str(tmp_path / "nowhere"), threshold=0.5)


def test_source_balanced_class_weights_follow_the_classes_rates_in_that_stream():
    """Two sources drawn equally: clinic a (90 nevus, 10 melanoma), clinic b (10 nevus, 10
    melanoma): nevus arrives at (0.9 + 0.5) / 2 = 0.7, melanoma at 0.3, so w = 1 / (2 q);
    the pooled weights (100 each of 120) would be 0.6 and 3.0."""
    from trainer.cnn import tasks
    from trainer.core import input_pipeline

    mapping = diagnosis.class_mapping({"nevus": 100, "melanoma": 20}, min_records=1)
    manifest = {"counts": {"per_split_label_diagnosis_source": [
        {"split": "train", "label": "benign", "diagnosis": "nevus", "source_collection": "a",
         "count": 90},
        {"split": "train", "label": "malignant", "diagnosis": "melanoma",
         "source_collection": "a", "count": 10},
        ["train", "benign", "nevus", "b", 10], ["train", "malignant", "melanoma", "b", 10],
        ["validation", "benign", "nevus", "c", 50], ["train", "unknown", "", "b", 7],
        ["train", "benign", "nevus", "", 4]]}}
    per_source = diagnosis.source_class_counts(manifest, "train", mapping)
    assert per_source == {"a": {0: 90, 1: 10}, "b": {0: 10, 1: 10}, "": {0: 4}}
    weights = tasks.source_balanced_class_weights(per_source, 2)  # "" is never drawn
    assert weights == pytest.approx({0: 1 / (2 * 0.7), 1: 1 / (2 * 0.3)})
    assert diagnosis.class_weights(mapping) == pytest.approx({0: 0.6, 1: 3.0})
    # each class carries the same expected weight in the balanced stream
    assert 0.7 * weights[0] == pytest.approx(0.3 * weights[1])
    # the binary task reads the same rows by label, and gets the same weights here
    assert input_pipeline.binary_source_class_counts(manifest, "train") == {
        "a": {0: 90, 1: 10}, "b": {0: 10, 1: 10}, "": {0: 4}}
    with pytest.raises(ValueError, match="no named source"):
        tasks.source_balanced_class_weights({"": {0: 3}}, 2)


@pytest.fixture(scope="module")
def two_clinic_dataset(tmp_path_factory):
    """train: clinic a, 6 flat-black nevi; clinic b, 2 flat-white melanomas + 1 white nevus."""
    def flat(n, level, source, texts):
        return [(np.full((40, 40, 3), level, np.uint8),
                 "malignant" if texts[i % len(texts)] == "melanoma" else "benign",
                 {"source_collection": source, "diagnosis": texts[i % len(texts)]})
                for i in range(n)]
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("clinics"),
        {"train": flat(6, 0, "a", ["nevus"]) + flat(3, 255, "b", ["melanoma", "melanoma",
                                                                    "nevus"]),
         "validation": flat(2, 0, "a", ["nevus"]) + flat(2, 255, "b", ["melanoma"])}, SIZE)


def test_the_source_balanced_stream_draws_each_clinic_equally(two_clinic_dataset):
    mapping = diagnosis.build_mapping(two_clinic_dataset, SIZE, min_records=1)
    ds = diagnosis.make_dataset(two_clinic_dataset, "train", mapping, image_size=SIZE,
                                batch_size=30, training=True, balance_sources=True, seed=1)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in ds.take(20)))
    white = np.concatenate(images).mean(axis=(1, 2, 3)) > 0.5
    assert white.size == 600 and abs(white.mean() - 0.5) < 0.06, white.mean()
    plain = diagnosis.make_dataset(two_clinic_dataset, "train", mapping, image_size=SIZE,
                                   batch_size=9, training=True, seed=1)
    assert sum(int((x.numpy().mean(axis=(1, 2, 3)) > 0.5).sum()) for x, _ in plain) == 3
    with pytest.raises(ValueError, match="balance_sources needs training=True"):
        diagnosis.make_dataset(two_clinic_dataset, "validation", mapping, image_size=SIZE,
                               batch_size=2, training=False, balance_sources=True)


def test_one_source_batches_of_the_diagnosis_task_hold_one_clinic_each(two_clinic_dataset,
                                                                        diagnosis_dataset,
                                                                        tmp_path):
    """Clinic a (6 black) and b (3 white): every batch one colour, a's batches at 6/9 of the
    draws (1/2 with balance_sources); a diagnosis run trains on the stream and a split that
    names no source is refused before any run folder is made."""
    mapping = diagnosis.build_mapping(two_clinic_dataset, SIZE, min_records=1)
    for balance, share in ((False, 6 / 9), (True, 0.5)):
        ds = diagnosis.make_dataset(two_clinic_dataset, "train", mapping, image_size=SIZE,
                                    batch_size=4, training=True, one_source_batches=True,
                                    balance_sources=balance, seed=1)
        means = [x.numpy().mean(axis=(1, 2, 3)) for x, _ in ds.take(1000)]  # 0.08 >= 5 sd
        assert all(m.shape == (4,) and np.ptp(m) == 0 for m in means)
        black = np.mean([m[0] < 0.5 for m in means])
        assert abs(black - share) < 0.08, (balance, black)
    common = dict(image_size=SIZE, batch_size=4, epochs=2, seed=0, mixed_precision="off",
                  verbose=0, task="diagnosis", min_class_records=1, source_batches=True)
    result = train.train_cnn(train.TrainConfig(data_dir=two_clinic_dataset,
                                               workdir=str(tmp_path / "run"), **common))
    assert len(result.history) == 2 and all(np.isfinite(e["loss"]) for e in result.history)
    with pytest.raises(train.DataError, match="--source_batches .* name 0 source"):
        train.train_cnn(train.TrainConfig(data_dir=diagnosis_dataset,
                                          workdir=str(tmp_path / "refused"), **common))
    assert not (tmp_path / "refused").exists()


def test_source_balance_trains_the_diagnosis_task_and_is_refused_without_two_clinics(
        two_clinic_dataset, diagnosis_dataset, tmp_path):
    """The run takes its class weights from the balanced stream (a: 6 nevi; b: 1 nevus, 2
    melanomas: nevus arrives at (1 + 1/3) / 2 = 2/3) and its steps from the flag, the stream
    being endless; a split of one unnamed clinic, or with records naming none, is refused
    before any run folder is made."""
    from trainer.cnn import tasks

    common = dict(image_size=SIZE, batch_size=8, epochs=2, steps_per_epoch=5, seed=0,
                  mixed_precision="off", verbose=0, task="diagnosis", min_class_records=1,
                  source_balance=True, class_balance="class_weights")
    config = train.TrainConfig(data_dir=two_clinic_dataset, workdir=str(tmp_path / "run"),
                               **common)
    probe = dataclasses.replace(config, workdir=str(tmp_path / "probe"))
    task = tasks.for_config(probe)
    task.prepare(probe)
    assert task.mapping["classes"] == ["nevus", "melanoma"]
    assert task.class_weight(probe) == pytest.approx({0: 1 / (2 * 2 / 3), 1: 1 / (2 * 1 / 3)})
    _, _, steps, n_train = task.datasets(probe, tf.distribute.get_strategy())
    assert (steps, n_train) == (5, 9)  # not min(ceil(9 / 8), 5): the stream is endless
    result = train.train_cnn(config)
    assert len(result.history) == 2 and all(np.isfinite(e["loss"]) for e in result.history)
    with pytest.raises(train.DataError, match="name 0 source"):
        train.train_cnn(train.TrainConfig(data_dir=diagnosis_dataset,
                                          workdir=str(tmp_path / "refused"), **common))
    assert not (tmp_path / "refused").exists()


def test_source_balance_refuses_records_that_name_no_source(tmp_path):
    """Two named clinics beside records with none: those would never be drawn."""
    def items(n, source, text, seed):
        return [(img, "benign", {"source_collection": source, "diagnosis": text})
                for img, _ in shard_fixtures.random_images(n, 40, seed=seed)]
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": items(3, "a", "nevus", 0) + items(3, "b", "melanoma", 1)
                            + items(2, "", "nevus", 2),
                            "validation": items(2, "a", "nevus", 3)}, SIZE)
    for task in ("diagnosis", "binary"):
        with pytest.raises(train.DataError, match=r"\['a', 'b'\] \(source_collection\) and "
                                                  r"2 name none"):
            train.train_cnn(train.TrainConfig(
                data_dir=data, workdir=str(tmp_path / task), image_size=SIZE, batch_size=4,
                epochs=1, seed=0, mixed_precision="off", verbose=0, task=task,
                min_class_records=1, source_balance=True))
        assert not (tmp_path / task).exists()
    mapping = diagnosis.build_mapping(data, SIZE, min_records=1)
    with pytest.raises(ValueError, match="2 name none"):
        diagnosis.make_dataset(data, "train", mapping, image_size=SIZE, batch_size=2,
                               training=True, balance_sources=True)


def test_tta_scores_a_diagnosis_run_its_export_and_predict_alike(diagnosis_dataset, tmp_path,
                                                                  monkeypatch):
    """--tta on the diagnosis task: each image's K probabilities are the mean over its 8
    dihedral views, the same in the training report, an external evaluation (which takes the
    run's recorded tta), the export's serving_default and predict's --tta / --notta."""
    import csv

    from trainer.cnn import evaluation, tta

    workdir = tmp_path / "run"
    config = train.TrainConfig(data_dir=diagnosis_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=8, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact",
                               task="diagnosis", min_class_records=3)
    model = train.train_cnn(config).model
    scored_with = []  # the report's scoring: every batch through the 8 views
    real = tta.class_probabilities
    monkeypatch.setattr(tta, "class_probabilities",
                        lambda m, x, use_tta: scored_with.append(use_tta) or real(m, x, use_tta))
    cli.evaluate_and_export(model, config, export=False, bootstrap=0, tta=True)
    assert scored_with and all(scored_with)
    monkeypatch.undo()
    done = cli.evaluate_and_export(model, config, evaluate=False, bootstrap=0, tta=True)
    report = json.loads((workdir / "report.json").read_text())
    assert report["tta"] is True and "test-time augmentation" in (workdir / "report.md").read_text()

    def by_hand(x):  # the 8 views of the square, each through the model, averaged
        views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
        return np.mean([np.asarray(model(v, training=False)) for v in views], axis=0)

    mapping = diagnosis.read_mapping(str(workdir))
    x, labels = [], []
    for images, y in diagnosis.make_dataset(diagnosis_dataset, "test", mapping, image_size=SIZE,
                                            batch_size=8, training=False, deterministic=True):
        x.append(images.numpy())
        labels.append(y.numpy())
    x, labels = np.concatenate(x), np.concatenate(labels)
    expected, plain = by_hand(x), np.asarray(model(x, training=False))
    assert np.abs(expected - plain).max() > 1e-4  # the views differ: TTA changes the answer
    np.testing.assert_allclose(np.asarray(tta.class_probabilities(model, x, True)), expected,
                               atol=1e-5)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-5)
    assert report["splits"]["test"] == diagnosis.split_metrics(labels, expected.astype(np.float64),
                                                               mapping["classes"])

    scored = evaluation.evaluate_external(str(workdir), diagnosis_dataset, splits="test",
                                          out=str(tmp_path / "scores"))
    assert scored["tta"] is True and scored["config"]["tta"] is True
    with open(tmp_path / "scores" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(r[f"p_{c}"]) for c in mapping["classes"]] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    untransformed = evaluation.evaluate_external(str(workdir), diagnosis_dataset, splits="test",
                                                 out=str(tmp_path / "plain"), tta=False)
    assert untransformed["tta"] is False

    # the export serves what was evaluated: the original PNG bytes, TTA as exported or forced
    _, serving_config = export.load_exported(done["export"]["export_dir"])
    assert serving_config["tta"] is True and "serving_tta" in serving_config["tta_note"]
    pixels = np.stack([img for img, _ in shard_fixtures.random_images(3, SIZE, seed=5)])
    paths = []
    for i, px in enumerate(pixels):
        Image.fromarray(np.asarray(px, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    scaled = pixels.astype(np.float32) / 255.0
    for forced, want in [(None, by_hand(scaled)), (True, by_hand(scaled)),
                         (False, np.asarray(model(scaled, training=False)))]:
        results = predict.predict_files(paths, str(workdir), tta=forced)
        for r, p in zip(results, want):
            assert r.error is None
            assert r.top[0] == (mapping["classes"][int(p.argmax())], pytest.approx(p.max(),
                                                                                   abs=1e-5))
    with pytest.raises(ValueError, match="--threshold is for benign/malignant models only"):
        predict.predict_files(paths, str(workdir), threshold=0.5)
