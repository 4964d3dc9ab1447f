"""Issue #10, 'read what users really have': several downloads under one root, ground-truth
variants, today's archive export, the --metadata_csv escape hatch, and the list of metadata files.

Roots are built in temp dirs around the real images of ../shared/data (linked, never copied in).
"""
from __future__ import annotations

import collections
import csv
import os
import pathlib
import shutil

import pytest

from beam_jobs.layouts import DOWNLOADS, CustomTable, detect_layout, read_layout
from isicflow.diagnosis import DIAGNOSES, normalise_diagnosis
from tests import layout_builders as lb
from tests.conftest import SAMPLE_DIR

ACRAL_DIR = SAMPLE_DIR.parent / "isic-acral-666"
FULLRES_DIR = SAMPLE_DIR.parent / "isic-fullres-30"


def acral_rows() -> list[dict]:
    with open(ACRAL_DIR / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def build_acral_download(folder: pathlib.Path, rows: list[dict]) -> pathlib.Path:
    """One `isic image download` of today's archive: metadata.csv, attribution.txt, licenses/."""
    folder.mkdir(parents=True, exist_ok=True)
    lb.write_csv(folder / "metadata.csv", list(rows[0]), [list(r.values()) for r in rows])
    (folder / "attribution.txt").write_text("International Dermoscopy Society\n")
    (folder / "licenses").mkdir(exist_ok=True)
    (folder / "licenses" / "CC-BY-NC.txt").write_text("CC-BY-NC\n")
    for row in rows:
        os.symlink(ACRAL_DIR / f"{row['isic_id']}.jpg", folder / f"{row['isic_id']}.jpg")
    return folder


def split_by_label(root: pathlib.Path, every: int = 1, names=("benign", "malignant")) -> dict:
    """Issue #10 case 1: the acral download split by diagnosis_1 into two downloads."""
    rows = acral_rows()[::every]
    parts = {}
    for name, label in zip(names, ("Benign", "Malignant")):
        mine = [r for r in rows if r["diagnosis_1"] == label]
        build_acral_download(root / name, mine)
        parts[name] = mine
    return parts


@pytest.fixture(scope="module")
def subset(sample_dir):
    return lb.sample_images(sample_dir, every=11)


# --- several downloads under one root -----------------------------------------------------------

@pytest.mark.parametrize("names", [("benign", "malignant"), ("search-1", "search-2")])
def test_two_isic_cli_downloads_read_as_their_union(tmp_path, names):
    """Case 1 of the issue: was class_folders (labels from folder names, or all unknown)."""
    parts = split_by_label(tmp_path, every=5, names=names)
    assert detect_layout(str(tmp_path)) == DOWNLOADS
    result = read_layout(str(tmp_path))
    assert result.layout == DOWNLOADS and result.rejections == []
    assert {d: (info["layout"], info["records"]) for d, info in result.downloads.items()} == {
        names[0]: ("isic_cli", len(parts[names[0]])), names[1]: ("isic_cli", len(parts[names[1]]))}
    assert collections.Counter(r.label for r in result.records) == {
        "benign": len(parts[names[0]]), "malignant": len(parts[names[1]])}
    assert {r.download for r in result.records if r.label == "malignant"} == {names[1]}
    assert all(r.age_approx is not None and r.sex for r in result.records)  # metadata was read
    assert result.counters["inputs"] == len(result.records)
    assert [(m["path"], m["role"], m["kind"]) for m in result.metadata_files] == [
        (f"{names[0]}/metadata.csv", "layout", "isic_cli"),
        (f"{names[1]}/metadata.csv", "layout", "isic_cli")]


def test_isic_cli_downloads_plus_ham10000_folder(tmp_path, subset):
    rows = acral_rows()[::20]
    build_acral_download(tmp_path / "acral-a", rows[: len(rows) // 2])
    build_acral_download(tmp_path / "acral-b", rows[len(rows) // 2:])
    lb.build_ham10000(tmp_path / "HAM10000", subset)
    stray = lb.place_image(subset[0], tmp_path / "loose")  # in no download
    (tmp_path / "notes.csv").parent.mkdir(exist_ok=True)
    lb.write_csv(tmp_path / "loose" / "notes.csv", ["file", "comment"], [["a", "b"]])
    result = read_layout(str(tmp_path))
    assert {d: i["layout"] for d, i in result.downloads.items()} == {
        "HAM10000": "ham10000", "acral-a": "isic_cli", "acral-b": "isic_cli"}
    assert sum(i["records"] for i in result.downloads.values()) == len(result.records) == \
        len(rows) + len(subset)
    ham = [r for r in result.records if r.download == "HAM10000"]
    assert collections.Counter(r.label for r in ham) == collections.Counter(s.label for s in subset)
    assert [(j.path, j.reason) for j in result.rejections] == [(str(stray), "missing_metadata")]
    assert result.counters["inputs"] == len(result.records) + 1
    unused = [m for m in result.metadata_files if m["role"] == "unused"]
    assert unused == [{"path": "loose/notes.csv", "role": "unused", "kind": "",
                       "header": ["file", "comment"],
                       "why": "unrecognised header (no known ISIC layout has these columns)"}]
    # deterministic: a second read gives the same records in the same order
    assert read_layout(str(tmp_path)).records == result.records


def test_legacy_sidecar_folder_beside_table_downloads_is_a_download(tmp_path, subset):
    """All of ../shared/data side by side: the legacy gallery folder (sidecars, no CSV) was read as
    images in no download, every one rejected missing_metadata."""
    rows = acral_rows()[::40]
    build_acral_download(tmp_path / "acral", rows)
    lb.build_legacy_json(tmp_path / "uda1", subset, collection="UDA-1")
    result = read_layout(str(tmp_path))
    assert {d: (i["layout"], i["records"]) for d, i in result.downloads.items()} == {
        "acral": ("isic_cli", len(rows)), "uda1": ("legacy_json", len(subset))}
    assert result.rejections == [] and len(result.records) == len(rows) + len(subset)
    # the gallery's collection folder names the source before the download folder does
    assert collections.Counter((r.download, r.source_collection) for r in result.records) == {
        ("acral", "acral"): len(rows), ("uda1", "UDA-1"): len(subset)}
    assert result.counters["source_from_download"] == len(rows)


def with_dataset_column(table: pathlib.Path, sources: list[str]) -> None:
    """HAM10000_metadata.csv as published since 2018: a `dataset` column (the source) last."""
    with open(table, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    lb.write_csv(table, header + ["dataset"], [row + [s] for row, s in zip(rows, sources)])


def test_download_folder_is_the_source_where_metadata_names_none(tmp_path, subset):
    """An acral download names no source; HAM10000's `dataset` does, except in one emptied cell,
    which stays empty (the trainer refuses it by name) rather than become a one-image source."""
    rows = acral_rows()[::40]
    build_acral_download(tmp_path / "acral", rows)
    lb.build_ham10000(tmp_path / "HAM10000", subset)
    sources = ["vidir_molemax" if n % 2 else "rosendahl" for n in range(len(subset))]
    sources[0] = ""
    with_dataset_column(tmp_path / "HAM10000" / "HAM10000_metadata.csv", sources)
    result = read_layout(str(tmp_path))
    assert result.rejections == []
    by_id = {r.image_id: r for r in result.records}
    assert {by_id[r["isic_id"]].source_collection for r in rows} == {"acral"}
    assert [by_id[i.image_id].source_collection for i in subset] == sources
    assert result.counters["source_from_download"] == len(rows)


def test_same_id_across_downloads_same_bytes_kept_once_conflict_rejected(tmp_path):
    rows = acral_rows()
    benign = [r for r in rows if r["diagnosis_1"] == "Benign"][:4]
    malignant = [r for r in rows if r["diagnosis_1"] == "Malignant"][:2]
    build_acral_download(tmp_path / "a", benign + malignant[:1])
    # b repeats benign[0] (same bytes), says malignant[0] is benign (conflict), and gives
    # benign[1]'s id to other bytes (same label)
    flipped = dict(malignant[0], diagnosis_1="Benign")
    build_acral_download(tmp_path / "b", [benign[0], flipped, malignant[1]])
    other = dict(benign[1])
    (tmp_path / "b" / "metadata.csv").unlink()
    lb.write_csv(tmp_path / "b" / "metadata.csv", list(rows[0]),
                 [list(r.values()) for r in (benign[0], flipped, malignant[1], other)])
    shutil.copyfile(ACRAL_DIR / f"{benign[2]['isic_id']}.jpg",
                    tmp_path / "b" / f"{other['isic_id']}.jpg")
    result = read_layout(str(tmp_path))
    kept = {r.image_id: r.download for r in result.records}
    assert kept == {benign[0]["isic_id"]: "a", benign[1]["isic_id"]: "a",
                    benign[2]["isic_id"]: "a", benign[3]["isic_id"]: "a",
                    malignant[1]["isic_id"]: "b"}
    why = sorted((j.image_id, j.reason, j.kind, os.path.basename(os.path.dirname(j.path)))
                 for j in result.rejections)
    assert why == sorted([
        (benign[0]["isic_id"], "duplicate_content", "duplicate", "b"),
        (benign[1]["isic_id"], "duplicate_id", "rejected", "b"),
        (malignant[0]["isic_id"], "conflicting_labels", "rejected", "a"),
        (malignant[0]["isic_id"], "conflicting_labels", "rejected", "b")])
    assert result.counters["inputs"] == len(result.records) + len(result.rejections)
    assert result.downloads["a"]["records"] == 4 and result.downloads["b"]["records"] == 1
    # sources filled after the merge: the copies dropped above are not counted
    assert {r.image_id: r.source_collection for r in result.records} == kept
    assert result.counters["source_from_download"] == len(result.records)


def test_single_download_layouts_unchanged(tmp_path, subset):
    """A root with its own table stays one download, even with tables in subfolders."""
    root = lb.build_isic2017(tmp_path, subset)  # side file sits in the image folder
    assert detect_layout(str(root)) == "isic2017"
    result = read_layout(str(root))
    assert set(result.downloads) == {"."} and {r.download for r in result.records} == {"."}
    assert {r.source_collection for r in result.records} == {""}
    assert "source_from_download" not in result.counters
    assert [(m["path"], m["role"]) for m in result.metadata_files] == [
        ("ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv", "side"),
        ("ISIC-2017_Training_Part3_GroundTruth.csv", "layout")]


def test_every_record_of_the_shared_data_names_a_source():
    """../shared/data read as it lies: HAM10000 keeps its `dataset` sources, the other downloads
    (legacy JSON, isic-cli exports) were one '(missing)' source before."""
    root = SAMPLE_DIR.parent
    result = read_layout(str(root))
    assert result.layout == DOWNLOADS and all(r.source_collection for r in result.records)
    others = {d for d, info in result.downloads.items() if info["layout"] != "ham10000"}
    assert {"isic-uda1", "isic-acral-666"} <= others
    assert {r.source_collection for r in result.records if r.download in others} == others
    assert not {r.source_collection for r in result.records if r.download not in others} & others
    assert result.counters["source_from_download"] == sum(
        1 for r in result.records if r.source_collection == r.download)


def test_forced_layout_on_a_downloads_root_names_them(tmp_path):
    split_by_label(tmp_path, every=30)
    with pytest.raises(ValueError, match=r"--layout=isic_cli does not fit.*holds downloads "
                                         r"benign/ \(isic_cli\), malignant/ \(isic_cli\)"):
        read_layout(str(tmp_path), "isic_cli")


# --- ground-truth variants ----------------------------------------------------------------------

def test_isic2017_with_only_melanoma_and_renamed(tmp_path, subset):
    """Case 2 of the issue: `image_id,melanoma`, file renamed, age/sex file beside the images."""
    for image in subset:
        lb.place_image(image, tmp_path / "images")
    lb.write_csv(tmp_path / "melanoma_labels.csv", ["image_id", "melanoma"],
                 [[i.image_id, "1.0" if i.label == "malignant" else "0.0"] for i in subset])
    lb.write_csv(tmp_path / "images" / "metadata.csv", ["image_id", "age_approximate", "sex"],
                 [[i.image_id, lb.age_cell(i, "unknown"), lb.sex_cell(i, "unknown")]
                  for i in subset])
    result = read_layout(str(tmp_path))
    assert result.layout == "isic2017" and result.rejections == []
    assert [(r.image_id, r.label, r.age_approx, r.sex or None) for r in result.records] == [
        (i.image_id, i.label, i.age_approx, i.sex) for i in subset]
    assert {r.diagnosis for r in result.records if r.label == "malignant"} == {"melanoma"}
    assert {m["path"]: m["role"] for m in result.metadata_files} == {
        "melanoma_labels.csv": "layout", "images/metadata.csv": "side"}


@pytest.mark.parametrize("values", [("benign", "malignant"), ("0.0", "1.0")])
def test_isic2016_headerless_ground_truth(tmp_path, subset, values):
    root = lb.build_isic2016(tmp_path, subset, values)
    assert detect_layout(str(root)) == "isic2016"
    result = read_layout(str(root))
    assert result.rejections == [] and result.counters["inputs"] == len(subset)
    assert [(r.image_id, r.label) for r in result.records] == [(i.image_id, i.label) for i in subset]


def test_isic2016_bad_value_is_invalid_label(tmp_path, subset):
    root = lb.build_isic2016(tmp_path, subset[:3])
    path = root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
    path.write_text(path.read_text().replace(f"{subset[1].image_id},{subset[1].label}",
                                             f"{subset[1].image_id},maybe"))
    result = read_layout(str(root))
    assert [(j.image_id, j.reason) for j in result.rejections] == [(subset[1].image_id,
                                                                   "invalid_label")]


def test_isic2018_task3_one_hot(tmp_path, subset):
    columns = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    for image in subset:
        lb.place_image(image, tmp_path / "ISIC2018_Task3_Training_Input")
    lb.write_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv", ("image",) + columns,
                 [[i.image_id] + ["1.0" if c == lb.DX_CODE[i.diagnosis].upper() else "0.0"
                                  for c in columns] for i in subset])
    result = read_layout(str(tmp_path))
    assert result.rejections == []
    assert [(r.image_id, r.label) for r in result.records] == [(i.image_id, i.label) for i in subset]
    assert {normalise_diagnosis(r.diagnosis) for r in result.records} == {
        "melanoma", "nevus", "benign_keratosis"}


def test_todays_archive_export_diagnosis_1_to_3():
    """The real isic-acral-666 download, read where it lies (read-only, nothing written)."""
    result = read_layout(str(ACRAL_DIR))
    assert result.layout == "isic_cli" and result.rejections == []
    assert collections.Counter(r.label for r in result.records) == {"benign": 522,
                                                                    "malignant": 144}
    assert collections.Counter((r.label, normalise_diagnosis(r.diagnosis))
                               for r in result.records) == {
        ("benign", "nevus"): 522, ("malignant", "melanoma"): 144}
    assert [m["role"] for m in result.metadata_files] == ["layout"]


def test_transition_export_with_indeterminate():
    """isic-fullres-30: benign_malignant and diagnosis_1..5 side by side; one Indeterminate."""
    result = read_layout(str(FULLRES_DIR))
    assert collections.Counter(r.label for r in result.records) == {"benign": 23, "malignant": 7}
    assert collections.Counter(normalise_diagnosis(r.diagnosis) for r in result.records) == {
        "nevus": 20, "melanoma": 6, "seborrheic_keratosis": 4}


def test_indeterminate_diagnosis_1_is_unknown_label(tmp_path):
    rows = acral_rows()[:3]
    rows[1] = dict(rows[1], diagnosis_1="Indeterminate",
                   diagnosis_2="Indeterminate melanocytic proliferations",
                   diagnosis_3="Atypical melanocytic neoplasm")
    build_acral_download(tmp_path, rows)
    result = read_layout(str(tmp_path))
    assert [r.label for r in result.records][1] == "unknown"
    assert normalise_diagnosis(result.records[1].diagnosis) == "other"
    assert result.counters["unknown_label"] == 1


@pytest.mark.parametrize("text,expected", [
    ("mel", "melanoma"), ("AKIEC", "actinic_keratosis"), ("bkl", "benign_keratosis"),
    ("nevus", "nevus"), ("seborrheic keratosis", "seborrheic_keratosis"),
    ("Malignant melanocytic proliferations (Melanoma)", "melanoma"),
    ("Melanoma in situ", "melanoma"), ("Nevus, Clark", "nevus"),
    ("Squamous cell carcinoma in situ", "squamous_cell_carcinoma"),
    ("basal cell carcinoma", "basal_cell_carcinoma"), ("solar lentigo", "lentigo"),
    ("Mucosal melanotic macule", "lentigo"), ("angioma", "vascular_lesion"),
    ("dermatofibroma", "dermatofibroma"), ("cafe-au-lait macule", "other"),
    ("Indeterminate", "unknown"), ("", "unknown"), ("unk", "unknown"), (None, "unknown")])
def test_diagnosis_vocabulary(text, expected):
    assert normalise_diagnosis(text) == expected and expected in DIAGNOSES


def test_diagnosis_hierarchy_most_specific_first():
    assert normalise_diagnosis("", "Benign melanocytic proliferations", "Benign") == "nevus"
    assert normalise_diagnosis("Benign", "Indeterminate") == "unknown"


# --- the escape hatch ---------------------------------------------------------------------------

def test_metadata_csv_escape_hatch(tmp_path, subset):
    for image in subset:
        lb.place_image(image, tmp_path / "pics")
    table = tmp_path / "my_labels.csv"
    lb.write_csv(table, ["File", "Class", "Patient", "Dx"],
                 [[i.image_id + ".jpg", "MEL" if i.label == "malignant" else "NEV", f"P{n % 5}",
                   i.diagnosis or ""] for n, i in enumerate(subset)])
    custom = CustomTable(str(table), "File", "Class", ("mel",), (), "Patient", "", "Dx")
    assert custom.check()[:2] == ["file", "class"]
    result = read_layout(str(tmp_path / "pics"), custom=custom)  # the table outside --input
    assert result.layout == "metadata_csv" and result.rejections == []
    assert [(m["path"], m["role"]) for m in result.metadata_files] == [(str(table), "layout")]
    assert [(r.image_id, r.label) for r in result.records] == [(i.image_id, i.label) for i in subset]
    assert {r.group_key for r in result.records} == {f"patient:P{n}" for n in range(5)}
    strict = CustomTable(str(table), "file", "class", ("mel",), ("xyz",))
    assert {r.label for r in read_layout(str(tmp_path), custom=strict).records} == {
        "malignant", "unknown"}
    with pytest.raises(ValueError, match=r"my_labels.csv: no column --label_column=label; the file "
                                         r"has columns \['file', 'class', 'patient', 'dx'\]"):
        CustomTable(str(table), "file", "label").check()


def test_known_label_beats_unknown_across_downloads(tmp_path):
    rows = acral_rows()[:3]
    build_acral_download(tmp_path / "a", [dict(rows[0], diagnosis_1="Indeterminate")] + rows[1:2])
    build_acral_download(tmp_path / "b", rows[:1] + rows[2:3])
    result = read_layout(str(tmp_path))
    assert [(r.image_id, r.download, r.label) for r in result.records] == [
        (rows[0]["isic_id"], "b", rows[0]["diagnosis_1"].lower()),
        (rows[1]["isic_id"], "a", rows[1]["diagnosis_1"].lower()),
        (rows[2]["isic_id"], "b", rows[2]["diagnosis_1"].lower())]
    assert [(j.reason, os.path.basename(os.path.dirname(j.path))) for j in result.rejections] == [
        ("duplicate_content", "a")]


@pytest.mark.parametrize("layout,needle", [("legacy_json", "no legacy_json sidecars"),
                                           ("class_folders", "no class folders")])
def test_forced_tree_layouts_that_do_not_fit(tmp_path, subset, layout, needle):
    lb.build_isic_cli(tmp_path, subset[:2])
    with pytest.raises(ValueError, match=needle):
        read_layout(str(tmp_path), layout)
