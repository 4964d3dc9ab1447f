"""How much does an encoder's frozen feature space know about the label on a new clinic? A
linear probe: each encoder's pooled features of the training dataset's train split fit one
logistic regression, which is scored (AUC with a bootstrap interval) on every labelled image of
the held-out dataset. No fine-tuning, so the figure is the features' own, free of the
classifier run's seed and checkpoint choice.

    python -m benchmarks.linear_probe --train_data=out/protocol/W/data/without_rosendahl \\
        --heldout_data=out/protocol/W/data/only_rosendahl --image_size=64 --output=out/probe \\
        --encoders=random=random:compact,simclr=out/pretrain/simclr,supervised=out/protocol/W/runs/rosendahl/seed_0

--encoders: NAME=WHERE pairs; WHERE is a `trainer.cnn.pretrain` run folder (its encoder.keras),
a `trainer.cnn` run folder (its model.keras cut before its output, trainer.gan.features.
penultimate_model: `gap` for the compact and residual nets, what supervised training learned), or
random:ARCH (the untrained net, seeded by --seed: the floor). The probe standardises the
features and fits sklearn's LogisticRegression (L2, C=--c, balanced class weights): the fit of
trainer.cnn.probe_head, which `trainer.cnn --probe_head` starts a run's output layer from.
Writes linear_probe.json and linear_probe.md in --output.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from benchmarks import common as bench_common

RANDOM_PREFIX = "random:"


def parse_encoders(text: str) -> dict[str, str]:
    """'a=X,b=Y' -> {"a": "X", "b": "Y"}; ValueError naming a malformed or repeated pair."""
    out: dict[str, str] = {}
    for pair in (p for p in text.split(",") if p):
        name, sep, where = pair.partition("=")
        if not sep or not name or not where or name in out:
            raise ValueError(f"--encoders: {pair!r} is not a new NAME=WHERE pair")
        out[name] = where
    if not out:
        raise ValueError("--encoders: give at least one NAME=WHERE pair")
    return out


def load_encoder(where: str, image_size: int, seed: int):
    """A Keras model: float images [B, S, S, 3] in [0, 1] -> pooled features [B, F]."""
    import keras

    from trainer.cnn import contrastive, models, pretrained_encoder
    from trainer.gan import features

    if where.startswith(RANDOM_PREFIX):
        keras.utils.set_random_seed(seed)
        return contrastive.build_encoder(where[len(RANDOM_PREFIX):], image_size)
    if os.path.isfile(os.path.join(where, pretrained_encoder.ENCODER_NAME)):
        return models.load_keras_model(pretrained_encoder.encoder_path(where))
    path = os.path.join(where, "model.keras")
    if not os.path.isfile(path):
        raise ValueError(f"--encoders: {where} holds neither {pretrained_encoder.ENCODER_NAME} "
                         "(trainer.cnn.pretrain) nor model.keras (trainer.cnn)")
    return features.penultimate_model(models.load_keras_model(path))


def labelled_images(data_dir: str, splits: Sequence[str], image_size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(float images [N, S, S, 3] in [0, 1], labels [N]) of the benign/malignant records of
    the splits the dataset holds; ValueError when there are none."""
    from isicflow import dataset as dataset_lib, reader

    manifest = dataset_lib.read_manifest(data_dir)
    images, labels = [], []
    held = manifest.get("datasets", {}).get(str(image_size), {})
    for split in splits:
        if split not in held:  # a size the dataset lacks is the error below
            continue
        info = dataset_lib.split_info(manifest, image_size, split)
        if not reader.count_records(info, "binary"):
            continue
        for x, y in reader.load(data_dir, split, image_size, labels="binary",
                                as_supervised=True).batch(256):
            images.append(x.numpy())
            labels.append(y.numpy())
    if not images:
        raise ValueError(f"{data_dir}: no benign/malignant records at {image_size}px in "
                         f"{list(splits)}")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def linear_probe(encoders: dict[str, str], train_data: str, heldout_data: str,
                 image_size: int, *, c: float = 1.0, seed: int = 0,
                 resamples: int = 1000) -> dict[str, Any]:
    from sklearn import metrics as skm

    from trainer.cnn import probe_head
    from trainer.core import metrics

    train_x, train_y = labelled_images(train_data, ["train"], image_size)
    test_x, test_y = labelled_images(heldout_data, ["train", "validation", "test"], image_size)
    rows = []
    for name, where in encoders.items():
        encoder = load_encoder(where, image_size, seed)
        f_train = encoder.predict(train_x, batch_size=256, verbose=0)
        f_test = encoder.predict(test_x, batch_size=256, verbose=0)
        fitted = probe_head.fit_probe(f_train, train_y, c)
        scores = fitted.predict_proba(f_test)[:, 1]
        interval = metrics.auc_interval(test_y, scores, resamples=resamples, seed=seed)
        rows.append({"encoder": name, "where": where, "features": int(f_train.shape[1]),
                     "heldout_auc": float(skm.roc_auc_score(test_y, scores)),
                     "low": interval["low"], "high": interval["high"],
                     "train_auc": float(skm.roc_auc_score(
                         train_y, fitted.predict_proba(f_train)[:, 1]))})
    return {"train_data": train_data, "heldout_data": heldout_data, "image_size": image_size,
            "train_images": int(len(train_y)), "train_malignant": int(train_y.sum()),
            "heldout_images": int(len(test_y)), "heldout_malignant": int(test_y.sum()),
            "c": c, "seed": seed, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Linear probe: fitted on {result['train_images']} images "
             f"({result['train_malignant']} malignant) of `{result['train_data']}` (train), "
             f"scored on {result['heldout_images']} ({result['heldout_malignant']} malignant) of "
             f"`{result['heldout_data']}`, {result['image_size']} px, C={result['c']}.", "",
             "| encoder | features | held-out AUC [95%] | probe's own training AUC |",
             "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['encoder']} (`{r['where']}`) | {r['features']} | "
                     f"{r['heldout_auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | "
                     f"{r['train_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.linear_probe",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--encoders", required=True, help="NAME=WHERE pairs, comma-separated")
    p.add_argument("--train_data", required=True, help="dataset whose train split fits the probe")
    p.add_argument("--heldout_data", required=True, help="dataset scored (every split)")
    p.add_argument("--image_size", type=int, required=True, help="image size in both datasets")
    p.add_argument("--output", required=True, help="folder for linear_probe.json/.md")
    p.add_argument("--c", type=float, default=1.0, help="inverse L2 strength of the probe")
    p.add_argument("--seed", type=int, default=0, help="random encoders' and bootstrap seed")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap draws")
    args = p.parse_args(argv)
    try:
        encoders = parse_encoders(args.encoders)
        result = linear_probe(encoders, args.train_data, args.heldout_data, args.image_size,
                              c=args.c, seed=args.seed, resamples=args.resamples)
    except (ValueError, OSError) as e:
        print(f"linear_probe: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "linear_probe", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
