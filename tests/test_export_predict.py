"""Export and prediction: the served path equals the data engine's path on real images."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from isicflow import imaging
from tests import near_copies
from trainer.cnn import export, predict

SIZE = 32  # 250x250 JPEGs -> libjpeg's 1/2 DCT scaling is used on both paths at this size
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_images(sample_dir, tmp_path_factory):
    """8 real ISIC JPEGs as published (none of the degenerate ones the data README lists, which
    predict refuses), plus a non-square JPEG crop and a PNG (other code paths)."""
    folder = tmp_path_factory.mktemp("images")
    degenerate = near_copies.degenerate_ids(sample_dir.parent)
    paths = [str(p) for p in sorted(sample_dir.glob("ISIC_*.jpg")) if p.stem not in degenerate][:8]
    pixels = imaging.decode_image(open(paths[0], "rb").read()).pixels
    for name, data in (("crop.jpg", _encode(pixels[20:230, :170], "JPEG")),
                       ("lesion.png", _encode(pixels[::2, ::3], "PNG"))):
        (folder / name).write_bytes(data)
        paths.append(str(folder / name))
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    (workdir / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.37, "policy": "youden"}}))
    model = tiny_model()
    paths = export.export_model(model, str(workdir), SIZE, "squash")
    return model, str(workdir), paths


def engine_path(model, path: str, mode: str = "squash"):
    """The data engine's path: Pillow decode (with DCT scaling) + Pillow resize, then the model."""
    from trainer.core import input_pipeline

    decoded = imaging.decode_image(open(path, "rb").read(), target=SIZE, mode=mode)
    pixels = np.asarray(imaging.resize_pil(decoded.image, SIZE, mode))
    probability = model.predict_on_batch(input_pipeline.preprocess_for_eval(pixels[None]))[0, 0]
    return pixels, float(probability)


def test_export_writes_files_and_config(exported):
    _, workdir, paths = exported
    assert paths["export_dir"] == os.path.join(workdir, "export")
    for key in ("keras", "serving_config"):
        assert os.path.isfile(paths[key]), key
    assert os.path.isfile(os.path.join(paths["saved_model"], "saved_model.pb"))
    config = json.load(open(paths["serving_config"]))
    assert (config["image_size"], config["resize_mode"], config["threshold"]) == (SIZE, "squash", 0.37)
    assert "report.json" in config["threshold_source"]
    assert config["min_image_side"] == 32  # predict.default_min_side(32): the thumbnail's size
    card = open(paths["model_card"], encoding="utf-8").read()  # the same report's threshold
    assert "Threshold: **0.3700**" in card and "policy `youden`" in card


def test_export_without_a_report_serves_and_carries_the_default_threshold(tmp_path):
    paths = export.export_model(tiny_model(), str(tmp_path), SIZE)
    config = json.load(open(paths["serving_config"]))
    source = f"default 0.5 (no report.json in {tmp_path})"
    assert (config["threshold"], config["threshold_source"]) == (0.5, source)
    card = open(paths["model_card"], encoding="utf-8").read()
    assert "Not evaluated: the run folder holds no report.json." in card
    assert "Threshold: **0.5000**" in card and f"Source: {source}." in card


def test_served_pixels_and_probabilities_equal_engine_path(exported, real_images):
    import tensorflow as tf

    model, workdir, _ = exported
    loaded, _ = export.load_exported(workdir)
    contents = tf.constant([open(p, "rb").read() for p in real_images])
    served_pixels = loaded.signatures["preprocess"](image_bytes=contents)["pixels"].numpy()
    served = loaded.signatures["serving_default"](image_bytes=contents)
    assert float(loaded.threshold.numpy()) == pytest.approx(0.37)
    assert int(loaded.image_size.numpy()) == SIZE and loaded.resize_mode.numpy() == b"squash"
    for i, path in enumerate(real_images):
        pixels, probability = engine_path(model, path)
        np.testing.assert_array_equal(served_pixels[i], pixels, err_msg=path)
        assert served["probability"].numpy()[i] == pytest.approx(probability, abs=1e-5), path
        expected_label = b"malignant" if served["probability"].numpy()[i] >= 0.37 else b"benign"
        assert served["label"].numpy()[i] == expected_label
    assert len(set(np.round(served["probability"].numpy(), 6))) > 1  # not a constant model


def test_keras_file_reloads_to_the_same_model(exported, real_images):
    import keras

    model, _, paths = exported
    reloaded = keras.models.load_model(paths["keras"])
    batch = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    np.testing.assert_allclose(reloaded.predict_on_batch(batch), model.predict_on_batch(batch), atol=1e-6)


def test_center_crop_export_matches_engine_on_a_non_square_image(tmp_path, real_images):
    import tensorflow as tf

    model = tiny_model()
    paths = export.export_model(model, str(tmp_path), SIZE, "center_crop", threshold=0.5)
    loaded = tf.saved_model.load(paths["saved_model"])
    crop = [p for p in real_images if p.endswith("crop.jpg")][0]
    served = loaded.signatures["preprocess"](image_bytes=tf.constant([open(crop, "rb").read()]))
    pixels, _ = engine_path(model, crop, mode="center_crop")
    np.testing.assert_array_equal(served["pixels"].numpy()[0], pixels)


def test_export_rejects_mismatched_model_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="does not match image_size 64"):
        export.export_model(tiny_model(), str(tmp_path), 64)
    with pytest.raises(ValueError, match="resize mode 'stretch'"):
        export.export_model(tiny_model(), str(tmp_path), SIZE, "stretch")
    with pytest.raises(ValueError, match="threshold must be in"):
        export.export_model(tiny_model(), str(tmp_path), SIZE, threshold=1.5)
    with pytest.raises(FileNotFoundError, match="neither an export dir"):
        export.load_exported(str(tmp_path))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, real_images):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.txt").write_text("not an image at all")
    (folder / "empty.jpg").write_bytes(b"")
    data = open(real_images[0], "rb").read()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return {"text": str(folder / "notes.txt"), "empty": str(folder / "empty.jpg"),
            "truncated": str(folder / "truncated.jpg"), "missing": str(folder / "missing.jpg")}


def test_predict_files_rejects_what_the_engine_rejects_and_classifies_the_rest(
        exported, real_images, bad_files):
    model, workdir, paths = exported
    order = [real_images[0], bad_files["text"], real_images[1], bad_files["missing"],
             bad_files["empty"], bad_files["truncated"], real_images[8]]
    results = predict.predict_files(order, paths["export_dir"], batch_size=2)
    assert [r.path for r in results] == order
    by_path = {r.path: r for r in results}
    assert by_path[bad_files["text"]].rejected.startswith("not_an_image (")
    assert by_path[bad_files["empty"]].rejected.startswith("empty_file (")
    assert by_path[bad_files["truncated"]].rejected.startswith("corrupt_image (")
    for path in (bad_files["text"], bad_files["empty"], bad_files["truncated"]):
        assert by_path[path].probability is None and by_path[path].error is None
        assert by_path[path].line() == f"{path}\trejected: {by_path[path].rejected}"
    assert by_path[bad_files["missing"]].error.startswith("cannot read file (No such file")
    for path in (real_images[0], real_images[1], real_images[8]):
        result = by_path[path]
        assert result.error is None and result.rejected is None
        assert result.probability == pytest.approx(engine_path(model, path)[1], abs=1e-5)
        assert result.label == ("malignant" if result.probability >= 0.37 else "benign")
        assert result.line() == f"{path}\t{result.probability:.6f}\t{result.label}"
    overridden = predict.predict_files(real_images[:2], workdir, threshold=0.0)
    assert [r.label for r in overridden] == ["malignant", "malignant"]


def _run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "trainer.cnn.predict", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_one_line_per_image_and_exit_code_says_if_any_failed(
        exported, real_images, bad_files, sample_dir, tmp_path):
    _, workdir, _ = exported
    striped = str(sample_dir / "ISIC_0000000.jpg")  # degenerate as published (data README)
    out = tmp_path / "predictions.tsv"
    images = [real_images[2], bad_files["text"], real_images[3], striped, bad_files["missing"]]
    proc = _run_cli(f"--model={workdir}", f"--image={','.join(images)}", f"--output={out}")
    assert proc.returncode == 1, proc.stderr  # the missing file: no answer
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 5
    assert lines[0].split("\t")[0] == real_images[2] and lines[0].split("\t")[2] in ("benign", "malignant")
    assert 0.0 <= float(lines[0].split("\t")[1]) <= 1.0
    assert lines[1].startswith(f"{bad_files['text']}\trejected: not_an_image (")
    assert lines[3].startswith(f"{striped}\trejected: degenerate_image (no picture: every row "
                               "the same")
    assert lines[4].startswith(f"ERROR {bad_files['missing']}: cannot read file")
    assert "2 of 5 image(s) classified, 2 rejected, 1 failed" in proc.stderr
    rows = list(csv.DictReader(open(out), delimiter="\t"))
    assert [r["path"] for r in rows] == images and list(rows[0]) == list(predict.TSV_COLUMNS)
    assert rows[0]["rejected"] == "" and 0.0 <= float(rows[0]["probability"]) <= 1.0
    assert rows[3]["rejected"].startswith("degenerate_image") and rows[3]["probability"] == ""
    assert rows[4]["error"].startswith("cannot read file") and rows[4]["label"] == ""
    # every image answered, a rejection included: exit 0
    assert _run_cli(f"--model={workdir}", f"--image={real_images[4]},{striped}").returncode == 0
    no_model = _run_cli(f"--model={bad_files['text']}", f"--image={real_images[4]}")
    assert no_model.returncode == 2 and "neither an export dir" in no_model.stderr


def test_predict_warns_where_serving_pixels_differ_from_training(exported, tmp_path):
    _, workdir, _ = exported
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    (tmp_path / "alpha.png").write_bytes(_encode(pixels, "PNG"))
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels[..., :3]).save(rotated, format="JPEG", exif=exif)
    (tmp_path / "rotated.jpg").write_bytes(rotated.getvalue())
    (tmp_path / "plain.png").write_bytes(_encode(pixels[..., :3], "PNG"))
    results = predict.predict_files([str(tmp_path / n) for n in ("alpha.png", "rotated.jpg", "plain.png")],
                                    workdir)
    assert all(r.error is None for r in results)
    assert results[0].warning is None  # alpha is composited in-graph as in the engine
    assert "EXIF orientation 6 ignored" in results[1].warning
    assert results[2].warning is None


def test_rejection_is_the_engines_verdict(sample_dir, tmp_path):
    """The 84 striped UDA-1 scans the engine rejects as degenerate_image are refused, with the
    engine's reason; lesion images pass; a small image is too_small below min_image_side."""
    from tests import near_copies as nc

    listed = sorted(nc.degenerate_ids(sample_dir.parent))
    for image_id in listed[:5] + listed[-2:]:
        reason, detail = predict.rejection((sample_dir / f"{image_id}.jpg").read_bytes(), SIZE)
        assert reason == "degenerate_image" and detail.startswith("no picture:"), image_id
    good = [p for p in sorted(sample_dir.glob("ISIC_*.jpg")) if p.stem not in listed][:5]
    assert all(predict.rejection(p.read_bytes(), SIZE) is None for p in good)
    assert predict.rejection(b"%PDF-1.4", SIZE)[0] == "not_an_image"
    pixels = np.asarray(Image.open(good[0]).convert("RGB"))
    small = _encode(pixels[:40, :60], "PNG")
    assert predict.default_min_side(SIZE) == 32 and predict.default_min_side(128) == 64
    assert predict.default_min_side(128, dataset_min_side=300) == 300
    assert predict.rejection(small, SIZE) is None  # 40 >= 32
    reason, detail = predict.rejection(small, 128)
    assert reason == "too_small" and "40 px < 64" in detail
    assert predict.rejection(small, SIZE, min_side=41)[0] == "too_small"
    flat = _encode(np.full((64, 64, 3), 120, np.uint8), "PNG")
    assert predict.rejection(flat, SIZE)[0] == "degenerate_image"


def test_export_records_min_image_side_and_predict_applies_it(tmp_path, real_images):
    paths = export.export_model(tiny_model(), str(tmp_path), SIZE, threshold=0.5,
                                min_image_side=1000)
    config = json.load(open(paths["serving_config"]))
    assert config["min_image_side"] == 1000 and "degenerate" in config["checks"]
    result, = predict.predict_files(real_images[:1], str(tmp_path))
    assert result.rejected.startswith("too_small (short side 250 px < 1000")
