"""Classify image files with an exported CNN: one line per image with its probability and label.

    python -m trainer.cnn.predict --model=DIR --image=a.jpg,b.png [--output=predictions.tsv]

--model: an export dir (serving_config.json + saved_model/) or a run dir holding export/.
--image: the files, comma-separated (or --image repeated).
--tta / --notta force test-time augmentation (the 8 flips/rot90s averaged, trainer.cnn.tta) on
or off; unset, the export's own setting (serving_config.json "tta") applies. --threshold
labels with another threshold than the exported one. --output also writes the lines to a file.
Prints one line per image, in the order given, tab-separated:
    PATH<TAB>PROBABILITY<TAB>LABEL          e.g. a.jpg	0.731204	malignant
    PATH<TAB>CLASS:P<TAB>CLASS:P<TAB>CLASS:P  a diagnosis-task export (--task=diagnosis): the
                                            top 3 classes, most probable first
    ERROR PATH: REASON                      e.g. ERROR b.txt: not a JPEG or PNG (not_an_image: ...)
and on stderr a "WARNING PATH: ..." line where the served pixels differ from what training saw
(EXIF rotation), then a summary line. Exit code: 0 when every image was classified, 1 when at least
one failed (the others are still printed: a missing or unreadable file is one of them), 2 when
the model cannot be loaded or no image is given (one line on stderr).

Each file is first checked with isicflow.imaging.decode_image (the data engine's decoder), so a
bad file gets the engine's reason; the good ones go through the SavedModel's serving signature
on their raw bytes, which decodes and resizes in-graph with the same code.
"""
from __future__ import annotations

import dataclasses
import io
import sys
from typing import Sequence

from absl import flags

from isicflow import imaging
from trainer.core import program

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


def predict_files(paths: Sequence[str], model_dir: str, threshold: float | None = None,
                  batch_size: int = 16, tta: bool | None = None) -> list[Prediction]:
    """One Prediction per path, in order; bad files carry an error, the rest a probability.

    tta None: as exported (serving_default); True/False: the serving_tta / serving_plain
    signature (the 8 flips/rot90s averaged, or not), as trainer.cnn.evaluate --tta scores.
    threshold: label with it instead of the exported threshold.
    """
    from trainer.cnn import export

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
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
        result.label = out["label"][row].decode() if threshold is None else \
            ("malignant" if probability >= threshold else "benign")

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


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, "Export dir (serving_config.json + saved_model/) or a run "
                        "dir holding export/.")
    flags.DEFINE_list("image", [], "JPEG or PNG files to classify, comma-separated (or the flag "
                      "repeated).")
    flags.DEFINE_float("threshold", None, "Label threshold to use instead of the exported one "
                       "(which was chosen on validation), in [0, 1].", lower_bound=0.0,
                       upper_bound=1.0)
    flags.DEFINE_integer("batch_size", 16, "Images per call of the serving signature.",
                         lower_bound=1)
    flags.DEFINE_bool("tta", None, "Test-time augmentation (the 8 flips/rot90s averaged): "
                      "unset = as exported (serving_config.json's tta), --tta / --notta force it.")
    flags.DEFINE_string("output", None, "Also write the result lines to this file (TSV).")
    flags.mark_flag_as_required("model")


def main(argv: Sequence[str]) -> int:
    del argv  # program.run refuses stray words: images come with --image
    import os

    paths = list(FLAGS.image)
    if not paths:
        program.fail("--image: no image given; e.g. --image=a.jpg,b.png")
    if FLAGS.output and (os.path.isdir(FLAGS.output)
                         or not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.output)))):
        program.fail(f"--output={FLAGS.output}: want a file name in an existing folder")
    try:
        results = predict_files(paths, FLAGS.model, FLAGS.threshold, FLAGS.batch_size, FLAGS.tta)
    except (FileNotFoundError, ValueError) as e:
        program.fail(f"--model={FLAGS.model}: {e}")
    lines = []
    for result in results:
        lines.append(result.line())
        print(lines[-1], flush=True)
        if result.warning:
            print(f"WARNING {result.path}: {result.warning}", file=sys.stderr)
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed} of {len(results)} image(s) classified, {failed} failed",
          file=sys.stderr)
    return 1 if failed else 0


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    program.run(main, prog="trainer.cnn.predict", doc=__doc__, argv=argv,
                flag_modules=[__name__])


if __name__ == "__main__":
    run()
