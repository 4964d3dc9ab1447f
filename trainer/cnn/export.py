"""Export a trained classifier for use: a .keras file and a SavedModel that eats raw image bytes.

The SavedModel's `serving_default` signature takes a batch of encoded JPEG/PNG files (tf.string
[None]) and runs isicflow.imaging.decode_for_serving, the in-graph twin of the data engine's
decode and resize (Pillow's resampling rebuilt from TensorFlow ops, equal bit for bit), then the
evaluation preprocessing of the input pipeline (scale to [0, 1]) and the model. So served
images and training images do not skew. (Not verified under XLA, which may fuse float ops.)

Layout (workdir/export/):
  model.keras            the Keras model alone (float inputs in [0, 1], SxS)
  saved_model/           signatures: serving_default(image_bytes) -> {probability, label}
                                       (with test-time augmentation when exported with tta)
                                     serving_plain / serving_tta: the same without / with it
                                     preprocess(image_bytes) -> {pixels: uint8 [B,S,S,3]}
                         (a diagnosis model's serve {probabilities, top_class, top_probability}
                         through the same signatures, export_diagnosis_model)
  serving_config.json    image_size, resize_mode, threshold and where it came from, tta,
                         min_image_side and the checks trainer.cnn.predict runs first (an
                         ensemble's also "ensemble": its members, how the threshold was chosen)
  MODEL_CARD.md          what the model is for and not for, its data, its measured quality
                         (trainer.cnn.model_card), where the run has a report.json

Training exports its run. Several runs of one recipe (a seed ensemble) export as one model
whose probability is the mean of theirs, threshold and quality measured anew on their
validation and test splits (trainer.cnn.ensemble), served as any export
(python -m trainer.cnn.predict --model=DIR):
    python -m trainer.cnn.ensemble --model=RUN1,RUN2,RUN3 --output=DIR
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from isicflow import image_checks, imaging
from isicflow.metadata import CLASS_NAMES
from trainer.cnn import tta as tta_lib
from trainer.cnn.constants import (CLASSES_NAME, EXPORT_DIR, KERAS_NAME,  # noqa: F401
                                   REPORT_JSON, SAVED_MODEL_NAME, SERVING_CONFIG_NAME)

SIGNATURE_PLAIN = "serving_plain"  # no test-time augmentation
SIGNATURE_TTA = "serving_tta"      # the 8 dihedral views averaged
SIGNATURE_METADATA = "serving_metadata"  # --use_metadata models: image bytes + age, sex, site


def _metadata_specs():
    import tensorflow as tf

    return [tf.TensorSpec([None], tf.string, name="image_bytes"),
            tf.TensorSpec([None], tf.float32, name="age"),
            tf.TensorSpec([None], tf.string, name="sex"),
            tf.TensorSpec([None], tf.string, name="site")]


def _missing_metadata(image_bytes, encoding: int):
    """The features of 'nothing known' (age -1, sex '', site '') for each image of a batch."""
    import tensorflow as tf

    from trainer.core import metadata_features

    n = tf.shape(image_bytes)[0]
    return metadata_features.encode(tf.fill([n], metadata_features.MISSING_AGE),
                                    tf.fill([n], ""), tf.fill([n], ""), encoding)


def _run_metadata(model, workdir: str, run_config: dict | None, report
                  ) -> tuple[int | None, tuple[str, ...] | None]:
    """(encoding version, fields) the model's metadata was trained with, (None, None) for a
    model without a metadata input: run_config's, else the run's report.json config's; neither
    recording them = version 1 and all fields (metadata_features.run_encoding, run_fields)."""
    from trainer.core import metadata_features

    if not uses_metadata(model):
        return None, None
    recorded = run_config if run_config is not None else (report or {}).get("config") or {}
    try:
        return (metadata_features.run_encoding(recorded),
                metadata_features.run_fields(recorded))
    except ValueError as e:
        raise ValueError(f"{workdir}: {e}") from None


def uses_metadata(model) -> bool:
    return len(getattr(model, "inputs", None) or []) > 1


def _image_module(model, image_size: int, resize_mode: str, tta: bool,
                  encoding: int | None = None, fields: tuple[str, ...] | None = None):
    """The base tf.Module class of both tasks' serving: raw bytes go through the engine's
    decode and resize in-graph (preprocess), then the evaluation scaling, then the model,
    whose outputs a subclass's _answer turns into the task's serving outputs. serve (the
    serving_default) averages the 8 dihedral views when `tta` (trainer.cnn.tta), serve_plain
    and serve_tta force it off or on; a metadata model is served without TTA (serve_tta is not
    exported for it) and also gets its features (all missing unless given, serve_metadata), by
    `encoding`, the version it was trained with, and its `fields` (_run_metadata: a field it
    was trained without is served as missing whatever is given)."""
    import tensorflow as tf

    from trainer.core import input_pipeline, metadata_features

    if encoding is None:  # no metadata input: the traced serve_metadata's features go unread
        encoding = metadata_features.ENCODING_VERSION
    if fields is None:
        fields = metadata_features.FIELDS

    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    class ImageModule(tf.Module):
        """Holds the model (and a subclass its serving constants), so they travel inside the
        SavedModel."""

        def __init__(self, name: str):
            super().__init__(name=name)
            self.model = model

        @tf.function(input_signature=[bytes_spec])
        def preprocess(self, image_bytes):
            pixels = tf.map_fn(
                lambda contents: imaging.decode_for_serving(contents, image_size, resize_mode),
                image_bytes, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8))
            return {"pixels": pixels}

        def _model_inputs(self, image_bytes, metadata=None):
            images = input_pipeline.preprocess_for_eval(self.preprocess(image_bytes)["pixels"])
            if not uses_metadata(self.model):
                return images
            return [images, _missing_metadata(image_bytes, encoding) if metadata is None
                    else metadata]

        def _encode(self, age, sex, site):
            return metadata_features.encode(age, sex, site, encoding, fields)

        def _outputs(self, image_bytes, use_tta: bool, metadata=None):
            """The model's outputs float32 [B, K], the views' mean when use_tta (image-only)."""
            inputs = self._model_inputs(image_bytes, metadata)
            return tta_lib.class_probabilities(self.model, inputs,
                                               use_tta and not uses_metadata(self.model))

        def _answer(self, outputs):
            raise NotImplementedError("the task's module says what it serves")

        @tf.function(input_signature=[bytes_spec])
        def serve(self, image_bytes):  # serving_default: TTA as exported (serving_config "tta")
            return self._answer(self._outputs(image_bytes, tta))

        @tf.function(input_signature=[bytes_spec])
        def serve_plain(self, image_bytes):
            return self._answer(self._outputs(image_bytes, False))

        @tf.function(input_signature=[bytes_spec])
        def serve_tta(self, image_bytes):  # the 8 flips/rot90s averaged (trainer.cnn.tta)
            return self._answer(self._outputs(image_bytes, True))

        @tf.function(input_signature=_metadata_specs())
        def serve_metadata(self, image_bytes, age, sex, site):
            return self._answer(self._outputs(image_bytes, False, self._encode(age, sex, site)))

    return ImageModule


def _serving_module(model, image_size: int, resize_mode: str, threshold: float, tta: bool = False,
                    encoding: int | None = None, fields: tuple[str, ...] | None = None):
    import tensorflow as tf

    ImageModule = _image_module(model, image_size, resize_mode, tta, encoding, fields)

    class ServingModule(ImageModule):
        """The binary task's: P(malignant) and the label at the exported threshold."""

        def __init__(self):
            super().__init__(name="isicflow_classifier")
            self.threshold = tf.Variable(threshold, dtype=tf.float32, trainable=False, name="threshold")
            self.image_size = tf.Variable(image_size, dtype=tf.int32, trainable=False, name="image_size")
            self.resize_mode = tf.Variable(resize_mode, dtype=tf.string, trainable=False, name="resize_mode")

        def _answer(self, outputs):
            probability = outputs[:, 0]
            label = tf.where(probability >= self.threshold, tf.constant(CLASS_NAMES[1]),
                             tf.constant(CLASS_NAMES[0]))
            return {"probability": probability, "label": label}

    return ServingModule()


def _signatures(module, model) -> dict[str, Any]:
    """Both tasks' signatures: serving_default (TTA as exported), serving_plain, preprocess;
    serving_tta for an image-only model, serving_metadata for a --use_metadata one (whose
    serving_default takes the image alone, every metadata value missing)."""
    signatures = {"serving_default": module.serve, "preprocess": module.preprocess,
                  SIGNATURE_PLAIN: module.serve_plain}
    if uses_metadata(model):
        signatures[SIGNATURE_METADATA] = module.serve_metadata
    else:
        signatures[SIGNATURE_TTA] = module.serve_tta
    return signatures


def _tta_note(what: str) -> str:
    return (f"serving_default averages {what} over the 8 flips/rot90s (trainer.cnn.tta) when "
            f"tta is true; {SIGNATURE_PLAIN} and {SIGNATURE_TTA} (image-only models) choose "
            "explicitly")


def _check_model(model, image_size: int) -> None:
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if shape is None or tuple(shape[1:]) != (image_size, image_size, 3):
        raise ValueError(f"model input shape {shape} does not match image_size {image_size} "
                         f"(need (None, {image_size}, {image_size}, 3))")
    out = tuple(model.outputs[0].shape)
    if out[1:] != (1,):
        raise ValueError(f"model output shape {out} is not [batch, 1] (one probability)")


def _export_paths(workdir: str) -> dict[str, str]:
    """WORKDIR/export/ (created) and the files an export writes there."""
    export_dir = os.path.join(workdir, EXPORT_DIR)
    os.makedirs(export_dir, exist_ok=True)
    return {"export_dir": export_dir, "keras": os.path.join(export_dir, KERAS_NAME),
            "saved_model": os.path.join(export_dir, SAVED_MODEL_NAME),
            "serving_config": os.path.join(export_dir, SERVING_CONFIG_NAME)}


def default_min_side(image_size: int, dataset_min_side: int = 0) -> int:
    """The smallest short side served: max(the checks' 32 px thumbnail, half the model's input,
    the dataset's --min_original_size). The engine's own default is no minimum, but an image
    upscaled more than 2x holds detail the model never saw."""
    return max(image_checks.THUMB, int(image_size) // 2, int(dataset_min_side or 0))


def dataset_min_side(image_size: int, manifest: Mapping[str, Any]) -> int:
    """default_min_side raised to the dataset's own --min_original_size when its manifest
    records one (the model never saw smaller)."""
    dataset_min = (manifest.get("config") or {}).get("min_original_size") or 0
    return default_min_side(image_size, int(dataset_min))


def _checks_note(image_size: int, min_image_side: int | None) -> dict[str, Any]:
    """serving_config.json's min_image_side and what trainer.cnn.predict checks before serving."""
    side = default_min_side(image_size) if min_image_side is None else int(min_image_side)
    if side < 1:
        raise ValueError(f"min_image_side must be >= 1, got {side}")
    return {"min_image_side": side,
            "checks": "trainer.cnn.predict (and predict.rejection for a caller of the SavedModel) "
                      "refuses, with a reason, what the data engine rejects: not a JPEG/PNG, "
                      "corrupt, too many pixels, degenerate (image_checks.degeneracy), and a "
                      f"short side below min_image_side ({side} px; the engine has no default "
                      "minimum: max(32, image_size // 2, the dataset's --min_original_size))"}


def export_model(model, workdir: str, image_size: int, resize_mode: str = "squash",
                 threshold: float | None = None, tta: bool = False,
                 min_image_side: int | None = None, manifest: dict | None = None,
                 run_config: dict | None = None, ensemble: dict | None = None
                 ) -> dict[str, str]:
    """Writes workdir/export/{model.keras, saved_model/, serving_config.json}; returns paths.

    threshold: None takes workdir/report.json's (the one chosen on validation), else 0.5.
    tta: serving_default averages the 8 dihedral views (trainer.cnn.tta), as evaluate --tta.
    min_image_side: the smallest short side predict serves (None: default_min_side).
    manifest, run_config: the dataset's manifest and the run's config, for MODEL_CARD.md
    (trainer.cnn.model_card; the card says what it lacks); a --use_metadata model is served
    with the run config's metadata_encoding and metadata_fields (none recorded: version 1 and
    all fields, _run_metadata).
    ensemble: serving_config.json's "ensemble" (members, how the threshold was chosen) when
    `model` averages several runs (trainer.cnn.ensemble).
    """
    import tensorflow as tf

    from trainer.cnn import evaluation as evaluate  # imports export: load it here
    from trainer.cnn import model_card
    from trainer.core import run_folder

    if resize_mode not in imaging.RESIZE_MODES:
        raise ValueError(f"resize mode {resize_mode!r} not in {imaging.RESIZE_MODES}")
    _check_model(model, image_size)
    report = model_card.read_report(workdir)
    if threshold is None:
        threshold, threshold_source = evaluate.run_threshold(report, workdir)
    else:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        threshold, threshold_source = float(threshold), "given to export_model"
    tta_lib.check_inputs(tta, uses_metadata(model))
    paths = _export_paths(workdir)
    model.save(paths["keras"])
    encoding, fields = _run_metadata(model, workdir, run_config, report)
    module = _serving_module(model, image_size, resize_mode, threshold, bool(tta), encoding,
                             fields)
    tf.saved_model.save(module, paths["saved_model"], signatures=_signatures(module, model))
    config = {"image_size": image_size, "resize_mode": resize_mode, "threshold": threshold,
              "threshold_source": threshold_source, "labels": list(CLASS_NAMES),
              "tta": bool(tta), "tta_note": _tta_note("P(malignant)"),
              "input": "serving_default: image_bytes tf.string [None], encoded JPEG or PNG, upright "
                       "(EXIF orientation is not applied in-graph)",
              "outputs": {"probability": "float32 [None], P(malignant)",
                          "label": f"string [None], malignant when probability >= {threshold}"},
              **_checks_note(image_size, min_image_side),
              "tensorflow": tf.__version__}
    if uses_metadata(model):
        config["metadata"] = _metadata_note(encoding, fields)
    if ensemble:
        config["ensemble"] = dict(ensemble)
    run_folder.write_json(paths["serving_config"], config)
    paths["model_card"] = model_card.write_card(paths["export_dir"], report, config, manifest,
                                                run_config)
    return paths


def _metadata_note(encoding: int, fields: tuple[str, ...]) -> dict[str, Any]:
    return {"signature": SIGNATURE_METADATA,
            "metadata_encoding": encoding,  # trainer.core.metadata_features' version
            "metadata_fields": list(fields),  # those the model uses; others served as missing
            "inputs": "image_bytes, age float32 [None] (-1 = unknown), sex string [None] "
                      "(female/male, '' = unknown), site string [None] (ISIC "
                      "anatom_site_general, '' = unknown"
                      + ("; HAM10000's localization names are mapped onto it, "
                         "metadata_features.SITE_SYNONYMS)" if encoding >= 2 else ")"),
            "default": "serving_default takes the image alone and serves it with every "
                       "metadata value missing"}


def resolve_export_dir(path: str) -> str:
    """An export dir itself, or a workdir holding export/; clear error when neither."""
    for candidate in (path, os.path.join(path, EXPORT_DIR)):
        if os.path.isfile(os.path.join(candidate, SERVING_CONFIG_NAME)) and \
                os.path.isdir(os.path.join(candidate, SAVED_MODEL_NAME)):
            return candidate
    raise FileNotFoundError(f"{path!r} is neither an export dir (with {SERVING_CONFIG_NAME} and "
                            f"{SAVED_MODEL_NAME}/) nor a run dir holding {EXPORT_DIR}/ with them")


def load_exported(path: str) -> tuple[Any, dict[str, Any]]:
    """(loaded SavedModel, serving_config dict) from an export dir or a run dir."""
    export_dir = resolve_export_dir(path)  # before TensorFlow loads: a wrong path fails fast
    import tensorflow as tf

    with open(os.path.join(export_dir, SERVING_CONFIG_NAME), encoding="utf-8") as f:
        config = json.load(f)
    loaded = tf.saved_model.load(os.path.join(export_dir, SAVED_MODEL_NAME))
    return loaded, config


def export_diagnosis_model(model, workdir: str, image_size: int,
                           resize_mode: str = "squash",
                           min_image_side: int | None = None, manifest: dict | None = None,
                           run_config: dict | None = None, ensemble: dict | None = None,
                           tta: bool = False) -> dict[str, str]:
    """The diagnosis task's export (same layout): serving_default(image_bytes) ->
    {probabilities float32 [B, K] (in classes.json order), top_class string [B],
    top_probability float32 [B]}; serving_config.json carries task "diagnosis" and the classes
    (and `ensemble`, as export_model's). The image path (decode_for_serving + evaluation
    scaling) is the binary export's, and so are the TTA signatures: serving_default averages
    the 8 dihedral views when exported with tta (trainer.cnn.tta), serving_plain and
    serving_tta force it off or on."""
    import tensorflow as tf

    from trainer.cnn import diagnosis as diagnosis_lib
    from trainer.cnn import model_card
    from trainer.core import run_folder

    if resize_mode not in imaging.RESIZE_MODES:
        raise ValueError(f"resize mode {resize_mode!r} not in {imaging.RESIZE_MODES}")
    mapping = diagnosis_lib.read_mapping(workdir)
    if mapping is None:
        raise FileNotFoundError(f"{workdir} has no {CLASSES_NAME}")
    classes = list(mapping["classes"])
    out_shape = tuple(model.outputs[0].shape)
    if out_shape[1:] != (len(classes),):
        raise ValueError(f"model output shape {out_shape} does not match {len(classes)} classes")
    tta_lib.check_inputs(tta, uses_metadata(model))
    report = model_card.read_report(workdir)
    encoding, fields = _run_metadata(model, workdir, run_config, report)
    ImageModule = _image_module(model, image_size, resize_mode, tta, encoding, fields)

    class DiagnosisModule(ImageModule):
        """The diagnosis task's: the K class probabilities and the top class."""

        def __init__(self):
            super().__init__(name="isicflow_diagnosis")
            self.classes = tf.constant(classes)

        def _answer(self, probabilities):
            top = tf.argmax(probabilities, axis=1, output_type=tf.int32)
            return {"probabilities": probabilities, "top_class": tf.gather(self.classes, top),
                    "top_probability": tf.reduce_max(probabilities, axis=1)}

    paths = _export_paths(workdir)
    model.save(paths["keras"])
    module = DiagnosisModule()
    tf.saved_model.save(module, paths["saved_model"], signatures=_signatures(module, model))
    config = {
        **({"metadata": _metadata_note(encoding, fields)} if uses_metadata(model) else {}),
        "task": "diagnosis", "image_size": image_size, "resize_mode": resize_mode,
        "classes": classes, "grouped_as_other": mapping["grouped_as_other"], "tta": bool(tta),
        "tta_note": _tta_note("the class probabilities"),
        "input": "serving_default: image_bytes tf.string [None], encoded JPEG or PNG, upright",
        "outputs": {"probabilities": "float32 [None, K], softmax in `classes` order",
                    "top_class": "string [None]", "top_probability": "float32 [None]"},
        **_checks_note(image_size, min_image_side),
        **({"ensemble": dict(ensemble)} if ensemble else {}),
        "tensorflow": tf.__version__}
    run_folder.write_json(paths["serving_config"], config)
    paths["model_card"] = model_card.write_card(paths["export_dir"], report, config, manifest,
                                                run_config)
    return paths

