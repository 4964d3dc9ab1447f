"""Subgroup columns (issue 22, item 6): fitzpatrick_skin_type and a table's other columns go from
a download's table into the record, the reader and the manifest; records without them read as
before, with defaults."""
from __future__ import annotations

import collections
import csv
import json
import pathlib

import pytest

from beam_jobs import preprocess
from beam_jobs.layouts import CustomTable, read_layout
from isicflow import schema
from isicflow.metadata import (EXTRA_VALUE_MAX_BYTES, LesionRecord, normalise_fitzpatrick,
                               parse_extra_metadata)
from tests import layout_builders as lb
from tests.test_preprocess import read_records

# (as a table writes it, as the record holds it); None: invalid, counted, written ''
SPELLINGS = [("I", "I"), (" ii", "II"), ("3", "III"), ("IV ", "IV"), ("v", "V"), ("6.0", "VI"),
             ("Type 2", "II"), ("", ""), ("unknown", ""), ("VII", None), ("0", None)]
LONG = "x" * (EXTRA_VALUE_MAX_BYTES + 1)


def test_normalise_fitzpatrick_spellings():
    for written, expected in SPELLINGS:
        assert normalise_fitzpatrick(written) == expected, written
    assert normalise_fitzpatrick(None) == ""


def test_lesion_record_round_trips_its_subgroup_fields():
    record = LesionRecord("ISIC_1", "/x.jpg", fitzpatrick_skin_type="IV",
                          extra_metadata={"b": "2", "a": "1"})
    assert record.extra_metadata == (("a", "1"), ("b", "2"))
    assert LesionRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError, match="fitzpatrick_skin_type"):
        LesionRecord("ISIC_1", "/x.jpg", fitzpatrick_skin_type="4")


def _add_columns(csv_path: pathlib.Path, id_column: str, extra: dict) -> None:
    """Appends columns to a built layout's table: extra = {column: [cell per row, cycled]}."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    for n, row in enumerate(body):
        row += [cells[n % len(cells)] for cells in extra.values()]
    lb.write_csv(csv_path, header + list(extra), body)


def _expected(body_index: int) -> str:
    return SPELLINGS[body_index % len(SPELLINGS)][1] or ""


EXTRA = {"fitzpatrick_skin_type": [w for w, _ in SPELLINGS],
         "dermoscopic_type": ["contact polarized", "", "non-contact"],
         "notes": ["short", LONG]}


@pytest.fixture(scope="module")
def images(sample_dir):
    return lb.sample_images(sample_dir, every=11)


def test_every_table_layout_reads_the_skin_type_and_keeps_unread_columns(tmp_path, images):
    for layout, table, id_column in (("isic_cli", "metadata.csv", "isic_id"),
                                     ("ham10000", "HAM10000_metadata.csv", "image_id"),
                                     ("isic2020", "train.csv", "image_name")):
        root = lb.BUILDERS[layout](tmp_path / layout, images)
        _add_columns(root / table, id_column, EXTRA)
        result = read_layout(str(root))
        assert result.layout == layout and len(result.records) == len(images)
        order = {i.image_id: n for n, i in enumerate(images)}
        for record in result.records:
            n = order[record.image_id]
            assert record.fitzpatrick_skin_type == _expected(n), (layout, record.image_id)
            extra = dict(record.extra_metadata)
            assert "fitzpatrick_skin_type" not in extra  # a field of its own
            assert extra.get("notes", "short") == "short"  # over 1 KiB: left out
            assert extra.get("dermoscopic_type", "") == EXTRA["dermoscopic_type"][n % 3]
            if layout == "isic_cli":  # no record field holds them: kept
                assert extra["attribution"] == "Anonymous" and extra["copyright_license"] == "CC-0"
            if layout == "ham10000":  # HAM's dx_type is no record field: kept
                assert extra["dx_type"] == "histo"
            assert id_column not in extra and "sex" not in extra
        counters = result.counters
        invalid = sum(1 for n in range(len(images)) if SPELLINGS[n % len(SPELLINGS)][1] is None)
        assert counters["invalid_fitzpatrick_skin_type"] == invalid
        assert counters["extra_value_too_long"] == len(images) // 2


def test_metadata_csv_keeps_every_column_no_flag_names(tmp_path, images):
    root = tmp_path / "custom"
    for image in images:
        lb.place_image(image, root / "imgs")
    table = lb.write_csv(tmp_path / "labels.csv", ["file", "class", "Fitzpatrick_Skin_Type", "site"],
                         [[i.image_id, i.label, str(n % 6 + 1), "back"]
                          for n, i in enumerate(images)])
    result = read_layout(str(root), custom=CustomTable(str(table), "file", "class"))
    by_id = {r.image_id: r for r in result.records}
    for n, image in enumerate(images):
        record = by_id[image.image_id]
        assert record.fitzpatrick_skin_type == ("I", "II", "III", "IV", "V", "VI")[n % 6]
        assert record.extra_metadata == (("site", "back"),)


def test_legacy_sidecar_gives_its_skin_type_and_how_the_diagnosis_was_confirmed(tmp_path,
                                                                                images):
    root = lb.build_legacy_json(tmp_path / "legacy", images[:3])
    for image, confirmed in ((images[0], " histopathology"), (images[1], None),
                             (images[2], "x" * 1025)):  # over the extras' 1 KiB: left out
        sidecar = root / image.sidecar_path.name
        sidecar.unlink()  # a copy, not the shared file
        data = json.loads(image.sidecar_path.read_text(encoding="utf-8"))
        data["meta"]["clinical"]["diagnosis_confirm_type"] = confirmed
        if image is images[0]:
            data["meta"]["clinical"]["fitzpatrick_skin_type"] = "iii"
        sidecar.write_text(json.dumps(data), encoding="utf-8")
    result = read_layout(str(root))
    records = {r.image_id: r for r in result.records}
    assert result.counters["extra_value_too_long"] == 1
    assert records[images[0].image_id].fitzpatrick_skin_type == "III"
    assert records[images[1].image_id].fitzpatrick_skin_type == ""
    assert records[images[0].image_id].extra_metadata == (
        ("diagnosis_confirm_type", "histopathology"),)
    assert records[images[1].image_id].extra_metadata == ()  # null: nothing kept
    assert records[images[2].image_id].extra_metadata == ()


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, images):
    """The engine on one isic-cli download with the columns, and on legacy JSON without them
    (its one extra, diagnosis_confirm_type, where the real sidecar has one)."""
    base = tmp_path_factory.mktemp("subgroups")
    with_columns = lb.build_isic_cli(base / "cli", images)
    _add_columns(with_columns / "metadata.csv", "isic_id", EXTRA)
    without = lb.build_legacy_json(base / "legacy", images)
    runs = {}
    for name, src in (("cli", with_columns), ("legacy", without)):
        out = base / f"out-{name}"
        manifest = preprocess.run([f"--input={src}", f"--output={out}", "--image_size=32",
                                   "--keep_degenerate", "--label_policy=all"])
        runs[name] = (out, manifest)
    return runs


def test_records_reader_and_manifest_carry_the_skin_type_and_extras(engine_runs, images):
    import isicflow

    out, manifest = engine_runs["cli"]
    order = {i.image_id: n for n, i in enumerate(images)}
    records = read_records(out, manifest, 32)
    per_split = {}
    for split, recs in records.items():
        per_split[split] = collections.Counter(r["fitzpatrick_skin_type"] or "unknown"
                                               for r in recs)
        for r in recs:
            n = order[r["image_id"]]
            assert r["fitzpatrick_skin_type"] == _expected(n)
            extra = parse_extra_metadata(r["extra_metadata_json"])
            assert extra.get("dermoscopic_type", "") == EXTRA["dermoscopic_type"][n % 3]
            assert extra.get("notes", "short") == "short" and extra["attribution"] == "Anonymous"
            assert json.dumps(extra, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False) == r["extra_metadata_json"]
        if recs:  # the shared reader returns the same strings
            ds = isicflow.load(str(out), split, fields=("image_id", "fitzpatrick_skin_type",
                                                        "extra_metadata_json"))
            for element in ds:
                n = order[element["image_id"].numpy().decode()]
                assert element["fitzpatrick_skin_type"].numpy().decode() == _expected(n)
                assert parse_extra_metadata(element["extra_metadata_json"].numpy()).get(
                    "dermoscopic_type", "") == EXTRA["dermoscopic_type"][n % 3]
    counts = manifest["counts"]
    assert counts["fitzpatrick_skin_type"] == {s: dict(c) for s, c in per_split.items()}
    assert sum(sum(c.values()) for c in counts["fitzpatrick_skin_type"].values()) == len(images)
    assert counts["extra_metadata_columns"]["attribution"] == len(images)
    assert counts["extra_metadata_columns"]["notes"] == (len(images) + 1) // 2
    assert "fitzpatrick_skin_type" not in counts["extra_metadata_columns"]
    assert manifest["layout_counters"]["extra_value_too_long"] == len(images) // 2


def test_records_without_them_leave_them_out_and_parse_with_defaults(engine_runs, images):
    """Legacy sidecars: no skin type; the only extra is diagnosis_confirm_type, where the
    real sidecar has one (some UDA-1 sidecars say histopathology, the rest null)."""
    import isicflow
    import tensorflow as tf

    out, manifest = engine_runs["legacy"]
    confirmed = {i.image_id: json.loads(i.sidecar_path.read_text(encoding="utf-8"))["meta"][
        "clinical"].get("diagnosis_confirm_type") for i in images}
    assert 0 < sum(map(bool, confirmed.values())) < len(images)  # the sample holds both
    assert "fitzpatrick_skin_type" not in manifest["counts"]
    assert manifest["counts"]["extra_metadata_columns"] == {
        "diagnosis_confirm_type": sum(map(bool, confirmed.values()))}
    seen_without = 0
    for split in manifest["datasets"]["32"]:
        for shard in manifest["datasets"]["32"][split]["shards"]:
            for raw in tf.data.TFRecordDataset(str(out / shard["path"])):
                raw = raw.numpy()
                record = schema.decode_example_py(raw)
                assert record["fitzpatrick_skin_type"] == ""
                present = set(schema.OPTIONAL_FEATURES) & set(
                    schema._Example.FromString(raw).features.feature)
                expected = confirmed[record["image_id"]]
                assert present == ({"extra_metadata_json"} if expected else set())
                assert parse_extra_metadata(record["extra_metadata_json"]) == (
                    {"diagnosis_confirm_type": expected} if expected else {})
                seen_without += not expected
    assert seen_without  # a record without any optional field was read
    element = next(iter(isicflow.load(str(out), "train")))
    assert element["fitzpatrick_skin_type"].numpy() == b""
    features = json.loads((out / "32" / "features.json").read_text())
    assert not set(schema.OPTIONAL_FEATURES) & set(features["featuresDict"]["features"])
