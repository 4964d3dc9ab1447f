"""What the CNN looks at: PNGs of the feature maps of every convolution layer and a Grad-CAM
heatmap of one image.

    python -m trainer.cnn.visualize --model=DIR_OR_FILE --image=lesion.jpg --output=DIR

--model: a .keras file, an export dir (model.keras + serving_config.json) or a run dir holding
export/. The image goes through the data engine's decode and resize (isicflow.imaging) and the
evaluation scaling, exactly what the model saw in validation. Writes to --output:
  featuremaps_NN_<layer>.png  one grid per Conv2D layer, one tile per channel (each tile scaled
                              to its own min..max, so weak channels stay visible)
  gradcam.png                 the image, the heatmap, and the heatmap overlaid on the image
Grad-CAM (Selvaraju et al. 2017): the last Conv2D layer's channels weighted by the mean
gradient of the malignant probability wrt each channel, ReLU, scaled to [0, 1].
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import flags

from isicflow import imaging
from trainer.core import program


def conv_layers(model) -> list:
    """Top-level Conv2D layers in order; a conv nested in a sub-model is a clear error."""
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if not convs:
        raise ValueError(f"model {model.name!r} has no top-level Conv2D layer"
                         + (f" (its convolutions sit inside nested model(s) {nested}, which this "
                            "tool does not unpack)" if nested else ""))
    return convs


def _single_input(model):
    """The model's one image input (a tensor, not a list, so calls with one array match it)."""
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs; need one image input")
    return model.inputs[0]


def load_image(path: str, image_size: int, resize_mode: str = "squash") -> np.ndarray:
    """float32 [S,S,3] in [0, 1]: the engine's decode + resize, then the evaluation scaling."""
    from trainer.core import input_pipeline

    with open(path, "rb") as f:
        decoded = imaging.decode_image(f.read(), target=image_size, mode=resize_mode)
    pixels = imaging.resize_image(decoded.pixels, image_size, resize_mode)
    return np.asarray(input_pipeline.preprocess_for_eval(pixels), dtype=np.float32)


def feature_maps(model, image01: np.ndarray) -> dict[str, np.ndarray]:
    """{layer name: [h, w, channels] activations} for every Conv2D layer, in model order."""
    import keras

    layers = conv_layers(model)
    probe = keras.Model(_single_input(model), [layer.output for layer in layers])
    outputs = probe(image01[None], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {layer.name: np.asarray(out, dtype=np.float32)[0] for layer, out in zip(layers, outputs)}


def grad_cam(model, image01: np.ndarray, layer_name: str | None = None) -> tuple[np.ndarray, float]:
    """(heatmap [S, S] in [0, 1], malignant probability); last Conv2D unless layer_name."""
    import keras
    import tensorflow as tf

    layers = conv_layers(model)
    layer = layers[-1] if layer_name is None else model.get_layer(layer_name)
    probe = keras.Model(_single_input(model), [layer.output, model.outputs[0]])
    image = tf.convert_to_tensor(image01[None])
    with tf.GradientTape() as tape:
        activations, probability = probe(image, training=False)
        target = tf.cast(probability, tf.float32)[:, 0]
    grads = tape.gradient(target, activations)  # wrt the tensor that fed the output
    if grads is None:
        raise ValueError(f"no gradient from the output to layer {layer.name!r}")
    grads, activations = tf.cast(grads, tf.float32), tf.cast(activations, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0]
    size = image01.shape[:2]
    cam = tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()
    peak = float(cam.max())
    heatmap = cam / peak if peak > 0 else np.zeros(size, np.float32)  # no positive evidence
    return np.clip(heatmap, 0.0, 1.0).astype(np.float32), float(probability[0, 0])


def _mosaic(maps: np.ndarray) -> np.ndarray:
    """[h, w, C] -> one 2-D grid image, each channel min-max scaled, 1-px gaps (NaN)."""
    h, w, channels = maps.shape
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, np.float32)
    for c in range(channels):
        tile = maps[..., c]
        span = float(tile.max() - tile.min())
        tile = (tile - tile.min()) / span if span > 0 else np.zeros_like(tile)
        r, k = divmod(c, cols)
        grid[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = tile
    return grid


def save_feature_maps(maps: dict[str, np.ndarray], out_dir: str) -> list[str]:
    from matplotlib.figure import Figure

    paths = []
    for index, (name, activations) in enumerate(maps.items(), start=1):
        fig = Figure(figsize=(8, 8), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        ax.imshow(_mosaic(activations), cmap="viridis", interpolation="nearest")
        ax.set_title(f"{name}: {activations.shape[-1]} channels, {activations.shape[0]}x"
                     f"{activations.shape[1]}")
        ax.axis("off")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        path = os.path.join(out_dir, f"featuremaps_{index:02d}_{safe}.png")
        fig.savefig(path)
        paths.append(path)
    return paths


def save_grad_cam(image01: np.ndarray, heatmap: np.ndarray, probability: float, layer: str,
                  path: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.4), dpi=100, layout="constrained")
    panels = fig.subplots(1, 3)
    panels[0].imshow(image01)
    panels[0].set_title(f"input (P(malignant) = {probability:.3f})")
    panels[1].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    panels[1].set_title(f"Grad-CAM on {layer}")
    panels[2].imshow(image01)
    panels[2].imshow(heatmap, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    panels[2].set_title("overlay")
    for ax in panels:
        ax.axis("off")
    fig.savefig(path)
    return path


def load_model(path: str) -> tuple[Any, str]:
    """(keras model, resize mode) from a .keras file, an export dir or a run dir with export/."""
    import keras

    from trainer.cnn import export

    if os.path.isfile(path):
        return keras.models.load_model(path), "squash"
    export_dir = path if os.path.isfile(os.path.join(path, export.KERAS_NAME)) \
        else os.path.join(path, export.EXPORT_DIR)
    keras_path = os.path.join(export_dir, export.KERAS_NAME)
    if not os.path.isfile(keras_path):
        raise FileNotFoundError(f"{path!r}: not a .keras file, and no {export.KERAS_NAME} in it "
                                f"or in its {export.EXPORT_DIR}/")
    mode = "squash"
    config_path = os.path.join(export_dir, export.SERVING_CONFIG_NAME)
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            mode = json.load(f).get("resize_mode", mode)
    return keras.models.load_model(keras_path), mode


def visualize(model, image_path: str, out_dir: str, resize_mode: str = "squash") -> dict[str, Any]:
    """Writes the feature-map grids and gradcam.png; returns their paths and the heatmap."""
    image_size = int(model.inputs[0].shape[1])
    image01 = load_image(image_path, image_size, resize_mode)
    os.makedirs(out_dir, exist_ok=True)
    maps = feature_maps(model, image01)
    heatmap, probability = grad_cam(model, image01)
    last = list(maps)[-1]
    gradcam_path = save_grad_cam(image01, heatmap, probability, last,
                                 os.path.join(out_dir, "gradcam.png"))
    return {"feature_maps": save_feature_maps(maps, out_dir), "gradcam": gradcam_path,
            "heatmap": heatmap, "probability": probability, "layers": list(maps)}


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file, export dir, or run dir holding export/.")
    flags.DEFINE_string("image", None, "JPEG or PNG of a lesion.")
    flags.DEFINE_string("output", None, "Folder for the PNGs (created).")
    flags.DEFINE_enum("resize_mode", None, list(imaging.RESIZE_MODES),
                      "Resize mode; default: the export's serving_config.json, else squash.")
    flags.mark_flags_as_required(["model", "image", "output"])


def main(argv: Sequence[str]) -> None:
    del argv  # program.run refuses stray words
    if not os.path.isfile(FLAGS.image):
        program.fail(f"--image={FLAGS.image}: no such file")
    try:
        with open(FLAGS.image, "rb") as f:
            imaging.decode_image(f.read())
    except imaging.ImageRejected as e:
        program.fail(f"--image={FLAGS.image}: not a readable JPEG or PNG ({e})")
    if not os.path.exists(FLAGS.model):
        program.fail(f"--model={FLAGS.model}: no such file or folder")
    try:
        model, mode = load_model(FLAGS.model)
        result = visualize(model, FLAGS.image, FLAGS.output, FLAGS.resize_mode or mode)
    except (FileNotFoundError, ValueError) as e:  # not a model; a model without a conv or image input
        program.fail(f"--model={FLAGS.model}: {e}")
    for path in result["feature_maps"] + [result["gradcam"]]:
        print(path)
    print(f"P(malignant) = {result['probability']:.4f}")


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    program.run(main, prog="trainer.cnn.visualize", doc=__doc__, argv=argv,
                flag_modules=[__name__])


if __name__ == "__main__":
    run()
