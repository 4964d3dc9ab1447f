"""A seed ensemble exported as one model: served probability = the members' mean, threshold
chosen anew on their validation split, mismatched members refused, the card names them."""
import io
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
    """The user's command, as a program: python -m trainer.cnn.ensemble --model=... --output=..."""
    out = str(tmp_path_factory.mktemp("ensemble") / "ens")
    proc = subprocess.run([sys.executable, "-m", "trainer.cnn.ensemble", f"--model={','.join(runs)}",
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
    if setting == "task":  # a diagnosis run as training leaves it: with its classes
        run_folder.write_json(os.path.join(odd, "classes.json"), {"classes": ["a", "b"]})
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
    with pytest.raises(ensemble.EnsembleError, match="--tta: test-time augmentation is not "
                                                     "supported for a --use_metadata model"):
        ensemble.export_ensemble(runs, str(tmp_path / "ens_tta"), bootstrap=0, tta=True)
    assert not os.path.exists(tmp_path / "ens_tta")  # refused before anything is written


def _copy_with(run: str, folder, name: str, **changes) -> str:
    """A copy of a member run with `changes` ({json file: function editing its dict})."""
    odd = str(folder / name)
    shutil.copytree(run, odd)
    for file, edit in changes.items():
        path = os.path.join(odd, file)
        run_folder.write_json(path, edit(json.load(open(path))))
    return odd


def _exported_with(run: str, resize_mode: str) -> None:
    os.makedirs(os.path.join(run, "export"), exist_ok=True)
    run_folder.write_json(os.path.join(run, "export", "serving_config.json"),
                          {"resize_mode": resize_mode})


def test_every_members_resize_mode_is_checked(runs, tmp_path):
    """Against each other wherever exported, and against the dataset's: the first member not
    being exported does not hide the others."""
    a, b = (_copy_with(r, tmp_path, n) for r, n in ((runs[1], "a"), (runs[2], "b")))
    _exported_with(a, "squash")
    _exported_with(b, "center_crop")
    with pytest.raises(ensemble.EnsembleError,
                       match=f"{b} was exported with resize_mode='center_crop' but {a} with"):
        ensemble.export_ensemble([runs[0], a, b], str(tmp_path / "out"))
    _exported_with(a, "center_crop")  # agree with each other, not with the dataset (squash)
    with pytest.raises(ensemble.EnsembleError,
                       match=f"has resize_mode 'squash' but {a} was exported with 'center_crop'"):
        ensemble.export_ensemble([runs[0], a, b], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_data_dir_with_other_split_counts_is_refused_naming_both(runs, tmp_path, data_dir):
    recorded = evaluation.dataset_counts(data_dir, SIZE)
    members = [_copy_with(r, tmp_path, f"m{i}", **{"report.json": lambda rep: {
        **rep, "data": recorded}}) for i, r in enumerate(runs[:2])]
    other = shard_fixtures.write_tiny_dataset(  # the same layout, other images and counts
        tmp_path / "other", {s: shard_fixtures.random_images(n, 48, seed=i) for i, (s, n) in
                             enumerate({"train": 2, "validation": 4, "test": 4}.items())}, SIZE)
    with pytest.raises(ensemble.EnsembleError) as e:
        ensemble.export_ensemble(members, str(tmp_path / "out"), data_dir=other)
    assert f"--data_dir={other} holds {{'train': 2, 'validation': 4, 'test': 4}}" in str(e.value)
    assert f"but {members[0]} recorded {{'train': 2, 'validation': 10, 'test': 6}}" in str(e.value)


def test_metadata_members_must_agree_on_the_encoding(data_dir, tmp_path):
    runs = [tiny_run(tmp_path / f"meta{s}", data_dir, s, use_metadata=True) for s in (1, 2)]
    legacy = _copy_with(runs[1], tmp_path, "legacy", **{TRAIN_CONFIG_NAME: lambda c: {
        k: v for k, v in c.items() if k != "metadata_encoding"}})  # before version 2: 1
    with pytest.raises(ensemble.EnsembleError, match=f"{legacy} has metadata_encoding=1 but "):
        ensemble.export_ensemble([runs[0], legacy], str(tmp_path / "out"))


def test_a_member_without_image_size_or_classes_is_named(runs, tmp_path):
    sizeless = _copy_with(runs[1], tmp_path, "sizeless", **{TRAIN_CONFIG_NAME: lambda c: {
        k: v for k, v in c.items() if k != "image_size"}, "report.json": lambda r: {
        **r, "config": {k: v for k, v in r["config"].items() if k != "image_size"}}})
    with pytest.raises(ensemble.EnsembleError, match=f"{sizeless} records no image_size"):
        ensemble.export_ensemble([runs[0], sizeless], str(tmp_path / "out"))
    classless = _copy_with(runs[1], tmp_path, "classless", **{
        TRAIN_CONFIG_NAME: lambda c: {**c, "task": "diagnosis"}})
    with pytest.raises(ensemble.EnsembleError,
                       match=f"{classless} trained the diagnosis task but holds no classes.json"):
        ensemble.export_ensemble([classless, runs[0]], str(tmp_path / "out"))


def test_a_diagnosis_ensemble_serves_the_mean_softmax_and_scores_it(tmp_path):
    """The diagnosis path: the members' classes.json carried over, the ensemble's own report
    (balanced accuracy of the mean probabilities), an export serving K probabilities."""
    import keras
    import tensorflow as tf
    from PIL import Image

    from trainer.cnn import diagnosis
    from trainer.cnn.models import load_keras_model

    texts = ["nevus", "melanoma", "bcc", "nevus", "melanoma", "bcc", ""]
    data = shard_fixtures.write_tiny_dataset(tmp_path / "dx", {
        split: [(img, "malignant" if t == "melanoma" else "benign", {"diagnosis": t})
                for (img, _), t in zip(shard_fixtures.random_images(len(texts), 48, seed=i),
                                       texts)]
        for i, split in enumerate(("train", "validation", "test"))}, SIZE)
    mapping = diagnosis.build_mapping(data, SIZE, min_records=1)
    runs = []
    for seed in (1, 2):
        folder = str(tmp_path / f"dx{seed}")
        keras.utils.set_random_seed(seed)
        keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),  # not
                          keras.layers.Dense(3, activation="softmax")]).save(  # rotation-invariant
            os.path.join(os.makedirs(folder) or folder, "model.keras"))
        run_folder.write_json(os.path.join(folder, TRAIN_CONFIG_NAME), {
            "task": "diagnosis", "image_size": SIZE, "seed": seed, "data_dir": data,
            "model": "tiny", "workdir": folder})
        diagnosis.write_mapping(folder, mapping)
        runs.append(folder)
    # members recording no report.json: --tta must be given, as for the binary task
    with pytest.raises(ensemble.EnsembleError, match="pass --tta"):
        ensemble.export_ensemble(runs, str(tmp_path / "ens"))
    paths = ensemble.export_ensemble(runs, str(tmp_path / "ens"), tta=False)
    out = tmp_path / "ens"
    assert json.load(open(out / "classes.json"))["classes"] == mapping["classes"]
    members = [load_keras_model(os.path.join(r, "model.keras")) for r in runs]
    labels, _ = diagnosis.predict_split(members[0], data, "test", SIZE, mapping)
    mean = np.mean([diagnosis.predict_split(m, data, "test", SIZE, mapping)[1] for m in members],
                   axis=0)
    report = json.load(open(out / "report.json"))
    assert report["splits"]["test"] == diagnosis.split_metrics(labels, mean, mapping["classes"])
    assert report["excluded_unknown"]["test"] == 1
    _, config = export.load_exported(paths["export_dir"])
    assert config["task"] == "diagnosis" and config["classes"] == mapping["classes"]
    assert len(config["ensemble"]["members"]) == 2
    assert report["tta"] is False and config["tta"] is False
    # --tta: scored and served as the mean over the 8 views of each member's softmax
    paths = ensemble.export_ensemble(runs, str(tmp_path / "ens2"), tta=True)
    tta_mean = np.mean([diagnosis.predict_split(m, data, "test", SIZE, mapping, tta=True)[1]
                        for m in members], axis=0)
    assert np.abs(tta_mean - mean).max() > 1e-3  # the views differ for these members
    report = json.load(open(tmp_path / "ens2" / "report.json"))
    assert report["tta"] is True
    assert report["splits"]["test"] == diagnosis.split_metrics(labels, tta_mean,
                                                               mapping["classes"])
    # served: the mean over members and views of the softmax, from the image bytes
    loaded, config = export.load_exported(paths["export_dir"])
    assert config["tta"] is True
    contents = []
    for px, _ in shard_fixtures.random_images(3, SIZE, seed=7):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(px, np.uint8)).save(buf, format="PNG")
        contents.append(buf.getvalue())
    contents = tf.constant(contents)
    x = input_pipeline.preprocess_for_eval(
        loaded.signatures["preprocess"](image_bytes=contents)["pixels"]).numpy()
    views = [np.rot90(v, k, axes=(1, 2)) for v in (x, x[:, :, ::-1]) for k in range(4)]
    expected = np.mean([m.predict_on_batch(v) for m in members for v in views], axis=0)
    served = loaded.signatures["serving_default"](image_bytes=contents)["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)
    plain = loaded.signatures[export.SIGNATURE_PLAIN](image_bytes=contents)["probabilities"]
    assert np.abs(plain.numpy() - served).max() > 1e-3
