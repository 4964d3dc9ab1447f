"""--probe_head: the classifier's output layer set, before its first training step, to a
logistic regression fitted on the frozen features of the unaugmented train split; fine-tuning
of the whole net then starts from there (LP-FT: linear probing, then fine-tuning; Kumar et al.,
ICLR 2022).

Why: a random output layer's first gradients run back through a pretrained encoder and move its
features before the head is any good; a head that starts where a linear probe ends leaves more
of what pretraining learned, which is the paper's reason for better accuracy out of
distribution. It needs features worth probing: --init_encoder or --weights_path.

fit_probe is also benchmarks.linear_probe's fit, so the probe that a benchmark reports is the
head that a run starts from.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# Inverse L2 strength on standardised features: sklearn's default, and linear_probe's --c.
PROBE_C = 1.0
RECORD_NAME = "probe_head.json"  # in a run's checkpoints/: what was fitted, for a resume


def fit_probe(features: np.ndarray, labels: np.ndarray, c: float = PROBE_C,
              class_weight: Mapping[int, float] | str | None = "balanced"):
    """A standardised L2 logistic regression (sklearn: StandardScaler, then LogisticRegression;
    multinomial over more than two classes) fitted on the features; class_weight as sklearn
    takes it ('balanced', {class: weight} or None)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    weights = dict(class_weight) if isinstance(class_weight, Mapping) else class_weight
    model = make_pipeline(StandardScaler(), LogisticRegression(
        C=c, class_weight=weights, max_iter=2000))
    return model.fit(features, labels)


def dense_weights(fitted, num_outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """fit_probe's pipeline as one Dense layer (kernel [F, K], bias [K]) with the same outputs.

    The scaler folds into the affine map: with means mu and scales s,
        w . (x - mu) / s + b  =  (w / s) . x  +  (b - sum(w mu / s)).
    sklearn's coef_ holds one row per class (K > 2: softmax logits), or one row for two classes
    (the logit of class 1): as it is for a single sigmoid unit, and as [-z/2, +z/2] for a
    two-way softmax (softmax([-z/2, z/2]) = (1 - sigmoid(z), sigmoid(z)))."""
    scaler, logistic = fitted[0], fitted[-1]
    classes = [int(k) for k in logistic.classes_]
    expected = list(range(max(num_outputs, 2)))
    if classes != expected:
        raise ValueError(f"the train features hold the classes {classes}; the head has "
                         f"{num_outputs} output(s), for the classes {expected}: every class must "
                         "be in the train split to fit the head")
    coef = logistic.coef_ / scaler.scale_[None, :]
    intercept = logistic.intercept_ - coef @ scaler.mean_
    if num_outputs == 2 and coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return coef.T.astype(np.float32), intercept.astype(np.float32)


def features_and_labels(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The frozen features (the layer before the output, inference mode) and labels of every
    (images, labels) batch of dataset, in its order."""
    from trainer.gan import features as features_lib

    cut = features_lib.penultimate_model(model)
    features, labels = [], []
    for images, y in dataset:
        features.append(np.asarray(cut(images, training=False), np.float32))
        labels.append(np.asarray(y).reshape(-1))
    if not features:
        raise ValueError("the train split gave no batch to fit the head on")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def initialise_head(model, dataset, class_weight: Mapping[int, float] | str | None,
                    c: float = PROBE_C) -> dict[str, Any]:
    """Sets model's output layer (a Dense layer) to the probe fitted on dataset's features,
    weighing the classes as the training loss does (fit_probe's class_weight); returns what was
    fitted, for train_summary.json: images, features, C, the class weights, and the probe's
    balanced accuracy on the images it was fitted on. ValueError when the model does not end
    in a Dense layer or the features lack a class."""
    from sklearn.metrics import balanced_accuracy_score

    head = model.layers[-1]
    kernel = getattr(head, "kernel", None)
    if kernel is None or len(kernel.shape) != 2:
        raise ValueError(f"--probe_head sets a Dense output layer; {model.name!r} ends with "
                         f"{type(head).__name__} {head.name!r}")
    features, labels = features_and_labels(model, dataset)
    if features.shape[1] != kernel.shape[0]:
        raise ValueError(f"the head takes {kernel.shape[0]} features; the layer before it gives "
                         f"{features.shape[1]}")
    fitted = fit_probe(features, labels, c, class_weight)
    head.set_weights(list(dense_weights(fitted, int(kernel.shape[1]))))
    return {"images": int(len(labels)), "features": int(features.shape[1]), "c": c,
            "class_weight": ({str(k): float(v) for k, v in class_weight.items()}
                             if isinstance(class_weight, Mapping) else class_weight),
            "train_balanced_accuracy": float(balanced_accuracy_score(
                labels, fitted.predict(features)))}
