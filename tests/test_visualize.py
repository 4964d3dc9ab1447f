"""trainer.cnn.visualize: feature-map grids and Grad-CAM on the study CNN and a hand-made model."""
import os
import subprocess
import sys

import numpy as np
import pytest

from trainer.cnn import visualize

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lesion(sample_dir):
    return str(sorted(sample_dir.glob("ISIC_*.jpg"))[0])


@pytest.fixture(scope="module")
def study_model():
    import keras

    from trainer.cnn import models

    keras.utils.set_random_seed(0)
    return models.build_study_cnn(image_size=64)


def test_study_cnn_gets_one_grid_per_conv_and_a_heatmap(study_model, lesion, tmp_path):
    result = visualize.visualize(study_model, lesion, str(tmp_path))
    assert result["layers"] == ["conv1", "conv2", "conv3"]
    written = sorted(os.listdir(tmp_path))
    gradcam = f"gradcam_{result['explained']}.png"  # the predicted class, named
    assert result["explained"] in ("benign", "malignant")
    assert written == ["featuremaps_01_conv1.png", "featuremaps_02_conv2.png",
                       "featuremaps_03_conv3.png", gradcam]
    for name in written:
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == PNG_MAGIC
    heatmap = result["heatmap"]
    assert heatmap.shape == (64, 64) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert 0.0 <= result["probability"] <= 1.0


def test_feature_maps_have_each_layers_shape(study_model, lesion):
    image = visualize.load_image(lesion, 64)
    assert image.shape == (64, 64, 3) and 0.0 <= image.min() and image.max() <= 1.0
    maps = visualize.feature_maps(study_model, image)
    assert {k: v.shape for k, v in maps.items()} == {
        "conv1": (64, 64, 16), "conv2": (32, 32, 32), "conv3": (16, 16, 64)}
    assert visualize._mosaic(maps["conv3"]).shape == (8 * 17 - 1, 8 * 17 - 1)


def half_bright_model():
    """Sequential: a positive 3x3 averaging conv, then positive dense weights. Evidence for
    'malignant' is wherever the image is bright, so Grad-CAM must light up exactly there."""
    import keras

    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(2, 3, padding="same", activation="relu",
                            kernel_initializer=keras.initializers.Constant(1 / 27),
                            bias_initializer="zeros"),
        keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid",
                           kernel_initializer=keras.initializers.Constant(0.01)),
    ])


def test_grad_cam_lights_up_where_the_evidence_is():
    image = np.zeros((32, 32, 3), np.float32)
    image[:, :16] = 1.0  # left half bright
    heatmap, probability = visualize.grad_cam(half_bright_model(), image)
    assert heatmap.shape == (32, 32)
    # Inside the bright half, away from the zero-padded border (where the average drops to 4/9).
    assert heatmap[1:-1, 1:15].min() > 0.99, heatmap[1:-1, 1:15].min()
    assert heatmap[:, 17:].max() < 0.05, heatmap[:, 17:].max()
    assert probability > 0.5


def bright_is_benign_model():
    """half_bright_model with negative dense weights: a bright image is benign (P(malignant)
    < 0.5), all its evidence is for benign, none for malignant."""
    import keras

    model = half_bright_model()
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([-kernel, bias])
    return model


def test_grad_cam_of_a_benign_prediction_explains_benign():
    """Following P(malignant) alone, a benign prediction gets a blank heatmap (nothing argues
    for malignant); the predicted class's Grad-CAM (target 1 - P) lights up the evidence."""
    image = np.zeros((32, 32, 3), np.float32)
    image[:, :16] = 1.0
    model = bright_is_benign_model()
    result = visualize.explain(model, image)
    assert result.class_name == "benign" and result.predicted == 0
    assert result.probabilities[1] < 0.5 and result.class_probability > 0.5
    assert result.heatmap.max() == 1.0 and result.heatmap[1:-1, 1:15].min() > 0.99
    assert result.heatmap[:, 17:].max() < 0.05
    malignant = visualize.explain(model, image, explain_class="malignant")
    assert malignant.class_name == "malignant" and not malignant.heatmap.any()  # the old blank
    heatmap, probability = visualize.grad_cam(model, image)
    np.testing.assert_array_equal(heatmap, result.heatmap)
    assert probability == pytest.approx(result.probabilities[1])
    with pytest.raises(visualize.UnknownClass, match="'mel' not among"):
        visualize.explain(model, image, explain_class="mel")
    # the exported threshold decides the predicted class
    assert visualize.explain(model, image, threshold=0.0).class_name == "malignant"


def test_grad_cam_of_a_diagnosis_model_explains_the_argmax_class(tmp_path):
    import keras

    image = np.zeros((32, 32, 3), np.float32)
    image[:, :16] = 1.0
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax")])
    probabilities = model.predict_on_batch(image[None])[0]
    names = ["mel", "nevus", "bcc"]
    result = visualize.explain(model, image, class_names=names)
    assert result.class_index == int(np.argmax(probabilities))
    assert result.class_name == names[result.class_index]
    np.testing.assert_allclose(result.probabilities, probabilities, atol=1e-6)
    out = visualize.visualize(model, _png(tmp_path, image), str(tmp_path / "vis"),
                              class_names=names)
    assert os.path.basename(out["gradcam"]) == f"gradcam_{result.class_name}.png"


def _png(tmp_path, image01):
    from PIL import Image

    path = str(tmp_path / "image.png")
    Image.fromarray((image01 * 255).astype(np.uint8)).save(path)
    return path


def test_a_run_folder_explains_at_its_exports_threshold(tmp_path):
    """A run dir holds model.keras and export/serving_config.json: the exported threshold
    decides the predicted class (0.5 would call this image benign)."""
    image = np.zeros((32, 32, 3), np.float32)
    image[:, :16] = 1.0
    model = bright_is_benign_model()
    model.save(str(tmp_path / "model.keras"))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "serving_config.json").write_text('{"threshold": 0.0}')
    loaded, config = visualize.load_model_and_config(str(tmp_path))
    assert config["threshold"] == 0.0 and len(loaded.layers) == len(model.layers)
    out = visualize.visualize(model, _png(tmp_path, image), str(tmp_path / "vis"),
                              threshold=config["threshold"])
    assert out["explained"] == "malignant" and out["gradcam"].endswith("gradcam_malignant.png")


def test_nested_convolutions_are_refused_clearly():
    import keras

    inner = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3)], name="backbone")
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inner(inputs)))
    with pytest.raises(ValueError, match=r"nested model\(s\) \['backbone'\]"):
        visualize.conv_layers(keras.Model(inputs, outputs))


def test_cli_writes_the_pngs(study_model, lesion, tmp_path):
    model_path = str(tmp_path / "model.keras")
    study_model.save(model_path)
    out = tmp_path / "vis"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "trainer.cnn.visualize", f"--model={model_path}",
                           f"--image={lesion}", f"--output={out}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("featuremaps_*.png"))) == 3 and len(list(out.glob("gradcam_*.png"))) == 1
    assert "P(malignant) = " in proc.stdout and "Grad-CAM explains: " in proc.stdout
