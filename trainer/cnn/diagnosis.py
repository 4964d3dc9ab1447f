"""The diagnosis task (--task=diagnosis): classify the engine's normalised diagnosis
(isicflow.diagnosis.normalise_diagnosis) instead of benign/malignant.

The class list is fixed at training start from the TRAIN split: every normalised diagnosis with
at least --min_class_records training records is a class, in order of decreasing count; the
rarer named ones are grouped as `other`; records whose diagnosis is unknown/empty are excluded
from the task (counted). The mapping is written to <workdir>/classes.json and read back by the
evaluation, the export and predict, so all use exactly the same classes.

The records stream through the same shard reading, parse and decode as the binary task
(input_pipeline.parse_and_decode's schema and decode_record); the raw diagnosis text is mapped
to a class index in-graph by a lookup table built from the split's distinct raw strings, each
normalised once in Python, so no Python runs per record.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from isicflow import dataset as dataset_lib
from isicflow.diagnosis import normalise_diagnosis
from trainer.cnn.constants import (CLASSES_NAME, EVAL_SPLITS, PLOTS_DIR, REPORT_JSON,  # noqa: F401
                                   REPORT_MD)
from trainer.cnn import tta as tta_lib
from trainer.core import confirmation_mix as confirmation_mix_lib, metadata_features

OTHER = "other"
UNKNOWN = "unknown"
_MAX_SHUFFLE_BUFFER = 1024


def class_mapping(train_counts: Mapping[str, int], min_records: int) -> dict[str, Any]:
    """{normalised diagnosis: train records} -> {"classes": [...], "index": {diagnosis: class
    index}, "grouped_as_other": [...], "excluded_unknown": n, "train_counts": {class: n}}."""
    if min_records < 1:
        raise ValueError(f"min_records must be >= 1, got {min_records}")
    counts = {str(k): int(v) for k, v in train_counts.items() if int(v) > 0}
    excluded = counts.pop(UNKNOWN, 0) + counts.pop("", 0)
    kept = sorted((d for d in counts if d != OTHER and counts[d] >= min_records),
                  key=lambda d: (-counts[d], d))
    grouped = sorted(d for d in counts if d not in kept)
    classes = list(kept)
    other_n = sum(counts[d] for d in grouped)
    if other_n:
        classes.append(OTHER)
    if len(classes) < 2:
        raise ValueError(f"the diagnosis task needs at least 2 classes in train; counts "
                         f"{train_counts} with min_records {min_records} give {classes}")
    index = class_index(classes, grouped)
    train = {c: counts[c] for c in kept}
    if other_n:
        train[OTHER] = other_n
    return {"classes": classes, "index": index, "grouped_as_other": grouped,
            "excluded_unknown": excluded, "train_counts": train, "min_records": min_records}


def class_index(classes: Sequence[str], grouped: Sequence[str]) -> dict[str, int]:
    """{diagnosis: class index}: each named class its own, each diagnosis grouped as `other`
    (which must then be among the classes) `other`'s."""
    index = {c: i for i, c in enumerate(classes) if c != OTHER}
    index.update({d: list(classes).index(OTHER) for d in grouped})
    return index


def is_unknown(raw_diagnosis: str) -> bool:
    """Whether a diagnosis text names no diagnosis (unknown/empty): excluded from the task."""
    return normalise_diagnosis(raw_diagnosis) in (UNKNOWN, "")


def class_of(mapping: Mapping[str, Any], raw_diagnosis: str) -> int:
    """Class index of one raw diagnosis text; -1 for unknown (excluded); a named diagnosis never
    seen in train goes to `other` when there is one, else is excluded (-1, an unseen class:
    exclusion_of tells the two apart)."""
    if is_unknown(raw_diagnosis):
        return -1
    name = normalise_diagnosis(raw_diagnosis)
    if name in mapping["index"]:
        return int(mapping["index"][name])
    classes = mapping["classes"]
    return classes.index(OTHER) if OTHER in classes else -1


def raw_diagnosis_counts(data_dir: str, split: str, image_size: int,
                         manifest: Mapping[str, Any] | None = None) -> collections.Counter:
    """{raw diagnosis text: records} of one split, reading only the diagnosis field (no image
    decode). manifest: the dataset's, when the caller has read it."""
    import tensorflow as tf

    from isicflow import schema

    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    paths = dataset_lib.shard_paths(manifest, data_dir, image_size, split)
    counts: collections.Counter = collections.Counter()
    if not paths:
        return counts
    spec = schema.feature_spec(("diagnosis",))
    ds = tf.data.TFRecordDataset(paths, compression_type=dataset_lib.compression_type(manifest),
                                 num_parallel_reads=min(len(paths), 16))
    ds = ds.batch(1024).map(lambda s: tf.io.parse_example(s, spec)["diagnosis"])
    for batch in ds:
        counts.update(v.decode("utf-8") for v in batch.numpy())
    return counts


def train_counts_from_manifest(manifest: Mapping[str, Any]) -> dict[str, int] | None:
    """{normalised diagnosis: train records} from the manifest's per-split rows, or None when
    the manifest has none."""
    rows = dataset_lib.count_rows(manifest)
    if not rows:
        return None
    out: collections.Counter = collections.Counter()
    for row in rows:
        if row["split"] == "train":
            out[str(row["diagnosis"] or UNKNOWN)] += row["count"]
    return dict(out)


def source_class_counts(manifest: Mapping[str, Any], split: str,
                        mapping: Mapping[str, Any]) -> dict[str, dict[int, int]]:
    """{source_collection: {class index: records}} of one split's records in the task, from
    the manifest's count rows ("" gathers records with no source); {} when it has none."""
    return dataset_lib.class_counts_per_source(
        manifest, split, lambda row: class_of(mapping, row["diagnosis"]))


def build_mapping(data_dir: str, image_size: int, min_records: int,
                  manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The class mapping of a dataset's train split (manifest rows when present, else a pass
    over the train diagnosis field)."""
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    counts = train_counts_from_manifest(manifest)
    source = "manifest per_split_label_diagnosis_source"
    if counts is None:
        counts = collections.Counter()
        for raw, n in raw_diagnosis_counts(data_dir, "train", image_size, manifest).items():
            counts[normalise_diagnosis(raw)] += n
        source = "train split diagnosis field"
    mapping = class_mapping(counts, min_records)
    mapping["counts_source"] = source
    return mapping


def write_mapping(workdir: str, mapping: Mapping[str, Any]) -> str:
    path = os.path.join(workdir, CLASSES_NAME)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(mapping, f, indent=2, sort_keys=True)
    return path


def read_mapping(workdir: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, CLASSES_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def exclusion_of(mapping: Mapping[str, Any], raw_diagnosis: str) -> str | None:
    """Why a record is not in the task: "unknown" (no diagnosis named), "unseen" (a named
    diagnosis outside the classes, which have no `other`), None when it has a class."""
    if is_unknown(raw_diagnosis):
        return "unknown"
    return "unseen" if class_of(mapping, raw_diagnosis) < 0 else None


def split_exclusions(data_dir: str, split: str, image_size: int, mapping: Mapping[str, Any],
                     manifest: Mapping[str, Any] | None = None) -> dict[str, int]:
    """{"kept": records in the task, "unknown": unknown diagnosis, "unseen": named diagnoses
    outside the classes} of one split."""
    counts = {"kept": 0, "unknown": 0, "unseen": 0}
    for raw, n in raw_diagnosis_counts(data_dir, split, image_size, manifest).items():
        counts[exclusion_of(mapping, raw) or "kept"] += n
    return counts


def records_per_class(raw_counts: Mapping[str, int], mapping: Mapping[str, Any]
                      ) -> dict[str, int]:
    """{class: records} of raw_diagnosis_counts' counts, every class of the mapping in its
    order (0 for a class with none)."""
    counts = {name: 0 for name in mapping["classes"]}
    for raw, n in raw_counts.items():
        index = class_of(mapping, raw)
        if index >= 0:
            counts[mapping["classes"][index]] += int(n)
    return counts


def split_records(data_dir: str, split: str, image_size: int, mapping: Mapping[str, Any],
                  manifest: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(records in the task, records excluded: unknown or unseen) of one split."""
    counts = split_exclusions(data_dir, split, image_size, mapping, manifest)
    return counts["kept"], counts["unknown"] + counts["unseen"]


def make_dataset(data_dir: str, split: str, mapping: Mapping[str, Any], *, image_size: int,
                 batch_size: int, training: bool, augment: bool = False, cache: str = "",
                 deterministic: bool = False, seed: int = 0, repeat: bool = False,
                 drop_remainder: bool = False, as_uint8: bool = False,
                 use_metadata: bool = False, augmentation: str = "study",
                 manifest: Mapping[str, Any] | None = None,
                 metadata_encoding: int = metadata_features.ENCODING_VERSION,
                 image_ids: bool = False, balance_sources: bool = False,
                 metadata_fields: Sequence[str] = metadata_features.FIELDS,
                 one_source_batches: bool = False, balance_classes: bool = False,
                 confirmation_mix: confirmation_mix_lib.ConfirmationMix | None = None):
    """(images [B,S,S,3] float32 in [0, 1] (uint8 with as_uint8), class index int32 [B]) of the
    split's records in the task; the binary pipeline's reading, parse, decode, augmentation.
    use_metadata: the input is (images, metadata features by encoding metadata_encoding, with
    metadata_fields; the others missing).
    image_ids: the second element is (class index, image_id string [B]), for per-image
    predictions. balance_sources (training): each named source of the split
    (source_class_counts) is one repeated stream, drawn with equal probability, as the binary
    pipeline's; infinite, so give fit a steps_per_epoch; weight the classes with
    tasks.source_balanced_class_weights. one_source_batches (training): every batch from one
    named source, full batches, a source drawn at its share of the task's records (equally
    with balance_sources), as the binary pipeline's; infinite. balance_classes (training):
    each class of the mapping is one repeated stream, drawn with equal probability (a
    class-conditional GAN's equal share of updates per class); infinite; every class must have
    a record in the split. confirmation_mix (training; trainer.core.confirmation_mix
    .plan_for_split of the split's classes): one repeated stream per (class, diagnosis
    confirmation) group at the mix's shares, as the binary pipeline's; infinite."""
    import tensorflow as tf

    from isicflow import schema
    from trainer.core import input_pipeline as ip

    metadata_fields = metadata_features.check_fields(metadata_fields)
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    info = dataset_lib.split_info(manifest, image_size, split)
    paths = dataset_lib.shard_paths(manifest, data_dir, image_size, split)
    raw = raw_diagnosis_counts(data_dir, split, image_size, manifest)
    keys = sorted(raw)
    if not paths or not any(class_of(mapping, k) >= 0 for k in keys):
        raise ValueError(f"{data_dir}: split {split!r} at {image_size}px has no records with a "
                         "known diagnosis")
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string),
                                            tf.constant([class_of(mapping, k) for k in keys],
                                                        tf.int32)), default_value=-1)
    spec = schema.feature_spec(("image_encoded", "image_format", "height", "width",
                                "diagnosis") + (ip.METADATA_INPUT_FIELDS if use_metadata else ())
                               + (("image_id",) if image_ids else ()))

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        image = ip.decode_record(record, image_size)
        if use_metadata:
            image = (image, metadata_features.encode_record(record, metadata_encoding,
                                                            metadata_fields))
        label = table.lookup(record["diagnosis"])
        return image, ((label, record["image_id"]) if image_ids else label)

    kept = sum(n for k, n in raw.items() if class_of(mapping, k) >= 0)
    buffer = max(1, min(int(info["records"]), _MAX_SHUFFLE_BUFFER))

    label_spec = schema.feature_spec(("diagnosis",))

    def class_of_record(serialized):  # the label alone, so a class's stream decodes its own
        return table.lookup(tf.io.parse_single_example(serialized, label_spec)["diagnosis"])

    group_of = (confirmation_mix_lib.group_lookup(confirmation_mix)
                if confirmation_mix is not None else None)

    def stream(stream_seed: int, source: str | None = None, class_index: int | None = None,
               group: int | None = None):
        records = ip.shard_records(paths, manifest,
                                   shuffle_seed=stream_seed if training else None,
                                   deterministic=True if not training else None)
        if source is not None:
            records = records.filter(lambda s: tf.equal(ip.source_of(s), source))
        if group is not None:
            records = records.filter(lambda s: tf.equal(group_of(s), group))
        if class_index is not None:
            records = records.filter(lambda s: tf.equal(class_of_record(s), class_index))
        if training and not cache:
            records = records.shuffle(buffer, seed=stream_seed + 1,
                                      reshuffle_each_iteration=True)
        ds = records.map(parse, num_parallel_calls=ip.AUTOTUNE)
        ds = ds.filter(lambda image, label: (label[0] if image_ids else label) >= 0)
        if source is None and class_index is None and group is None:  # the count is known:
            # Keras then knows the epoch length
            ds = ds.apply(tf.data.experimental.assert_cardinality(kept))
        if cache == "memory":
            ds = ds.cache()
        elif cache:
            suffix = (f"-metadata{metadata_encoding}" if use_metadata else "") + (  # features
                f"-fields{'-'.join(metadata_fields)}"
                if use_metadata and metadata_fields != metadata_features.FIELDS else "") + (
                "-ids" if image_ids else "") + (
                f"-source{ip._digest(source)}" if source is not None else "") + (
                f"-class{class_index}" if class_index is not None else "") + (
                f"-confirmation{ip._digest(confirmation_mix.groups)}-{group}"
                if group is not None else "")
            # the classes too: another mapping labels (and, per class, keeps) other records
            ds = ds.cache(f"{cache}-{image_size}-{split}-diagnosis{suffix}-"
                          f"{ip._digest(manifest)}-{ip._digest(dict(mapping))}")
        if training and cache:
            ds = ds.shuffle(buffer, seed=stream_seed + 1, reshuffle_each_iteration=True)
        return ds

    if balance_sources or one_source_batches:
        flag = "one_source_batches" if one_source_batches else "balance_sources"
        if not training:
            raise ValueError(f"{flag} needs training=True")
        per_source = source_class_counts(manifest, split, mapping)
        sources = sorted(s for s, c in per_source.items() if s and sum(c.values()))
        unnamed = sum(per_source.get("", {}).values())
        if len(sources) < 2 or unnamed:
            raise ValueError(f"{flag} needs >= 2 named sources in {split!r} of "
                             f"{data_dir} and every record in one; its records in the task "
                             f"name {sources or 'no source_collection'}, {unnamed} name none")
    if balance_classes:
        if not training or balance_sources or one_source_batches:
            raise ValueError("balance_classes needs training=True, no balance_sources and no "
                             "one_source_batches")
        counts = records_per_class(raw, mapping)
        empty = [name for name, n in counts.items() if not n]
        if empty:
            raise ValueError(f"balance_classes: split {split!r} of {data_dir} holds no record "
                             f"of {empty} (records per class {counts})")
    if confirmation_mix is not None and (not training or balance_sources
                                         or one_source_batches or balance_classes):
        raise ValueError(f"confirmation_mix needs training=True (got {training}) and no other "
                         f"mix: balance_sources {balance_sources}, one_source_batches "
                         f"{one_source_batches}, balance_classes {balance_classes}")
    if one_source_batches:
        return ip.finish(ip.group_mix(
            sources,
            [1.0 if balance_sources else float(sum(per_source[n].values())) for n in sources],
            seed=seed, stream=stream,
            each=lambda ds, source_seed: ip.augment_and_batch(
                ds, augment_seed=source_seed if augment else None, batch_size=batch_size,
                drop_remainder=True, as_uint8=as_uint8, augmentation=augmentation)),
            deterministic)
    if balance_sources:
        ds = ip.group_mix(sources, [1.0] * len(sources), seed=seed, stream=stream)
    elif balance_classes:
        ds = ip.sample_streams([stream(seed + 13 * index, class_index=index).repeat()
                                for index in range(len(mapping["classes"]))],
                               [1.0] * len(mapping["classes"]), seed + 2)
    elif confirmation_mix is not None:
        ds = ip.group_mix(range(len(confirmation_mix.groups)), confirmation_mix.shares,
                          seed=seed, stream=lambda stream_seed, i: stream(stream_seed, group=i))
    else:
        ds = stream(seed)
        if repeat:
            ds = ds.repeat()
    return ip.finish(ip.augment_and_batch(ds, augment_seed=seed if training and augment else None,
                                          batch_size=batch_size, drop_remainder=drop_remainder,
                                          as_uint8=as_uint8, augmentation=augmentation),
                     deterministic or not training)


def softmax_head(model, num_classes: int):
    """The binary model with its sigmoid unit replaced by a float32 softmax over num_classes
    (same features: the layer before the output)."""
    import keras

    features = model.layers[-1].input  # the outer graph's tensor (see features.penultimate_model)
    out = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                             name="class_probabilities")(features)
    return keras.Model(model.inputs, out, name=model.name + "_diagnosis")


def balanced_accuracy_metric(num_classes: int):
    """A Keras metric of balanced accuracy (mean per-class recall, the ISIC 2018 metric) over
    an epoch, so --monitor=val_balanced_accuracy keeps the checkpoint the challenge would rank
    first; the same figure as sklearn's balanced_accuracy_score (classes absent from the
    labels left out). Sample (class) weights are ignored: the metric balances by itself."""
    import keras
    from keras import ops

    class BalancedAccuracy(keras.metrics.Metric):
        def __init__(self, name: str = "balanced_accuracy", **kwargs):
            super().__init__(name=name, **kwargs)
            self.confusion = self.add_variable(shape=(num_classes, num_classes),
                                               initializer="zeros", name="confusion")

        def update_state(self, y_true, y_pred, sample_weight=None):
            true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            predicted = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            cells = ops.bincount(true * num_classes + predicted,
                                 minlength=num_classes * num_classes)
            self.confusion.assign_add(ops.cast(ops.reshape(
                cells[:num_classes * num_classes], (num_classes, num_classes)), "float32"))

        def result(self):
            per_class = ops.sum(self.confusion, axis=1)
            recall = ops.divide_no_nan(ops.diagonal(self.confusion), per_class)
            present = ops.cast(per_class > 0, "float32")
            return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

        def reset_state(self):
            self.confusion.assign(ops.zeros((num_classes, num_classes)))

    return BalancedAccuracy()


def class_weights(mapping: Mapping[str, Any]) -> dict[int, float]:
    """n / (K n_c) per class, from the train counts the mapping recorded."""
    counts = [int(mapping["train_counts"][c]) for c in mapping["classes"]]
    total, k = sum(counts), len(counts)
    return {i: total / (k * n) for i, n in enumerate(counts) if n}


def predict_split(model, data_dir: str, split: str, image_size: int, mapping,
                  batch_size: int = 32, use_metadata: bool = False,
                  manifest: Mapping[str, Any] | None = None,
                  metadata_encoding: int = metadata_features.ENCODING_VERSION,
                  metadata_fields: Sequence[str] = metadata_features.FIELDS,
                  tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(class indices int64 [N], probabilities float64 [N, K]) of one split, deterministic;
    metadata_encoding / metadata_fields: the run's (metadata_features.run_encoding,
    run_fields); tta: each image's probabilities averaged over its 8 dihedral views
    (trainer.cnn.tta; not with metadata)."""
    cols = predict_split_columns(model, data_dir, split, image_size, mapping, batch_size,
                                 use_metadata, manifest, metadata_encoding, metadata_fields, tta)
    return cols["label"], cols["probabilities"]


def predict_split_columns(model, data_dir: str, split: str, image_size: int, mapping,
                          batch_size: int = 32, use_metadata: bool = False,
                          manifest: Mapping[str, Any] | None = None,
                          metadata_encoding: int = metadata_features.ENCODING_VERSION,
                          metadata_fields: Sequence[str] = metadata_features.FIELDS,
                          tta: bool = False) -> dict[str, Any]:
    """predict_split with each record's image id: {"image_id": [str], "label": int64 [N],
    "probabilities": float64 [N, K]}, in the split's (deterministic) record order."""
    tta_lib.check_inputs(tta, use_metadata)
    ds = make_dataset(data_dir, split, mapping, image_size=image_size, batch_size=batch_size,
                      training=False, deterministic=True, use_metadata=use_metadata,
                      manifest=manifest, metadata_encoding=metadata_encoding, image_ids=True,
                      metadata_fields=metadata_fields)
    ids, labels, probs = [], [], []
    for images, (y, image_id) in ds:
        probs.append(np.asarray(tta_lib.class_probabilities(model, images, tta), np.float64))
        labels.append(np.asarray(y).astype(np.int64))
        ids += [v.decode("utf-8") for v in image_id.numpy()]
    return {"image_id": ids, "label": np.concatenate(labels),
            "probabilities": np.concatenate(probs)}


def split_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Balanced accuracy, accuracy, per-class recall and the confusion matrix (rows true,
    columns predicted), with scikit-learn."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score

    predicted = probs.argmax(axis=1)
    ks = list(range(len(classes)))
    present = sorted(set(labels.tolist()))
    recall = recall_score(labels, predicted, labels=ks, average=None, zero_division=0)
    return {"n": int(labels.size),
            "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
            "accuracy": float(np.mean(predicted == labels)),
            "per_class_recall": {c: (float(recall[i]) if i in present else None)
                                 for i, c in enumerate(classes)},
            "support": {c: int(np.sum(labels == i)) for i, c in enumerate(classes)},
            "confusion_matrix": confusion_matrix(labels, predicted, labels=ks).tolist()}


def plot_confusion(splits: Mapping[str, Mapping[str, Any]], classes: Sequence[str],
                   path: str) -> str:
    from trainer.core import report

    k = len(classes)
    fig = report.figure(max(4.0, 0.6 * k + 2) * len(splits), max(4.0, 0.6 * k + 1.5))
    for i, (split, m) in enumerate(splits.items(), start=1):
        ax = fig.add_subplot(1, len(splits), i)
        matrix = np.array(m["confusion_matrix"])
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                    color="white" if count > matrix.max() / 2 else "black")
        ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(k), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split} (balanced acc. {m['balanced_accuracy']:.3f})")
    fig.savefig(path, bbox_inches="tight")
    return path


def split_lines(splits: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> list[str]:
    """report.md's section per split (split_metrics): balanced accuracy, accuracy, and per
    class its support and recall."""
    lines = []
    for split, m in splits.items():
        lines += [f"## {split} ({m['n']} records)", "",
                  f"Balanced accuracy: {m['balanced_accuracy']:.3f}; accuracy "
                  f"{m['accuracy']:.3f}", "", "| class | support | recall |", "|---|---|---|"]
        for c in classes:
            r = m["per_class_recall"][c]
            lines.append(f"| {c} | {m['support'][c]} | {'n/a' if r is None else f'{r:.3f}'} |")
        lines.append("")
    return lines


def evaluate_and_report(model, data_dir: str, workdir: str, image_size: int, config: dict,
                        batch_size: int = 32, manifest: Mapping[str, Any] | None = None,
                        tta: bool = False) -> dict[str, Any]:
    """Writes report.json / report.md / plots/confusion.png for the diagnosis task; tta: every
    image scored as the mean of its 8 dihedral views (trainer.cnn.tta), recorded as
    report["tta"] (what an external evaluation of the run and its export then default to)."""
    from trainer.core import run_folder

    manifest = dataset_lib.manifest_or_read(data_dir, manifest)

    mapping = read_mapping(workdir)
    if mapping is None:
        raise FileNotFoundError(f"{workdir} has no {CLASSES_NAME}: not a diagnosis run")
    classes = mapping["classes"]
    splits, excluded, unseen = {}, {}, {}
    for split in EVAL_SPLITS:
        counts = split_exclusions(data_dir, split, image_size, mapping, manifest)
        excluded[split], unseen[split] = counts["unknown"], counts["unseen"]
        if counts["kept"]:
            labels, probs = predict_split(model, data_dir, split, image_size, mapping,
                                          batch_size, bool(config.get("use_metadata", False)),
                                          manifest, metadata_features.run_encoding(config),
                                          metadata_features.run_fields(config), tta)
            splits[split] = split_metrics(labels, probs, classes)
    plots_dir = os.path.join(workdir, PLOTS_DIR)
    os.makedirs(plots_dir, exist_ok=True)
    plots = {}
    if splits:
        plots["confusion"] = plot_confusion(splits, classes,
                                            os.path.join(plots_dir, "confusion.png"))
    payload = {"format": "isicflow.cnn_diagnosis_report/1", "task": "diagnosis",
               "config": config, "tta": bool(tta), "classes": classes,
               "grouped_as_other": mapping["grouped_as_other"],
               "min_class_records": mapping["min_records"],
               "excluded_unknown": {"train": mapping["excluded_unknown"], **excluded},
               "excluded_unseen": unseen,  # named diagnoses outside the classes (no `other`)
               "train_counts": mapping["train_counts"], "splits": splits,
               "plots": {k: os.path.relpath(v, workdir) for k, v in plots.items()}}
    run_folder.write_json(os.path.join(workdir, REPORT_JSON), payload)
    lines = ["# Diagnosis task report", "",
             *([tta_lib.REPORT_LINE, ""] if tta else []),
             f"Classes (train >= {mapping['min_records']} records; rarer grouped as `other`): "
             + ", ".join(classes), "",
             "Excluded (unknown diagnosis): " + ", ".join(
                 f"{s} {n}" for s, n in payload["excluded_unknown"].items()), "",
             "Excluded (a diagnosis outside the classes, no `other`): " + ", ".join(
                 f"{s} {n}" for s, n in unseen.items()), ""]
    lines += split_lines(splits, classes)
    if plots:
        lines += ["![confusion matrices](plots/confusion.png)", ""]
    with open(os.path.join(workdir, REPORT_MD), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return payload
