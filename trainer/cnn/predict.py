"""Classify image files with an exported model.

    python -m trainer.cnn.predict --model DIR image.jpg [image2.png ...]

DIR is an export dir (serving_config.json + saved_model/) or a run dir holding export/.
--tta / --notta force test-time augmentation (the 8 flips/rot90s averaged, trainer.cnn.tta) on
or off; unset, the export's own setting (serving_config.json "tta") applies.
Prints one line per image, in the order given, tab-separated:
    PATH<TAB>PROBABILITY<TAB>LABEL          e.g. a.jpg	0.731204	malignant
    PATH<TAB>CLASS:P<TAB>CLASS:P<TAB>CLASS:P  a diagnosis-task export (--task=diagnosis): the
                                            top 3 classes, most probable first
    ERROR PATH: REASON                      e.g. ERROR b.txt: not a JPEG or PNG (not_an_image: ...)
and on stderr a "WARNING PATH: ..." line where the served pixels differ from what training saw
(EXIF rotation), then a summary line. Exit code: 0 when every image was classified, 1 when at least
one failed (the others are still printed), 2 when the model cannot be loaded or no image given.

Each file is first checked with isicflow.imaging.decode_image (the data engine's decoder), so a
bad file gets the engine's reason; the good ones go through the SavedModel's serving signature
on their raw bytes, which decodes and resizes in-graph with the same code.
"""
from __future__ import annotations

import dataclasses
import io
import sys
from typing import Sequence

from absl import app, flags

from isicflow import imaging

NOT_AN_IMAGE_REASONS = ("empty_file", "not_an_image", "unsupported_format")


@dataclasses.dataclass
class Prediction:
    path: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    warning: str | None = None
    top: list[tuple[str, float]] | None = None  # diagnosis exports: the top classes

    def line(self) -> str:
        if self.error is not None:
            return f"ERROR {self.path}: {self.error}"
        if self.top is not None:
            return "\t".join([self.path] + [f"{name}:{p:.6f}" for name, p in self.top])
        return f"{self.path}\t{self.probability:.6f}\t{self.label}"


def check_file(path: str) -> tuple[bytes | None, str | None, str | None]:
    """(bytes, error, warning): error says why the file cannot be classified."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read file ({e.strerror or type(e).__name__})", None
    try:
        imaging.decode_image(data)
    except imaging.ImageRejected as e:
        kind = "not a JPEG or PNG" if e.reason in NOT_AN_IMAGE_REASONS else "unreadable image"
        return None, f"{kind} ({e})", None
    return data, None, _serving_warning(data)


def _serving_warning(data: bytes) -> str | None:
    """Where the in-graph decoder sees other pixels than the data engine did, say so.

    It applies no EXIF rotation (TensorFlow has no op for it); the file stays classifiable.
    """
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: decode_image accepted the pixels, nothing to warn
        return None
    notes = []
    if orientation not in (1, None):
        notes.append(f"EXIF orientation {orientation} ignored by the model (it sees the stored pixels)")
    return "; ".join(notes) or None


def predict_files(paths: Sequence[str], model_dir: str, threshold_override: float | None = None,
                  batch_size: int = 16, tta: bool | None = None) -> list[Prediction]:
    """One Prediction per path, in order; bad files carry an error, the rest a probability.

    tta None: as exported (serving_default); True/False: the serving_tta / serving_plain
    signature (the 8 flips/rot90s averaged, or not), as trainer.evaluate --tta scores.
    """
    from trainer.cnn import export

    if threshold_override is not None and not 0.0 <= threshold_override <= 1.0:
        raise ValueError(f"threshold_override must be in [0, 1], got {threshold_override}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loaded, config = export.load_exported(model_dir)
    if config.get("task") == "diagnosis":
        return _predict_diagnosis(paths, loaded, config, batch_size)
    name = "serving_default" if tta is None else (export.SIGNATURE_TTA if tta else export.SIGNATURE_PLAIN)
    if name not in loaded.signatures:
        raise ValueError(f"{model_dir}: the export has no {name} signature (exported before "
                         "test-time augmentation existed); re-export it")
    serve = loaded.signatures[name]

    def fill(result: Prediction, out: dict, row: int) -> None:
        probability = float(out["probability"][row])
        result.probability = probability
        result.label = out["label"][row].decode() if threshold_override is None else \
            ("malignant" if probability >= threshold_override else "benign")

    return _serve_files(paths, serve, batch_size, fill)


def _serve_files(paths: Sequence[str], serve, batch_size: int, fill) -> list[Prediction]:
    """Checks each file, serves the readable ones `batch_size` at a time through the exported
    signature `serve` and lets fill(result, outputs as numpy, row) read each one's answer; a
    batch the in-graph decoder refuses is retried file by file to name the file."""
    import tensorflow as tf

    results, pending = [], []
    for path in paths:
        data, error, warning = check_file(path)
        results.append(Prediction(path, error=error, warning=warning))
        if data is not None:
            pending.append((results[-1], data))

    def run(items) -> None:
        try:
            out = serve(image_bytes=tf.constant([data for _, data in items]))
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
            if len(items) > 1:  # isolate the file the in-graph decoder refused
                for item in items:
                    run([item])
                return
            items[0][0].error = f"the model's decoder refused it ({e.message.splitlines()[0]})"
            return
        out = {key: value.numpy() for key, value in out.items()}
        for row, (result, _) in enumerate(items):
            fill(result, out, row)

    for start in range(0, len(pending), batch_size):
        run(pending[start:start + batch_size])
    return results


def _predict_diagnosis(paths: Sequence[str], loaded, config, batch_size: int,
                       top_k: int = 3) -> list[Prediction]:
    import numpy as np

    classes = list(config["classes"])

    def fill(result: Prediction, out: dict, row: int) -> None:
        probs = out["probabilities"][row]
        order = np.argsort(-probs, kind="stable")[:top_k]
        result.top = [(classes[i], float(probs[i])) for i in order]
        result.label, result.probability = result.top[0]

    return _serve_files(paths, loaded.signatures["serving_default"], batch_size, fill)


def _define_flags() -> None:
    """Defined only when run as a program, so importing this module never clashes with the
    trainers' flags (trainer.core.flags) or trainer.cnn.visualize's --model."""
    flags.DEFINE_string("model", None, "Export dir (serving_config.json + saved_model/) or a run "
                        "dir holding export/.")
    flags.DEFINE_float("threshold_override", None, "Label threshold to use instead of the exported "
                       "one (which was chosen on validation), in [0, 1].")
    flags.DEFINE_integer("predict_batch_size", 16, "Images per call of the serving signature.")
    flags.DEFINE_bool("tta", None, "Test-time augmentation (the 8 flips/rot90s averaged): "
                      "unset = as exported (serving_config.json's tta), --tta / --notta force it.")
    flags.mark_flag_as_required("model")


def main(argv: Sequence[str]) -> int:
    paths = list(argv[1:])
    if not paths:
        print("no image given: python -m trainer.cnn.predict --model DIR image.jpg ...", file=sys.stderr)
        return 2
    FLAGS = flags.FLAGS
    try:
        results = predict_files(paths, FLAGS.model, FLAGS.threshold_override, FLAGS.predict_batch_size,
                                FLAGS.tta)
    except (FileNotFoundError, ValueError) as e:
        print(f"cannot use the model: {e}", file=sys.stderr)
        return 2
    for result in results:
        print(result.line(), flush=True)
        if result.warning:
            print(f"WARNING {result.path}: {result.warning}", file=sys.stderr)
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed} of {len(results)} image(s) classified, {failed} failed",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
