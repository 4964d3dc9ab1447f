"""Splits keep groups together, hit the proportions per label, and ignore input order."""
import collections
import random
import re

import pytest

from beam_jobs import splits


def _groups(n_groups=300, seed=1):
    rng = random.Random(seed)
    pairs = []
    for g in range(n_groups):
        label = "malignant" if rng.random() < 0.28 else "benign"
        pairs += [(f"patient:{g}", label)] * rng.choice([1, 1, 1, 2, 3])
    return pairs


def test_parse_fractions():
    assert splits.parse_fractions("70,20,10") == pytest.approx((0.7, 0.2, 0.1))
    assert splits.parse_fractions("0.8,0.1,0.1") == pytest.approx((0.8, 0.1, 0.1))
    for bad in ("70,30", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(ValueError, match="--split"):
            splits.parse_fractions(bad)


def test_each_group_in_exactly_one_split_and_proportions_close():
    pairs = _groups()
    assignment = splits.assign_splits(pairs, (0.7, 0.2, 0.1), seed=0)
    assert set(assignment) == {g for g, _ in pairs}
    counts = {s: collections.Counter() for s in splits.SPLITS}
    for group, label in pairs:
        counts[assignment[group]][label] += 1
    totals = collections.Counter(label for _, label in pairs)
    for split, frac in zip(splits.SPLITS, (0.7, 0.2, 0.1)):
        for label, n in totals.items():
            assert abs(counts[split][label] - frac * n) <= 3, (split, label, counts)


def test_independent_of_input_order_and_seeded():
    pairs = _groups()
    shuffled = pairs[:]
    random.Random(5).shuffle(shuffled)
    assert splits.assign_splits(pairs, seed=3) == splits.assign_splits(shuffled, seed=3)
    assert splits.assign_splits(pairs, seed=3) != splits.assign_splits(pairs, seed=4)


def test_zero_fraction_split_gets_nothing():
    assignment = splits.assign_splits(_groups(50), (0.8, 0.2, 0.0))
    assert "test" not in set(assignment.values())


def test_balanced_selection_keeps_all_malignant_and_as_many_benign():
    items = [(f"b{i}", "benign") for i in range(30)] + [(f"m{i}", "malignant") for i in range(10)]
    items += [("u0", "unknown")]
    keep = splits.select_balanced(items, seed=0)
    assert {i for i in keep if i.startswith("m")} == {f"m{i}" for i in range(10)}
    assert len([i for i in keep if i.startswith("b")]) == 10
    assert "u0" not in keep
    assert keep == splits.select_balanced(list(reversed(items)), seed=0)


def test_train_subsample_keeps_a_nested_seeded_share_of_each_labels_groups():
    pairs = _groups(400)
    label_of = dict(pairs)
    groups = collections.Counter(label_of.values())
    kept = {f: splits.subsample_groups(pairs, f, seed=2) for f in (0.1, 0.5, 1.0)}
    assert kept[1.0] == set(label_of)
    assert kept[0.1] < kept[0.5] < kept[1.0]  # a learning curve adds data, never swaps it
    for f in (0.1, 0.5):
        per_label = collections.Counter(label_of[g] for g in kept[f])
        assert per_label == {lab: round(f * n) for lab, n in groups.items()}
    assert kept[0.5] == splits.subsample_groups(list(reversed(pairs)), 0.5, seed=2)
    assert kept[0.5] != splits.subsample_groups(pairs, 0.5, seed=3)
    # a label with a single group keeps it at any share; a group takes its majority label
    few = [("g1", "malignant"), ("g2", "benign"), ("g2", "benign"), ("g2", "malignant")]
    assert splits.subsample_groups(few, 0.01) == {"g1", "g2"}
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="--train_fraction must be in"):
            splits.subsample_groups(pairs, bad)


def test_folds_are_equal_label_stratified_and_keep_groups_whole():
    pairs = _groups(600)
    fold_of = splits.assign_folds(pairs, 5, seed=0)
    assert set(fold_of) == {g for g, _ in pairs} and set(fold_of.values()) == set(range(5))
    counts = collections.defaultdict(collections.Counter)
    for group, label in pairs:
        counts[fold_of[group]][label] += 1
    totals = collections.Counter(label for _, label in pairs)
    for fold in range(5):
        for label, n in totals.items():
            assert abs(counts[fold][label] - n / 5) <= 3, (fold, label, counts)
    shuffled = pairs[:]
    random.Random(2).shuffle(shuffled)
    assert splits.assign_folds(shuffled, 5, seed=0) == fold_of
    assert splits.assign_folds(pairs, 5, seed=1) != fold_of


def test_over_all_folds_each_group_is_tested_once_and_validates_once():
    folds = 4
    for fold_of_group in range(folds):
        roles = [splits.cross_validation_split(fold_of_group, k, folds) for k in range(folds)]
        assert sorted(roles) == ["test", "train", "train", "validation"]
        assert roles[fold_of_group] == "test"
        assert roles[(fold_of_group - 1) % folds] == "validation"


@pytest.mark.parametrize("folds,fold,needle", [(2, 0, "--folds must be 0 (off) or >= 3"),
                                               (-1, 0, "got -1"),
                                               (5, 5, "--fold must be in 0..4"),
                                               (5, -1, "got -1")])
def test_fold_settings_that_cannot_cross_validate_are_refused(folds, fold, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        splits.check_folds(folds, fold)
    with pytest.raises(ValueError, match=re.escape(needle)):
        splits.cross_validation_split(0, fold, folds)
