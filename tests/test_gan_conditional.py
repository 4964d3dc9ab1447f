"""The GAN conditional on diagnosis (--gan_classes=diagnosis): classes fixed from train and saved
with the run, K-class models, sampling a class by name, per-class evaluation."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests import shard_fixtures
from trainer.gan import models as gan_models
from trainer.gan import sampling as gan_sampling
from trainer.gan import training as gan_training

SIZE = 16
# train: 8 nevus, 6 melanoma, 5 benign keratosis (HAM bkl) + 2 rare (-> other at N=3),
# 2 unknown (excluded)
TRAIN = (["nv"] * 8 + ["mel"] * 6 + ["bkl"] * 5 + ["df", "vasc"] + ["", "unknown"])
HELDOUT = ["nv"] * 6 + ["mel"] * 5 + ["bkl"] * 5 + ["bcc"] * 4 + [""]
CLASSES = ["nevus", "melanoma", "benign_keratosis", "other"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    def items(texts, seed):
        images = shard_fixtures.random_images(len(texts), 24, seed=seed)
        return [(img, "malignant" if t == "mel" else "benign", {"diagnosis": t})
                for (img, _), t in zip(images, texts)]
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("gan-dx"), {"train": items(TRAIN, 0),
                                            "validation": items(HELDOUT, 1)}, SIZE)


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=1, mixed_precision="off", grid_images=4,
                  checkpoint_every=0, seed=3, conditional=True, gan_classes="diagnosis",
                  min_class_records=3, latent_dim=8, architecture="deep", width=4,
                  spectral_norm=True, gan_loss="hinge", ema_decay=0.9, label_noise=0.0,
                  label_flip=0.0, collapse_patience=0)
    values.update(overrides)
    return gan_training.GanConfig(**values)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    summary = gan_training.train_gan(_config(data_dir, workdir))
    assert summary["steps"] == 1
    return workdir


def test_one_step_saves_the_classes_beside_the_architecture(run):
    arch = json.loads((run / "checkpoints" / "gan_config.json").read_text())
    assert arch["classes"] == CLASSES and arch["conditional"]
    mapping = json.loads((run / "checkpoints" / "classes.json").read_text())
    assert mapping["classes"] == CLASSES
    assert mapping["grouped_as_other"] == ["dermatofibroma", "vascular_lesion"]
    assert mapping["excluded_unknown"] == 2
    assert mapping["train_counts"] == {"nevus": 8, "melanoma": 6, "benign_keratosis": 5,
                                       "other": 2}


def test_the_training_stream_gives_class_indices_in_the_gan_range(data_dir, tmp_path):
    config = _config(data_dir, tmp_path, batch_size=21)
    mapping = gan_training.diagnosis_mapping(config)
    dataset, steps = gan_training.make_gan_dataset(config, mapping)
    images, labels = next(iter(dataset))
    assert steps == 1  # 21 train records of a known diagnosis, batch 21
    assert images.shape == (21, SIZE, SIZE, 3)
    assert float(images.numpy().min()) >= -1.0 and float(images.numpy().max()) <= 1.0
    assert float(images.numpy().min()) < -0.5  # [-1, 1], not [0, 1]
    assert sorted(np.bincount(labels.numpy(), minlength=4).tolist()) == [2, 5, 6, 8]


def test_class_balance_draws_every_class_equally_often(data_dir, tmp_path):
    """Train holds 8 / 6 / 5 / 2 records of the four classes: with --gan_class_balance each is
    a quarter of the draws (its rare `other` class repeated), every image in [-1, 1]."""
    config = _config(data_dir, tmp_path, batch_size=50, class_balance=True)
    mapping = gan_training.diagnosis_mapping(config)
    dataset, steps = gan_training.make_gan_dataset(config, mapping)
    assert steps == 1  # an epoch is still the 21 records the split holds, at least one batch
    counts = np.zeros(4, int)
    for images, labels in dataset.take(8):
        assert images.shape == (50, SIZE, SIZE, 3)
        assert float(images.numpy().min()) >= -1.0 and float(images.numpy().max()) <= 1.0
        counts += np.bincount(labels.numpy(), minlength=4)
    shares = counts / counts.sum()  # 400 draws: each share within 0.07 of 1/4 (~3 sd)
    assert np.all(np.abs(shares - 0.25) < 0.07), shares


def test_class_balance_of_the_benign_malignant_gan_draws_each_half_the_time(data_dir, tmp_path):
    config = _config(data_dir, tmp_path, batch_size=50, class_balance=True,
                     gan_classes="binary")  # 6 malignant of 21 benign/malignant records
    dataset, _ = gan_training.make_gan_dataset(config, gan_training.diagnosis_mapping(config))
    labels = np.concatenate([y.numpy() for _, y in dataset.take(8)])
    assert abs(labels.mean() - 0.5) < 0.07, labels.mean()


def test_class_balance_refuses_what_it_cannot_balance(data_dir, tmp_path):
    with pytest.raises(ValueError, match="needs --conditional and one split"):
        gan_training.GanConfig(data_dir="d", workdir="w", class_balance=True)
    with pytest.raises(ValueError, match="needs --conditional and one split"):
        _config(data_dir, tmp_path, class_balance=True, splits=("train", "validation"))
    from trainer.cnn import diagnosis

    mapping = {**gan_training.diagnosis_mapping(_config(data_dir, tmp_path)),
               "classes": CLASSES + ["seborrheic_keratosis"]}
    with pytest.raises(ValueError, match=r"holds no record of \['seborrheic_keratosis'\]"):
        diagnosis.make_dataset(data_dir, "train", mapping, image_size=SIZE, batch_size=4,
                               training=True, balance_classes=True)
    config = _config(data_dir, tmp_path, class_balance=True)  # the program's check, up front
    gan_training.check_class_balance(config, gan_training.diagnosis_mapping(config))
    with pytest.raises(ValueError, match=r"split 'train' holds no record of "
                                         r"\['seborrheic_keratosis'\] at 16px \(records per "
                                         r"class \{'nevus': 8, 'melanoma': 6"):
        gan_training.check_class_balance(config, mapping)


def test_a_resume_with_other_classes_is_refused(data_dir, run):
    # The saved classes.json wins over a new threshold; another architecture is refused.
    config = _config(data_dir, run, min_class_records=1)
    assert gan_training.diagnosis_mapping(config)["classes"] == CLASSES
    with pytest.raises(ValueError, match="classes"):
        gan_training.check_resume_architecture(config, {"classes": CLASSES[:3]})


@pytest.mark.parametrize("deep", [False, True])
def test_conditional_models_take_k_classes(deep):
    k = 5
    if deep:
        g = gan_models.build_deep_generator(8, SIZE, conditional=True, width=4, num_classes=k)
        d = gan_models.build_deep_discriminator(SIZE, conditional=True, width=4, num_classes=k)
        g2 = gan_models.build_deep_generator(8, SIZE, conditional=True, width=4)
        d2 = gan_models.build_deep_discriminator(SIZE, conditional=True, width=4)
        d_per_class = 4 * 4 * 8  # projection: a vector of the 4x4x8 features per class
    else:
        g = gan_models.build_generator(8, SIZE, conditional=True, num_classes=k)
        d = gan_models.build_discriminator(SIZE, conditional=True, num_classes=k)
        g2 = gan_models.build_generator(8, SIZE, conditional=True)
        d2 = gan_models.build_discriminator(SIZE, conditional=True)
        d_per_class = SIZE * SIZE  # one label plane per class
    # Only the label embeddings grow with K: 50 latent units per class in G.
    assert g.count_params() - g2.count_params() == (k - 2) * gan_models.LATENT_LABEL_EMBEDDING
    assert d.count_params() - d2.count_params() == (k - 2) * d_per_class
    z = np.zeros((k, 8), np.float32)
    labels = np.arange(k, dtype=np.int32)[:, None]
    assert g([z, labels]).shape == (k, SIZE, SIZE, 3)
    assert d([np.asarray(g([z, labels])), labels]).shape == (k, 1)
    assert gan_models.num_classes_of({"classes": CLASSES}) == 4
    assert gan_models.num_classes_of({"conditional": True}) == 2  # a run from before
    with pytest.raises(ValueError, match="at least 2 classes"):
        gan_models.build_generator(8, SIZE, conditional=True, num_classes=1)


def test_diagnosis_needs_conditional():
    with pytest.raises(ValueError, match="needs --conditional"):
        gan_training.GanConfig(data_dir="d", workdir="w", gan_classes="diagnosis")


def test_sampling_a_class_by_name_writes_its_images_and_records(run, tmp_path):
    pngs = tmp_path / "png"
    assert gan_sampling.sample_to_dir(str(run), 3, str(pngs), classes=("melanoma",)) == 3
    files = sorted(pngs.glob("dcgan_melanoma_*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (SIZE, SIZE)
    with pytest.raises(ValueError, match="unknown class.*benign_keratosis"):
        gan_sampling.sample_to_dir(str(run), 1, str(tmp_path / "x"), classes=("malignant",))

    import tensorflow as tf

    from isicflow import schema

    records = tmp_path / "records"
    assert gan_sampling.sample_to_dir(str(run), 1, str(records), image_format="tfrecord") == 4
    found = {}
    for shard in records.glob(f"{SIZE}/train/*.tfrecord"):
        for raw in tf.data.TFRecordDataset(str(shard)):
            record = schema.decode_example_py(raw.numpy())
            found[record["diagnosis"]] = record["label"]
    # Each class's record keeps its diagnosis and the engine's benign/malignant of it.
    # (label index: 0 benign, 1 malignant, -1 unknown)
    assert found == {"nevus": 0, "melanoma": 1, "benign_keratosis": 0, "other": -1}


def _cli(*args):
    import os
    import pathlib
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", *args],
                          cwd=pathlib.Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_sample_program_takes_a_class_by_name_and_refuses_an_unknown_one(run, tmp_path):
    out = tmp_path / "melanoma"
    result = _cli("trainer.gan.sample", f"--model={run}", "--class=melanoma", "--num=2",
                  f"--output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.glob("dcgan_melanoma_*.png"))) == 2
    refused = tmp_path / "refused"
    result = _cli("trainer.gan.sample", f"--model={run}", "--class=lentigo", "--num=2",
                  f"--output={refused}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("trainer.gan.sample: ")]
    assert len(lines) == 1 and "--class=lentigo" in lines[0]
    assert "nevus, melanoma, benign_keratosis, other" in lines[0]
    assert not refused.exists()


def test_evaluation_reports_every_class_against_its_own_real_images(run, data_dir, tmp_path,
                                                                    monkeypatch):
    from trainer.gan import evaluation

    draws = []
    generate = gan_sampling.generate

    def counted(generator, arch, num, **kwargs):
        draws.append((kwargs.get("label"), num))
        return generate(generator, arch, num, **kwargs)

    monkeypatch.setattr(gan_sampling, "generate", counted)
    out = tmp_path / "eval"
    report = evaluation.evaluate(str(run), data_dir, str(out), num_generated=8,
                                 feature_extractor="pixels", seed=0)
    # Each class drawn once, serving its own scores and the overall set: 8 of each scored
    # class, and of 'other' (skipped, 2 train images) only its 1 image of the overall set.
    assert draws == [(0, 8), (1, 8), (2, 8), (3, 1)]
    assert report["classes"] == CLASSES
    # Overall: every train image of a known diagnosis, generated in the train class shares.
    assert report["counts"] == {"train": 21, "heldout": 20, "generated": 8}
    assert report["generated_per_class_overall"] == {"nevus": 3, "melanoma": 2,
                                                     "benign_keratosis": 2, "other": 1}
    assert math.isfinite(report["fid"]) and math.isfinite(report["heldout_floor"]["fid"])
    per_class = report["per_class"]
    assert list(per_class) == CLASSES
    for name, n_train, n_held in (("nevus", 8, 6), ("melanoma", 6, 5),
                                  ("benign_keratosis", 5, 5)):
        entry = per_class[name]
        assert entry["counts"] == {"train": n_train, "heldout": n_held, "generated": 8}
        for value in (entry["fid"], entry["kid"]["mean"], entry["c2st"]["accuracy"],
                      entry["heldout_floor"]["fid"], entry["heldout_floor"]["c2st"]["accuracy"],
                      entry["memorization"]["share_below"]):
            assert math.isfinite(value), name
        assert 0.0 <= entry["c2st"]["accuracy"] <= 1.0
        grid = Image.open(out / entry["grid"])
        assert grid.size[1] == 2 + 3 * (SIZE + 2)  # up to 8 real left, 8 generated: 3 rows
    # 'other' has 2 train images (df, vasc): reported as skipped, not scored.
    assert per_class["other"]["counts"]["train"] == 2 and "skipped" in per_class["other"]
    markdown = (out / "gan_eval.md").read_text()
    assert "## Per class" in markdown and "| melanoma | 6 / 5 / 8 |" in markdown
    # Interpolation: one row per class.
    assert Image.open(out / "interpolation.png").size[1] == 2 + 4 * (SIZE + 2)
    saved = json.loads((out / "gan_eval.json").read_text())
    assert saved["per_class"]["melanoma"]["fid"] == per_class["melanoma"]["fid"]


def test_allocate_splits_in_shares_and_keeps_the_binary_split():
    from trainer.gan import evaluation

    assert evaluation.allocate(201, [1, 1]) == [100, 101]  # as binary runs always drew
    assert evaluation.allocate(10, [0.7, 0.2, 0.1]) == [7, 2, 1]
    assert sum(evaluation.allocate(200, [3041, 397, 340, 410])) == 200
    with pytest.raises(ValueError, match="shares"):
        evaluation.allocate(5, [0, 0])


def _fake_conditional(latent_dim=8, side=2):
    """A stand-in generator whose image k is a function of latent k and its label alone, so
    equal images mean equal latents, whatever the batch."""
    def generator(inputs, training=False):
        z, labels = inputs
        value = np.tanh(z[:, 0] + 0.1 * labels[:, 0])
        return np.broadcast_to(value[:, None, None, None], (len(z), side, side, 3))
    arch = {"conditional": True, "latent_dim": latent_dim, "image_size": side,
            "classes": CLASSES[:2]}
    return generator, arch


def test_a_class_draw_is_a_prefix_of_a_larger_one_so_the_overall_set_reuses_it():
    from trainer.gan import evaluation

    generator, arch = _fake_conditional()
    # 70 crosses sampling's 64-image batch: the prefix holds across batches too.
    small = evaluation.generate_by_class(generator, arch, [66, 0], seed=5)
    large = evaluation.generate_by_class(generator, arch, [70, 3], seed=5)
    assert [len(x) for x in small] == [66, 0] and [len(x) for x in large] == [70, 3]
    np.testing.assert_array_equal(small[0], large[0][:66])
    assert small[1].shape == (0, 2, 2, 3)
    # generate_set (the overall set in shares, as trainer.gan.curve draws it) is those prefixes.
    shares = [0.9, 0.1]
    overall = evaluation.generate_set(generator, arch, 70, 5, shares)
    counts = evaluation.allocate(70, shares)
    np.testing.assert_array_equal(overall, np.concatenate(
        [x[:n] for x, n in zip(evaluation.generate_by_class(generator, arch, [70, 70], 5),
                               counts)]))
    assert not np.array_equal(large[0][:3], large[1])  # classes are drawn apart


def test_one_reader_caps_per_class_or_in_total(run, data_dir):
    from trainer.cnn import diagnosis
    from trainer.gan import evaluation

    mapping = diagnosis.read_mapping(str(run / "checkpoints"))
    splits = ["train", "validation"]
    every, every_y = evaluation.load_real_by_class(data_dir, splits, SIZE, mapping, 100)
    # 8+6 nevus, 6+5 melanoma, 5+5 keratosis, 2+4 other (df, vasc; bcc unseen in train)
    assert np.bincount(every_y).tolist() == [14, 11, 10, 6]
    capped, capped_y = evaluation.load_real_by_class(data_dir, splits, SIZE, mapping, 3)
    first = np.sort(np.concatenate([np.flatnonzero(every_y == k)[:3] for k in range(4)]))
    np.testing.assert_array_equal(capped_y, every_y[first])  # the first 3 of each, in order
    np.testing.assert_array_equal(capped, every[first])
    everything = evaluation.load_real(data_dir, splits, SIZE, 100)
    assert len(everything) == 44  # every record, unknown diagnoses included
    np.testing.assert_array_equal(evaluation.load_real(data_dir, splits, SIZE, 30),
                                  everything[:30])
    assert evaluation.load_real(data_dir, ["test"], SIZE, 30).shape == (0, SIZE, SIZE, 3)


def test_class_agreement_says_what_each_generated_class_looks_like():
    """A classifier that calls bright images melanoma: generated nevi that are bright are
    'melanomas' to it (agreement 0), generated melanomas agree; the held-out real column is
    the same classifier on real images, through the same call."""
    from trainer.gan import evaluation

    def probabilities(images):
        bright = images.reshape(len(images), -1).mean(axis=1) > 127
        return np.stack([~bright, bright], axis=1).astype(np.float64)

    dark, bright = np.zeros((5, 2, 2, 3), np.uint8), np.full((5, 2, 2, 3), 200, np.uint8)
    generated = [np.concatenate([bright[:3], dark[:2]]), bright]  # nevus: 3 of 5 look bright
    real = (np.concatenate([dark[:4], bright[:1], bright[:2]]), np.array([0, 0, 0, 0, 0, 1, 1]))
    report = evaluation.class_agreement(probabilities, ["nevus", "melanoma"], generated, 4, real)
    assert report["generated_per_class"] == 4
    made = report["generated"]
    assert made["per_class_recall"] == {"nevus": 0.25, "melanoma": 1.0}  # first 4 of each
    assert made["confusion_matrix"] == [[1, 3], [0, 4]]
    assert report["heldout_real"]["per_class_recall"] == {"nevus": 0.8, "melanoma": 1.0}
    assert report["heldout_real"]["balanced_accuracy"] == pytest.approx(0.9)


def _classifier_folder(path, classes, side=SIZE, metadata=False):
    """A trainer.cnn diagnosis run folder as the evaluation reads it: classes.json and a
    model.keras whose softmax has one output per class (Flatten: an image of another side
    than its input fails). metadata: a second input, as a --use_metadata model has."""
    import keras

    from trainer.cnn import diagnosis

    inputs = [keras.Input((side, side, 3))] + ([keras.Input((16,))] if metadata else [])
    x = keras.layers.Flatten()(inputs[0])
    if metadata:
        x = keras.layers.Concatenate()([x, inputs[1]])
    model = keras.Model(inputs if metadata else inputs[0],
                        keras.layers.Dense(len(classes), activation="softmax")(x))
    path.mkdir()
    model.save(path / "model.keras")
    diagnosis.write_mapping(str(path), {"classes": classes, "grouped_as_other": [],
                                        "index": {c: i for i, c in enumerate(classes)}})
    return path


def test_evaluation_with_a_classifier_reports_class_agreement(run, data_dir, tmp_path):
    from trainer.gan import evaluation

    # a classifier at another size than the GAN's: images are resized to its input
    classifier = _classifier_folder(tmp_path / "cnn", CLASSES, side=2 * SIZE)
    out = tmp_path / "eval"
    report = evaluation.evaluate(str(run), data_dir, str(out), num_generated=6,
                                 feature_extractor="pixels", seed=0,
                                 classifier=str(classifier))
    agreement = report["class_agreement"]
    assert agreement["classifier_side"] == 2 * SIZE and agreement["generated_per_class"] == 6
    # 'other' (2 train images) is not drawn for its own scores: skipped, as per_class skips it
    assert agreement["skipped"] == ["other"] and agreement["generated"]["n"] == 6 * 3
    assert np.sum(agreement["generated"]["confusion_matrix"], axis=1).tolist() == [6, 6, 6, 0]
    assert agreement["generated"]["per_class_recall"]["other"] is None
    # held-out real images of the scored classes only (the 4 bcc are 'other'): both balanced
    # accuracies count the same classes
    assert agreement["heldout_real"]["n"] == 16
    assert agreement["heldout_real"]["support"]["other"] == 0
    markdown = (out / "gan_eval.md").read_text()
    assert "## Class agreement" in markdown
    assert "| generated as | agreement | held-out real | called nevus |" in markdown
    # classes in another order mean other indices: refused before anything is generated
    other = _classifier_folder(tmp_path / "other", CLASSES[::-1])
    with pytest.raises(ValueError, match="has the classes"):
        evaluation.evaluate(str(run), data_dir, str(tmp_path / "refused"), num_generated=6,
                            feature_extractor="pixels", classifier=str(other))
    with pytest.raises(ValueError, match="not a trainer.cnn --task=diagnosis"):
        evaluation.check_classifier(str(tmp_path), {"classes": CLASSES})
    two_inputs = _classifier_folder(tmp_path / "meta", CLASSES, metadata=True)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        evaluation.evaluate(str(run), data_dir, str(tmp_path / "refused"), num_generated=6,
                            feature_extractor="pixels", classifier=str(two_inputs))
    assert not (tmp_path / "refused").exists()


def test_the_curve_follows_class_agreement_checkpoint_by_checkpoint(run, data_dir, tmp_path):
    """trainer.gan.curve --classifier: each checkpoint's class agreement beside its FID, the
    same classifier's on held-out real images as the reference, a panel in curve.png."""
    from trainer.gan import curve

    classifier = _classifier_folder(tmp_path / "cnn", CLASSES)
    rows = curve.score_runs([str(run)], data_dir, num_generated=6, extractor="pixels",
                            classifier=str(classifier))
    assert rows and set(curve.FIELDS) >= set(rows[0])
    for row in rows:
        assert 0.0 <= row["class_agreement"] <= 1.0
        assert 0.0 <= row["class_agreement_real"] <= 1.0
        shares = dict(part.split("=") for part in row["class_agreement_by_class"].split(";"))
        assert list(shares) == ["nevus", "melanoma", "benign_keratosis"]  # other: skipped
        assert all(0.0 <= float(v) <= 1.0 for v in shares.values())
    plain = curve.score_runs([str(run)], data_dir, num_generated=6, extractor="pixels")
    assert "class_agreement" not in plain[0]
    curve.save_curve(rows, str(tmp_path / "curve.png"))
    with Image.open(tmp_path / "curve.png") as image:
        with_panel = image.size[0]
    curve.save_curve(plain, str(tmp_path / "plain.png"))
    with Image.open(tmp_path / "plain.png") as image:
        assert with_panel > image.size[0]  # the third panel
