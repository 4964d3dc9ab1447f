"""What the CNN looks at: PNGs of the feature maps of every convolution layer and a Grad-CAM
heatmap of one image.

    python -m trainer.cnn.visualize --model=DIR_OR_FILE --image=lesion.jpg --output=DIR

--model: a .keras file, an export dir (model.keras + serving_config.json) or a run dir holding
export/. The image goes through the data engine's decode and resize (isicflow.imaging) and the
evaluation scaling, exactly what the model saw in validation. Writes to --output:
  featuremaps_NN_<layer>.png  one grid per Conv2D layer, one tile per channel (each tile scaled
                              to its own min..max, so weak channels stay visible)
  gradcam_<class>.png         the image, the heatmap, and the heatmap overlaid on the image, for
                              the predicted class (named in the file name and the titles)
Grad-CAM (Selvaraju et al. 2017) of the predicted class: the last Conv2D layer's channels
weighted by the mean gradient of that class's probability wrt each channel, ReLU, scaled to
[0, 1]. A sigmoid (benign/malignant) model predicts malignant when P(malignant) >= the export's
threshold (serving_config.json; 0.5 for a bare .keras file) and explains P(malignant), else it
explains benign through 1 - P(malignant) (following P(malignant) alone leaves the heatmap blank
whenever the image looks benign: there is no positive evidence for malignant to show); a
diagnosis model explains its most probable class (class names from the export's
serving_config.json). --explain=CLASS explains another class. A model trained with
--center_crop saw only the central box of the image: its heatmap fills that box and is 0 on
the border the model never saw.
"""
from __future__ import annotations

import dataclasses
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


class UnknownClass(ValueError):
    """The class asked for is not one of the model's."""


@dataclasses.dataclass
class Explanation:
    """A Grad-CAM heatmap and the class it explains."""

    heatmap: np.ndarray          # [S, S] float32 in [0, 1]
    class_index: int             # in `probabilities`
    class_name: str
    probabilities: np.ndarray    # per class; a sigmoid model's as [P(benign), P(malignant)]
    predicted: int               # the predicted class's index (the explained one unless chosen)

    @property
    def class_probability(self) -> float:
        return float(self.probabilities[self.class_index])


def _class_names(n: int, names: Sequence[str] | None) -> list[str]:
    from isicflow.metadata import CLASS_NAMES

    if n == 2 and names is None:
        return list(CLASS_NAMES)
    names = list(names) if names is not None else [f"class_{i}" for i in range(n)]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names {names} for a model with {n} classes")
    return names


def _cam_on_image(cam, size: tuple[int, int], box: tuple[int, int] | None) -> np.ndarray:
    """The last conv's [h, w] map resized (bilinear) onto the displayed [S, S] image. Under
    --center_crop the net saw only the central box (offset, side), stretched to S: the map
    goes into that box, and the border, which the model never saw, stays 0 (stretching the map
    over the whole image would point at the wrong pixels)."""
    import tensorflow as tf

    if box is None:
        return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0].numpy()
    offset, side = box
    placed = np.zeros(size, np.float32)
    placed[offset:offset + side, offset:offset + side] = tf.image.resize(
        cam[..., None], (side, side), method="bilinear")[..., 0].numpy()
    return placed


def explain(model, image01: np.ndarray, layer_name: str | None = None, *,
            threshold: float = 0.5, class_names: Sequence[str] | None = None,
            explain_class: str | int | None = None) -> Explanation:
    """Grad-CAM of the predicted class (or of `explain_class`, a name or an index); last Conv2D
    unless layer_name. A one-unit sigmoid output p: malignant (1) when p >= threshold, target p;
    else benign (0), target 1 - p. A K-unit softmax: the argmax class, target its probability.
    class_names: a softmax model's classes, in output order."""
    import keras
    import tensorflow as tf

    from trainer.cnn.models import center_crop_box

    layers = conv_layers(model)
    layer = layers[-1] if layer_name is None else model.get_layer(layer_name)
    probe = keras.Model(_single_input(model), [layer.output, model.outputs[0]])
    image = tf.convert_to_tensor(image01[None])
    units = int(model.outputs[0].shape[-1])
    sigmoid = units == 1
    names = _class_names(2 if sigmoid else units, class_names if not sigmoid else None)
    with tf.GradientTape() as tape:
        activations, output = probe(image, training=False)
        output = tf.cast(output, tf.float32)[0]
        probabilities = tf.stack([1.0 - output[0], output[0]]) if sigmoid else output
        predicted = (int(output[0].numpy() >= threshold) if sigmoid
                     else int(tf.argmax(probabilities).numpy()))
        if explain_class is None:
            index = predicted
        elif isinstance(explain_class, str):
            if explain_class not in names:
                raise UnknownClass(f"class {explain_class!r} not among the model's classes {names}")
            index = names.index(explain_class)
        else:
            index = int(explain_class)
            if not 0 <= index < len(names):
                raise UnknownClass(f"class index {index} not in [0, {len(names)})")
        target = probabilities[index]
    grads = tape.gradient(target, activations)  # wrt the tensor that fed the output
    if grads is None:
        raise ValueError(f"no gradient from the output to layer {layer.name!r}")
    grads, activations = tf.cast(grads, tf.float32), tf.cast(activations, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0]
    cam = _cam_on_image(cam, image01.shape[:2], center_crop_box(model))
    peak = float(cam.max())
    heatmap = cam / peak if peak > 0 else np.zeros_like(cam)  # no positive evidence
    return Explanation(np.clip(heatmap, 0.0, 1.0).astype(np.float32), index, names[index],
                       np.asarray(probabilities, np.float64), predicted)


def grad_cam(model, image01: np.ndarray, layer_name: str | None = None,
             threshold: float = 0.5) -> tuple[np.ndarray, float]:
    """(heatmap [S, S] in [0, 1] of the predicted class, the model's first output: P(malignant)
    for a sigmoid model, else the predicted class's probability); see `explain`."""
    result = explain(model, image01, layer_name, threshold=threshold)
    if result.probabilities.size == 2 and int(model.outputs[0].shape[-1]) == 1:
        return result.heatmap, float(result.probabilities[1])
    return result.heatmap, result.class_probability


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


def gradcam_file_name(class_name: str) -> str:
    return "gradcam_" + re.sub(r"[^A-Za-z0-9_.-]", "_", class_name) + ".png"


def save_grad_cam(image01: np.ndarray, explanation: Explanation, layer: str, path: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.4), dpi=100, layout="constrained")
    panels = fig.subplots(1, 3)
    panels[0].imshow(image01)
    panels[0].set_title(f"input (P({explanation.class_name}) = "
                        f"{explanation.class_probability:.3f})")
    heatmap = explanation.heatmap
    panels[1].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    panels[1].set_title(f"Grad-CAM of '{explanation.class_name}' on {layer}")
    panels[2].imshow(image01)
    panels[2].imshow(heatmap, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    panels[2].set_title("overlay")
    for ax in panels:
        ax.axis("off")
    fig.savefig(path)
    return path


def load_model_and_config(path: str) -> tuple[Any, dict[str, Any]]:
    """(keras model, its export's serving_config.json, {} for a bare .keras file or a folder
    without one) from a .keras file, an export dir, or a run dir (its own model.keras, with its
    export/'s serving config, else export/'s model)."""
    from trainer.cnn import export
    from trainer.cnn.models import load_keras_model

    if os.path.isfile(path):
        return load_keras_model(path, compile=True), {}
    export_dir = path if os.path.isfile(os.path.join(path, export.KERAS_NAME)) \
        else os.path.join(path, export.EXPORT_DIR)
    keras_path = os.path.join(export_dir, export.KERAS_NAME)
    if not os.path.isfile(keras_path):
        raise FileNotFoundError(f"{path!r}: not a .keras file, and no {export.KERAS_NAME} in it "
                                f"or in its {export.EXPORT_DIR}/")
    config: dict[str, Any] = {}
    # A run dir's model.keras is the model its export/ holds: its serving config (threshold,
    # classes, resize mode) applies too.
    for folder in (export_dir, os.path.join(export_dir, export.EXPORT_DIR)):
        config_path = os.path.join(folder, export.SERVING_CONFIG_NAME)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
            break
    return load_keras_model(keras_path, compile=True), config


def visualize(model, image_path: str, out_dir: str, resize_mode: str = "squash", *,
              threshold: float = 0.5, class_names: Sequence[str] | None = None,
              explain_class: str | None = None) -> dict[str, Any]:
    """Writes the feature-map grids and gradcam_<class>.png (the predicted class unless
    explain_class); returns their paths, the heatmap and the explained class."""
    image_size = int(model.inputs[0].shape[1])
    image01 = load_image(image_path, image_size, resize_mode)
    os.makedirs(out_dir, exist_ok=True)
    maps = feature_maps(model, image01)
    explanation = explain(model, image01, threshold=threshold, class_names=class_names,
                          explain_class=explain_class)
    last = list(maps)[-1]
    gradcam_path = save_grad_cam(image01, explanation, last,
                                 os.path.join(out_dir, gradcam_file_name(explanation.class_name)))
    probabilities = explanation.probabilities
    sigmoid = int(model.outputs[0].shape[-1]) == 1
    return {"feature_maps": save_feature_maps(maps, out_dir), "gradcam": gradcam_path,
            "heatmap": explanation.heatmap, "explained": explanation.class_name,
            "explained_probability": explanation.class_probability,
            "predicted": explanation.predicted,
            "probability": float(probabilities[1]) if sigmoid else explanation.class_probability,
            "layers": list(maps)}


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, ".keras file, export dir, or run dir holding export/.")
    flags.DEFINE_string("image", None, "JPEG or PNG of a lesion.")
    flags.DEFINE_string("output", None, "Folder for the PNGs (created).")
    flags.DEFINE_enum("resize_mode", None, list(imaging.RESIZE_MODES),
                      "Resize mode; default: the export's serving_config.json, else squash.")
    flags.DEFINE_string("explain", None, "Class whose Grad-CAM to draw (benign/malignant, or a "
                        "diagnosis export's class); default: the predicted class.")
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
        model, config = load_model_and_config(FLAGS.model)
    except (FileNotFoundError, ValueError) as e:  # not a model
        program.fail(f"--model={FLAGS.model}: {e}")
    try:
        result = visualize(model, FLAGS.image, FLAGS.output,
                           FLAGS.resize_mode or config.get("resize_mode", "squash"),
                           threshold=float(config.get("threshold", 0.5)),
                           class_names=config.get("classes"), explain_class=FLAGS.explain)
    except UnknownClass as e:
        program.fail(f"--explain={FLAGS.explain}: {e}")
    except ValueError as e:  # a model without a conv or image input
        program.fail(f"--model={FLAGS.model}: {e}")
    for path in result["feature_maps"] + [result["gradcam"]]:
        print(path)
    if int(model.outputs[0].shape[-1]) == 1:
        print(f"P(malignant) = {result['probability']:.4f}")
    print(f"Grad-CAM explains: {result['explained']} (P = {result['explained_probability']:.4f})")


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    program.run(main, prog="trainer.cnn.visualize", doc=__doc__, argv=argv,
                flag_modules=[__name__])


if __name__ == "__main__":
    run()
