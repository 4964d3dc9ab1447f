"""trainer.cnn.models: the study's exact parameter counts, the compact CNN, the backbone, precision."""
import keras
import numpy as np
import pytest

from trainer.cnn import models

STUDY_VARIANTS = {  # name: (dropout, l2); augmentation adds no layer to the model
    "base": (0.0, 0.0), "dropout": (0.2, 0.0), "l2": (0.0, 0.001),
    "l2_dropout": (0.2, 0.001), "l2_dropout_aug": (0.2, 0.001),
}


@pytest.mark.parametrize("variant", sorted(STUDY_VARIANTS))
def test_study_variants_have_the_papers_parameter_count(variant):
    dropout, l2 = STUDY_VARIANTS[variant]
    model = models.build_study_cnn(256, dropout=dropout, l2=l2)
    assert model.count_params() == 33_611_425
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [d.rate for d in dropouts] == ([dropout] * 2 if dropout else [])
    regularized = [layer.name for layer in model.layers
                   if getattr(layer, "kernel_regularizer", None) is not None]
    assert regularized == (["conv1", "conv2", "conv3", "dense512", "dense64"] if l2 else [])


def test_study_layer_shapes_follow_the_paper():
    model = models.build_study_cnn(256)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["pool3"] == (32, 32, 64) and shapes["flatten"] == (65536,)
    assert shapes["dense512"] == (512,) and shapes["probability"] == (1,)
    assert model.get_layer("probability").activation.__name__ == "sigmoid"


def _compact_params(widths=(16, 32, 64, 128)):
    total = 9 * 3 * widths[0] + 4 * widths[0]                   # stride-2 stem conv + BN
    channels_in = widths[0]
    for width in widths:
        total += 9 * channels_in * width + 9 * width * width  # two bias-free 3x3 convs
        total += 2 * 4 * width                                  # two batch norms
        channels_in = width
    return total + channels_in + 1                              # sigmoid unit


@pytest.mark.parametrize("size", [64, 256])
def test_compact_parameter_count_is_independent_of_image_size(size):
    model = models.build_compact_cnn(size)
    assert model.count_params() == _compact_params() == 297_457
    assert any(isinstance(layer, keras.layers.GlobalAveragePooling2D) for layer in model.layers)


def test_efficientnet_loads_a_local_weights_file_and_never_downloads(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                               input_shape=(32, 32, 3), pooling="avg")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    model = models.build_efficientnet_b0(32, weights_path=path)
    backbone = model.get_layer("efficientnetb0")
    for mine, theirs in zip(backbone.weights, source.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    out = model(np.zeros((2, 32, 32, 3), np.float32))
    assert out.shape == (2, 1) and out.dtype.name == "float32"
    with pytest.raises(ValueError, match="image_size >= 32, got 16"):
        models.build_efficientnet_b0(16)


def test_mixed_bfloat16_computes_in_bfloat16_but_outputs_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        for build in (models.build_study_cnn, models.build_compact_cnn):
            model = build(32)
            conv = next(layer for layer in model.layers
                        if isinstance(layer, keras.layers.Conv2D))
            assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
            assert model.get_layer("probability").compute_dtype == "float32"
            out = model(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
            assert out.dtype.name == "float32"
            assert np.all((0 <= out.numpy()) & (out.numpy() <= 1))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="study", image_size=64, dropout=1.0), "dropout must be in"),
    (dict(name="study", image_size=64, l2=-0.1), "l2 must be >= 0, got -0.1"),
    (dict(name="resnet", image_size=64), "model 'resnet' not in"),
    (dict(name="compact", image_size=4), "at least 8 pixels, got 4"),
])
def test_bad_options_fail_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.build_model(**kwargs)


# ---------------------------------------------------------------- residual (the recipe's net)

@pytest.mark.parametrize("size", [64, 128])
def test_residual_net_shape_and_pinned_parameter_count(size):
    model = models.build_model("residual", size, dropout=0.2)
    assert model.count_params() == 2_801_249
    assert tuple(model.output.shape) == (None, 1) and model.output.dtype == "float32"
    assert model.layers[-1].name == "probability" and model.layers[-2].name == "dropout"
    out = model(np.zeros((2, size, size, 3), np.float32), training=False)
    assert out.shape == (2, 1)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 8  # 4 stages x 2 blocks


def test_residual_width_multiplier_scales_and_only_applies_to_residual():
    assert models.residual_widths(0.5) == (16, 32, 64, 128)
    narrow = models.build_model("residual", 64, width_multiplier=0.5)
    assert narrow.count_params() < 2_801_249 / 3
    with pytest.raises(ValueError, match="width_multiplier 0.5 applies to the residual"):
        models.build_model("compact", 64, width_multiplier=0.5)
    with pytest.raises(ValueError, match="got 0"):
        models.residual_widths(0)


def test_residual_net_takes_the_metadata_input_and_the_diagnosis_head():
    from trainer.cnn import diagnosis
    from trainer.core import metadata_features

    base = models.build_model("residual", 64, dropout=0.2)
    with_meta = metadata_features.with_metadata_input(base)
    out = with_meta([np.zeros((2, 64, 64, 3), np.float32),
                     np.zeros((2, metadata_features.METADATA_DIM), np.float32)])
    assert out.shape == (2, 1)
    head = diagnosis.softmax_head(models.build_model("residual", 64, dropout=0.2), 5)
    probs = np.asarray(head(np.zeros((2, 64, 64, 3), np.float32)))
    assert probs.shape == (2, 5) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
