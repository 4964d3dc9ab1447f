"""Shades of grey: a colour cast is removed, brightness does not change the gains, a grey image
stays as it is, and the layer survives a save and load inside a model."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.cnn.color_constancy import ShadesOfGrey  # noqa: E402


def _lesion(rng: np.random.Generator) -> np.ndarray:
    """A skin-toned field with a darker blob, values in [0, 1]."""
    y, x = np.mgrid[0:32, 0:32]
    blob = np.exp(-((x - 16) ** 2 + (y - 14) ** 2) / 60.0)[..., None]
    skin = np.array([0.75, 0.55, 0.45]) * (1 - 0.6 * blob) + 0.02 * rng.random((32, 32, 3))
    return skin.astype("float32")


def test_a_colour_cast_is_removed():
    rng = np.random.default_rng(0)
    image = _lesion(rng)
    cast = np.clip(image * np.array([0.6, 0.8, 1.0], "float32"), 0, 1)  # a bluish camera
    layer = ShadesOfGrey()
    plain, corrected = np.asarray(layer(np.stack([image, cast])))
    # the two illuminants differ a lot before, barely after
    before = np.abs(image.mean((0, 1)) / image.mean() - cast.mean((0, 1)) / cast.mean()).max()
    after = np.abs(plain.mean((0, 1)) / plain.mean() - corrected.mean((0, 1))
                   / corrected.mean()).max()
    assert before > 0.15 and after < 0.03, (before, after)


def test_gains_do_not_depend_on_brightness_and_grey_stays_grey():
    rng = np.random.default_rng(1)
    image = _lesion(rng) * 0.8
    layer = ShadesOfGrey()
    out, darker = np.asarray(layer(np.stack([image, image * 0.5])))
    np.testing.assert_allclose(darker * 2, out, atol=2e-3)
    grey = np.full((1, 8, 8, 3), 0.4, "float32")
    np.testing.assert_allclose(np.asarray(layer(grey)), grey, atol=1e-4)
    assert float(np.asarray(layer(np.ones((1, 4, 4, 3), "float32") * 5)).max()) <= 1.0


def test_the_layer_round_trips_in_a_saved_model(tmp_path):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, ShadesOfGrey(power=4.0, name="colour")(inputs))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("colour").power == 4.0
    batch = np.random.default_rng(2).random((2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(batch)), np.asarray(model(batch)), atol=1e-6)
    with pytest.raises(ValueError, match="power must be >= 1"):
        ShadesOfGrey(power=0.5)


def test_every_architecture_takes_it_as_its_first_layer_without_new_weights():
    from trainer.cnn import models

    for name in ("study", "compact", "residual"):
        plain = models.build_model(name, 32, 0.0, 0.0)
        corrected = models.build_model(name, 32, 0.0, 0.0, color_constancy="shades_of_grey")
        assert corrected.layers[1].name == "color_constancy", name
        assert corrected.count_params() == plain.count_params(), name
    with pytest.raises(ValueError, match="color_constancy"):
        models.build_model("compact", 32, color_constancy="grey_world")


def test_the_trainer_flag_trains_a_step_and_a_resume_must_keep_it(tmp_path, sample_dir):
    import json
    import os
    import subprocess
    import sys

    from tests import shard_fixtures

    data = shard_fixtures.write_sample_dataset(tmp_path / "data", sample_dir, 32)
    run = tmp_path / "run"
    common = [sys.executable, "-m", "trainer.cnn", f"--data_dir={data}", f"--workdir={run}",
              "--image_size=32", "--architecture=compact", "--epochs=1", "--batch_size=4",
              "--steps_per_epoch=1", "--bootstrap=10", "--export=false", "--keras_verbose=0"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(common + ["--color_constancy=shades_of_grey"], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "train_config.json").read_text())["color_constancy"] == \
        "shades_of_grey"
    model = keras.models.load_model(run / "model.keras")
    assert model.get_layer("color_constancy").power == 6.0
    # another process (no trainer.cnn.color_constancy imported by hand) loads and scores it
    scored = subprocess.run([sys.executable, "-m", "trainer.cnn.evaluate", f"--model={run}",
                             f"--data_dir={data}", "--splits=test", "--bootstrap=0",
                             f"--output={tmp_path / 'scored'}"], cwd=repo, capture_output=True,
                            text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert (tmp_path / "scored" / "predictions.csv").exists()
    again = subprocess.run(common, cwd=repo, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--color_constancy=none" in again.stderr, again.stderr
