"""The layout readers on the real sample and on every real ISIC layout built around it."""
from __future__ import annotations

import builtins
import collections
import json
import os
import pathlib
import shutil

import pytest

from beam_jobs.layouts import COUNTERS, LAYOUTS, REASONS, detect_layout, parse_dx_map, read_layout
from isicflow.metadata import DEFAULT_DX_LABELS
from tests.layout_builders import (ATTRIBUTION_2024, BUILDERS, build_ham10000, build_isic2020,
                                   build_legacy_json, place_image, sample_images,
                                   write_csv)

# Which fields each layout carries, beyond id and label.
CARRIED = {
    "isic_cli": ("age_approx", "sex", "diagnosis", "image_type"),
    "ham10000": ("age_approx", "sex"),
    "isic2019": ("age_approx", "sex"),
    "isic2020": ("age_approx", "sex", "diagnosis"),
    "isic2024": ("age_approx", "sex"),
    "isic2017": ("age_approx", "sex"),
    "isic2016": (),
    "class_folders": (),
}


@pytest.fixture(scope="module")
def subset(sample_dir):
    """42 real images: every 11th by id plus the two with a null diagnosis."""
    return sample_images(sample_dir, every=11)


@pytest.fixture(scope="module")
def legacy_subset(subset, tmp_path_factory):
    root = build_legacy_json(tmp_path_factory.mktemp("legacy"), subset)
    return read_layout(str(root), "legacy_json")


def dataset_images(root: pathlib.Path) -> list[str]:
    """Image files under root as the readers should see them, found independently."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            stem, ext = os.path.splitext(name)
            if (ext.lower() in (".jpg", ".jpeg", ".png") and not name.startswith(".")
                    and not stem.endswith(("_segmentation", "_mask", "_superpixels"))):
                found.append(os.path.join(folder, name))
    return sorted(found)


def read_accounted(root: pathlib.Path, layout=None, expected_inputs=None, **kwargs):
    """read_layout, checking that every image file is used exactly once and the totals add up."""
    result = read_layout(str(root), layout, **kwargs)
    files = dataset_images(root)
    used = [r.image_path for r in result.records] + [j.path for j in result.rejections
                                                       if j.path in set(files)]
    assert sorted(used) == files
    assert len(result.records) + len(result.rejections) == result.counters["inputs"]
    assert set(result.counters) <= set(COUNTERS), set(result.counters) - set(COUNTERS)
    assert {j.reason for j in result.rejections} <= set(REASONS)
    if expected_inputs is not None:
        assert result.counters["inputs"] == expected_inputs
    assert [r.image_id for r in result.records] == sorted(r.image_id for r in result.records)
    return result


def outcome(result) -> dict[str, str]:
    """image_id -> label for records, reason for rejections (several joined by '+')."""
    seen: dict[str, list] = collections.defaultdict(list)
    for record in result.records:
        seen[record.image_id].append(record.label)
    for rejection in result.rejections:
        seen[rejection.image_id].append(rejection.reason)
    return {key: "+".join(sorted(values)) for key, values in seen.items()}


def sidecar(image_id: str, **clinical) -> str:
    dataset = clinical.pop("dataset", None)
    data = {"_id": "x", "meta": {"clinical": clinical,
                                 "acquisition": {"image_type": "dermoscopic", "pixelsX": 1000,
                                                 "pixelsY": 800}}, "name": image_id}
    if dataset:
        data["dataset"] = {"name": dataset}
    return json.dumps(data)


# --- the real sample ----------------------------------------------------------------------------

def test_real_sample_reads_as_legacy_json(sample_dir):
    result = read_accounted(sample_dir, expected_inputs=440)
    assert result.layout == "legacy_json" and result.rejections == []
    assert collections.Counter(r.label for r in result.records) == {"benign": 318, "malignant": 122}
    assert collections.Counter(r.diagnosis for r in result.records) == {
        "nevus": 316, "melanoma": 122, "": 2}
    assert {r.image_type for r in result.records} == {"dermoscopic"}
    assert result.counters["other_file_skipped"] == 2  # ATTRIBUTION.txt, LICENSE.txt
    for record in result.records:
        acquisition = json.loads(pathlib.Path(record.image_path).with_suffix(".json")
                                 .read_text())["meta"]["acquisition"]
        assert (record.original_width, record.original_height) == (
            acquisition["pixelsX"], acquisition["pixelsY"])
        assert os.path.isabs(record.image_path) and record.source_collection == ""


def test_readers_never_open_image_bytes(sample_dir, subset, tmp_path, monkeypatch):
    root = BUILDERS["ham10000"](tmp_path, subset)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        assert not str(file).lower().endswith((".jpg", ".jpeg", ".png")), file
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    assert len(read_layout(str(root)).records) == len(subset)
    assert len(read_layout(str(sample_dir)).records) == 440


# --- every layout built around the real images reads to the same records ------------------------

@pytest.mark.parametrize("layout", sorted(CARRIED))
def test_built_layout_matches_legacy_reading(layout, subset, legacy_subset, tmp_path):
    root = BUILDERS[layout](tmp_path, subset)
    assert detect_layout(str(root)) == layout
    result = read_accounted(root, expected_inputs=len(subset))
    assert result.layout == layout and result.rejections == []

    def key(record):
        return (record.image_id, record.label) + tuple(getattr(record, f) for f in CARRIED[layout])

    assert [key(r) for r in result.records] == [key(r) for r in legacy_subset.records]
    sources = {s.image_id: str(s.image_path.resolve()) for s in subset}
    assert all(os.path.realpath(r.image_path) == sources[r.image_id] for r in result.records)
    assert collections.Counter(r.label for r in result.records) == {"benign": 32, "malignant": 10}


def test_nested_legacy_gallery_takes_collection_from_folder(subset, tmp_path):
    root = build_legacy_json(tmp_path, subset[:3], collection="UDA-1")
    result = read_accounted(root, expected_inputs=3)
    assert {r.source_collection for r in result.records} == {"UDA-1"}
    assert result.counters["collection_from_folder"] == 3


# --- the mess of each layout ---------------------------------------------------------------------

def test_messy_legacy_json(subset, tmp_path):
    a, b, c, d, e, f, g = (s.image_id for s in subset[:7])
    uda, msk = tmp_path / "ISIC-images" / "UDA-1", tmp_path / "ISIC-images" / "MSK-1"
    for image in subset[:2] + subset[3:5]:
        place_image(image, uda)
    place_image(subset[4], msk)
    place_image(subset[5], uda, f"{f}.JPG")
    place_image(subset[4], uda, f"{e}_segmentation.png")
    (uda / f"{a}.json").write_text('{"meta": ')
    (uda / f"{c}.json").write_text(sidecar(c, benign_malignant="benign", age_approx=40, sex="male"))
    (uda / f"{d}.json").write_text(sidecar(d, benign_malignant="indeterminate/benign",
                                           age_approx="unknown", sex="unknown", dataset="SONIC"))
    for folder in (uda, msk):
        (folder / f"{e}.json").write_text(sidecar(e, benign_malignant="malignant", age_approx=55,
                                                  sex="female"))
    (uda / f"{f}.json").write_text(sidecar(f, benign_malignant=None, age_approx=None, sex=None))
    place_image(subset[6], uda)
    (uda / f"{g}.json").write_text(sidecar("../../etc/passwd", benign_malignant="benign"))
    (uda / "notes.json").write_text("{}")
    (uda / "ATTRIBUTION.txt").write_text("UDA-1 by Anonymous")

    result = read_accounted(tmp_path, expected_inputs=8)
    assert outcome(result) == {a: "malformed_metadata", b: "missing_metadata", c: "missing_image",
                               d: "unknown", e: "duplicate_id+malignant", f: "unknown",
                               g: "invalid_id"}
    kept = {r.image_id: r for r in result.records}
    assert kept[d].source_collection == "SONIC" and kept[d].age_approx is None
    assert kept[e].source_collection == "MSK-1" and kept[e].original_width == 1000
    rejected = {j.reason: j for j in result.rejections}
    assert rejected["malformed_metadata"].path == str(uda / f"{a}.jpg")
    assert rejected["duplicate_id"].path == str(uda / f"{e}.jpg")
    assert rejected["invalid_id"].path == str(uda / f"{g}.jpg")
    assert result.counters == {
        "collection_from_folder": 4, "empty_age": 1, "empty_sex": 1, "image_files": 7, "inputs": 8,
        "mask_skipped": 1, "metadata_entries": 7, "other_file_skipped": 1, "other_json_skipped": 1,
        "sidecar_name_mismatch": 1, "unknown_age": 1, "unknown_label": 2, "unknown_sex": 1}


def test_messy_isic_cli(subset, tmp_path):
    i0, i1, i2 = subset[:3]
    for image in (i0, i1, i2):
        place_image(image, tmp_path)
    header = "isic_id,attribution,copyright_license,age_approx,benign_malignant,sex"
    lines = [header, "",
             f'{i0.image_id},"Doe, J., Hospital",CC-BY,55.0,benign,MALE',
             f"{i1.image_id},Anonymous,CC-0,,indeterminate,unknown",
             "ISIC_9999999,Anonymous,CC-0,60,malignant,female",
             f"{i0.image_id},Anonymous,CC-0,70,benign,female",
             "../etc/passwd,Anonymous,CC-0,70,benign,female",
             "ISIC_8888888,Anonymous"]
    (tmp_path / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    assert detect_layout(str(tmp_path)) == "isic_cli"
    result = read_accounted(tmp_path, expected_inputs=7)
    assert outcome(result) == {
        i0.image_id: "benign+duplicate_id", i1.image_id: "unknown", i2.image_id: "missing_metadata",
        "ISIC_9999999": "missing_image", "../etc/passwd": "invalid_id",
        "ISIC_8888888": "malformed_metadata"}
    first = result.records[0]
    assert (first.image_id, first.attribution, first.license, first.age_approx, first.sex) == (
        i0.image_id, "Doe, J., Hospital", "CC-BY", 55.0, "male")
    assert result.counters == {
        "csv_bom": 1, "empty_age": 1, "empty_line": 1, "float_age": 1, "image_files": 3,
        "inputs": 7, "metadata_entries": 6, "unknown_label": 1, "unknown_sex": 1}


def test_messy_ham10000(subset, tmp_path):
    i0, i1, i2, i3 = subset[:4]
    place_image(i0, tmp_path / "HAM10000_images_part_1")
    place_image(i1, tmp_path / "HAM10000_images_part_2", f"{i1.image_id}_gray.jpg")
    place_image(i2, tmp_path / "HAM10000_images_part_2")
    place_image(i3, tmp_path / "HAM10000_images_part_1")
    place_image(i3, tmp_path / "HAM10000_images_part_1", f"{i0.image_id}_segmentation.png")
    write_csv(tmp_path / "HAM10000_metadata.csv",
              ["", "lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"],
              [[0, "HAM_1", f"{i0.image_id}.jpg", "nv", "histo", "80.0", "male", "back",
                "vidir_modern"],
               [1, "HAM_1", i1.image_id, "mel", "histo", "", "unknown", "back", "rosendahl"],
               [2, "HAM_2", i2.image_id, "xyz", "consensus", "45", "female", "face", "vidir_modern"],
               [3, "HAM_3", "ISIC_9999999.jpg", "bkl", "histo", "50", "male", "face", "rosendahl"]])
    result = read_accounted(tmp_path, expected_inputs=5)
    assert outcome(result) == {i0.image_id: "benign", i1.image_id: "malignant",
                               i2.image_id: "unknown", i3.image_id: "missing_metadata",
                               "ISIC_9999999": "missing_image"}
    r0, r1, _ = result.records
    assert (r0.age_approx, r0.sex, r0.source_collection, r0.diagnosis) == (80.0, "male",
                                                                           "vidir_modern", "nv")
    assert (r1.age_approx, r1.sex, r1.group_key) == (None, "", r0.group_key)
    assert r1.image_path.endswith("_gray.jpg")
    assert result.counters == {
        "empty_age": 1, "extra_index_column": 1, "float_age": 1, "id_with_extension": 2,
        "image_files": 4, "inputs": 5, "mask_skipped": 1, "metadata_entries": 4,
        "suffix_gray": 1, "unknown_label": 1, "unknown_sex": 1}


def test_messy_isic2019(subset, tmp_path):
    ids = [s.image_id for s in subset[:6]]
    folder = tmp_path / "ISIC_2019_Training_Input"
    for number, image in enumerate(subset[:6]):
        place_image(image, folder, f"{ids[1]}_downsampled.jpg" if number == 1 else None)
    head = ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
    write_csv(tmp_path / "ISIC_2019_Training_GroundTruth.csv", head, [
        [f"{ids[0]}_downsampled", 0, "1.0", 0, 0, 0, 0, 0, 0, 0],
        [ids[1], 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [ids[2], 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [ids[3], 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [ids[4], 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ["ISIC_9999999", 1, 0, 0, 0, 0, 0, 0, 0, 0]])
    write_csv(tmp_path / "ISIC_2019_Training_Metadata.csv",
              ["Unnamed: 0", "image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
              [[0, f"{ids[0]}_downsampled", "55.0", "anterior torso", "", "female"],
               [1, ids[1], "", "", "", ""],
               [2, ids[5], "30", "", "", "male"]])
    result = read_accounted(tmp_path, expected_inputs=7)
    assert outcome(result) == {ids[0]: "benign", ids[1]: "malignant", ids[2]: "invalid_label",
                               ids[3]: "invalid_label", ids[4]: "unknown", ids[5]: "unknown",
                               "ISIC_9999999": "missing_image"}
    first = result.records[0]
    assert (first.diagnosis, first.age_approx, first.sex, first.anatom_site) == (
        "nv", 55.0, "female", "anterior torso")
    assert {j.detail.split(": ")[-1] for j in result.rejections if j.reason == "invalid_label"} == {
        "one-hot row has 0 ones []", "one-hot row has 2 ones ['MEL', 'NV']"}
    assert result.counters == {
        "empty_age": 1, "empty_sex": 1, "extra_index_column": 1, "float_age": 1,
        "float_one_hot": 1, "image_files": 6, "inputs": 7, "metadata_entries": 7,
        "metadata_without_ground_truth": 1, "suffix_downsampled": 2, "unknown_label": 2}


def test_messy_isic2020(subset, tmp_path):
    ids = [s.image_id for s in subset[:6]]
    for image in subset[:6]:
        place_image(image, tmp_path / "train")
    write_csv(tmp_path / "ISIC_2020_Training_GroundTruth.csv",
              ["Unnamed: 0", "image_name", "patient_id", "sex", "age_approx",
               "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"],
              [[0, ids[0], "IP_1", "male", "45.0", "torso", "nevus", "benign", 0],
               [1, ids[1], "IP_1", "", "", "", "unknown", "malignant", 1],
               [2, ids[2], "IP_2", "female", "50", "", "melanoma", "benign", 1],
               [3, ids[3], "IP_3", "female", "50", "", "nevus", "benign", 2],
               [4, ids[4], "IP_4", "female", "50", "", "nevus", "", ""]])
    result = read_accounted(tmp_path, expected_inputs=6)
    assert outcome(result) == {ids[0]: "benign", ids[1]: "malignant", ids[2]: "conflicting_labels",
                               ids[3]: "invalid_label", ids[4]: "unknown",
                               ids[5]: "missing_metadata"}
    r0, r1, _ = result.records
    assert (r0.patient_id, r0.anatom_site, r1.diagnosis, r1.group_key) == (
        "IP_1", "torso", "", "patient:IP_1")
    assert result.counters == {
        "empty_age": 1, "empty_sex": 1, "extra_index_column": 1, "float_age": 1,
        "image_files": 6, "inputs": 6, "metadata_entries": 5, "unknown_label": 1}


def test_messy_isic2024(subset, tmp_path):
    ids = [s.image_id for s in subset[:4]]
    for image in subset[:4]:
        place_image(image, tmp_path / "train-image" / "image")
    header = ["isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
              "attribution", "copyright_license"]
    write_csv(tmp_path / "train-metadata.csv", header, [
        [ids[0], 0, "IP_1", "", "", "torso", ATTRIBUTION_2024, "CC-BY"],
        [ids[1], 1, "IP_1", "60.0", "male", "", "ACEMID MIA, Barcelona", "CC-BY-NC"],
        [ids[2], "", "IP_2", "60", "male", "", "Anonymous", "CC-0"],
        ["", 0, "IP_3", "60", "male", "", "Anonymous", "CC-0"]])
    result = read_accounted(tmp_path, expected_inputs=5)
    assert outcome(result) == {ids[0]: "benign", ids[1]: "malignant", ids[2]: "unknown",
                               ids[3]: "missing_metadata", "": "invalid_id"}
    assert [r.attribution for r in result.records] == [ATTRIBUTION_2024, "ACEMID MIA, Barcelona",
                                                       "Anonymous"]
    assert result.counters == {"empty_age": 1, "empty_sex": 1, "float_age": 1, "image_files": 4,
                               "inputs": 5, "metadata_entries": 4, "unknown_label": 1}


def test_isic2024_without_target_reads_unknown_labels(subset, tmp_path):
    place_image(subset[0], tmp_path)
    write_csv(tmp_path / "test-metadata.csv", ["isic_id", "patient_id", "age_approx", "sex"],
              [[subset[0].image_id, "IP_1", "40", "female"]])
    result = read_accounted(tmp_path, expected_inputs=1)
    assert (result.layout, result.records[0].label, result.counters["unknown_label"]) == (
        "isic2024", "unknown", 1)


def test_messy_isic2017(subset, tmp_path):
    ids = [s.image_id for s in subset[:5]]
    for image in subset[:5]:
        place_image(image, tmp_path / "ISIC-2017_Training_Data")
    place_image(subset[0], tmp_path / "ISIC-2017_Training_Data", f"{ids[0]}_superpixels.png")
    lines = ["image_id,melanoma,seborrheic_keratosis", f"{ids[0]},1.0,0.0", f"{ids[1]},0.0,1.0",
             f"{ids[2]},0.0,0.0", f"{ids[3]},1.0,1.0", f"{ids[4]},x,0", ""]
    (tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    write_csv(tmp_path / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv",
              ["image_id", "age_approximate", "sex"],
              [[ids[0], "55", "male"], [ids[1], "unknown", "unknown"],
               ["ISIC_7777777", "60", "female"]])
    result = read_accounted(tmp_path, expected_inputs=6)
    assert outcome(result) == {ids[0]: "malignant", ids[1]: "benign", ids[2]: "benign",
                               ids[3]: "invalid_label", ids[4]: "malformed_metadata",
                               "ISIC_7777777": "missing_image"}
    assert [(r.diagnosis, r.age_approx, r.sex) for r in result.records] == [
        ("melanoma", 55.0, "male"), ("seborrheic_keratosis", None, ""), ("nevus", None, "")]
    assert result.counters == {
        "empty_line": 1, "float_one_hot": 4, "image_files": 5, "inputs": 6, "mask_skipped": 1,
        "metadata_entries": 6, "metadata_without_ground_truth": 1, "unknown_age": 1,
        "unknown_label": 1, "unknown_sex": 1}


def test_messy_class_folders(subset, tmp_path):
    ids = [s.image_id for s in subset[:6]]
    place_image(subset[0], tmp_path / "benign")
    place_image(subset[0], tmp_path / "benign", f"{ids[0]}_mask.png")
    place_image(subset[1], tmp_path / "benign")
    place_image(subset[1], tmp_path / "Malignant")
    place_image(subset[2], tmp_path / "MEL")
    place_image(subset[3], tmp_path / "other")
    place_image(subset[4], tmp_path / "benign")
    place_image(subset[4], tmp_path / "benign", f"{ids[4]}_gray.jpg")
    place_image(subset[5], tmp_path)
    place_image(subset[5], tmp_path / "benign", f"._{ids[5]}.jpg")        # macOS resource fork
    place_image(subset[5], tmp_path / ".thumbnails" / "benign")
    assert detect_layout(str(tmp_path)) == "class_folders"
    result = read_accounted(tmp_path, expected_inputs=8)
    assert outcome(result) == {ids[0]: "benign", ids[1]: "conflicting_labels+conflicting_labels",
                               ids[2]: "malignant", ids[3]: "unknown",
                               ids[4]: "benign+duplicate_file", ids[5]: "missing_metadata"}
    assert {r.image_id: r.diagnosis for r in result.records}[ids[2]] == "mel"
    assert result.counters == {"hidden_skipped": 2, "image_files": 8, "inputs": 8, "mask_skipped": 1,
                               "metadata_entries": 0, "suffix_gray": 1, "unknown_label": 1}


def test_kaggle_isic2020_reads_train_and_test_but_not_the_submission(subset, tmp_path):
    build_isic2020(tmp_path, subset[:4])
    for image in subset[4:6]:
        place_image(image, tmp_path / "jpeg" / "test")
    write_csv(tmp_path / "test.csv", ["image_name", "patient_id", "sex", "age_approx",
                                      "anatom_site_general_challenge"],
              [[s.image_id, "IP_9", "male", "40", "torso"] for s in subset[4:6]])
    write_csv(tmp_path / "sample_submission.csv", ["image_name", "target"],
              [[s.image_id, 0] for s in subset[:6]])
    assert detect_layout(str(tmp_path)) == "isic2020"
    result = read_accounted(tmp_path, expected_inputs=6)
    assert [r.label for r in result.records] == [s.label for s in subset[:4]] + ["unknown"] * 2
    assert result.counters["unknown_label"] == 2


def test_one_hot_test_file_with_weight_columns(subset, tmp_path):
    place_image(subset[0], tmp_path)
    write_csv(tmp_path / "ISIC_2019_Test_GroundTruth.csv",
              ["image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK", "score_weight",
               "validation_weight"], [[subset[0].image_id, 1, 0, 0, 0, 0, 0, 0, 0, 0, "0.5", "0.25"]])
    result = read_accounted(tmp_path, expected_inputs=1)
    assert [(r.label, r.diagnosis) for r in result.records] == [("malignant", "mel")]


def test_legacy_sidecar_pairs_only_with_the_image_beside_it(subset, tmp_path):
    image = subset[0]
    for collection in ("A-no-image", "B"):
        (tmp_path / collection).mkdir()
        shutil.copyfile(image.sidecar_path, tmp_path / collection / image.sidecar_path.name)
    kept = place_image(image, tmp_path / "B")
    result = read_accounted(tmp_path, expected_inputs=2)
    assert [(j.reason, j.path) for j in result.rejections] == [
        ("missing_image", str(tmp_path / "A-no-image" / image.sidecar_path.name))]
    assert [(r.image_path, r.source_collection) for r in result.records] == [(str(kept), "B")]


# --- detection, --layout, --dx_map ---------------------------------------------------------------

def test_detect_layout_names_what_it_found(subset, tmp_path):
    with pytest.raises(ValueError, match="no ISIC layout recognised.*0 image files"):
        detect_layout(str(tmp_path))
    place_image(subset[0], tmp_path)
    write_csv(tmp_path / "labels.csv", ["file", "class"], [[subset[0].image_id, "benign"]])
    with pytest.raises(ValueError, match=r"1 directly under root.*labels.csv': 'unrecognised header"):
        detect_layout(str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        detect_layout(str(tmp_path / "absent"))


def test_detect_layout_refuses_ambiguous_trees(subset, tmp_path):
    build_ham10000(tmp_path, subset[:2])
    build_isic2020(tmp_path, subset[2:4])
    with pytest.raises(ValueError, match=r"ambiguous.*\['ham10000', 'isic2020'\]"):
        detect_layout(str(tmp_path))
    assert len(read_accounted(tmp_path, "isic2020").records) == 2


def test_layout_argument_overrides_detection(subset, tmp_path):
    build_legacy_json(tmp_path, subset[:3])
    write_csv(tmp_path / "metadata.csv", ["isic_id", "attribution", "copyright_license"],
              [[subset[0].image_id, "Anonymous", "CC-0"]])
    assert detect_layout(str(tmp_path)) == "isic_cli"
    forced = read_accounted(tmp_path, "legacy_json", expected_inputs=3)
    assert [r.label for r in forced.records] == [s.label for s in subset[:3]]
    with pytest.raises(ValueError, match="no ham10000 metadata CSV.*metadata.csv': 'isic_cli"):
        read_layout(str(tmp_path), "ham10000")
    with pytest.raises(ValueError, match="unknown layout 'keras'"):
        read_layout(str(tmp_path), "keras")
    assert set(LAYOUTS) == set(BUILDERS)


def test_parse_dx_map_overrides_and_names_bad_pieces():
    table = parse_dx_map("bkl:malignant, UNK:unknown,sk:benign")
    assert table == dict(DEFAULT_DX_LABELS, bkl="malignant", sk="benign")
    assert parse_dx_map("") == DEFAULT_DX_LABELS
    for bad, piece in [("bkl", "'bkl'"), ("bkl:maybe", "'bkl:maybe'"), (":benign", "':benign'"),
                       ("nv:benign,", "''"), ("nv:benign,nv:malignant", "'nv:malignant'")]:
        with pytest.raises(ValueError, match=f"piece {piece}"):
            parse_dx_map(bad)


def test_dx_labels_change_ham10000_labels(subset, tmp_path):
    root = build_ham10000(tmp_path, subset)
    result = read_layout(str(root), dx_labels=parse_dx_map("nv:unknown,bkl:malignant"))
    assert collections.Counter((r.diagnosis, r.label) for r in result.records) == {
        ("nv", "unknown"): 30, ("mel", "malignant"): 10, ("bkl", "malignant"): 2}
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        read_layout(str(root), dx_labels={"nv": "maybe"})


def test_unreadable_csv_fails_fast_naming_the_file(tmp_path):
    (tmp_path / "train.csv").write_text("image_name,patient_id,image_name\nISIC_1,IP_1,ISIC_1\n")
    with pytest.raises(ValueError, match=r"train.csv: header repeats column\(s\) \['image_name'\]"):
        read_layout(str(tmp_path), "isic2020")
    (tmp_path / "train.csv").write_bytes(b"image_name,patient_id\nISIC_1,IP_\xff1\n")
    with pytest.raises(ValueError, match="train.csv: not UTF-8"):
        read_layout(str(tmp_path))
