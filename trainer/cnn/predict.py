"""Classify image files with an exported CNN: one line per image with its probability and label,
or the reason the data engine would have rejected the image.

    python -m trainer.cnn.predict --model=DIR --image=a.jpg,b.png [--output=predictions.tsv]

--model: an export dir (serving_config.json + saved_model/) or a run dir holding export/.
--image: the files, comma-separated (or --image repeated).
--tta / --notta force test-time augmentation (the 8 flips/rot90s averaged, trainer.cnn.tta) on
or off, for either task; unset, the export's own setting (serving_config.json "tta") applies.
--threshold labels with another threshold than the exported one (benign/malignant exports
only). --output also writes a TSV file with a header line and the columns path, probability,
label, top (diagnosis exports: the top 3 classes), rejected (the reason an image got no
probability) and error.
Prints one line per image, in the order given, tab-separated:
    PATH<TAB>PROBABILITY<TAB>LABEL          e.g. a.jpg	0.731204	malignant
    PATH<TAB>CLASS:P<TAB>CLASS:P<TAB>CLASS:P  a diagnosis-task export (--task=diagnosis): the
                                            top 3 classes, most probable first
    PATH<TAB>rejected: REASON (DETAIL)      an image the data engine would not have trained on,
                                            e.g. b.jpg	rejected: degenerate_image (no picture: ...)
    ERROR PATH: REASON                      a file that cannot be read at all (missing, no
                                            permission) or that the model's decoder refused
and on stderr a "WARNING PATH: ..." line where the served pixels differ from what training saw
(EXIF rotation), then a summary line. Exit code: 0 when every image got an answer (a
probability or a rejection with its reason), 1 when at least one file could not be read (the
others are still printed), 2 when the model cannot be loaded or no image is given (one line on
stderr).

The engine's checks, before the model sees anything (the same functions the engine calls):
  not an image, empty, unsupported format, too many pixels, corrupt: isicflow.imaging.decode_image
      (reason not_an_image, empty_file, unsupported_format, too_many_pixels, corrupt_image);
  too_small: the short side below serving_config.json "min_image_side" (the engine has no
      default minimum; the export records max(32, image_size // 2), or the dataset's
      --min_original_size when larger: below it the model would see an image upscaled more
      than 2x, detail it never had);
  degenerate_image: isicflow.image_checks.degeneracy on the luma thumbnail of the resized
      image (every row the same, every column the same, one colour), as the engine rejects it.
The accepted ones go through the SavedModel's serving signature on their raw bytes, which
decodes and resizes in-graph with the same code. (The SavedModel alone runs no checks: a
caller serving it directly should call `rejection` first.)
"""
from __future__ import annotations

import dataclasses
import io
import sys
from typing import Sequence

from absl import flags

from isicflow import image_checks, imaging
from trainer.cnn.export import default_min_side  # noqa: F401 (predict.default_min_side)
from trainer.core import program

NOT_AN_IMAGE_REASONS = ("empty_file", "not_an_image", "unsupported_format")
TSV_COLUMNS = ("path", "probability", "label", "top", "rejected", "error")


@dataclasses.dataclass
class Prediction:
    path: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    warning: str | None = None
    top: list[tuple[str, float]] | None = None  # diagnosis exports: the top classes
    rejected: str | None = None  # why the engine would reject the image: "reason (detail)"

    def line(self) -> str:
        if self.error is not None:
            return f"ERROR {self.path}: {self.error}"
        if self.rejected is not None:
            return f"{self.path}\trejected: {self.rejected}"
        if self.top is not None:
            return "\t".join([self.path] + [f"{name}:{p:.6f}" for name, p in self.top])
        return f"{self.path}\t{self.probability:.6f}\t{self.label}"

    def row(self) -> dict[str, str]:
        """The --output TSV row (TSV_COLUMNS); empty cells where a field does not apply."""
        def clean(text: str | None) -> str:
            return " ".join((text or "").replace("\t", " ").split())

        return {"path": self.path,
                "probability": "" if self.probability is None else f"{self.probability:.6f}",
                "label": self.label or "",
                "top": " ".join(f"{name}:{p:.6f}" for name, p in self.top) if self.top else "",
                "rejected": clean(self.rejected), "error": clean(self.error)}


def rejection(data: bytes, image_size: int, resize_mode: str = "squash",
              min_side: int | None = None) -> tuple[str, str] | None:
    """(reason, detail) when the data engine would reject these bytes for a model of
    `image_size` px, else None. Pure; calls the engine's own functions in the engine's order
    (beam_jobs.transforms.ProcessImage): decode_image, the minimum short side, resize_pil and
    the degeneracy test on the thumbnail the engine takes."""
    min_side = default_min_side(image_size) if min_side is None else int(min_side)
    try:
        decoded = imaging.decode_image(data, target=image_size, mode=resize_mode)
    except imaging.ImageRejected as e:
        return e.reason, e.detail
    short = min(decoded.source_width, decoded.source_height)
    if short < min_side:
        return "too_small", (f"short side {short} px < {min_side} (serving_config.json "
                             "min_image_side)")
    resized = {image_size: imaging.resize_pil(decoded.image, image_size, resize_mode)}
    luma = image_checks.luma_thumbnail(
        image_checks.thumbnail_source(decoded.image, resized, resize_mode))
    degenerate = image_checks.degeneracy(luma)
    if degenerate is not None:
        return "degenerate_image", image_checks.degenerate_detail(*degenerate)
    return None


def check_file(path: str, image_size: int, resize_mode: str = "squash",
               min_side: int | None = None) -> tuple[bytes | None, str | None, str | None, str | None]:
    """(bytes, error, rejected, warning): error says why the file cannot be read, rejected why
    the engine would refuse the image (`rejection` as "reason (detail)")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read file ({e.strerror or type(e).__name__})", None, None
    why = rejection(data, image_size, resize_mode, min_side)
    if why is not None:
        reason, detail = why
        return None, None, f"{reason} ({detail})" if detail else reason, None
    return data, None, None, _serving_warning(data)


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
    diagnosis = config.get("task") == "diagnosis"
    if diagnosis and threshold is not None:
        raise ValueError("a diagnosis export labels each image with its most probable class: "
                         "--threshold is for benign/malignant models only")
    checks = _checks(config)
    name = "serving_default"  # serves as exported: also an export older than the signatures
    if tta is not None and bool(tta) != bool(config.get("tta", False)):
        name = export.SIGNATURE_TTA if tta else export.SIGNATURE_PLAIN
    if name not in loaded.signatures:
        raise ValueError(f"{model_dir}: the export has no {name} signature (a --use_metadata "
                         "model has no serving_tta; other exports made before test-time "
                         "augmentation existed for their task: re-export it)")
    serve = loaded.signatures[name]
    if diagnosis:
        return _predict_diagnosis(paths, serve, config, batch_size, checks)

    def fill(result: Prediction, out: dict, row: int) -> None:
        probability = float(out["probability"][row])
        result.probability = probability
        result.label = out["label"][row].decode() if threshold is None else \
            ("malignant" if probability >= threshold else "benign")

    return _serve_files(paths, serve, batch_size, fill, checks)


def _checks(config: dict) -> dict:
    """check_file's arguments from a serving config (an export older than min_image_side gets
    the default for its size)."""
    size = int(config["image_size"])
    return {"image_size": size, "resize_mode": config.get("resize_mode", "squash"),
            "min_side": int(config.get("min_image_side") or default_min_side(size))}


def _serve_files(paths: Sequence[str], serve, batch_size: int, fill, checks: dict
                 ) -> list[Prediction]:
    """Checks each file, serves the accepted ones `batch_size` at a time through the exported
    signature `serve` and lets fill(result, outputs as numpy, row) read each one's answer; a
    batch the in-graph decoder refuses is retried file by file to name the file."""
    import tensorflow as tf

    results, pending = [], []
    for path in paths:
        data, error, rejected, warning = check_file(path, **checks)
        results.append(Prediction(path, error=error, warning=warning, rejected=rejected))
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


def _predict_diagnosis(paths: Sequence[str], serve, config, batch_size: int, checks: dict,
                       top_k: int = 3) -> list[Prediction]:
    import numpy as np

    classes = list(config["classes"])

    def fill(result: Prediction, out: dict, row: int) -> None:
        probs = out["probabilities"][row]
        order = np.argsort(-probs, kind="stable")[:top_k]
        result.top = [(classes[i], float(probs[i])) for i in order]
        result.label, result.probability = result.top[0]

    return _serve_files(paths, serve, batch_size, fill, checks)


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
    flags.DEFINE_string("output", None, "Also write the results to this TSV file: a header, then "
                        "path, probability, label, top, rejected, error per image.")
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
    for result in results:
        print(result.line(), flush=True)
        if result.warning:
            print(f"WARNING {result.path}: {result.warning}", file=sys.stderr)
    if FLAGS.output:
        write_tsv(FLAGS.output, results)
    failed = sum(r.error is not None for r in results)
    rejected = sum(r.rejected is not None for r in results)
    print(f"{len(results) - failed - rejected} of {len(results)} image(s) classified, "
          f"{rejected} rejected, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def write_tsv(path: str, results: Sequence[Prediction]) -> str:
    """--output: a header line (TSV_COLUMNS), then one row per image in order."""
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, TSV_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.row() for r in results)
    return path


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    program.run(main, prog="trainer.cnn.predict", doc=__doc__, argv=argv,
                flag_modules=[__name__])


if __name__ == "__main__":
    run()
