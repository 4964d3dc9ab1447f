"""Deterministic, group-aware train/validation/test assignment and class balancing (pure).

A group is what must not straddle splits: a patient, else a lesion, else the image itself
(LesionRecord.group_key). Groups are visited in an order fixed by a seeded hash, and each goes
to the split whose per-label counts are furthest below target, so proportions come out close
to the requested fractions for every label even on a few hundred images, and the result
depends only on the set of (group, label) pairs and the seed, never on input order.
"""
from __future__ import annotations

import collections
import hashlib
from typing import Iterable, Sequence

from isicflow.dataset import SPLITS



def parse_fractions(text: str) -> tuple[float, float, float]:
    """'70,20,10' (percent or fractions) -> (0.7, 0.2, 0.1); fails on anything else."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise ValueError(f"--split must be three numbers like 70,20,10, got {text!r}") from e
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--split must be three non-negative numbers like 70,20,10, got {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def stable_hash(text: str, seed: int = 0) -> int:
    """A hash that is the same in every process and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")


def assign_splits(group_labels: Iterable[tuple[str, str]],
                  fractions: Sequence[float] = (0.7, 0.2, 0.1),
                  seed: int = 0) -> dict[str, str]:
    """Maps each group key to a split name.

    group_labels: one (group_key, label) pair per image. Returns {group_key: split}.
    """
    return {group: SPLITS[i] for group, i in _place(group_labels, fractions, seed).items()}


def check_folds(folds: int, fold: int) -> None:
    """ValueError unless folds >= 3 (a test, a validation and a train fold) and fold is one."""
    if folds < 3:
        raise ValueError(f"--folds must be 0 (off) or >= 3 (a test, a validation and a train "
                         f"fold), got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1} for --folds={folds}, got {fold}")


def assign_folds(group_labels: Iterable[tuple[str, str]], folds: int,
                 seed: int = 0) -> dict[str, int]:
    """{group_key: fold 0..folds-1}: assign_splits' placement into `folds` equal shares, so
    every fold holds about 1/folds of each label's images and a group lies in one fold."""
    check_folds(folds, 0)
    return _place(group_labels, [1.0 / folds] * folds, seed)


def cross_validation_split(fold_of_group: int, fold: int, folds: int) -> str:
    """The split of a group in fold `fold_of_group` when `fold` is the test fold: test, the
    validation split for the next fold (mod folds), train for the rest. Over fold = 0..folds-1
    every group is tested once and validates once."""
    check_folds(folds, fold)
    if fold_of_group == fold:
        return "test"
    return "validation" if fold_of_group == (fold + 1) % folds else "train"


def _place(group_labels: Iterable[tuple[str, str]], fractions: Sequence[float],
           seed: int) -> dict[str, int]:
    """{group_key: index into fractions}: each group, largest first then in a seeded hash
    order, goes to the share whose per-label counts it brings closest to their targets."""
    per_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    for group, label in group_labels:
        per_group[group][label] += 1
        totals[label] += 1
    shares = range(len(fractions))
    # Sorted labels: the float sums below must not depend on the order labels were first seen.
    targets = [{lab: f * totals[lab] for lab in sorted(totals)} for f in fractions]
    # Plain dicts with every label (not Counters, whose missing keys cost a call): the loop
    # below runs once per group, and 200,000 groups must plan in seconds (measured: the fixed
    # split ~4 s; five folds of ten label/diagnosis strata ~11 s, the cost ~ shares^2 x labels).
    counts = [dict.fromkeys(totals, 0) for _ in shares]
    candidates = [i for i in shares if fractions[i] > 0]
    assignment: dict[str, int] = {}
    # Large groups first (they are the hard ones to place), then a seeded hash order.
    order = sorted(per_group, key=lambda g: (-sum(per_group[g].values()), stable_hash(g, seed)))
    for group in order:
        labels = per_group[group]

        def deficit_after(share: int) -> float:
            # Squared distance to the targets, over all labels, if this group went to `share`.
            err = 0.0
            for i in shares:
                have_i, extra = counts[i], labels if i == share else {}
                for lab, target in targets[i].items():
                    have = have_i[lab] + extra.get(lab, 0)
                    err += (have - target) ** 2
            return err

        best = min(candidates, key=lambda i: (deficit_after(i), i))
        assignment[group] = best
        for lab, n in labels.items():
            counts[best][lab] += n
    return assignment


def subsample_groups(group_labels: Iterable[tuple[str, str]], fraction: float,
                     seed: int = 0) -> set[str]:
    """The groups --train_fraction keeps of a split: per label (a group's most frequent label,
    ties to the smaller name), the first max(1, round(fraction x n)) of its n groups in a seeded
    hash order. The order does not depend on the fraction, so with one seed a smaller
    fraction's groups are a subset of a larger one's: a learning curve adds data, it does not
    swap it. group_labels: one (group_key, label) pair per image."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train_fraction must be in (0, 1], got {fraction}")
    per_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for group, label in group_labels:
        per_group[group][label] += 1
    by_label: dict[str, list[str]] = collections.defaultdict(list)
    for group, labels in per_group.items():
        by_label[min(labels, key=lambda lab: (-labels[lab], lab))].append(group)
    kept: set[str] = set()
    for groups in by_label.values():
        ordered = sorted(groups, key=lambda g: (stable_hash(f"train_fraction:{g}", seed), g))
        kept.update(ordered[:max(1, round(fraction * len(ordered)))])
    return kept


def select_balanced(items: Iterable[tuple[str, str]], seed: int = 0) -> set[str]:
    """The study's balanced set: every malignant image and as many benign ones, chosen by a
    seeded hash. items: (image_id, label). Returns the image ids to keep (unknowns dropped)."""
    by_label: dict[str, list[str]] = collections.defaultdict(list)
    for image_id, label in items:
        by_label[label].append(image_id)
    def hashed(ids: list[str]) -> list[str]:
        return sorted(ids, key=lambda i: (stable_hash(i, seed), i))

    malignant, benign = hashed(by_label.get("malignant", [])), hashed(by_label.get("benign", []))
    n = min(len(malignant), len(benign))
    return set(malignant[:n]) | set(benign[:n])
