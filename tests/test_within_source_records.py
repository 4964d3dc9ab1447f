"""benchmarks.within_source without --metadata_csv: each image's source comes from the records
the engine wrote for the protocol's in-source dataset (data/without_<held>/<size>/validation,
written here by tests.shard_fixtures, the project's own writer), so a protocol over a root of
several downloads, whose folder-named sources are in no metadata table, is scored too."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import protocol, within_source
from tests import shard_fixtures

SIZE = 16
SOURCES = {"isic-uda1": 8, "rosendahl": 10}  # two sources, images in each validation split


def _items() -> list[tuple]:
    """Validation items of both sources (labels alternate benign/malignant), ids <source>_<i>,
    plus one record that names no source."""
    items = []
    for seed, (source, n) in enumerate(SOURCES.items()):
        for i, (px, label, extra) in enumerate(shard_fixtures.source_items(n, source, seed,
                                                                           SIZE)):
            items.append((px, label, {**extra, "image_id": f"{source}_{i}"}))
    px, label, _ = shard_fixtures.source_items(1, "", 9, SIZE)[0]
    return items + [(px, label, {"image_id": "nameless_0", "source_collection": ""})]


def _workdir(tmp_path, items) -> tuple[object, dict[str, list[tuple[str, int, float]]]]:
    """A binary protocol workdir holding out "vienna_dias": two seeds scored on the in-source
    dataset's validation records (random probabilities) and its protocol.json. Returns the
    workdir and, per seed, the (image_id, label, probability) rows written."""
    workdir = tmp_path / "w"
    shard_fixtures.write_tiny_dataset(workdir / "data" / "without_vienna_dias",
                                      {"validation": items}, SIZE)
    rng = np.random.default_rng(0)
    scored = {}
    for k in range(2):
        rows = [(extra["image_id"], int(label == "malignant"), float(rng.random()))
                for _, label, extra in items if extra["source_collection"]]
        folder = workdir / "runs" / "vienna_dias" / f"seed_{k}" / "protocol" / "in_source"
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text(
            "split,image_id,label,probability\n"
            + "".join(f"validation,{i},{y},{p!r}\n" for i, y, p in rows)
            + "test,not_in_validation,1,0.5\n")  # another split: not read, needs no source
        scored[k] = rows
    (workdir / "protocol.json").write_text(json.dumps({
        "flags": [], "engine_flags": [], "image_size": SIZE, "seeds": 2, "first_seed": 0,
        "scores_folder": "protocol", "runs_from": "",
        "rows": {"vienna_dias": {"heldout": {"auc": {"mean": 0.6}}}}}))
    return workdir, scored


def test_sources_come_from_the_in_source_records_and_each_auc_is_sklearns(tmp_path):
    workdir, scored = _workdir(tmp_path, _items())
    out = tmp_path / "out"
    assert within_source.main([f"--workdir={workdir}", f"--output={out}"]) == 0
    row = json.loads((out / "within_source.json").read_text())["rows"]["vienna_dias"]
    expected = {}
    for source in SOURCES:
        per_seed = []
        for rows in scored.values():
            own = [(y, p) for i, y, p in rows if i.startswith(f"{source}_")]
            per_seed.append(roc_auc_score([y for y, _ in own], [p for _, p in own]))
        expected[source] = pytest.approx(np.mean(per_seed))
    assert row["within_source_validation_auc"] == expected
    assert row["positives"] == {"isic-uda1": 4, "rosendahl": 5}
    assert row["pooled_validation_auc"] == pytest.approx(np.mean(
        [roc_auc_score([y for _, y, _ in r], [p for _, _, p in r]) for r in scored.values()]))
    assert not (workdir / "within_source.json").exists()


def test_an_id_the_records_do_not_name_is_an_error_naming_it(tmp_path, capsys):
    workdir, _ = _workdir(tmp_path, _items())
    predictions = workdir / "runs" / "vienna_dias" / "seed_0" / "protocol" / "in_source"
    with open(predictions / "predictions.csv", "a") as f:
        f.write("validation,nameless_0,0,0.3\nvalidation,zz_absent,1,0.4\n")
    with pytest.raises(protocol.ProtocolError,
                       match=r"2 image ids have no source.*\['nameless_0', 'zz_absent'\]"):
        within_source.summarise(str(workdir))
    assert within_source.main([f"--workdir={workdir}", f"--output={tmp_path / 'o'}"]) == 2
    assert "zz_absent" in capsys.readouterr().err


def test_a_missing_in_source_dataset_says_which_and_suggests_the_table(tmp_path):
    workdir, _ = _workdir(tmp_path, _items())
    (workdir / "data" / "without_vienna_dias" / "manifest.json").unlink()
    with pytest.raises(protocol.ProtocolError,
                       match=r"without_vienna_dias cannot give the sources.*--metadata_csv"):
        within_source.summarise(str(workdir))


def test_metadata_csv_wins_over_the_records_when_given(tmp_path):
    """The table regroups the images (by pairs of indices: each group holds both labels), so
    its sources, not the records', are scored; the records are not read (their dataset may as
    well be gone)."""
    workdir, scored = _workdir(tmp_path, _items())
    (workdir / "data" / "without_vienna_dias" / "manifest.json").unlink()
    group = {i: f"group_{int(i.split('_')[1]) // 2 % 2}" for i, _, _ in scored[0]}
    table = tmp_path / "meta.csv"
    table.write_text("image_id,dataset\n" + "".join(f"{i},{g}\n" for i, g in group.items()))
    out = tmp_path / "out"
    assert within_source.main([f"--workdir={workdir}", f"--metadata_csv={table}",
                               f"--output={out}"]) == 0
    row = json.loads((out / "within_source.json").read_text())["rows"]["vienna_dias"]
    expected = {g: pytest.approx(np.mean([roc_auc_score(
        [y for i, y, _ in rows if group[i] == g], [p for i, _, p in rows if group[i] == g])
        for rows in scored.values()])) for g in ("group_0", "group_1")}
    assert row["within_source_validation_auc"] == expected
