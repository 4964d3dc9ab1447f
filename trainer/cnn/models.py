"""The benign/malignant classifiers: the 2020 study's CNN, a compact modern one, a backbone.

All take float32 images in [0, 1] (the study's rescale 1/255, done by the input pipeline) and
end in one sigmoid unit kept in float32, so mixed precision never rounds the probability.
"""
from __future__ import annotations

import keras
from keras import layers

from trainer.cnn.color_constancy import COLOR_CONSTANCY, ShadesOfGrey
from trainer.cnn.constants import ARCHITECTURES as MODEL_NAMES
RESIDUAL_WIDTHS = (32, 64, 128, 256)
# Keras' 0.99 needs ~500 steps for the moving statistics to settle; a small dataset gives ~10
# steps per epoch, and validation would see stale statistics for many epochs.
BN_MOMENTUM = 0.9
MIN_CROP_PX = 8  # --center_crop's smallest central box, as image_size's floor


def _regularizer(l2: float):
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    return keras.regularizers.L2(l2) if l2 > 0 else None


def _check(image_size: int, dropout: float) -> None:
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _sigmoid_output(x, name="probability"):
    return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(x)


def load_keras_model(path: str, compile: bool = False) -> keras.Model:
    """A saved .keras model of this project: its own layers (ShadesOfGrey) are known because
    this module imports them; every program that loads a CNN goes through here."""
    return keras.models.load_model(path, compile=compile,
                                   custom_objects={"ShadesOfGrey": ShadesOfGrey})


def center_crop_size(image_size: int, fraction: float) -> int:
    """The side in px of --center_crop's central box: round(fraction * image_size), refused
    (ValueError naming the values) outside (0, 1] or below MIN_CROP_PX."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"center_crop must be in (0, 1], got {fraction}")
    side = int(round(fraction * image_size))
    if side < MIN_CROP_PX:
        raise ValueError(f"center_crop {fraction} keeps {side} px of {image_size}; need at "
                         f"least {MIN_CROP_PX}")
    return side


def center_crop_box(model) -> tuple[int, int] | None:
    """(offset, side) in px of the central box the model looks at (the same offset on both
    axes), or None without a crop: what Grad-CAM needs to put its heatmap back in place.
    The offset is Keras CenterCrop's own, (S - side) // 2."""
    for layer in model.layers:
        if isinstance(layer, layers.CenterCrop):
            image_size = int(model.inputs[0].shape[1])
            return (image_size - layer.height) // 2, layer.height
    return None


def image_input(image_size: int, color_constancy: str = "none", center_crop: float = 1.0):
    """(the model's image input, the tensor the net starts from): with --center_crop < 1, the
    central box cropped and resized back (bilinear) to image_size, so the net never sees the
    border (vignettes, dermoscope rims: clinic cues) and every layer after keeps its shape;
    then with --color_constancy, a ShadesOfGrey layer (after the crop, so the border cannot
    sway its illuminant estimate). Both are layers, so the saved model, export and prediction
    apply them too. center_crop 1.0 (or a box as large as the image) adds no layer."""
    if color_constancy not in COLOR_CONSTANCY:
        raise ValueError(f"color_constancy {color_constancy!r} not in {COLOR_CONSTANCY}")
    side = center_crop_size(image_size, center_crop)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if side < image_size:
        x = layers.CenterCrop(side, side, name="center_crop")(x)
        x = layers.Resizing(image_size, image_size, interpolation="bilinear",
                            name="center_crop_resize")(x)
    if color_constancy == "none":
        return inputs, x
    return inputs, ShadesOfGrey(name="color_constancy")(x)


def _stride2_stem(inputs, filters: int, reg):
    """Conv 3x3 stride 2 + BN + ReLU: the compact family's stem, which skips the costly
    full-resolution convolutions."""
    x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                      kernel_regularizer=reg, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    return layers.ReLU(name="stem_relu")(x)


def _pooled_sigmoid_head(x, dropout: float):
    """GAP, optional dropout, the float32 sigmoid unit: the compact family's head (the
    metadata input and the diagnosis head attach before `probability`)."""
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return _sigmoid_output(x)


def build_study_cnn(image_size: int = 256, dropout: float = 0.0, l2: float = 0.0,
                    color_constancy: str = "none", center_crop: float = 1.0) -> keras.Model:
    """The study's CNN: three Conv(3x3, same, ReLU) of 16/32/64 filters, each followed by 2x2
    max pooling, then Flatten, Dense 512, Dense 64 (ReLU), Dense 1 sigmoid.

    33,611,425 parameters at 256x256 whatever the options (they add none). `dropout` (the study
    used 0.2) goes after the first and after the last max pooling, as in the TensorFlow tutorial
    the study followed; `l2` (the study used 0.001) is a kernel L2 penalty on every conv and
    hidden dense layer (not the output unit).
    """
    _check(image_size, dropout)
    reg = _regularizer(l2)
    inputs, x = image_input(image_size, color_constancy, center_crop)
    for i, filters in enumerate((16, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu",
                          kernel_regularizer=reg, name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        if dropout and i in (0, 2):
            x = layers.Dropout(dropout, name=f"dropout{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(512, activation="relu", kernel_regularizer=reg, name="dense512")(x)
    x = layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense64")(x)
    return keras.Model(inputs, _sigmoid_output(x), name="study_cnn")


def build_compact_cnn(image_size: int = 256, dropout: float = 0.2, l2: float = 0.0,
                      widths: tuple[int, ...] = (16, 32, 64, 128),
                      color_constancy: str = "none",
                      center_crop: float = 1.0) -> keras.Model:
    """What a user would pick on small data: a stride-2 stem (Conv 3x3 + batch norm + ReLU, so
    the costly full-resolution convolutions are skipped), conv blocks (Conv 3x3 + batch norm +
    ReLU, twice, then 2x2 max pooling), global average pooling instead of the study's
    33M-weight Flatten -> Dense, dropout, one sigmoid unit. About 0.3M parameters at any image
    size (100x fewer than the study's), and about the study CNN's compute at the same size."""
    _check(image_size, dropout)
    reg = _regularizer(l2)
    inputs, x = image_input(image_size, color_constancy, center_crop)
    x = _stride2_stem(x, widths[0], reg)
    for i, filters in enumerate(widths):
        for j in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              kernel_regularizer=reg, name=f"block{i + 1}_conv{j + 1}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM,
                                          name=f"block{i + 1}_bn{j + 1}")(x)
            x = layers.ReLU(name=f"block{i + 1}_relu{j + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
    return keras.Model(inputs, _pooled_sigmoid_head(x, dropout), name="compact_cnn")


def _residual_block(x, filters: int, stride: int, reg, name: str):
    """Post-activation basic block: Conv3x3-BN-ReLU-Conv3x3-BN plus the shortcut (a strided
    1x1 conv + BN where the shape changes), then ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                 kernel_regularizer=reg, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_proj_bn")(
            shortcut)
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                      kernel_regularizer=reg, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg,
                      name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.ReLU(name=f"{name}_out")(y)


def residual_widths(width_multiplier: float = 1.0) -> tuple[int, ...]:
    """RESIDUAL_WIDTHS scaled and rounded to multiples of 8 (at least 8)."""
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    return tuple(max(8, int(round(w * width_multiplier / 8)) * 8) for w in RESIDUAL_WIDTHS)


def build_residual_cnn(image_size: int = 128, dropout: float = 0.2, l2: float = 0.0,
                       width_multiplier: float = 1.0, blocks_per_stage: int = 2,
                       color_constancy: str = "none",
                       center_crop: float = 1.0) -> keras.Model:
    """The compact family with residual blocks and more width, for the from-scratch recipe:
    a stride-2 stem (Conv 3x3 + BN + ReLU), four stages of `blocks_per_stage` post-activation
    basic blocks of 32/64/128/256 filters (x width_multiplier), each stage starting with a
    stride-2 block (so the costly early resolutions are few convolutions), GAP, dropout, one
    float32 sigmoid unit. 2,801,249 parameters at width 1.0, at any image size.

    Cost, measured with train_on_batch at 128 px, batch 32, float32, RMSprop on 2 shared CPU
    cores: 0.58 s per step against the compact net's 0.22 s (2.7x), so 4x fewer
    parameters than the study's CNN for under 3x the compact net's time."""
    _check(image_size, dropout)
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    reg = _regularizer(l2)
    widths = residual_widths(width_multiplier)
    inputs, x = image_input(image_size, color_constancy, center_crop)
    x = _stride2_stem(x, widths[0], reg)
    for i, filters in enumerate(widths):
        for j in range(blocks_per_stage):
            x = _residual_block(x, filters, 2 if j == 0 else 1, reg, f"stage{i + 1}_block{j + 1}")
    return keras.Model(inputs, _pooled_sigmoid_head(x, dropout), name="residual_cnn")


def build_efficientnet_b0(image_size: int = 256, dropout: float = 0.2,
                          weights_path: str | None = None,
                          freeze_backbone: bool = False,
                          color_constancy: str = "none",
                          center_crop: float = 1.0) -> keras.Model:
    """Keras Applications EfficientNetB0 (no top) + dropout + sigmoid. Never downloads: the
    backbone is built with weights=None and, given `weights_path` (e.g. Keras' ImageNet
    efficientnetb0_notop.h5 copied locally), loads that file. The backbone has its own
    normalisation for [0, 255] inputs, so [0, 1] images are scaled up first."""
    _check(image_size, dropout)
    if image_size < 32:
        raise ValueError(f"EfficientNetB0 needs image_size >= 32, got {image_size}")
    backbone = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3),
        pooling="avg")
    if weights_path:
        backbone.load_weights(weights_path)
    backbone.trainable = not freeze_backbone
    inputs, x = image_input(image_size, color_constancy, center_crop)
    x = layers.Rescaling(255.0, name="to_0_255")(x)
    x = backbone(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, _sigmoid_output(x), name="efficientnet_b0")


def build_model(name: str, image_size: int, dropout: float = 0.0, l2: float = 0.0,
                weights_path: str | None = None, width_multiplier: float = 1.0,
                color_constancy: str = "none", center_crop: float = 1.0) -> keras.Model:
    """Builds a model by --model name; width_multiplier is the residual net's only;
    center_crop then color_constancy (trainer.cnn.color_constancy) are the first layers of
    any of them (image_input)."""
    if width_multiplier != 1.0 and name != "residual":
        raise ValueError(f"width_multiplier {width_multiplier} applies to the residual "
                         f"architecture only, not {name!r}")
    if name == "study":
        return build_study_cnn(image_size, dropout, l2, color_constancy=color_constancy,
                               center_crop=center_crop)
    if name == "compact":
        return build_compact_cnn(image_size, dropout, l2, color_constancy=color_constancy,
                                 center_crop=center_crop)
    if name == "efficientnet_b0":
        if l2:
            raise ValueError("l2 is not supported for efficientnet_b0; use --l2=0")
        return build_efficientnet_b0(image_size, dropout, weights_path,
                                     color_constancy=color_constancy, center_crop=center_crop)
    if name == "residual":
        return build_residual_cnn(image_size, dropout, l2, width_multiplier,
                                  color_constancy=color_constancy, center_crop=center_crop)
    raise ValueError(f"model {name!r} not in {MODEL_NAMES}")
