"""Feature extractors for FID/KID/C2ST; each has a name that goes into the evaluation report.

* inception: InceptionV3 pool features (2048), weights ONLY from a local file (never downloaded);
  the standard for FID/KID, so numbers are comparable with papers only with this one.
* cnn: the penultimate layer of a trained classifier (--feature_model: a .keras file, e.g.
  trainer.cnn's export).
* random_conv: a fixed, seeded, untrained 3-layer conv net with mean+max pooling (448 features);
  cheap and always available, comparable only between runs of this project.
* pixels: the image downsampled to 16x16 (768 values in [0, 1]).
All take uint8 N x S x S x 3 images and return float64 N x D.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

EXTRACTORS = ("inception", "cnn", "random_conv", "pixels")
RANDOM_CONV_FILTERS = (32, 64, 128)
RANDOM_CONV_INPUT = 64
PIXEL_SIDE = 16


def resize_batch(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x side x side x 3 in [0, 1] (bilinear, antialiased)."""
    import tensorflow as tf

    from trainer.core.input_pipeline import preprocess_for_eval

    x = preprocess_for_eval(tf.convert_to_tensor(images, tf.uint8))
    if x.shape[1] != side or x.shape[2] != side:
        x = tf.image.resize(x, (side, side), method="bilinear", antialias=True)
    return x.numpy()


def _batched(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
             batch: int = 32) -> np.ndarray:
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    return np.concatenate([np.asarray(fn(images[i:i + batch]), np.float64)
                           for i in range(0, len(images), batch)])


def pixel_features(images: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    return resize_batch(images, side).reshape(len(images), -1).astype(np.float64)


def colour_statistics(images: np.ndarray) -> np.ndarray:
    """Per-image mean and standard deviation of R, G and B in [0, 1] (6 values): what a
    generator gets wrong when its palette is too narrow or shifted."""
    x = np.asarray(images, np.float64) / 255.0
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)


def sharpness_statistics(images: np.ndarray) -> np.ndarray:
    """Mean, 90th percentile and maximum of |Laplacian| of the grey image, in grey levels
    (3 values): fine texture and edges, which smooth generated images lack."""
    grey = np.asarray(images, np.float64).mean(axis=-1)
    laplacian = np.abs(4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
                       - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]).reshape(len(grey), -1)
    return np.stack([laplacian.mean(1), np.percentile(laplacian, 90, axis=1),
                     laplacian.max(1)], axis=1)


def _random_conv_model(seed: int):
    import keras

    inputs = keras.Input((RANDOM_CONV_INPUT, RANDOM_CONV_INPUT, 3))
    x, pooled = inputs, []
    for i, filters in enumerate(RANDOM_CONV_FILTERS):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.HeNormal(seed + i),
                                dtype="float32")(x)
        pooled += [keras.layers.GlobalAveragePooling2D(dtype="float32")(x),
                   keras.layers.GlobalMaxPooling2D(dtype="float32")(x)]
    return keras.Model(inputs, keras.layers.Concatenate(dtype="float32")(pooled))


def _inception(weights: str):
    import keras

    from trainer.core.input_pipeline import scale_to_range

    model = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                           input_shape=(299, 299, 3))
    model.load_weights(weights)

    def extract(images: np.ndarray) -> np.ndarray:
        x = scale_to_range(resize_batch(images, 299), (-1.0, 1.0))  # InceptionV3's input range
        return model(x, training=False).numpy()
    return extract


def penultimate_model(model):
    """The classifier cut before its output layer: what the output layer reads (dropout before
    it is the identity at inference). The output layer's input, not the previous layer's
    output: for a nested backbone (efficientnet_b0) that output belongs to the backbone's own
    graph, not to the model's. The cut is named after the layer whose output it gives."""
    import keras

    layers = [layer for layer in model.layers[:-1]
              if not isinstance(layer, (keras.layers.Dropout, keras.layers.InputLayer))]
    if not layers:
        raise ValueError(f"model {model.name!r} has no layer before its output to take "
                         "features from")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, model.layers[-1].input, name=layers[-1].name)


def _cnn(path: str, value_range: tuple[float, float]):
    import keras

    from trainer.cnn.models import load_keras_model
    from trainer.core.input_pipeline import scale_to_range

    model = load_keras_model(path)
    features = penultimate_model(model)
    side = int(model.inputs[0].shape[1])
    low, high = value_range

    def extract(images: np.ndarray) -> np.ndarray:
        x = scale_to_range(resize_batch(images, side), (low, high))
        out = features(x, training=False)
        return np.asarray(out).reshape(len(images), -1)
    return extract, features.name, side


def classifier_probabilities(path: str, value_range: tuple[float, float] = (0.0, 1.0)
                             ) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(images -> class probabilities float64 [N, K], the classifier's input side) of a trained
    classifier (.keras): uint8 images resized to its side as _cnn resizes them, scaled to
    value_range (trainer.cnn's models take [0, 1]), its softmax output as it predicts."""
    from trainer.cnn.models import load_keras_model
    from trainer.core.input_pipeline import scale_to_range

    model = load_keras_model(path)
    if len(model.inputs) != 1:
        raise ValueError(f"classifier {path!r} takes {len(model.inputs)} inputs (a "
                         "--use_metadata model?); generated images have only pixels: pass a "
                         "model trained on images alone")
    side = int(model.inputs[0].shape[1])

    def probabilities(images: np.ndarray) -> np.ndarray:
        return _batched(lambda batch: np.asarray(model(
            scale_to_range(resize_batch(batch, side), value_range), training=False)), images)
    return probabilities, side


def check_extractor(kind: str, *, inception_weights: str = "", feature_model: str = "") -> str:
    """The extractor `kind` resolves to ('auto': inception when weights are given, else cnn when
    a model is given, else random_conv), once its inputs are known to exist; ValueError or
    FileNotFoundError naming the flag otherwise. Cheap: programs call it before any work."""
    if kind == "auto":
        kind = "inception" if inception_weights else "cnn" if feature_model else "random_conv"
    if kind not in EXTRACTORS:
        raise ValueError(f"feature extractor {kind!r} not in {('auto',) + EXTRACTORS}")
    if kind == "inception":
        if not inception_weights:
            raise ValueError("feature extractor 'inception' needs --inception_weights "
                             "(a local file)")
        if not os.path.isfile(inception_weights):
            raise FileNotFoundError(f"--inception_weights: InceptionV3 weights file "
                                    f"{inception_weights!r} not found (this project never "
                                    "downloads weights; pass a local .h5/.weights.h5 file)")
    if kind == "cnn":
        if not feature_model:
            raise ValueError("feature extractor 'cnn' needs --feature_model (a .keras file)")
        if not os.path.exists(feature_model):
            raise FileNotFoundError(f"--feature_model: classifier {feature_model!r} not found "
                                    "(a .keras file, e.g. trainer.cnn's exported model)")
    return kind


def make_extractor(kind: str, *, inception_weights: str = "", feature_model: str = "",
                   feature_model_range: tuple[float, float] = (0.0, 1.0),
                   seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(extract(uint8 images) -> features, descriptive name) of the extractor check_extractor
    resolves `kind` to; feature_model_range is the input range the classifier was trained on."""
    kind = check_extractor(kind, inception_weights=inception_weights,
                           feature_model=feature_model)
    if kind == "inception":
        extract = _inception(inception_weights)
        name = f"inception_v3_pool3({os.path.basename(inception_weights)})"
        return (lambda x: _batched(extract, x)), name
    if kind == "cnn":
        extract, layer, side = _cnn(feature_model, feature_model_range)
        name = f"cnn_penultimate({os.path.basename(feature_model)}:{layer}@{side}px)"
        return (lambda x: _batched(extract, x)), name
    if kind == "random_conv":
        model = _random_conv_model(seed)

        def extract(images):
            return model(resize_batch(images, RANDOM_CONV_INPUT), training=False).numpy()
        name = f"random_conv_v1(seed={seed},{RANDOM_CONV_INPUT}px)"
        return (lambda x: _batched(extract, x)), name
    return pixel_features, f"pixels_{PIXEL_SIDE}x{PIXEL_SIDE}"
