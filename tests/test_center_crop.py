"""--center_crop: the model's first layers keep the central box, so the border (a clinic's
vignette, a dermoscope's rim) cannot reach its output; off (1.0) the model is unchanged."""
import json

import keras
import numpy as np
import pytest
from absl import flags

from trainer.cnn import cli, config as config_lib, models, visualize

cli.define_flags()

SIZE = 32
BOX = slice(8, 24)  # crop 0.5 of 32 px: 16 px from (32 - 16) // 2 = 8
ARCHITECTURES = ("study", "compact", "residual", "efficientnet_b0")


def _pair(rng, inside: bool) -> np.ndarray:
    """Two images equal but for one pixel patch: in the central box, or in a corner outside."""
    images = np.repeat(rng.random((1, SIZE, SIZE, 3)).astype(np.float32), 2, axis=0)
    patch = (slice(10, 14), slice(12, 16)) if inside else (slice(0, 6), slice(26, 32))
    images[1][patch] = 1.0 - images[1][patch]
    return images


def _border_blind(model, extra=()) -> None:
    """The features under the output unit (an untrained sigmoid sits near 0.5 whatever it
    sees) are equal for a change outside the box and differ for one inside it."""
    probe = keras.Model(model.inputs if extra else model.inputs[0], model.layers[-1].input)

    def features(images):
        return probe([images, *extra] if extra else images, training=False).numpy()

    rng = np.random.default_rng(0)
    outside = features(_pair(rng, inside=False))
    # equal up to float rounding: the two batch rows may take different CPU kernel paths
    # (differences ~1e-8 seen on some CPUs), far below the inside change asserted below
    scale = np.abs(outside).max()
    np.testing.assert_allclose(outside[0], outside[1], rtol=0, atol=1e-5 * scale)
    inside = features(_pair(rng, inside=True))
    # relative: an untrained EfficientNet's features are ~1e-7 in size
    assert np.abs(inside[0] - inside[1]).max() > 1e-3 * np.abs(inside).max() > 0, inside


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_cannot_see_outside_the_central_box(name):
    keras.utils.set_random_seed(0)
    _border_blind(models.build_model(name, SIZE, center_crop=0.5))


def test_the_crop_comes_first_and_color_constancy_after_it():
    model = models.build_model("compact", SIZE, center_crop=0.5,
                               color_constancy="shades_of_grey")
    assert [layer.name for layer in model.layers[1:4]] == [
        "center_crop", "center_crop_resize", "color_constancy"]
    assert model.get_layer("center_crop_resize").output.shape[1:] == (SIZE, SIZE, 3)
    _border_blind(model)  # the illuminant estimate does not see the border either


def test_the_metadata_model_crops_its_image_input_only():
    from trainer.core import metadata_features

    model = metadata_features.with_metadata_input(models.build_model("compact", SIZE,
                                                                      center_crop=0.5))
    metadata = np.random.default_rng(1).random(
        (2, metadata_features.METADATA_DIM)).astype(np.float32)
    metadata[1] = metadata[0]
    _border_blind(model, extra=(metadata,))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_crop_of_one_leaves_the_model_as_it_was(name):
    plain = models.build_model(name, SIZE)
    same = models.build_model(name, SIZE, center_crop=1.0)
    assert [layer.name for layer in same.layers] == [layer.name for layer in plain.layers]
    assert same.count_params() == plain.count_params()
    cropped = models.build_model(name, SIZE, center_crop=0.5)
    assert cropped.count_params() == plain.count_params()  # the crop adds no weights
    assert len(cropped.layers) == len(plain.layers) + 2


def test_a_box_as_large_as_the_image_adds_no_layer():
    # round(0.99 * 32) = 32: cropping nothing would be two identity layers
    assert models.center_crop_size(SIZE, 0.99) == SIZE
    assert models.center_crop_box(models.build_model("compact", SIZE, center_crop=0.99)) is None
    assert models.center_crop_box(models.build_model("compact", SIZE, center_crop=0.5)) == (8, 16)


@pytest.mark.parametrize("fraction, shown", [(0.0, "0.0"), (-0.5, "-0.5"), (1.5, "1.5"),
                                             (0.2, "0.2 keeps 6 px")])
def test_impossible_crops_raise_with_the_value(fraction, shown):
    with pytest.raises(ValueError, match=shown):
        models.build_model("compact", SIZE, center_crop=fraction)
    with pytest.raises(config_lib.ConfigError, match=f"--center_crop={fraction}"):
        config_lib.TrainConfig(data_dir="d", workdir="w", image_size=SIZE,
                               center_crop=fraction)


@pytest.mark.parametrize("argv, shown", [
    (["--center_crop=0"], "center_crop=0.0"), (["--center_crop=1.2"], "center_crop=1.2"),
    (["--center_crop=0.2", "--image_size=32"], "center_crop=0.2")])
def test_impossible_crop_flags_fail_at_parse_with_the_value(argv, shown):
    try:
        with pytest.raises(flags.IllegalFlagValueError, match=shown):
            flags.FLAGS(["trainer.cnn", *argv])
    finally:
        flags.FLAGS.unparse_flags()


def test_the_flag_reaches_the_config():
    try:
        flags.FLAGS(["trainer.cnn", "--center_crop=0.75", "--image_size=32"])
        assert config_lib.TrainConfig.from_flags().center_crop == 0.75
    finally:
        flags.FLAGS.unparse_flags()
    assert config_lib.TrainConfig(data_dir="d", workdir="w").center_crop == 1.0


def test_a_saved_model_keeps_the_crop(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_model("compact", SIZE, center_crop=0.5)
    model.save(tmp_path / "model.keras")
    again = models.load_keras_model(str(tmp_path / "model.keras"))
    assert models.center_crop_box(again) == (8, 16)
    x = np.random.default_rng(2).random((2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x, training=False), model(x, training=False), atol=1e-6)
    _border_blind(again)


def test_grad_cam_fills_the_central_box_and_leaves_the_border_zero():
    keras.utils.set_random_seed(0)
    model = models.build_model("compact", SIZE, center_crop=0.5)
    image = np.random.default_rng(3).random((SIZE, SIZE, 3)).astype(np.float32)
    heatmaps = [visualize.explain(model, image, explain_class=k).heatmap for k in (0, 1)]
    for heatmap in heatmaps:
        assert heatmap.shape == (SIZE, SIZE)
        border = heatmap.copy()
        border[BOX, BOX] = 0.0
        assert not border.any()
    # one class has positive evidence somewhere; its peak lies in the box
    assert max(h[BOX, BOX].max() for h in heatmaps) == pytest.approx(1.0)


def test_grad_cam_places_the_map_in_the_box_not_stretched():
    import tensorflow as tf

    cam = tf.constant([[0.0, 1.0], [0.0, 0.0]])  # the top-right quarter of the box is hot
    placed = visualize._cam_on_image(cam, (SIZE, SIZE), (8, 16))
    stretched = visualize._cam_on_image(cam, (SIZE, SIZE), None)
    assert placed[8:24, 8:24].max() == pytest.approx(stretched.max())
    assert placed[:8].max() == 0 and placed[:, 24:].max() == 0
    np.testing.assert_allclose(placed[8:24, 8:24], tf.image.resize(
        cam[..., None], (16, 16), method="bilinear")[..., 0].numpy())


@pytest.mark.eager_steps  # one step: tracing it cost more than running it (conftest)
def test_one_training_step_through_the_trainer_keeps_the_crop(tmp_path, sample_dir):
    from tests import shard_fixtures
    from trainer.cnn import train

    data = shard_fixtures.write_sample_dataset(tmp_path / "data", sample_dir, SIZE)
    run = tmp_path / "run"
    result = train.train_cnn(train.TrainConfig(
        data_dir=str(data), workdir=str(run), image_size=SIZE, batch_size=4, epochs=1,
        steps_per_epoch=1, seed=0, mixed_precision="off", verbose=0, model="compact",
        center_crop=0.5))
    assert json.loads((run / "train_config.json").read_text())["center_crop"] == 0.5
    assert np.isfinite(result.history[0]["loss"])
    saved = models.load_keras_model(str(run / "model.keras"))
    assert models.center_crop_box(saved) == (8, 16)
    _border_blind(saved)


def test_the_export_serves_the_crop(tmp_path):
    import tensorflow as tf

    from trainer.cnn import export

    keras.utils.set_random_seed(0)
    model = models.build_model("compact", SIZE, center_crop=0.5)
    paths = export.export_model(model, str(tmp_path), SIZE, threshold=0.5)
    serve = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"]
    rng = np.random.default_rng(4)

    def served(images):
        pngs = [tf.io.encode_png(np.round(image * 255).astype(np.uint8)) for image in images]
        return serve(image_bytes=tf.stack(pngs))["probability"].numpy()

    outside = served(_pair(rng, inside=False))
    assert outside[0] == outside[1]
    inside = served(_pair(rng, inside=True))
    assert inside[0] != inside[1]
