"""Per-image predictions of a diagnosis run (trainer.cnn --task=diagnosis) on any dataset the
engine wrote, for benchmarks.protocol: trainer.cnn.evaluate scores benign/malignant models only.

    python -m benchmarks.score_diagnosis --model=RUN --data_dir=D --splits=all|validation,test \\
        --output=O

Writes O/predictions.csv (split, image_id, label and predicted as class names, p_<class> per
class) and O/report.json (task, classes, model, data_dir, per-split images and balanced
accuracy). The classes are the run's classes.json (trainer.cnn.diagnosis): a record whose
diagnosis the run excludes (unknown) is not scored. Images are read by the input pipeline's
scoring accessor (make_eval_dataset_with_metadata, every record, evaluation scaling), the
class by trainer.cnn.diagnosis.class_of, the predicted class is the softmax's argmax.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from benchmarks import protocol_diagnosis as pd


def score_split(model, data_dir: str, split: str, image_size: int, mapping: dict,
                manifest: dict, metadata_encoding: int, batch_size: int = 64
                ) -> dict[str, Any]:
    """{"image_id": [...], "label": class indices, "probabilities": [N, K]} of one split."""
    from trainer.cnn import diagnosis
    from trainer.core import input_pipeline

    ds = input_pipeline.make_eval_dataset_with_metadata(
        data_dir, split, image_size=image_size, batch_size=batch_size, labels="all",
        manifest=manifest, metadata_input=len(model.inputs) > 1,
        metadata_encoding=metadata_encoding)
    ids, labels, probs = [], [], []
    for x, _, meta in ds:
        classes = np.array([diagnosis.class_of(mapping, v.decode("utf-8"))
                            for v in meta["diagnosis"].numpy()])
        keep = classes >= 0
        if keep.any():
            probs.append(np.asarray(model(x, training=False), np.float64)[keep])
            labels.append(classes[keep])
            ids += [v.decode("utf-8") for v, k in zip(meta["image_id"].numpy(), keep) if k]
    k = len(mapping["classes"])
    return {"image_id": ids, "label": np.concatenate(labels) if labels else np.zeros([0], int),
            "probabilities": np.concatenate(probs) if probs else np.zeros([0, k])}


def score(model_dir: str, data_dir: str, splits: str, output: str) -> dict[str, Any]:
    """Scores the run on the dataset's splits ('all': every split with records) and writes
    predictions.csv and report.json into output."""
    from isicflow import dataset as dataset_lib
    from trainer.cnn import diagnosis
    from trainer.cnn.models import load_keras_model
    from trainer.core import metadata_features

    mapping = diagnosis.read_mapping(model_dir)
    if mapping is None:
        raise ValueError(f"--model={model_dir}: no classes.json, not a diagnosis run")
    with open(os.path.join(model_dir, pd.REPORT), encoding="utf-8") as f:
        config = json.load(f).get("config", {})
    model = load_keras_model(os.path.join(model_dir, "model.keras"))
    image_size = int(model.inputs[0].shape[1])
    manifest = dataset_lib.manifest_or_read(data_dir, None)
    have = manifest["datasets"][str(image_size)]
    chosen = ([s for s in dataset_lib.SPLITS if s in have] if splits == "all"
              else [s.strip() for s in splits.split(",") if s.strip()])
    classes = mapping["classes"]
    scored = {s: score_split(model, data_dir, s, image_size, mapping, manifest,
                             metadata_features.run_encoding(config))
              for s in chosen if int(dataset_lib.split_info(manifest, image_size, s)["records"])}
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, pd.PREDICTIONS), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image_id", "label", "predicted", *(f"p_{c}" for c in classes)])
        for split, cols in scored.items():
            for image_id, y, p in zip(cols["image_id"], cols["label"], cols["probabilities"]):
                writer.writerow([split, image_id, classes[int(y)], classes[int(p.argmax())],
                                 *map(repr, map(float, p))])
    report = {"task": "diagnosis", "classes": classes, "model": os.path.abspath(model_dir),
              "data_dir": os.path.abspath(data_dir),
              "splits": {s: {"images": len(c["image_id"]),
                             "balanced_accuracy": pd.balanced_accuracy(
                                 c["label"], c["probabilities"].argmax(axis=1), len(classes))
                             if len(c["image_id"]) else None} for s, c in scored.items()}}
    with open(os.path.join(output, pd.REPORT), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.score_diagnosis",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a diagnosis run folder")
    p.add_argument("--data_dir", required=True, help="a dataset beam_jobs.preprocess wrote")
    p.add_argument("--splits", default="all", help="'all' or a comma list")
    p.add_argument("--output", required=True, help="folder for predictions.csv, report.json")
    args = p.parse_args(argv)
    report = score(args.model, args.data_dir, args.splits, args.output)
    for split, values in report["splits"].items():
        print(f"{split}: {values['images']} images, balanced accuracy "
              f"{values['balanced_accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
