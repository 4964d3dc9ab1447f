"""--confirmation_weights: how often training draws a record, by how its diagnosis was confirmed.

Why: a clinic that excises lesions sends excised nevi, and the models call them melanoma (recall
0.09-0.16 in source, docs/results/cnn-ham-confirmation.md); 72-83% of the nevi they train on
are one clinic's nevi followed up by serial imaging (vidir_molemax), which such a clinic never
sends. This draws records of a class by their confirmation
(isicflow.metadata.diagnosis_confirmation of the record's extras) at a factor each, e.g.
`follow_up:0.25`, while every class keeps its share of the stream, so class weights stay right
and only which records of a class the model sees changes.

Group (class c, confirmation k), n_ck records, factor f_k (1 for a confirmation not named):
    share_ck = n_c * f_k n_ck / sum_k' f_k' n_ck'        so that  sum_k share_ck = n_c.
Each group is one repeated stream drawn at its share (input_pipeline.sample_streams): the
training stream is infinite, one epoch the task's training records (benign and malignant, or
those of a known diagnosis class), as without the flag.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Mapping, Sequence

from isicflow.metadata import CONFIRMATION_WORDS, diagnosis_confirmation

NO_CONFIRMATION = ""  # the group of records whose extras say nothing (or "none")
NO_CONFIRMATION_NAME = "none"  # how the flag and the summary name that group


def confirmation_of(extra_metadata) -> str:
    """A record's group key: diagnosis_confirmation of its extras, NO_CONFIRMATION for none."""
    kind = diagnosis_confirmation(extra_metadata)
    return NO_CONFIRMATION if kind.lower() == NO_CONFIRMATION_NAME else kind


def parse_factors(text: str) -> dict[str, float]:
    """'follow_up:0.25,histo:2' -> {confirmation in the archive's words: factor}. HAM10000's
    codes (CONFIRMATION_WORDS) and the words themselves are both accepted, `none` for records
    with no confirmation; '' -> {}, and text without an item is an error."""
    if text and not text.replace(",", "").strip():  # blank or commas only: no item
        raise ValueError(f"--confirmation_weights {text!r} holds no CONFIRMATION:FACTOR item")
    factors: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.rpartition(":")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not sep or not name.strip() or not factor > 0 or factor == float("inf"):
            raise ValueError(f"--confirmation_weights item {item!r}: want CONFIRMATION:FACTOR "
                             f"with a finite factor > 0, e.g. 'follow_up:0.25' (HAM codes "
                             f"{sorted(CONFIRMATION_WORDS)} or the archive's words)")
        word = CONFIRMATION_WORDS.get(name.strip().lower(), name.strip())
        word = NO_CONFIRMATION if word.lower() == NO_CONFIRMATION_NAME else word
        if word in factors:
            raise ValueError(f"--confirmation_weights names {word!r} twice: {text!r}")
        factors[word] = factor
    return factors


def group_shares(counts: Mapping[tuple[int, str], int],
                 factors: Mapping[str, float]) -> dict[tuple[int, str], float]:
    """{(class, confirmation): records} -> {(class, confirmation): share} by the module's
    formula. A factor for a confirmation no record has is an error (a typo would otherwise
    train the plain mix under another name)."""
    present = {kind for _, kind in counts}
    missing = sorted(set(factors) - present)
    if missing:
        raise ValueError(f"--confirmation_weights names {[_name(k) for k in missing]}, which "
                         f"no training record has; the training records' confirmations: "
                         f"{sorted(_name(k) for k in present)}")
    per_class: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
    for (cls, kind), n in counts.items():
        if n > 0:
            per_class[cls].append((kind, n))
    shares = {}
    for cls, kinds in per_class.items():
        n_class = sum(n for _, n in kinds)
        weighted = sum(factors.get(kind, 1.0) * n for kind, n in kinds)
        for kind, n in kinds:
            shares[(cls, kind)] = n_class * factors.get(kind, 1.0) * n / weighted
    return shares


def _name(kind: str) -> str:
    return kind or NO_CONFIRMATION_NAME


@dataclasses.dataclass(frozen=True)
class ConfirmationMix:
    """Which group each training record is in, and each group's share of the stream."""

    groups: tuple[tuple[int, str], ...]  # (class, confirmation), sorted
    shares: tuple[float, ...]  # one per group, in records (a class's add up to its records)
    records: tuple[int, ...]  # one per group
    image_groups: Mapping[str, int]  # image_id -> index into groups

    def summary(self) -> list[dict[str, Any]]:
        """Each group's class, confirmation, records, share of the stream, and oversampling
        (share / records: drawn x times as often as stored; a factor that changes nothing,
        such as histo on a class every record of which is excised, shows 1.0)."""
        total = sum(self.shares)
        return [{"class": cls, "confirmation": _name(kind), "records": n,
                 "share": round(share / total, 6), "oversampling": round(share / n, 3)}
                for (cls, kind), share, n in zip(self.groups, self.shares, self.records)]


def plan(image_ids: Sequence[str], classes: Sequence[int], extras: Sequence[str],
         factors: Mapping[str, float]) -> ConfirmationMix:
    """The mix of one training split from its records' image_id, class (-1: not in the task,
    never drawn) and extra_metadata_json, read in one order."""
    if not len(image_ids) == len(classes) == len(extras):
        raise ValueError(f"{len(image_ids)} image ids, {len(classes)} classes, {len(extras)} "
                         "extras: one of each per record")
    of_image: dict[str, tuple[int, str]] = {}
    for image_id, cls, extra in zip(image_ids, classes, extras):
        if image_id in of_image:  # the stream finds records by image_id: one record each
            raise ValueError(f"image_id {image_id!r} is on two records of the split: "
                             "--confirmation_weights draws each record by its image_id")
        if int(cls) >= 0:
            of_image[image_id] = (int(cls), confirmation_of(extra))
    if not of_image:
        raise ValueError("--confirmation_weights: the training split holds no record of the task")
    counts = collections.Counter(of_image.values())
    shares = group_shares(counts, factors)
    groups = tuple(sorted(shares))
    index = {group: i for i, group in enumerate(groups)}
    return ConfirmationMix(groups, tuple(shares[g] for g in groups),
                           tuple(counts[g] for g in groups),
                           {image_id: index[g] for image_id, g in of_image.items()})


def group_lookup(mix: ConfirmationMix) -> Callable:
    """serialized record -> int32 index of its group in mix.groups (-1: in none), parsing the
    image_id alone, so a group's stream filters raw records before the decode."""
    import tensorflow as tf

    from isicflow import schema

    ids = sorted(mix.image_groups)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(ids, tf.string),
            tf.constant([mix.image_groups[i] for i in ids], tf.int32)), default_value=-1)
    spec = schema.feature_spec(("image_id",))

    def lookup(serialized):
        return table.lookup(tf.io.parse_single_example(serialized, spec)["image_id"])

    return lookup


def plan_for_split(data_dir: str, split: str, image_size: int, factors: Mapping[str, float],
                   class_field: str, class_of: Callable[[str], int],
                   manifest: Mapping | None = None) -> ConfirmationMix:
    """plan() of a dataset's split, reading image_id, class_field (mapped to a class index by
    class_of: the binary task's label, the diagnosis task's diagnosis) and the extras in one
    pass (no image decoded)."""
    from isicflow import reader

    columns = reader.field_columns(data_dir, split, image_size,
                                   ("image_id", class_field, "extra_metadata_json"),
                                   manifest=dict(manifest) if manifest is not None else None)
    return plan(columns["image_id"], [class_of(v) for v in columns[class_field]],
                columns["extra_metadata_json"], factors)
